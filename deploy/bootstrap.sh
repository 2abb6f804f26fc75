#!/usr/bin/env bash
# Installs what heatwatch needs on a fresh Debian/Ubuntu machine; safe to re-run.
#   - mosquitto, influxd, PostgreSQL and Alertmanager from the distribution (sudo when not root);
#   - .venv with the exact versions of requirements.lock and heatwatch itself (editable);
#   - the rule engine compiled with mypyc (gcc and Python's headers from the distribution).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v influxd >/dev/null 2>&1 || need_pkgs+=(influxdb)
command -v influx >/dev/null 2>&1 || need_pkgs+=(influxdb-client)
# PostgreSQL: the alert store of a multi-machine site; tests run the store against a real one
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# Alertmanager: pages leave in its shapes; tests hold them to what a real one sends
command -v prometheus-alertmanager >/dev/null 2>&1 || need_pkgs+=(prometheus-alertmanager)
# the rule engine is compiled with mypyc (deploy/build_rules.py): a C compiler and Python's headers
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_pkgs+=(python3-dev)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "bootstrap: need ${need_pkgs[*]} and neither root nor sudo: run 'apt-get install -y ${need_pkgs[*]}' as root" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_pkgs[*]} from the distribution"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# The packages start system services on some distributions; heatwatch runs its own on other
# ports and never touches those.

py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "bootstrap: heatwatch needs Python >= 3.11 (found $($py --version))" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: creating .venv from requirements.lock"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
.venv/bin/python deploy/build_rules.py
