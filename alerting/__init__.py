"""Alert rules, their state machine, the alert store and its partition leases; used by the alerter
and the API.

The rules run as the Python they are written in. They were compiled with mypyc while they ran on
the collector's ingest path; in the alerter they are 11–14 % of its CPU and the build saved about
a tenth of it, for a C compiler on every machine and a second way to run them that had to stay
equal (#18; the figures are in docs/alerts.md, "Rules run interpreted: why").
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent

# A checkout that ran an older `make` holds that build here, and Python imports an extension
# module ahead of the .py beside it: the old rules would judge, silently. Refuse, naming the files
# (make bootstrap deletes them; an install from the wheel never has any).
_LEFT = sorted(p.name for p in _HERE.glob("*.so"))
if _LEFT:
    raise ImportError(f"{_HERE}: {', '.join(_LEFT)} left by the mypyc build heatwatch no longer "
                      "makes would run instead of the rules' source: delete them (make bootstrap does)")


def rule_modules() -> tuple[str, ...]:
    """The rule families: every ``rule_*.py`` here (a new family is one new file)."""
    return tuple(sorted(p.stem for p in _HERE.glob("rule_*.py")))
