"""The alerter's senders: the alert outbox of its partitions → the alert topic and the webhooks.

Stage: commit → **send** (``alerting/outbox.py`` holds what is left to send, written with the
alerts it concerns). Two loops, one per sink, so a webhook that is down never holds the alert
topic back: each takes the oldest rows of the partitions this member owns, sends them and deletes
them. The alert topic: every recorded transition on ``heatwatch/v1/alert/{station|gateway}`` at
QoS 1, deleted on the broker's PUBACK (the collector stores them as the ``alerts`` measurement).
The webhooks: each page to every webhook whose ``min_severity`` it reaches, oldest first; a row
leaves when every webhook that wants it answered 2xx or refused it for good (4xx other than
408/429: logged, counted, dropped); otherwise retried with capped backoff. At least once: a
retry after one of several webhooks failed repeats it to the others, and a member that dies
between a delivery and its delete leaves the row to the partition's next owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import msgspec
import orjson
import structlog

from alerting.outbox import MQTT, WEBHOOK, Outbox
from contract import topics
from contract.alertmanager import postable_alert, webhook_message
from contract.alerts import Transition, severity_rank
from contract.config import WebhookSettings
from messaging.client import MqttClient

log = structlog.get_logger("heatwatch.alerter.pages")
RETRY_MAX_S = 30.0
IDLE_S = 1.0  # look for rows this often even without a wake-up (rows left by a previous owner)


@dataclass
class PageStats:
    published: int = 0
    webhook_sent: int = 0
    webhook_failed: int = 0  # refused for good (4xx): logged, dropped, counted
    webhook_retries: int = 0
    send_errors: int = 0  # the store could not be read or written (retried)


def wants(webhooks: list[WebhookSettings]) -> Callable[[Transition], bool]:
    """Whether any webhook takes a page of this severity."""
    def f(t: Transition) -> bool:
        sev = severity_rank(t.severity)
        return any(sev >= w.min_severity.rank for w in webhooks)
    return f


class Senders:
    def __init__(self, outbox: Outbox, owned: Callable[[], list[int]], *, client: MqttClient | None,
                 webhooks: list[WebhookSettings], clock: Callable[[], float] = time.time) -> None:
        self.outbox, self.owned, self.client = outbox, owned, client
        self.webhooks, self.clock = webhooks, clock
        self.stats = PageStats()
        self.wake_mqtt = asyncio.Event()
        self.wake_hooks = asyncio.Event()

    def wake(self) -> None:
        self.wake_mqtt.set()
        self.wake_hooks.set()

    async def alert_topic(self) -> None:
        """Recorded transitions onto the alert topic, in the order they were recorded."""
        client = self.client
        assert client is not None
        delay = 0.5
        while True:
            await client.up.wait()
            try:
                # no more than the window has room for: the alerter publishes nothing else
                rows = await asyncio.to_thread(self.outbox.take, self.owned(), MQTT, max(1, client.room))
            except Exception as exc:  # the store away: the rows wait there
                self._store_error(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 0.5
            if not rows:
                await self._idle(self.wake_mqtt)
                continue
            futures = []
            try:
                for r in rows:
                    tr = msgspec.json.decode(r.payload, type=Transition)
                    subject = tr.station or tr.gateway or ""
                    if subject:
                        futures.append(client.publish_nowait(str(topics.alert(subject)), r.payload, qos=1))
                await asyncio.gather(*futures)
            except Exception as exc:  # refused or the connection dropped: sent again next round
                log.warning("alert topic publish failed; retrying", error=str(exc)[:200])
                await asyncio.sleep(1.0)
                continue
            self.stats.published += len(futures)
            await asyncio.to_thread(self.outbox.done, [r.id for r in rows])

    async def webhook_pages(self) -> None:
        if not self.webhooks:
            return
        async with httpx.AsyncClient() as http:
            delay = 0.5
            while True:
                try:
                    rows = await asyncio.to_thread(self.outbox.take, self.owned(), WEBHOOK, 100)
                except Exception as exc:
                    self._store_error(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                if not rows:
                    await self._idle(self.wake_hooks)
                    continue
                for row in rows:
                    if await self._deliver(http, row.payload):
                        await asyncio.to_thread(self.outbox.done, [row.id])
                        self.stats.webhook_sent += 1
                        delay = 0.5
                        continue
                    await asyncio.to_thread(self.outbox.retry, row.id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    break  # oldest first: start again from it

    async def _deliver(self, http: httpx.AsyncClient, payload: bytes) -> bool:
        """One page to every webhook that wants it: True when none asks for a retry."""
        tr = msgspec.json.decode(payload, type=Transition)
        sev = severity_rank(tr.severity)
        for w in self.webhooks:
            if sev < w.min_severity.rank:
                continue
            headers = {k: v.get_secret_value() for k, v in w.headers.items()}
            headers["content-type"] = "application/json"
            body = (payload if w.format == "heatwatch"
                    else orjson.dumps(webhook_message(tr)) if w.format == "alertmanager"
                    else orjson.dumps([postable_alert(tr, now_ms=int(self.clock() * 1000))]))
            try:
                r = await http.post(w.url, content=body, headers=headers, timeout=w.timeout_s)
            except httpx.HTTPError as exc:
                err = str(exc) or type(exc).__name__
            else:
                if r.is_success:
                    continue
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    self.stats.webhook_failed += 1
                    log.error("webhook refused a page; dropped", url=w.url, status=r.status_code,
                              key=tr.key, body=r.text[:200])
                    continue
                err = f"HTTP {r.status_code}"
            self.stats.webhook_retries += 1
            if self.stats.webhook_retries == 1 or self.stats.webhook_retries % 100 == 0:
                log.warning("webhook unavailable; retrying", url=w.url, error=err)
            return False
        return True

    async def _idle(self, wake: asyncio.Event) -> None:
        wake.clear()
        try:
            async with asyncio.timeout(IDLE_S):
                await wake.wait()
        except TimeoutError:
            pass

    def _store_error(self, exc: Exception) -> None:
        self.stats.send_errors += 1
        if self.stats.send_errors == 1 or self.stats.send_errors % 100 == 0:
            log.warning("could not read the alert outbox; retrying", error=str(exc)[:200])
