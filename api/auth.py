"""Credentials for the API: bearer tokens stored hashed in the site registry, three roles.

dispatcher (read, acknowledge, note) < engineer (+ silences, manual resolution, later remote
control) < admin (+ credentials, assets). A missing or wrong token is 401, a wrong role 403.
Lookups of valid tokens are cached for ``CACHE_S`` so a busy hotline screen does not
hash-and-query per request; a revoked token stops working within that time. Unknown tokens are
never cached (a caller choosing random tokens would fill the cache: 300 requests with 1 MB
tokens grew a worker from 95 to 391 MB), and a client address that keeps failing is answered
429 with Retry-After, before any lookup, by ``api.limits.FailedAuth``. The dependencies that
check a request's token and role are ``api.deps``'s ``Dispatcher``, ``Engineer`` and ``Admin``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from alerting.registry import SiteRegistry
from alerting.rows import Principal

CACHE_S = 30.0


class TokenCache:
    """Valid tokens only, each for ``CACHE_S``; at most ``MAX_CACHED`` (more live credentials
    than that in one process's last 30 s would be odd: the cache starts over)."""

    MAX_CACHED = 10_000

    def __init__(self, registry: SiteRegistry, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.clock = registry, clock
        self._hits: dict[str, tuple[float, Principal]] = {}

    def known(self, token: str) -> bool:
        """This token was valid when last looked up (even if that answer is now stale)."""
        return token in self._hits

    async def lookup(self, token: str) -> Principal | None:
        now = self.clock()
        hit = self._hits.get(token)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        p = await asyncio.to_thread(self.registry.principal, token)
        if p is None:
            self._hits.pop(token, None)  # revoked since
            return None
        if len(self._hits) >= self.MAX_CACHED:
            self._hits.clear()
        self._hits[token] = (now, p)
        return p

    def forget(self, name: str) -> None:
        """Drop the cached answers for ``name``'s tokens (after revoking them here)."""
        self._hits = {t: hit for t, hit in self._hits.items() if hit[1].name != name}
