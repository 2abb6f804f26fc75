"""Compile the rule engine's per-reading modules with mypyc; `make` runs this (through bootstrap).

The alert rules run on every reading the collector takes (100,000 room sensors at 5,000
stations); compiled, the engine's ``observe`` costs about half the CPU per value
(bench/alerts_bench.py; figures in docs/alerts.md). The modules are typed under mypy --strict
already, so mypyc compiles the same source; ``alerting/__init__.py`` falls back to it whenever
the build is missing or stale. Needs a C compiler and Python's headers (bootstrap installs them).

    .venv/bin/python deploy/build_rules.py          # builds when the source changed
    .venv/bin/python deploy/build_rules.py --force
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="build even when up to date")
    args = ap.parse_args()
    os.chdir(REPO)  # mypyc wants the modules' paths relative to the import root
    sys.path.insert(0, str(REPO))
    os.environ["HEATWATCH_RULES"] = "python"  # the package's import must not load what it rebuilds
    import alerting

    pkg = REPO / "alerting"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = [pkg / f"{m}{suffix}" for m in alerting.COMPILED]
    digest = alerting.source_digest()
    if (not args.force and all(p.exists() for p in built) and alerting.STAMP.exists()
            and alerting.STAMP.read_text().strip() == digest):
        print("build_rules: compiled rule engine is up to date")
        return 0
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        print(f"build_rules: {include} is missing: apt-get install python3-dev", file=sys.stderr)
        return 1
    for old in list(pkg.glob("*.so")):  # other interpreters' builds and the previous group library
        old.unlink()
    alerting.STAMP.unlink(missing_ok=True)

    from mypyc.build import mypycify
    from setuptools import setup

    # setup() reads the project's pyproject.toml too; its [tool.setuptools] table is not ours here
    warnings.filterwarnings("ignore", message="Support for `\\[tool.setuptools\\]`")
    print(f"build_rules: compiling {', '.join(alerting.COMPILED)} with mypyc (about a minute)")
    setup(name="heatwatch-rules", packages=[], py_modules=[],
          script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/mypyc/temp"],
          ext_modules=mypycify([f"alerting/{m}.py" for m in alerting.COMPILED],
                               group_name=alerting.GROUP, opt_level="3", target_dir="build/mypyc",
                               verbose=False))
    missing = [p.name for p in built if not p.exists()]
    if missing:
        print(f"build_rules: mypyc built no {', '.join(missing)}", file=sys.stderr)
        return 1
    alerting.STAMP.write_text(digest + "\n")
    print("build_rules: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
