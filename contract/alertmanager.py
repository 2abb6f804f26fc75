"""Pages in Prometheus Alertmanager's shapes, so the company's existing tooling takes them as is.

Two shapes, both pure functions of a ``Transition``:

- ``webhook_message``: what Alertmanager's webhook receiver POSTs (``version: "4"``, ``status``,
  ``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations``, ``externalURL``,
  ``alerts: [...]``; docs: prometheus.io/docs/alerting/latest/configuration/#webhook_config).
  A relay written for Alertmanager (WeCom, DingTalk, SMS gateways) takes heatwatch's pages
  unchanged. ``tests/integration/test_alertmanager.py`` holds this shape to what a real
  Alertmanager (Debian's ``prometheus-alertmanager``) sends for the same alert.
- ``postable_alert``: one alert for a real Alertmanager's API (``POST /api/v2/alerts``, a JSON
  list); Alertmanager then groups, routes, silences and repeats it to its receivers. A firing
  alert carries an ``endsAt`` ``FIRING_FOR`` ahead (Alertmanager resolves an alert nobody
  re-posts by then); the alerter re-posts open critical ones with its re-notifications, and a
  resolution carries its time.

Labels: ``alertname`` (the rule), ``severity``, the entity (``station``, ``building``,
``household``, ``gateway``, ``subject``) and ``key``; annotations: ``summary`` and
``description`` (value and context), ``quiet`` when it is stored but not paged.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from contract.alerts import Transition

FIRING_FOR = dt.timedelta(hours=25)  # a firing alert's endsAt in the API shape
_ZERO = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended" in webhook messages


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def labels(t: Transition) -> dict[str, str]:
    out = {"alertname": t.rule, "severity": t.severity, "key": t.key}
    for k in ("station", "building", "household", "gateway", "subject"):
        v = getattr(t, k)
        if v is not None:
            out[k] = v
    return out


def annotations_of(t: Transition) -> dict[str, str]:
    where = "/".join(x for x in (t.gateway, t.station, t.building, t.household, t.subject) if x)
    value = "" if t.value is None else f"value {t.value:g}; "
    out = {"summary": f"{t.summary} at {where}" if where else t.summary,
           "description": value + orjson.dumps(t.context, option=orjson.OPT_SORT_KEYS).decode()}
    if t.quiet:
        out["quiet"] = str(t.quiet)
    return out


def _fingerprint(lab: dict[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (prometheus/common ``LabelsToSignature``: FNV-1a
    64 over each name and value in name order, each followed by the 0xff separator)."""
    h = 14695981039346656037
    for k in sorted(lab):
        for part in (k, lab[k]):
            for byte in part.encode() + b"\xff":
                h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def webhook_alert(t: Transition, generator_url: str = "") -> dict[str, Any]:
    lab = labels(t)
    resolved = t.state == "resolved"
    return {"status": "resolved" if resolved else "firing", "labels": lab,
            "annotations": annotations_of(t), "startsAt": _iso(t.since),
            "endsAt": _iso(t.ts) if resolved else _ZERO, "generatorURL": generator_url,
            "fingerprint": _fingerprint(lab)}


def webhook_message(t: Transition, *, receiver: str = "heatwatch", external_url: str = "",
                    generator_url: str = "") -> dict[str, Any]:
    """One transition as one Alertmanager webhook notification."""
    a = webhook_alert(t, generator_url)
    group = {"alertname": t.rule, "key": t.key}
    key = "{}:{" + ", ".join(f'{k}="{v}"' for k, v in group.items()) + "}"  # as Alertmanager spells it
    return {"version": "4", "groupKey": key,
            "truncatedAlerts": 0, "status": a["status"], "receiver": receiver, "groupLabels": group,
            "commonLabels": a["labels"], "commonAnnotations": a["annotations"],
            "externalURL": external_url, "alerts": [a]}


def postable_alert(t: Transition, *, now_ms: int, generator_url: str = "") -> dict[str, Any]:
    """One transition for Alertmanager's API (a list of these is the body of POST /api/v2/alerts)."""
    resolved = t.state == "resolved"
    ends = t.ts if resolved else max(now_ms, t.ts) + int(FIRING_FOR.total_seconds() * 1000)
    out: dict[str, Any] = {"labels": labels(t), "annotations": annotations_of(t), "startsAt": _iso(t.since),
                           "endsAt": _iso(ends)}
    if generator_url:
        out["generatorURL"] = generator_url
    return out
