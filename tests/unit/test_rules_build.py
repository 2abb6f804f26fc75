"""The compiled rule engine (mypyc, deploy/build_rules.py): built by make, never run stale, the
same verdicts as the interpreted source, and snapshots that cross between the two."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import alerting

REPO = Path(__file__).resolve().parent.parent.parent
DRIVER = Path(__file__).with_name("rules_driver.py")


def _run(args: list[str], *, interpreted: bool, path: Path = REPO) -> str:
    env = {**os.environ, "PYTHONPATH": str(path)}
    env.pop("HEATWATCH_RULES", None)
    if interpreted:
        env["HEATWATCH_RULES"] = "python"
    r = subprocess.run([sys.executable, *args], env=env, cwd=path, capture_output=True, text=True,
                       timeout=900, check=False)  # 40 s alone; over 120 s beside four other suites
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_builds_the_compiled_rule_engine() -> None:
    # make test runs bootstrap, which builds it; an edit to the rules without a rebuild fails here
    assert alerting.rules_build() == "compiled (mypyc)"
    code = "import alerting; print(alerting.rules_build())"
    assert _run(["-c", code], interpreted=True).strip() == "interpreted: HEATWATCH_RULES=python"


def test_a_build_older_than_the_source_is_never_run(tmp_path: Path) -> None:
    shutil.copytree(REPO / "alerting", tmp_path / "alerting")
    code = ("import alerting, alerting.engine as e; print(alerting.rules_build()); "
            "print(e.__file__.endswith('.py'))")
    assert _run(["-c", code], interpreted=False, path=tmp_path).split("\n")[0] == "compiled (mypyc)"
    rooms = tmp_path / "alerting" / "rule_rooms.py"
    rooms.write_text(rooms.read_text() + "\n# edited after the build\n")
    out = _run(["-c", code], interpreted=False, path=tmp_path).split("\n")
    assert out[0].startswith("interpreted: the build is older than the source") and out[1] == "True"


def test_compiled_and_interpreted_judge_alike_and_read_each_others_snapshots(tmp_path: Path) -> None:
    def part(first: int, last: int, snap_in: str, snap_out: str, interpreted: bool) -> list[str]:
        out = _run([str(DRIVER), str(first), str(last), snap_in, str(tmp_path / snap_out)],
                   interpreted=interpreted)
        return out.splitlines()

    whole = part(0, 40, "-", "whole", interpreted=False)
    assert {"building_low", "room_low", "makeup_rate", "station_offline"} <= {
        line.split('"rule":"')[1].split('"')[0] for line in whole}
    assert part(0, 40, "-", "whole_py", interpreted=True) == whole
    # a restart in the middle of pending alerts, switching between compiled and interpreted
    for first_interpreted in (False, True):
        head = part(0, 19, "-", "head", interpreted=first_interpreted)
        tail = part(19, 40, str(tmp_path / "head"), "tail", interpreted=not first_interpreted)
        assert head + tail == whole
        # and what the mixed run left behind carries on as the straight run's state does
        assert (part(40, 60, str(tmp_path / "tail"), "after", interpreted=first_interpreted)
                == part(40, 60, str(tmp_path / "whole"), "after", interpreted=first_interpreted))


def test_the_interpreted_rules_pass_the_engine_tests() -> None:
    # everything else in the suite runs the compiled rules; the fallback must stay as right
    tests = str(REPO / "tests/unit/test_alert_engine.py")
    out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests], interpreted=True)
    assert " passed" in out and "failed" not in out
