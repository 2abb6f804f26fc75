"""A room's last 24 hours for the hotline screen: 30-minute means of one room sensor.

From the store first: the alerter keeps every room sensor's 24 h beside its latest value
(``alerting.latest.RoomDay``) and the lookup reads the household's row anyway, so the answer
costs nothing more. Asking InfluxDB (``GROUP BY time(30m)`` over the raw readings) cost ~1 ms of
influxd CPU per lookup, fixed, however few readings the room had (the series lookup among
100,000 households), as much again in this process, and at 200 lookups/s a core between them
(#20, bench/api_bench.py).

InfluxDB answers only when the stored ring does not reach back 24 h, its station's messages
had a gap in the last day, or its station's row was not written in the last 10 minutes
(``alerting.latest.day_means``; a sensor new today, the first day after an upgrade, a gateway
restart, the alerter down or killed or its latest values off, a silent station): counted
(``heatwatch_api_lookup_history_influxdb_total``). That query must not hold the answer up. Under
ingest, InfluxDB stalls queries for 0.5–1.2 s now and then here (new series being indexed, cache
snapshots), while the rest of the screen — the room now, the building, the station, the alerts —
comes from the alert store. So the query gets ``timeout_s`` (0.1 s; it answers in 1–5 ms
otherwise): past that, or with InfluxDB down, the lookup answers with what this process last had
for the room (possibly nothing) and says so (``complete`` false). The query is not abandoned: it
finishes in the background and fills a small per-process cache (``ttl_s``; a sensor reports
every 20–60 min, so a minute-old 24 h is current), which also answers a dispatcher who asks
again. At most ``max_running`` queries are out at once: beyond that InfluxDB is not keeping up,
and piling more queries on it would only make it slower, so the lookup answers at once from the
cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from alerting.latest import day_means
from api.influx import InfluxReader
from contract.errors import DatabaseUnavailable
from contract.influx import MEASUREMENT_HOUSEHOLD

BUCKET = "30m"
_QUERY = (f'SELECT mean("room_temp") FROM "{MEASUREMENT_HOUSEHOLD}" WHERE "station" = $station '
          f'AND "building" = $building AND "household" = $household AND time > now() - 24h '
          f"GROUP BY time({BUCKET}) fill(none)")
Means = list[tuple[int, float]]
_Key = tuple[str, str, str]


class RoomHistory:
    def __init__(self, influx: InfluxReader, *, timeout_s: float = 0.1, ttl_s: float = 60.0,
                 max_entries: int = 4096, max_running: int = 16,
                 incomplete: Callable[[], None] | None = None,
                 asked: Callable[[], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        """``incomplete``: called for each answer given without the complete history (the
        API's ``heatwatch_api_lookup_history_incomplete_total``); ``asked``: for each one the
        store's ring could not give (``…_history_influxdb_total``)."""
        self.influx, self.timeout_s, self.ttl_s, self.max_entries = influx, timeout_s, ttl_s, max_entries
        self.max_running, self.incomplete, self.asked, self.clock = max_running, incomplete, asked, clock
        self._cache: OrderedDict[_Key, tuple[float, Means]] = OrderedDict()
        self._running: dict[_Key, asyncio.Task[Means]] = {}

    async def last_24h(self, station: str, building: str, household: str,
                       day: dict[str, Any] | None = None, gap_at: int | None = None,
                       written_at: int | None = None) -> tuple[Means, bool]:
        """Clock-aligned 30-minute means (ms, °C), oldest first, and whether they are complete
        (False: InfluxDB did not answer in time; these are what the cache had). ``day``: the
        household's stored ring (``HouseholdNow.room_day``), the answer when it reaches back 24 h,
        its station's messages had no gap since and its station's row is current
        (``gap_at``, ``written_at``: ``HouseholdNow.station_gap_at``, ``.station_written_at``)."""
        means = day_means(day, int(self.clock() * 1000), gap_at, written_at)
        if means is not None:
            return means, True
        if self.asked is not None:
            self.asked()
        key = (station, building, household)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1], True
        task = self._running.get(key)
        if task is None:  # one query per room at a time, however many lookups wait for it
            if len(self._running) >= self.max_running:
                self._incomplete()
                return (hit[1] if hit is not None else []), False
            task = self._running[key] = asyncio.create_task(self._fetch(key))
            task.add_done_callback(_retrieved)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout_s), True
        except (TimeoutError, DatabaseUnavailable):
            self._incomplete()
            return (hit[1] if hit is not None else []), False

    def _incomplete(self) -> None:
        if self.incomplete is not None:
            self.incomplete()

    async def _fetch(self, key: _Key) -> Means:
        try:
            series = await self.influx.query(_QUERY, {"station": key[0], "building": key[1],
                                                      "household": key[2]})
        finally:
            del self._running[key]
        means = [(int(t), round(float(v), 2)) for t, v in (series[0]["values"] if series else [])
                 if v is not None]
        self._cache[key] = (time.monotonic(), means)
        self._cache.move_to_end(key)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return means


def _retrieved(task: asyncio.Task[Means]) -> None:
    # a query that fails after its waiters gave up: nobody else would look at its exception
    if not task.cancelled():
        task.exception()
