"""The API's side of remote control, in the background of each API process (with ``control:``):

- one MQTT client (``messaging.client``, a clean session per worker process);
- the gateways' retained status, kept as received: the writable points and their bounds that
  a command is checked against are what the gateway announced, not a copy in the API's config;
- the sender: the command store is the API's outbox. A command is committed first (requested);
  the sender claims it, signs it (Ed25519, ``control.signing_key``), publishes it at QoS 1 with
  an MQTT 5 message expiry of its time to deadline plus ``control.late_report_s`` and marks it
  sent on the PUBACK. With several uvicorn workers a command can go out twice (a worker dies
  between publish and mark): the gateway answers an id it has seen with its stored result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from functools import partial
from pathlib import Path
from typing import Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alerting.commands import CommandStore
from alerting.rows import CommandRecord
from contract import topics
from contract.commands import Command, load_private_key, sign
from contract.config import ApiControl
from contract.errors import ConfigError, PayloadError
from contract.payload import GatewayStatus, WritablePoint, parse_gateway_status
from messaging.client import MqttClient

log = structlog.get_logger("heatwatch.api.control")


def load_signing_key(cfg: ApiControl, file: str = "api config") -> Ed25519PrivateKey:
    try:
        pem = Path(cfg.signing_key).read_bytes()
    except OSError as exc:
        raise ConfigError(file, [f"control.signing_key: cannot read {cfg.signing_key}: "
                                 f"{exc.strerror}"]) from None
    try:
        return load_private_key(pem, cfg.signing_key)
    except ValueError as exc:
        raise ConfigError(file, [f"control.signing_key: {exc}"]) from None


def _ms() -> int:
    return int(time.time() * 1000)


class Signable(Protocol):
    """What a command's signature covers: a stored command (``CommandRecord``) or one about to be
    stored (``alerting.commands.NewCommand``)."""

    @property
    def id(self) -> str: ...
    @property
    def station(self) -> str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def point(self) -> str | None: ...
    @property
    def building(self) -> str | None: ...
    @property
    def household(self) -> str | None: ...
    @property
    def value(self) -> float | bool | None: ...
    @property
    def deadline(self) -> int: ...
    @property
    def created_at(self) -> int: ...
    @property
    def issuer(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def ticket(self) -> str | None: ...


class Control:
    def __init__(self, cfg: ApiControl, store: CommandStore) -> None:
        self.cfg, self.store = cfg, store
        self.key = load_signing_key(cfg)
        self.gateways: dict[str, GatewayStatus] = {}
        self.station_gateway: dict[str, str] = {}
        self.wake = asyncio.Event()
        self._inflight: set[str] = set()  # published from here, PUBACK not yet seen
        self._tasks: set[asyncio.Task[None]] = set()
        self.client: MqttClient | None = None
        self._bad_status_logged = False

    def status(self, station: str) -> GatewayStatus | None:
        gw = self.station_gateway.get(station)
        return self.gateways.get(gw) if gw is not None else None

    def writable(self, station: str) -> list[WritablePoint] | None:
        st = self.status(station)
        return list(st.writable) if st is not None else None

    async def run(self) -> None:
        self.client = MqttClient(self.cfg.mqtt, client_id=f"{self.cfg.client_id}-{os.getpid()}",
                                 persistent=False, subscriptions=[(topics.STATUS_FILTERS[1], 1)])
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.client.run())
            tg.create_task(self._statuses(self.client))
            tg.create_task(self._sender(self.client))

    async def _statuses(self, client: MqttClient) -> None:
        async for msg in client.messages():
            try:
                st = parse_gateway_status(msg.payload)
            except PayloadError as exc:
                if not self._bad_status_logged:
                    log.warning("gateway status unreadable; ignored", topic=msg.topic[:200], error=str(exc))
                    self._bad_status_logged = True
            else:
                self.gateways[st.gateway] = st
                for s in st.stations:
                    self.station_gateway[s] = st.gateway
            client.ack(msg)

    async def _sender(self, client: MqttClient) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            self.wake.clear()
            try:
                rows = await asyncio.to_thread(self.store.claim, _ms())
            except Exception as exc:  # the store is away: try again on the next turn
                log.warning("command store unavailable to the sender", error=str(exc)[:300])
                continue
            for r in rows:
                if r.id in self._inflight or client.room <= 0:
                    continue
                await self._publish(client, r)

    def sign_row(self, r: Signable) -> bytes:
        """The signed bytes of a command (deterministic: Ed25519 over canonical bytes). A row
        without the fields a command needs fails Command's validation: it is never sent."""
        cmd = Command.model_validate(dict(
            id=r.id, station=r.station, device=r.device, point=r.point, building=r.building,
            household=r.household, value=r.value, deadline=r.deadline, issued_at=r.created_at,
            issuer=r.issuer, reason=r.reason, ticket=r.ticket))
        return sign(cmd, self.key).to_json()

    async def publish_now(self, r: CommandRecord) -> None:
        """Publish a command just committed with its payload (the sender is the fallback: a row
        not marked sent within alerting.commands.RECLAIM_AFTER_MS is claimed again)."""
        client = self.client
        if client is not None and r.id not in self._inflight and client.room > 0:
            await self._publish(client, r)

    async def _publish(self, client: MqttClient, r: CommandRecord) -> None:
        payload = r.payload
        if payload is None:
            payload = self.sign_row(r)
            await asyncio.to_thread(self.store.set_payload, r.id, payload)
        topic = str(topics.Topic(topics.TopicKind.COMMAND, r.station, r.id))
        expiry = max(1.0, (r.deadline - _ms()) / 1000 + self.cfg.late_report_s)
        fut = client.publish_nowait(topic, payload, expiry_s=expiry)
        self._inflight.add(r.id)
        fut.add_done_callback(partial(self._acked, r.id))

    def _acked(self, cid: str, fut: asyncio.Future[None]) -> None:
        self._inflight.discard(cid)
        if fut.cancelled() or fut.exception() is not None:
            return  # stays requested; claimed again after alerting.commands.RECLAIM_AFTER_MS
        task = asyncio.get_running_loop().create_task(self._mark_sent(cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark_sent(self, cid: str) -> None:
        try:
            await asyncio.to_thread(self.store.mark_sent, cid, _ms())
        except Exception as exc:
            log.warning("could not mark a command sent", command=cid, error=str(exc)[:300])
