"""The collector's command-result recorder: gateways' results → the command store, before the PUBACK.

Only a collector with the alert store (``alerts:``) takes results: it subscribes to
``heatwatch/v1/station/+/command-result/+``. The ingest stages carry a result as any message
(``collector/stages.py``): the validate stage parses it and checks it against its topic, the lines
stage makes its line of the ``commands`` measurement (history, annotations), the batch stage sends
its batch at once (results are rare and an engineer is waiting). The write stage then writes the
batch's lines and calls ``record`` alongside; the acknowledge stage waits for both, so a result is
recorded by command id, idempotently (a redelivered result changes nothing), before its PUBACK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from sqlalchemy.engine import Engine

from alerting.commands import CommandStore
from contract.commands import CommandResult
from contract.errors import DatabaseUnavailable, InvalidInput

log = structlog.get_logger("heatwatch.collector.commands")
RETRY_MAX_S = 30.0


class ResultStage:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.store = CommandStore(engine)
        self.clock = clock
        self.recorded = self.retries = self.failed = 0
        # batches are written concurrently (batch.concurrency); their results are recorded one
        # batch at a time, so two copies of one result never race to insert the same command
        self._one_at_a_time = asyncio.Lock()

    async def record(self, results: list[CommandResult]) -> None:
        """Into the store (retrying while it is away): only then may their PUBACKs go out."""
        delay = 0.5
        conflicts = 0
        while True:
            try:
                async with self._one_at_a_time:
                    await asyncio.to_thread(self.store.record_results, results, int(self.clock() * 1000))
                break
            except InvalidInput as exc:  # the store refused a row: another writer inserted it first (a
                # Conflict), then it exists now; anything else will not pass a retry either
                conflicts += 1
                if conflicts < 3:
                    continue
                self.failed += len(results)  # a fault of ours, not of the input: loud, counted, not looping
                log.error("command results could not be recorded; their lines are in InfluxDB",
                          error=str(exc)[:300], commands=[r.id for r in results])
                return
            except DatabaseUnavailable as exc:
                self.retries += 1
                if self.retries == 1 or delay >= RETRY_MAX_S:
                    log.warning("command store unavailable; holding the results", error=str(exc)[:300])
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self.recorded += len(results)
        for r in results:
            log.info("command result", command=r.id, station=r.station, state=r.state, reason=r.reason,
                     point=r.point, building=r.building)
