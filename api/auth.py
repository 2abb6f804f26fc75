"""Credentials for the API: bearer tokens stored hashed in the alert store, three roles.

dispatcher (read, acknowledge, note) < engineer (+ silences, manual resolution, later remote
control) < admin (+ credentials, assets). A missing or wrong token is 401, a wrong role 403.
Lookups of valid tokens are cached for ``CACHE_S`` so a busy hotline screen does not
hash-and-query per request; a revoked token stops working within that time. Unknown tokens are
never cached (a caller choosing random tokens would fill the cache: 300 requests with 1 MB
tokens grew a worker from 95 to 391 MB), and a client address that keeps failing is answered
429 with Retry-After, before any lookup, by ``api.limits.FailedAuth``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alerting.store import ROLES, Store
from api.limits import FailedAuth

CACHE_S = 30.0
_RANK = {r: i for i, r in enumerate(ROLES)}
_bearer = HTTPBearer(auto_error=False, description="a token from `heatwatch token add`")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


class TokenCache:
    """Valid tokens only, each for ``CACHE_S``; at most ``MAX_CACHED`` (more live credentials
    than that in one process's last 30 s would be odd: the cache starts over)."""

    MAX_CACHED = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hits: dict[str, tuple[float, Principal]] = {}

    def known(self, token: str) -> bool:
        """This token was valid when last looked up (even if that answer is now stale)."""
        return token in self._hits

    async def lookup(self, token: str) -> Principal | None:
        now = time.monotonic()
        hit = self._hits.get(token)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        found = await asyncio.to_thread(self.store.principal, token)
        if found is None:
            self._hits.pop(token, None)  # revoked since
            return None
        p = Principal(*found)
        if len(self._hits) >= self.MAX_CACHED:
            self._hits.clear()
        self._hits[token] = (now, p)
        return p

    def forget(self, name: str) -> None:
        """Drop the cached answers for ``name``'s tokens (after revoking them here)."""
        self._hits = {t: hit for t, hit in self._hits.items() if hit[1].name != name}

    def expire(self) -> None:
        """Treat every cached answer as stale: the next use of each token looks it up again."""
        self._hits = {t: (-CACHE_S, p) for t, (_, p) in self._hits.items()}

    def __len__(self) -> int:
        return len(self._hits)


def _unauthorized(request: Request, detail: str) -> HTTPException:
    """A failed authentication: counted against the client's address."""
    limiter: FailedAuth = request.app.state.failed_auth
    limiter.failed(_client(request))
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


async def principal(request: Request,
                    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    tokens: TokenCache = request.app.state.tokens
    token = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else None
    if token is None or not tokens.known(token):
        # a token that worked before is looked up whatever its address did since: one bad screen
        # behind a control room's NAT must not lock out the dispatchers beside it
        limiter: FailedAuth = request.app.state.failed_auth
        wait = limiter.retry_after(_client(request))
        if wait:
            raise HTTPException(429, "too many failed authentications from this address; "
                                     f"retry in {wait} s", headers={"Retry-After": str(wait)})
    if token is None:
        raise _unauthorized(request, "a bearer token is required")
    p = await tokens.lookup(token)
    if p is None:
        raise _unauthorized(request, "unknown or revoked token")
    return p


def require(role: str) -> object:
    """A dependency: the caller's principal, if their role is at least ``role``."""

    async def dep(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if not p.may(role):
            raise HTTPException(403, f"needs role {role} or above; {p.name} is {p.role}")
        return p

    return Depends(dep)


Dispatcher = Annotated[Principal, require("dispatcher")]
Engineer = Annotated[Principal, require("engineer")]
Admin = Annotated[Principal, require("admin")]
