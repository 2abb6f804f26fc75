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
