"""Credentials for the API: bearer tokens stored hashed in the alert store, three roles.

dispatcher (read, acknowledge, note) < engineer (+ silences, manual resolution, later remote
control) < admin (+ credentials, assets). A missing or wrong token is 401, a wrong role 403.
Lookups are cached for ``CACHE_S`` so a busy hotline screen does not hash-and-query per request;
a revoked token stops working within that time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alerting.store import ROLES, Store

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
    def __init__(self, store: Store) -> None:
        self.store = store
        self._hits: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, token: str) -> Principal | None:
        now = time.monotonic()
        hit = self._hits.get(token)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        found = await asyncio.to_thread(self.store.principal, token)
        p = Principal(*found) if found is not None else None
        if len(self._hits) > 10_000:
            self._hits.clear()
        self._hits[token] = (now, p)
        return p

    def forget(self, name: str) -> None:
        """Drop the cached answers for ``name``'s tokens (after revoking them here)."""
        self._hits = {t: hit for t, hit in self._hits.items() if hit[1] is None or hit[1].name != name}


async def principal(request: Request,
                    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if cred is None or cred.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    tokens: TokenCache = request.app.state.tokens
    p = await tokens.lookup(cred.credentials)
    if p is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
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
