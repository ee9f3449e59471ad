"""Dependencies every route uses: the shared context, a database session, the acting user.

Authentication arrives with the dashboard (issue 4). Every route already declares the role it
needs with ``require(Role.X)``; until login exists, ``current_actor`` answers with the local
administrator the gateway's settings allow, so swapping in real sessions changes this file only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from gateway.context import GatewayContext


class Role(StrEnum):
    OPERATOR = "operator"
    TECHNICIAN = "technician"
    MANAGER = "manager"
    ADMIN = "admin"


# What each role may do, cumulatively: a technician can do what an operator can, and so on.
# Managers review and export; technicians change thresholds and overrides; admins everything.
_GRANTS: dict[Role, set[Role]] = {
    Role.OPERATOR: {Role.OPERATOR, Role.TECHNICIAN, Role.MANAGER, Role.ADMIN},
    Role.MANAGER: {Role.MANAGER, Role.ADMIN},
    Role.TECHNICIAN: {Role.TECHNICIAN, Role.ADMIN},
    Role.ADMIN: {Role.ADMIN},
}


@dataclass(frozen=True)
class Actor:
    username: str
    role: Role


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


def current_actor(request: Request) -> Actor:
    actor: Actor | None = getattr(request.app.state, "local_actor", None)
    if actor is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first")
    return actor


def require(role: Role) -> Callable[..., Actor]:
    """Dependency: the acting user, if their role grants ``role`` (403 otherwise)."""

    def check(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        if actor.role not in _GRANTS[role]:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{actor.role.value} may not do this (needs {role.value})")
        return actor

    return check


OperatorDep = Annotated[Actor, Depends(require(Role.OPERATOR))]
TechnicianDep = Annotated[Actor, Depends(require(Role.TECHNICIAN))]
ManagerDep = Annotated[Actor, Depends(require(Role.MANAGER))]
AdminDep = Annotated[Actor, Depends(require(Role.ADMIN))]
