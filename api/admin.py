"""/v1/tokens and /v1/audit: credentials and the audit trail, for admins.

A new token is shown once, in the answer that creates it; the store keeps only its SHA-256.
Revoking works by name (every live token of that person or system). Other API processes stop
accepting a revoked token within ``api.auth.CACHE_S``; this one at once. An admin cannot revoke
the name they are calling with, so the last admin cannot lock everyone out by mistake.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from alerting.rows import ROLES
from api.deps import Admin, RegistryDep, TokensDep
from contract.topics import Ident

router = APIRouter(prefix="/v1", tags=["admin"])
Role = Literal["dispatcher", "engineer", "admin"]
assert get_args(Role) == ROLES, "api.admin.Role and alerting.rows.ROLES differ"


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Ident = Field(description="who or what will use it: the actor in the audit trail")
    role: Role


class TokenCreated(BaseModel):
    name: str
    role: Role
    token: str = Field(description="shown this once; only its hash is stored")


class TokenInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    role: str
    created_at: int
    created_by: str
    revoked_at: int | None


class TokenList(BaseModel):
    data: list[TokenInfo]


class Revoked(BaseModel):
    name: str
    revoked: int = Field(description="live tokens of that name now revoked")


class AuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditList(BaseModel):
    data: list[AuditEntry]


@router.post("/tokens", response_model=TokenCreated, status_code=201, summary="Issue a credential")
async def add_token(registry: RegistryDep, body: TokenIn, p: Admin) -> TokenCreated:
    token = await asyncio.to_thread(registry.add_token, name=body.name, role=body.role,
                                    actor=p.name, now=int(time.time() * 1000))
    return TokenCreated(name=body.name, role=body.role, token=token)


@router.get("/tokens", response_model=TokenList, summary="Every credential, never its secret")
async def list_tokens(registry: RegistryDep, _p: Admin) -> TokenList:
    rows = await asyncio.to_thread(registry.list_tokens)
    return TokenList(data=[TokenInfo.model_validate(r) for r in rows])


@router.delete("/tokens/{name}", response_model=Revoked, summary="Revoke every live token of a name")
async def revoke(registry: RegistryDep, tokens: TokensDep, name: Annotated[Ident, Path()],
                 p: Admin) -> Revoked:
    if name == p.name:
        raise HTTPException(409, "you cannot revoke the credential you are calling with; "
                                 "ask another admin or use `heatwatch token revoke`")
    n = await asyncio.to_thread(registry.revoke_tokens, name=name, actor=p.name,
                                now=int(time.time() * 1000))
    if n == 0:
        raise HTTPException(404, f"no live token named {name!r}")
    tokens.forget(name)
    return Revoked(name=name, revoked=n)


@router.get("/audit", response_model=AuditList, summary="The audit trail: who did what, when")
async def audit(registry: RegistryDep, _p: Admin,
                actor: Annotated[Ident | None, Query(description="one actor's entries only")] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> AuditList:
    rows = await asyncio.to_thread(registry.audit_log, limit, offset, actor)
    return AuditList(data=[AuditEntry.model_validate(r) for r in rows])
