"""Read-only InfluxQL queries for the API. Identifiers are validated before they reach a query;
values are never pasted into InfluxQL unchecked (they travel as bound parameters). A query
InfluxDB refuses for what it asks raises QueryRejected (the API answers 422); InfluxDB away, or
failing for its own reasons, raises DatabaseUnavailable (503).

The client is aiohttp, not httpx (which the collector's writer uses): a lookup is one InfluxDB
round trip, and measured against influxd on this machine httpx spends 0.9–1.1 ms of CPU per query
on the client side where aiohttp spends 0.18–0.20 ms — a fifth of a hotline lookup's CPU budget.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from contract.config import InfluxSettings
from contract.errors import DatabaseUnavailable, QueryRejected

STORE = "time-series store"  # how an outage names it (DatabaseUnavailable.store)
# InfluxDB 1.x answers 200 with an "error" per statement for everything that went wrong while
# running it. Most are the statement's fault (measured on 1.6.7: mean() of a string field gives
# "unsupported mean iterator type: *query.stringInterruptIterator"); these are the server's state
# or limits, and stay 503 (retry later, page someone), not 4xx.
_SERVER_SIDE = ("database not found", "retention policy not found", "timeout", "interrupted",
                "limit exceeded", "max concurrent", "engine is closed", "shard", "out of memory")


def _error_text(body: bytes) -> str:
    try:
        return str(orjson.loads(body).get("error") or body[:200].decode(errors="replace"))
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")


class InfluxReader:
    def __init__(self, settings: InfluxSettings) -> None:
        self.s = settings
        self.base = settings.url.rstrip("/")
        self.db = settings.bucket or settings.database if settings.api == "v2" else settings.database
        self.auth: dict[str, str] = {}
        self.headers: dict[str, str] = {"Accept-Encoding": "identity"}  # loopback: gzip costs CPU
        if settings.api == "v2" and settings.token:
            self.headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username:
            self.auth = {"u": settings.username,
                         "p": settings.password.get_secret_value() if settings.password else ""}
        self._session: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        # created on first use, inside the running event loop (aiohttp requires one)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.s.timeout_s), headers=self.headers,
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300))
        return self._session

    async def ping(self) -> bool:
        try:
            async with self.http.get(f"{self.base}/ping") as r:
                return r.status in (200, 204)
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def query(self, q: str, bind: dict[str, str | int | float] | None = None) -> list[dict[str, Any]]:
        """Series of one statement: [{"name", "tags", "columns", "values"}].

        ``bind`` fills ``$name`` placeholders in ``q`` (InfluxDB's bound parameters): values a
        caller typed never become InfluxQL text."""
        return (await self.query_many([q], bind))[0]

    async def query_many(self, statements: list[str],
                         bind: dict[str, str | int | float] | None = None) -> list[list[dict[str, Any]]]:
        """Several statements in one round trip (``;``-joined); the series of each, in order."""
        params: dict[str, str] = {"db": self.db, "q": ";".join(statements), "epoch": "ms", **self.auth}
        if bind:
            params["params"] = orjson.dumps(bind).decode()
        try:
            async with self.http.get(f"{self.base}/query", params=params) as r:
                body = await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DatabaseUnavailable(f"InfluxDB: {exc or type(exc).__name__}", store=STORE) from None
        if status == 400:  # InfluxDB could not parse it: the query's fault
            raise QueryRejected(_error_text(body), "query_rejected")
        if status != 200:  # 5xx, or 401/403/404: InfluxDB or our settings for it, not the caller
            raise DatabaseUnavailable(f"InfluxDB answered {status}: {body[:200].decode(errors='replace')}",
                                      store=STORE)
        results = orjson.loads(body).get("results") or []
        out: list[list[dict[str, Any]]] = [[] for _ in statements]
        for res in results:
            if "error" in res:
                err = str(res["error"])
                if any(m in err for m in _SERVER_SIDE):
                    raise DatabaseUnavailable(f"InfluxDB query error: {err}", store=STORE)
                raise QueryRejected(err, "query_rejected")
            i = res.get("statement_id", 0)
            if 0 <= i < len(out):
                out[i] = res.get("series", [])
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
