"""What the API's routes depend on, as ``Annotated`` types (full-stack-fastapi-template's
``api/deps.py``; STYLE.md example 10): a route names ``store: AlertStoreDep`` or ``p: Engineer``
and FastAPI hands it over.

Everything a process builds at start-up is one ``Services`` (``create_app``'s lifespan puts it on
``app.state.services``); the dependencies below read it. Roles: a missing or wrong token is 401,
a role too low 403, a client address that keeps failing 429 before any lookup (``api/auth.py``,
``api/limits.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from alerting.commands import CommandStore
from alerting.database import Database
from alerting.registry import SiteRegistry
from alerting.rows import Principal
from alerting.store import Store
from api.auth import TokenCache
from api.control import Control
from api.influx import InfluxReader
from api.limits import FailedAuth
from api.rooms import RoomHistory

if TYPE_CHECKING:
    from api.report import ReportState


@dataclass
class Services:
    """One API process's connections, caches and background parts."""

    db: Database
    store: Store
    registry: SiteRegistry
    commands: CommandStore
    influx: InfluxReader
    rooms: RoomHistory  # the hotline's 24 h, with its cache
    tokens: TokenCache
    failed_auth: FailedAuth
    report: ReportState
    control: Control | None  # with a control: block


# Every dependency here is a coroutine function though none awaits: FastAPI runs a plain ``def``
# dependency in its thread pool (thread wake-ups, anyio's bookkeeping), and a hotline lookup
# resolved several of them: a route with the lookup's dependencies and no work cost 800 µs of
# CPU, 300 µs with these as coroutines (measured in-process, #20).
async def services(request: Request) -> Services:
    s: Services = request.app.state.services
    return s


ServicesDep = Annotated[Services, Depends(services)]


async def _store(s: ServicesDep) -> Store:
    return s.store


async def _registry(s: ServicesDep) -> SiteRegistry:
    return s.registry


async def _commands(s: ServicesDep) -> CommandStore:
    return s.commands


async def _influx(s: ServicesDep) -> InfluxReader:
    return s.influx


async def _rooms(s: ServicesDep) -> RoomHistory:
    return s.rooms


async def _tokens(s: ServicesDep) -> TokenCache:
    return s.tokens


async def _control(s: ServicesDep) -> Control:
    if s.control is None:  # not a server fault: this API is set up without it
        raise HTTPException(404, "remote control is not configured on this API (no control: block)")
    return s.control


async def _control_if_any(s: ServicesDep) -> Control | None:
    return s.control


AlertStoreDep = Annotated[Store, Depends(_store)]
RegistryDep = Annotated[SiteRegistry, Depends(_registry)]
CommandsDep = Annotated[CommandStore, Depends(_commands)]
InfluxDep = Annotated[InfluxReader, Depends(_influx)]
RoomsDep = Annotated[RoomHistory, Depends(_rooms)]
TokensDep = Annotated[TokenCache, Depends(_tokens)]
ControlDep = Annotated[Control, Depends(_control)]  # 404 without a control: block
MaybeControl = Annotated[Control | None, Depends(_control_if_any)]


# -- who is calling --------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="a token from `heatwatch token add`")


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def _unauthorized(request: Request, limiter: FailedAuth, detail: str) -> HTTPException:
    """A failed authentication: counted against the client's address."""
    limiter.failed(_client(request))
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def principal(request: Request, s: ServicesDep,
                    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    token = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else None
    if token is None or not s.tokens.known(token):
        # a token that worked before is looked up whatever its address did since: one bad screen
        # behind a control room's NAT must not lock out the dispatchers beside it
        wait = s.failed_auth.retry_after(_client(request))
        if wait:
            raise HTTPException(429, "too many failed authentications from this address; "
                                     f"retry in {wait} s", headers={"Retry-After": str(wait)})
    if token is None:
        raise _unauthorized(request, s.failed_auth, "a bearer token is required")
    p = await s.tokens.lookup(token)  # the site registry away: DatabaseUnavailable, a 503
    if p is None:
        raise _unauthorized(request, s.failed_auth, "unknown or revoked token")
    return p


def require(role: str) -> object:
    """A dependency: the caller's principal, if their role is at least ``role``."""

    async def dep(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if not p.may(role):
            raise HTTPException(403, f"needs role {role} or above; {p.name} is {p.role}")
        return p

    return Depends(dep)


Dispatcher = Annotated[Principal, require("dispatcher")]  # read, acknowledge, note
Engineer = Annotated[Principal, require("engineer")]  # + silences, manual resolution, remote control
Admin = Annotated[Principal, require("admin")]  # + credentials, assets
