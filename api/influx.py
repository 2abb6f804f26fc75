"""Read-only InfluxQL queries for the API. Identifiers are validated before they reach a query;
values are never pasted into InfluxQL unchecked."""

from __future__ import annotations

import json
from typing import Any

import httpx

from contract.config import InfluxSettings
from contract.errors import DatabaseUnavailable


class InfluxReader:
    def __init__(self, settings: InfluxSettings, client: httpx.AsyncClient | None = None) -> None:
        self.s = settings
        self.http = client or httpx.AsyncClient(timeout=settings.timeout_s)
        self.base = settings.url.rstrip("/")
        self.db = settings.bucket or settings.database if settings.api == "v2" else settings.database
        self.auth: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        if settings.api == "v2" and settings.token:
            self.headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username:
            self.auth = {"u": settings.username,
                         "p": settings.password.get_secret_value() if settings.password else ""}

    async def ping(self) -> bool:
        try:
            r = await self.http.get(f"{self.base}/ping")
        except httpx.HTTPError:
            return False
        return r.status_code in (200, 204)

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
            params["params"] = json.dumps(bind)
        try:
            r = await self.http.get(f"{self.base}/query", headers=self.headers, params=params)
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(f"InfluxDB: {exc}") from None
        if r.status_code != 200:
            raise DatabaseUnavailable(f"InfluxDB answered {r.status_code}: {r.text[:200]}")
        results = r.json().get("results") or []
        out: list[list[dict[str, Any]]] = [[] for _ in statements]
        for res in results:
            if "error" in res:
                raise DatabaseUnavailable(f"InfluxDB query error: {res['error']}")
            i = res.get("statement_id", 0)
            if 0 <= i < len(out):
                out[i] = res.get("series", [])
        return out

    async def close(self) -> None:
        await self.http.aclose()
