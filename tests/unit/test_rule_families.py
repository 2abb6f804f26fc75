"""Rules are objects: one protocol (``alerting.family.Family``), a registry that finds every
``alerting/rule_*.py``, verdicts composed by the engine; the shared vocabulary is the contract's."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import alerting
from alerting.engine import SNAPSHOT_VERSION, Engine
from contract.alerts import SEVERITIES, AlertRules, Quiet, Severity, Transition, escalate, severity_rank
from contract.payload import Frame, Sample

REPO = Path(__file__).resolve().parent.parent.parent
T0 = int(dt.datetime(2026, 12, 10, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)


def _run(code: str, path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=path, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_registry_is_every_rule_module_in_order() -> None:
    engine = Engine(AlertRules())
    assert [f.name for f in engine.families] == ["offline", "clock", "rooms", "circulation", "makeup"]
    assert alerting.rule_modules() == ("rule_circulation", "rule_clock", "rule_makeup", "rule_offline",
                                       "rule_rooms")
    owned = [r for f in engine.families for r in f.raises]
    assert len(owned) == len(set(owned))  # each rule has one family


def test_a_new_rule_family_is_one_new_file(tmp_path: Path) -> None:
    """Drop a rule_*.py next to the others: it is registered, sees the points it asks for, and its
    verdicts become alerts with lives, holds and pages, with nothing else edited."""
    for name in ("alerting", "contract"):
        shutil.copytree(REPO / name, tmp_path / name)
    (tmp_path / "alerting" / "rule_hot.py").write_text(textwrap.dedent('''
        from __future__ import annotations
        from alerting.family import Family, FrameView, Verdict
        from contract.alerts import Rule, Severity, alert_key

        class Hot(Family):
            name = "hot"
            order = 50
            raises = (Rule.MAKEUP_PUMP,)  # a stand-in rule name for the test

            def points(self) -> frozenset[str]:
                return frozenset({"secondary_supply_temp"})

            def observe(self, view: FrameView, now: int) -> list[Verdict]:
                s = view.values.get("secondary_supply_temp")
                if s is None or type(s.value) is not float:
                    return []
                key = alert_key(Rule.MAKEUP_PUMP, view.station, subject="hot")
                return [Verdict(key, Rule.MAKEUP_PUMP, s.value > 90, view.t, Severity.MAJOR,
                                value=s.value, hold_ms=60_000, station=view.station, subject="hot")]

        FAMILY = Hot
        '''))
    code = textwrap.dedent(f'''
        from alerting.engine import Engine
        from contract.alerts import AlertRules
        from contract.payload import Frame, Sample
        e = Engine(AlertRules())
        print([f.name for f in e.families])
        out = []
        for i, v in enumerate([80.0, 95.0, 96.0, 97.0, 70.0]):
            f = Frame("st1", "gw1", "0badc0de", i, {T0} + i * 60_000, False,
                      [Sample(point="secondary_supply_temp", unit="°C", value=v)])
            out += e.observe(f, {T0} + i * 60_000)
        print([(t.state, t.page) for t in out])
        ''')
    lines = _run(code, tmp_path).splitlines()
    assert lines[0] == "['offline', 'clock', 'rooms', 'circulation', 'makeup', 'hot']"
    assert lines[1] == "[('pending', False), ('firing', True), ('resolved', True)]"


def test_a_mypyc_build_left_by_an_older_make_is_refused_not_run(tmp_path: Path) -> None:
    """Python imports ``engine.cpython-….so`` ahead of ``engine.py``: an old build left in a checkout
    would judge by the old rules, silently. Importing alerting names the files instead."""
    for name in ("alerting", "contract"):
        shutil.copytree(REPO / name, tmp_path / name)
    assert _run("import alerting.engine as e; print(e.__file__)", tmp_path).strip().endswith("engine.py")
    left = tmp_path / "alerting" / f"engine{sysconfig.get_config_var('EXT_SUFFIX')}"
    left.write_bytes(b"")  # its name is what counts: the real one came from deploy/build_rules.py
    r = subprocess.run([sys.executable, "-c", "import alerting.store"], cwd=tmp_path, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, text=True, timeout=120, check=False)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
        f"ImportError: {tmp_path / 'alerting'}: {left.name} left by the mypyc build heatwatch no longer "
        "makes would run instead of the rules' source: delete them (make bootstrap does)")


def test_a_snapshot_of_another_version_is_refused_loudly() -> None:
    e = Engine(AlertRules())
    old = pickle.dumps({"version": 2, "lives": {}, "stations": {}, "gateways": {}, "rooms": {}})
    with pytest.raises(ValueError, match=f"version 2 is not {SNAPSHOT_VERSION}"):
        e.restore(old)
    e.restore(e.snapshot())  # its own reads back


def test_verdicts_come_back_as_transitions_in_family_order() -> None:
    """Telemetry that resolves a station outage and raises a room alert in one message: the
    offline family's verdict is applied first, so the room alert is not inhibited by it."""
    e = Engine(AlertRules())
    temps = {"h1": 14.0, "h2": 21.0, "h3": 21.2, "h4": 20.8}

    def frame(t: int) -> Frame:
        return Frame("st1", "gw1", "0badc0de", 1, t, False,
                     [Sample(point="room_temp", unit="°C", building="b1", household=h, value=v)
                      for h, v in temps.items()])

    e.observe(frame(T0), T0)
    e.tick(T0 + 10 * 60_000)  # silent for 10 min: station_offline fires
    out: list[Transition] = []
    for i in range(11, 200, 10):
        out += e.observe(frame(T0 + i * 60_000), T0 + i * 60_000)
    rules = [(t.rule, t.state, t.quiet) for t in out]
    assert rules[0] == ("station_offline", "resolved", Quiet.NONE)
    assert ("room_low", "firing", Quiet.NONE) in rules


def test_severities_are_ranked_once() -> None:
    assert [s.rank for s in SEVERITIES] == [0, 1, 2, 3]
    assert [severity_rank(s) for s in ("info", "warning", "major", "critical")] == [0, 1, 2, 3]
    assert escalate(Severity.MAJOR) is Severity.CRITICAL and escalate(Severity.CRITICAL) is Severity.CRITICAL
    assert Quiet.NONE == "" and not Quiet.NONE and Quiet.INHIBITED == "inhibited"


def test_the_api_does_not_load_the_rule_engine() -> None:
    """Silence and the severity ranking live in the contract: the API imports the store only."""
    code = "import sys, api.app; print('alerting.engine' in sys.modules, 'alerting.family' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
