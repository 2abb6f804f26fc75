"""Alert rules, their state machine, the alert store and its partition leases; used by the alerter
and the API.

The rule engine's modules (``COMPILED``: the lifecycle, the family protocol, the engine and
every rule family ``rule_*.py``) are compiled with mypyc by ``make``
(``deploy/build_rules.py``): the same source, about half the CPU per reading (docs/alerts.md).
They run interpreted instead when they have not been built, when the build was made from other
source than what is here now (a stale build never runs: it would judge by other rules), or with
``HEATWATCH_RULES=python``. ``rules_build()`` says which, and why; the alerter logs it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).parent


def rule_modules() -> tuple[str, ...]:
    """The rule families: every ``rule_*.py`` here (a new family is one new file)."""
    return tuple(sorted(p.stem for p in _HERE.glob("rule_*.py")))


COMPILED = ("lifecycle", "family", "engine", *rule_modules())
GROUP = "alerting._rules"  # mypyc's shared library: alerting/_rules__mypyc.*.so
STAMP = Path(__file__).with_name("_rules.sha256")  # the source digest the build was made from
_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"  # this interpreter's builds only


def source_digest() -> str:
    h = hashlib.sha256()
    for m in COMPILED:
        h.update((_HERE / f"{m}.py").read_bytes())
    return h.hexdigest()


def _why_interpreted() -> str | None:
    if os.environ.get("HEATWATCH_RULES") == "python":
        return "HEATWATCH_RULES=python"
    if not all((_HERE / f"{m}{_SUFFIX}").exists() for m in COMPILED):
        return "not built (make bootstrap builds them)"
    if not STAMP.exists() or STAMP.read_text().strip() != source_digest():
        return "the build is older than the source: run deploy/build_rules.py (make does)"
    return None


class _Source:
    """Finds the compiled modules' .py source ahead of their .so (a finder on sys.meta_path)."""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        head, _, mod = name.rpartition(".")
        if head == __name__ and mod in COMPILED:
            return spec_from_file_location(name, _HERE / f"{mod}.py")
        return None


_WHY = _why_interpreted()
if _WHY is not None and any(_HERE.glob("*.so")):
    sys.meta_path.insert(0, _Source())  # all or none: compiled modules reach into each other natively


def rules_build() -> str:
    """'compiled (mypyc)', or 'interpreted: <why>'."""
    from alerting import engine

    if (engine.__file__ or "").endswith(".so"):
        return "compiled (mypyc)"
    return f"interpreted: {_WHY or 'unknown'}"
