#!/usr/bin/env bash
# Installs what heatwatch needs on a fresh Debian/Ubuntu machine; safe to re-run.
#   - mosquitto, influxd, PostgreSQL, Prometheus and Alertmanager from the distribution (sudo when
#     not root);
#   - .venv with the exact versions of requirements.lock and heatwatch itself (editable).
# No C compiler: every package in requirements.lock installs from a wheel (the rules run as the
# Python they are written in since #18: docs/alerts.md, "Rules run interpreted: why").
set -euo pipefail
cd "$(dirname "$0")/.."
# one line per phase with the time so far: a fresh machine spends a minute or two in apt and pip
phase() { echo "bootstrap: [$SECONDS s] $*"; }

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
# mosquitto_sub: the demo prints a command that watches the broker with it
command -v mosquitto_sub >/dev/null 2>&1 || need_pkgs+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need_pkgs+=(influxdb)
command -v influx >/dev/null 2>&1 || need_pkgs+=(influxdb-client)
# PostgreSQL: the alert store of a multi-machine site; tests run the store against a real one
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# a real Prometheus scrapes gateway, collector and API in the tests; promtool checks the shipped
# alerting rules (deploy/prometheus/)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# the tests verify the shipped systemd units with systemd-analyze (Debian: in package systemd)
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
# the takeover report: pdftoppm renders its PDF to images in the tests; a font with Chinese and
# Latin glyphs for the PDF
command -v pdftoppm >/dev/null 2>&1 || need_pkgs+=(poppler-utils)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need_pkgs+=(fonts-wqy-microhei)
# Alertmanager: pages leave in its shapes; tests hold them to what a real one sends
command -v prometheus-alertmanager >/dev/null 2>&1 || need_pkgs+=(prometheus-alertmanager)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "bootstrap: need ${need_pkgs[*]} and neither root nor sudo: run 'apt-get install -y ${need_pkgs[*]}' as root" >&2
    exit 1
  fi
  phase "installing ${need_pkgs[*]} from the distribution (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -q "${need_pkgs[@]}" | { grep --line-buffered -E '^(Unpacking|Setting up) ' || true; }
  phase "distribution packages installed"
fi
# The packages start system services on some distributions; heatwatch runs its own on other
# ports and never touches those.

py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "bootstrap: heatwatch needs Python >= 3.11 (found $($py --version))" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  phase "creating .venv from requirements.lock ($(grep -c '==' requirements.lock) packages; pip lists each)"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  # pip's own lines, one or two per package, without its progress bars (noise in a log)
  .venv/bin/pip install --progress-bar off --disable-pip-version-check -r requirements.lock \
    | { grep --line-buffered -v '^Requirement already satisfied' || true; }   # pipefail: pip's failure stops us
  phase "installing heatwatch itself (editable)"
  .venv/bin/pip install -q --progress-bar off --disable-pip-version-check --no-deps -e .
  touch "$stamp"
  phase ".venv ready: the command is .venv/bin/heatwatch (or \`source .venv/bin/activate\`, then heatwatch)"
fi
# the mypyc build of the rules an older heatwatch made here (#18 dropped it): Python would import it
# ahead of the source, so alerting refuses to load while it is there
rm -f alerting/*.so alerting/_rules.sha256
rm -rf build/mypyc build/lib.*/alerting   # its build directories (setuptools' build_ext)
