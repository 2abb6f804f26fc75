"""InfluxDB writes over HTTP with every outcome classified (after Telegraf's influxdb_v2 output).

    204                  written
    400 partial write    the named lines are rejected (reason logged, counted); the rest stored
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
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import structlog

from contract.config import InfluxSettings
from contract.errors import DatabaseUnavailable
from contract.influx import PRECISION

log = structlog.get_logger("heatwatch.collector.influx")

_DROPPED_RE = re.compile(r"dropped=(\d+)")
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0


@dataclass
class WriteOutcome:
    written: int = 0  # lines InfluxDB accepted
    rejected: int = 0  # lines InfluxDB refused for good (counted, never retried)
    reason: str | None = None


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

    async def write_body(self, body: bytes, n: int, gzipped: bool,
                         lines: list[str] | None = None) -> WriteOutcome:
        """One attempt with a ready body of ``n`` lines (``lines`` only needed to split on 413)."""
        resp = await self._post(body, gzipped)
        code = resp.status_code
        if code == 204 or code == 200:
            return WriteOutcome(written=n)
        text = resp.text[:1000]
        if code == 400:
            m = _DROPPED_RE.search(text)
            if "partial write" in text and m:
                dropped = int(m.group(1))
                return WriteOutcome(written=n - dropped, rejected=dropped, reason=text)
            return WriteOutcome(rejected=n, reason=text)
        if code == 413 and n > 1:
            if lines is None:
                raw = gzip.decompress(body) if gzipped else body
                lines = raw.decode().split("\n")
            half = len(lines) // 2
            a = await self.write_once(lines[:half])
            b = await self.write_once(lines[half:])
            return WriteOutcome(a.written + b.written, a.rejected + b.rejected, a.reason or b.reason)
        if code == 404 and "database not found" in text:
            await self.ensure_database()
            raise DatabaseUnavailable("database not found; created it", 0.1)
        raise DatabaseUnavailable(f"InfluxDB answered {code}: {text[:200]}", _retry_after(resp))

    async def write(self, lines: list[str], *, give_up_after_s: float | None = None) -> WriteOutcome:
        """Write until InfluxDB has taken or refused every line.

        Retries with capped backoff (honouring Retry-After) forever, or until
        ``give_up_after_s`` has passed: then DatabaseUnavailable is raised and the caller keeps
        the data some other way (the collector spools it).
        """
        delay, reported = BACKOFF_MIN_S, False
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        body = self.encode(lines)
        while True:
            try:
                out = await self.write_body(body, len(lines), self.gzip, lines)
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
            if out.rejected:
                log.error("InfluxDB rejected lines", rejected=out.rejected, reason=out.reason)
            return out

    async def close(self) -> None:
        await self.http.aclose()
