"""InfluxDB writes over HTTP with every outcome classified (after Telegraf's influxdb_v2 output).

    204                  written
    400 partial write    the refused lines are rejects (``unparsable``, ``type_conflict``: counted,
                         logged once per reason); the rest stored (see ``write_body``)
    400 other            the whole batch is rejected: a bug in the encoder, never retried
    404 database         create it (when allowed) and retry
    413                  split the batch in two and write each half
    401/403              credentials: keep the data, retry, log loudly
    429, 5xx, network    keep the data, retry with capped backoff, honouring Retry-After

API: ``v1`` uses ``/write?db=…`` (InfluxDB 1.x; 2.x and 3.x accept it too); ``v2`` uses
``/api/v2/write?org=…&bucket=…`` with a token.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import structlog

from contract.config import InfluxSettings
from contract.errors import DatabaseUnavailable
from contract.influx import PRECISION, split_lines

log = structlog.get_logger("heatwatch.collector.influx")

_DROPPED_RE = re.compile(r"dropped=(\d+)\s*$")
_UNPARSABLE = "unable to parse '"
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
# re-posts a batch may spend finding which of its lines InfluxDB refused (see write_body)
BISECT_BUDGET = 16
# a write attempt bounded by what is left of its caller's patience is given at least this long
MIN_ATTEMPT_S = 1.0


@dataclass
class WriteOutcome:
    written: int = 0  # lines InfluxDB accepted
    rejects: Counter[str] = field(default_factory=Counter)  # lines refused for good, by reason
    reason: str | None = None  # InfluxDB's words for the first refusal

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def add(self, other: WriteOutcome) -> WriteOutcome:
        self.written += other.written
        self.rejects.update(other.rejects)
        self.reason = self.reason or other.reason
        return self


def refused(n: int, reason: str, text: str) -> WriteOutcome:
    return WriteOutcome(rejects=Counter({reason: n}) if n else Counter(), reason=text)


def _error(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
    except ValueError:
        err = None
    return err if isinstance(err, str) else resp.text


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


class InfluxWriter:
    def __init__(self, settings: InfluxSettings, client: httpx.AsyncClient | None = None) -> None:
        self.s = settings
        self.http = client or httpx.AsyncClient(timeout=settings.timeout_s)
        base = settings.url.rstrip("/")
        if settings.api == "v1":
            self.url = f"{base}/write"
            self.params: dict[str, str] = {"db": settings.database, "precision": PRECISION}
            if settings.retention_policy:
                self.params["rp"] = settings.retention_policy
            if settings.username:
                self.params["u"] = settings.username
                self.params["p"] = settings.password.get_secret_value() if settings.password else ""
            self.headers: dict[str, str] = {}
        else:
            self.url = f"{base}/api/v2/write"
            self.params = {"org": settings.org or "", "bucket": settings.bucket or settings.database,
                           "precision": PRECISION}
            token = settings.token.get_secret_value() if settings.token else ""
            self.headers = {"Authorization": f"Token {token}"}
        self.retries = 0
        self._reported: set[str] = set()  # refusal reasons logged once
        host = urlsplit(settings.url).hostname or ""
        local = host in {"localhost", "::1"} or host.startswith("127.")
        self.gzip = settings.gzip == "on" or (settings.gzip == "auto" and not local)

    async def ensure_database(self) -> None:
        if self.s.api != "v1" or not self.s.create_database:
            return
        params = {"q": f'CREATE DATABASE "{self.s.database}"'}
        if self.s.username:
            params["u"] = self.s.username
            params["p"] = self.s.password.get_secret_value() if self.s.password else ""
        try:
            resp = await self.http.post(f"{self.s.url.rstrip('/')}/query", params=params)
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(f"InfluxDB at {self.s.url}: {exc}") from None
        if resp.status_code >= 500:
            raise DatabaseUnavailable(f"InfluxDB answered {resp.status_code}", _retry_after(resp))

    async def field_types(self, measurements: tuple[str, ...]) -> dict[str, str]:
        """Field → InfluxDB type (``float``, ``boolean``, ``string``, ``integer``) of these
        measurements, the first one named where they differ; {} when InfluxDB cannot say (logged:
        the collector then learns the kinds from the readings)."""
        rp = f'"{self.s.retention_policy}".' if self.s.retention_policy else ""
        q = "SHOW FIELD KEYS FROM " + ",".join(f'{rp}"{m}"' for m in measurements)
        params = {"q": q, "db": self.params.get("db") or self.params.get("bucket") or self.s.database}
        if self.s.api == "v1" and self.s.username:
            params["u"] = self.s.username
            params["p"] = self.s.password.get_secret_value() if self.s.password else ""
        try:
            resp = await self.http.get(f"{self.s.url.rstrip('/')}/query", params=params, headers=self.headers)
            resp.raise_for_status()
            out: dict[str, str] = {}
            for res in resp.json().get("results", []):
                for series in res.get("series", []):
                    for name, ftype in series.get("values", []):
                        out.setdefault(str(name), str(ftype))
            return out
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cannot read InfluxDB's field types; custom point kinds are learnt from the readings",
                        error=f"{type(exc).__name__}: {exc}"[:300])
            return {}

    async def ensure_database_retrying(self) -> None:
        """At start-up: wait for InfluxDB (it may start after us) and create the database."""
        delay, reported = BACKOFF_MIN_S, False
        while True:
            try:
                await self.ensure_database()
                return
            except DatabaseUnavailable as exc:
                if not reported:
                    log.warning("InfluxDB not reachable yet; waiting", error=str(exc))
                    reported = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def encode(self, lines: list[str], *, gzipped: bool | None = None) -> bytes:
        """A write body: the lines, gzip'd (level 1) when this writer compresses or when asked."""
        body = "\n".join(lines).encode()
        gz = self.gzip if gzipped is None else gzipped
        return gzip.compress(body, compresslevel=1, mtime=0) if gz else body

    async def _post(self, body: bytes, gzipped: bool) -> httpx.Response:
        headers = {**self.headers, "Content-Encoding": "gzip"} if gzipped else self.headers
        try:
            return await self.http.post(self.url, params=self.params, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(f"InfluxDB at {self.s.url}: {type(exc).__name__}: {exc}") from None

    async def write_once(self, lines: list[str]) -> WriteOutcome:
        """One attempt. Raises DatabaseUnavailable when the data must be kept and retried."""
        return await self.write_body(self.encode(lines), len(lines), self.gzip, lines)

    async def write_body(self, body: bytes, n: int, gzipped: bool, lines: list[str] | None = None,
                         budget: list[int] | None = None) -> WriteOutcome:
        """One attempt with a ready body of ``n`` lines (``lines`` spares decoding the body when
        it must be split: 413, or to find refused lines).

        InfluxDB 1.x answers 400 ``partial write: …`` in two ways, and stores every other line
        in both (measured on influxd 1.6.7):
        - lines it cannot parse: ``unable to parse '<line>': <why>`` for each, ``dropped=0``;
        - a field-type conflict: ``field type conflict: …`` naming the first, ``dropped=N``. When
          a batch has both, only the conflict is reported, and the unparsable lines would pass
          for written. So on a conflict the batch is split in halves and each re-posted (the
          lines already stored are overwritten with themselves), down to the refused lines, at
          most ``BISECT_BUDGET`` re-posts per batch; past that InfluxDB's count is taken as is.
        """
        resp = await self._post(body, gzipped)
        code = resp.status_code
        if code == 204 or code == 200:
            return WriteOutcome(written=n)
        if code == 400:
            text = _error(resp)[:100_000]
            if text.startswith("partial write: "):
                m = _DROPPED_RE.search(text)
                dropped = int(m.group(1)) if m else 0
                if dropped and n > 1:
                    budget = [BISECT_BUDGET] if budget is None else budget
                    if budget[0] >= 2:
                        budget[0] -= 2
                        return await self._halves(body, n, gzipped, lines, budget)
                # each refused line is named on a line of its own
                unparsable = (1 + text.count("\n" + _UNPARSABLE)) if text.startswith(
                    "partial write: " + _UNPARSABLE) else 0
                out = refused(dropped, "type_conflict", text).add(refused(unparsable, "unparsable", text))
                out.written = n - out.rejected
                return out
            if text.startswith(_UNPARSABLE):  # nothing in the body parsed
                return refused(n, "unparsable", text)
            return refused(n, "refused", text)
        if code == 413 and n > 1:
            return await self._halves(body, n, gzipped, lines, budget)
        text = resp.text[:1000]
        if code == 404 and "database not found" in text:
            await self.ensure_database()
            raise DatabaseUnavailable("database not found; created it", 0.1)
        raise DatabaseUnavailable(f"InfluxDB answered {code}: {text[:200]}", _retry_after(resp))

    async def _halves(self, body: bytes, n: int, gzipped: bool, lines: list[str] | None,
                      budget: list[int] | None) -> WriteOutcome:
        if lines is None:
            lines = split_lines((gzip.decompress(body) if gzipped else body).decode())
        half = len(lines) // 2
        out = WriteOutcome()
        for part in (lines[:half], lines[half:]):
            out.add(await self.write_body(self.encode(part), len(part), self.gzip, part, budget))
        return out

    async def write(self, lines: list[str], *, give_up_after_s: float | None = None) -> WriteOutcome:
        """Write until InfluxDB has taken or refused every line.

        Retries with capped backoff (honouring Retry-After) forever, or until
        ``give_up_after_s`` has passed: then DatabaseUnavailable is raised and the caller keeps
        the data some other way (the collector spools it). Each attempt is then bounded by what
        is left of it (at least ``MIN_ATTEMPT_S``), not only by the HTTP timeout: an InfluxDB
        that hangs (SIGSTOP, a stuck disk) gives up as soon as one that refuses (issue #16:
        spooling started after the 10 s timeout, not after ``spool.after_s``).
        """
        delay, reported = BACKOFF_MIN_S, False
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        body = self.encode(lines)
        while True:
            try:
                if deadline is None:
                    out = await self.write_body(body, len(lines), self.gzip, lines)
                else:
                    out = await self._bounded(body, lines, max(deadline - time.monotonic(), MIN_ATTEMPT_S))
            except DatabaseUnavailable as exc:
                self.retries += 1
                wait = min(exc.retry_after if exc.retry_after is not None else delay, BACKOFF_MAX_S)
                if not reported:
                    log.warning("InfluxDB write failed; keeping the batch and retrying",
                                error=str(exc), lines=len(lines))
                    reported = True
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if reported:
                log.info("InfluxDB write recovered", retries=self.retries)
            self.report(out)
            return out

    async def _bounded(self, body: bytes, lines: list[str], within_s: float) -> WriteOutcome:
        try:
            async with asyncio.timeout(within_s):
                return await self.write_body(body, len(lines), self.gzip, lines)
        except TimeoutError:
            raise DatabaseUnavailable(f"InfluxDB at {self.s.url} did not answer within "
                                      f"{within_s:.1f} s") from None

    def report(self, out: WriteOutcome) -> None:
        """Log refused lines: loudly the first time for each reason, quietly after (counted)."""
        for reason, n in out.rejects.items():
            if reason not in self._reported:
                self._reported.add(reason)
                log.error("InfluxDB refused lines", reason=reason, lines=n, detail=(out.reason or "")[:500])
            else:
                log.debug("InfluxDB refused lines", reason=reason, lines=n, detail=(out.reason or "")[:200])

    async def close(self) -> None:
        await self.http.aclose()
