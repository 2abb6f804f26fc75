"""Pages in Alertmanager's shapes, against a real Alertmanager (Debian's prometheus-alertmanager):
the webhook message heatwatch sends is what Alertmanager itself sends for the same alert, the
alerter's commit and senders feed a real Alertmanager's API (firing, then resolved), and an
unacknowledged critical alert is paged again on its interval until someone acknowledges it."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from alerter.judge import Pending
from alerter.pages import Senders, wants
from alerter.record import Recorder
from alerting.outbox import Outbox
from alerting.partitions import Leases, partition_of
from alerting.store import Store
from contract.alertmanager import postable_alert, webhook_message
from contract.alerts import Transition
from contract.config import WebhookSettings
from heatwatch.devstack import find_binary, free_port
from tests.conftest import wait_for
from tests.integration.test_alerter import Webhook

T0 = int(dt.datetime(2026, 12, 10, 2, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
HOUR = 3_600_000


def _transition(state: str = "firing", ts: int = T0 + 600_000, since: int = T0) -> Transition:
    return Transition(key="makeup_daily:st001/secondary", rule="makeup_daily", state=state,
                      severity="critical", station="st001", subject="secondary", ts=ts, since=since,
                      value=4.88, summary=f"makeup_daily {state}", page=True,
                      context={"detector": "make-up flow far above the station's own peak",
                               "times_own_peak": 9.6})


class Alertmanager:
    """A real Alertmanager on loopback, routing everything to one webhook at once."""

    def __init__(self, folder: Path, hook_url: str) -> None:
        binary = find_binary("prometheus-alertmanager", "prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = folder / "alertmanager.yml"
        conf.write_text(yaml.safe_dump({
            "route": {"receiver": "hook", "group_by": ["alertname", "key"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": hook_url, "send_resolved": True}]}]}))
        self.log = open(folder / "alertmanager.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={conf}", f"--storage.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, "Alertmanager ready (GET /-/ready)")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"alertmanager exited: {Path(self.log.name).read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def hook() -> Iterator[Webhook]:
    w = Webhook(fail_first=0)
    yield w
    w.close()


@pytest.fixture
def alertmanager(tmp_path: Path, hook: Webhook) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path, hook.url)
    yield am
    am.close()


def _when(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_our_webhook_message_is_what_alertmanager_sends(alertmanager: Alertmanager, hook: Webhook) -> None:
    t = _transition()
    body = [postable_alert(t, now_ms=int(time.time() * 1000))]
    r = httpx.post(f"{alertmanager.url}/api/v2/alerts", json=body)
    assert r.status_code == 200, r.text
    got: dict[str, Any] = wait_for(lambda: hook.posts and hook.posts[0], 30, "Alertmanager's notification")
    ours = webhook_message(t, receiver="hook", external_url=got["externalURL"])
    assert set(got) == set(ours)
    for k in ("version", "status", "receiver", "groupLabels", "commonLabels", "commonAnnotations",
              "truncatedAlerts", "groupKey"):
        assert got[k] == ours[k], k
    a, b = got["alerts"][0], ours["alerts"][0]
    assert set(a) == set(b)
    for k in ("status", "labels", "annotations", "fingerprint"):
        assert a[k] == b[k], k
    assert _when(a["startsAt"]) == _when(b["startsAt"])
    assert a["endsAt"] == b["endsAt"] == "0001-01-01T00:00:00Z"


class Member:
    """An alerter member's store side, owning every partition: commit, re-notify, send pages."""

    def __init__(self, tmp_path: Path, webhooks: list[dict[str, Any]], clock: Any = time.time) -> None:
        self.store = Store(f"sqlite:///{tmp_path / 'alerts.sqlite'}").open()
        self.leases = Leases(self.store.engine, 64, 60_000)
        self.leases.ensure()
        self.epochs = self.leases.take_all("m#1")
        hooks = [WebhookSettings.model_validate(w) for w in webhooks]
        self.recorder = Recorder(self.store, self.leases, "m#1", publish=False, wants_page=wants(hooks))
        self.senders = Senders(Outbox(self.store.engine), lambda: list(self.epochs), client=None,
                               webhooks=hooks, clock=clock)

    async def record(self, tr: Transition, now: int) -> None:
        pending = Pending(transitions={partition_of(tr.station or "", 64): [tr]})
        await asyncio.to_thread(self.recorder.commit, pending, self.epochs, now)
        self.senders.wake()

    async def renotify(self, now: int) -> None:
        await asyncio.to_thread(self.recorder.renotify, self.epochs,
                                lambda r: partition_of(r["station"] or r["gateway"] or "", 64), now, 2 * HOUR)
        self.senders.wake()


