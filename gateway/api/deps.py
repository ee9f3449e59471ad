"""Dependencies every route uses: the shared context, a database session, the acting user.

Every route declares the role it needs with ``require(Role.X)`` (or the ``OperatorDep`` …
``AdminDep`` aliases); ``current_actor`` establishes who is asking, from

1. an API token (``Authorization: Bearer cdt_...``, machines; no CSRF token needed), or
2. the ``cacao_session`` cookie of a logged-in browser; a state-changing request (POST, PUT,
   PATCH, DELETE) must then also carry the session's CSRF token and, when the browser names
   its origin, come from this gateway (gateway/auth/csrf.py).

Nobody is let in without one of them (401), except the routes in ``PUBLIC_PATHS``.
``create_app(context, local_actor=...)`` lets tests act as a fixed user without logging in;
the gateway itself never sets it. See docs/security.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request, status
from pydantic import AwareDatetime, BeforeValidator
from sqlalchemy.orm import Session

from gateway.auth import SESSION_COOKIE, Auth, Identity
from gateway.auth.csrf import (
    CSRF_FORM_FIELD,
    CSRF_HEADER,
    changes_state,
    csrf_refusal,
    origin_refusal,
)
from gateway.auth.roles import Role, may
from gateway.context import GatewayContext

__all__ = ["PUBLIC_PATHS", "Actor", "AdminDep", "ContextDep", "IsoTime", "ManagerDep",
           "OperatorDep", "Role", "SessionDep", "TechnicianDep", "current_actor", "get_context",
           "identity_of", "require"]

log = logging.getLogger("cacao_dryer.gateway.auth")

# Answer without a login: monitoring, the login itself, the API's own description, and the
# dashboard's login page, language switch and static files. Everything else needs a role
# (tests/test_api_auth.py walks every registered route to prove it).
PUBLIC_PATHS = frozenset({
    "/api/health", "/metrics", "/api/auth/login",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
    "/login", "/lang/{code}", "/static",
})


def _not_a_number(value: object) -> object:
    """Pydantic would read ``0.5`` or ``1700000000`` as seconds since 1970; the API takes
    ISO 8601 only (docs/api.md)."""
    if isinstance(value, int | float) or (
            isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value)):
        raise ValueError("a time is ISO 8601 with a zone, e.g. 2026-11-23T15:00:00Z")
    return value


# A time in a query or body: ISO 8601 with a zone (``2026-11-23T15:00:00Z``); a time without
# a zone or a bare number is refused (422).
IsoTime = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


@dataclass(frozen=True)
class Actor:
    username: str
    role: Role
    language: str | None = None  # the user's saved language (None: not known, e.g. tests)


def get_context(request: Request) -> GatewayContext:
    context: GatewayContext = request.app.state.context
    return context


ContextDep = Annotated[GatewayContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """One transaction per request: committed after the route returns, rolled back if it
    raises."""
    with context.metadata.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def _form_csrf_token(request: Request) -> str | None:
    """The ``csrf_token`` field of a plain HTML form post (urlencoded), if any."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not changes_state(request.method) or content_type != "application/x-www-form-urlencoded":
        return None
    body = await request.body()
    values = parse_qs(body.decode("utf-8", "replace"), max_num_fields=100)
    found = values.get(CSRF_FORM_FIELD)
    return found[0] if found else None


def _unauthorized(detail: str, *, bearer: bool = False) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail,
                         headers={"WWW-Authenticate": "Bearer"} if bearer else None)


def current_actor(request: Request, context: ContextDep,
                  form_csrf: Annotated[str | None, Depends(_form_csrf_token)]) -> Actor:
    local: Actor | None = getattr(request.app.state, "local_actor", None)
    if local is not None:
        return local
    auth: Auth = request.app.state.auth
    authorization = request.headers.get("authorization", "")
    identity: Identity | None
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("Authorization: use 'Bearer <API token>'", bearer=True)
        with context.metadata.session() as db:
            identity = auth.tokens.resolve(db, token.strip())
        if identity is None:
            raise _unauthorized("API token unknown, expired or revoked", bearer=True)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise _unauthorized("log in first (POST /api/auth/login)")
        with context.metadata.session() as db:
            identity = auth.sessions.resolve(db, cookie)
        if identity is None:
            raise _unauthorized("session expired or ended: log in again")
        if changes_state(request.method):
            refusal = origin_refusal(request.headers.get("origin"),
                                     request.headers.get("referer"),
                                     request.headers.get("host"), auth.trusted_origins) \
                or csrf_refusal(identity.csrf_token,
                                request.headers.get(CSRF_HEADER) or form_csrf)
            if refusal is not None:
                log.warning("refused %s %s for %s: %s", request.method, request.url.path,
                            identity.username, refusal)
                raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
    request.state.identity = identity
    return Actor(identity.username, identity.role, identity.language)


def require(role: Role) -> Callable[..., Actor]:
    """Dependency: the acting user, if their role grants ``role`` (403 otherwise)."""

    def check(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        if not may(actor.role, role):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{actor.role.value} may not do this (needs {role.value})")
        return actor

    return check


OperatorDep = Annotated[Actor, Depends(require(Role.OPERATOR))]
TechnicianDep = Annotated[Actor, Depends(require(Role.TECHNICIAN))]
ManagerDep = Annotated[Actor, Depends(require(Role.MANAGER))]
AdminDep = Annotated[Actor, Depends(require(Role.ADMIN))]


def identity_of(request: Request) -> Identity | None:
    """How the current request was authenticated (None for a test's local actor)."""
    return getattr(request.state, "identity", None)

