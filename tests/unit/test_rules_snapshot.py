"""The rule engine's snapshot across a restart, in a fresh process each time (what the alerter does
with the snapshot it keeps in the alert store): the rest of a cold night comes out as the straight
run's; and a snapshot in the format sites hold today (SNAPSHOT_VERSION 3, written by the mypyc
build of the rules #18 dropped) still restores and carries on alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
DRIVER = Path(__file__).with_name("rules_driver.py")
# tests/unit/rules_driver.py 0 19 - FILE, run by the compiled rules of main at e3462e1 (the build
# then made by `make`); the pickle names lifecycle._blank_life and rule_rooms._blank_sensor
SITE_SNAPSHOT = Path(__file__).with_name("rules_snapshot_v3_round19.pickle")


def _part(first: int, last: int, snap_in: Path | None, snap_out: Path) -> list[str]:
    r = subprocess.run([sys.executable, str(DRIVER), str(first), str(last), str(snap_in or "-"),
                        str(snap_out)], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _rules(lines: list[str]) -> set[str]:
    return {line.split('"rule":"')[1].split('"')[0] for line in lines}


def test_a_restart_mid_night_carries_on_as_the_straight_run(tmp_path: Path) -> None:
    whole = _part(0, 40, None, tmp_path / "whole")
    assert {"building_low", "room_low", "makeup_rate", "station_offline"} <= _rules(whole)
    # round 19: the cold building and flat pending, make-up water counting, a station silent
    head = _part(0, 19, None, tmp_path / "head")
    tail = _part(19, 40, tmp_path / "head", tmp_path / "tail")
    assert head and tail and head + tail == whole
    # and what the restarted run left behind carries on as the straight run's state does
    after = _part(40, 60, tmp_path / "whole", tmp_path / "a")
    assert after and _part(40, 60, tmp_path / "tail", tmp_path / "b") == after


def test_a_snapshot_sites_hold_restores_and_carries_on_alike(tmp_path: Path) -> None:
    head = _part(0, 19, None, tmp_path / "head")
    whole = _part(0, 40, None, tmp_path / "whole")
    tail = _part(19, 40, SITE_SNAPSHOT, tmp_path / "tail")
    assert tail and head + tail == whole
    # the cold building and flat it held open resolve when they are fixed (round 45), as they do
    # in the straight run
    after = _part(40, 60, tmp_path / "whole", tmp_path / "a")
    assert {"building_low", "room_low"} <= _rules(after)
    assert _part(40, 60, tmp_path / "tail", tmp_path / "b") == after