def test_the_alerter_feeds_a_real_alertmanager_firing_then_resolved(
        tmp_path: Path, alertmanager: Alertmanager, hook: Webhook) -> None:
    m = Member(tmp_path, [{"url": f"{alertmanager.url}/api/v2/alerts", "format": "alertmanager_api"}])
    now = int(time.time() * 1000)  # Alertmanager resolves on its own clock: the alert is recent
    since, fixed = now - HOUR, now - 60_000

    async def scenario() -> None:
        task = asyncio.create_task(m.senders.webhook_pages())
        try:
            await m.record(_transition("firing", ts=since + 600_000, since=since), now)
            await asyncio.to_thread(wait_for, lambda: hook.posts, 30, "the firing page via Alertmanager")
            await m.record(_transition("resolved", ts=fixed, since=since), now)
            await asyncio.to_thread(wait_for, lambda: [p for p in hook.posts if p["status"] == "resolved"],
                                    30, "the resolution via Alertmanager")
        finally:
            task.cancel()

    asyncio.run(scenario())
    m.store.close()
    first, last = hook.posts[0], hook.posts[-1]
    assert first["status"] == "firing" and first["commonLabels"]["alertname"] == "makeup_daily"
    assert first["commonLabels"]["severity"] == "critical" and first["commonLabels"]["station"] == "st001"
    assert last["status"] == "resolved" and _when(last["alerts"][0]["endsAt"]) == _when(
        webhook_message(_transition("resolved", ts=fixed, since=since))["alerts"][0]["endsAt"])


def test_an_unacknowledged_critical_alert_is_paged_again_until_acknowledged(
        tmp_path: Path, hook: Webhook) -> None:
    m = Member(tmp_path, [{"url": hook.url, "format": "alertmanager", "min_severity": "critical"}],
               clock=lambda: T0 / 1000)

    async def scenario() -> None:
        task = asyncio.create_task(m.senders.webhook_pages())
        try:
            await m.record(_transition("firing", ts=T0), T0)  # paged, not acknowledged
            for hours in (1, 2, 3, 4):
                await m.renotify(T0 + hours * HOUR)
            await asyncio.to_thread(wait_for, lambda: len(hook.posts) >= 3, 30, "two re-notifications")
            row = m.store.query(open_only=True).rows[0]
            m.store.acknowledge(row["id"], actor="dispatcher", now=T0 + 4 * HOUR + 1, note="on it")
            for hours in (6, 8, 10):
                await m.renotify(T0 + hours * HOUR)
            # acknowledged: nothing more queued (a re-notification is an outbox row before it is sent)
            assert m.senders.outbox.count() == 0
        finally:
            task.cancel()

    asyncio.run(scenario())
    # the re-notifications are events of the alert: a member taking its partition over knows when
    events = [e["kind"] for e in m.store.get(m.store.query().rows[0]["id"])["events"]]
    m.store.close()
    summaries = [p["alerts"][0]["annotations"]["summary"] for p in hook.posts]
    assert summaries == ["makeup_daily firing at st001/secondary",
                         "makeup_daily still firing, not acknowledged (re-notified) at st001/secondary",
                         "makeup_daily still firing, not acknowledged (re-notified) at st001/secondary"]
    assert [p["alerts"][0]["labels"]["severity"] for p in hook.posts] == ["critical"] * 3
    assert orjson.loads(orjson.dumps(hook.posts[1]))["version"] == "4"
    assert events == ["firing", "renotified", "renotified", "ack"]
