"""The command's own surface: --log-level takes only real levels, --version says which heatwatch,
and --help is written for the person at the terminal."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from heatwatch.cli import main
from heatwatch.devstack import REPO


def test_an_unknown_log_level_is_refused_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "bogus", "check-config", "x.yaml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("argument --log-level: invalid choice: 'bogus' "
            "(choose from 'debug', 'info', 'warning', 'error')") in err


def test_version_comes_from_the_installed_distribution() -> None:
    out = subprocess.run([sys.executable, "-m", "heatwatch", "--version"], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == f"heatwatch {importlib.metadata.version('heatwatch')}"


def test_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Settings are built here" not in text and "``" not in text and "main()" not in text
    for cmd in ("gateway", "collector", "api", "token", "simulate", "demo", "check-config"):
        assert cmd in text
    assert "heatwatch demo" in text and "--version" in text
    assert "{debug,info,warning,error}" in text


def test_log_level_is_case_blind() -> None:
    api = str(REPO / "deploy" / "api" / "api.yaml")
    out = subprocess.run([sys.executable, "-m", "heatwatch", "--log-level", "WARNING", "check-config", api],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr


# what a subcommand needs, not the command's start: each costs tens to hundreds of ms of CPU to
# import (contract.config's models ~220 ms; structlog with rich ~80 ms), and a loaded machine
# took 10-23 s to start any command when all of them came in for `--version`
HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pymodbus", "paho", "httpx",
         "influxdb_client", "structlog", "rich", "asyncio", "contract.config", "alerting", "api",
         "collector", "gateway", "simulator", "report")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["token", "--help"], ["gateway", "--help"],
                                  ["site", "--help"], ["influx", "--help"], ["backup", "--help"],
                                  ["demo", "--help"], ["check-config", "--help"]])
def test_version_and_help_import_no_subcommand_modules(argv: list[str]) -> None:
    code = ("import sys\nfrom heatwatch.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"heavy = {HEAVY!r}\n"
            "print(sorted({m for m in sys.modules if m in heavy or m.split('.')[0] in heavy}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]", out
