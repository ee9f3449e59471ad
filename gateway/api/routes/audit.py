"""The audit log: who changed what, when, old → new (gateway/audit.py).

Readable by managers (who review) and by technicians (who change thresholds and overrides
and need to see who changed what before them), and admins; not by operators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from gateway import audit
from gateway.api.deps import Actor, IsoTime, Role, SessionDep, current_actor
from gateway.auth.roles import may

router = APIRouter(prefix="/api/audit", tags=["audit"])

# Technician and manager sit side by side (neither includes the other): either may read.
READERS = (Role.TECHNICIAN, Role.MANAGER)


def may_read_audit(role: Role) -> bool:
    """Whether ``role`` may read the audit log (technician, manager, admin).

    >>> may_read_audit(Role.TECHNICIAN), may_read_audit(Role.OPERATOR)
    (True, False)
    """
    return any(may(role, reader) for reader in READERS)


def audit_reader(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
    """Dependency: the acting user, if they may read the audit log (403 otherwise)."""
    if not may_read_audit(actor.role):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"{actor.role.value} may not do this (needs technician or manager)")
    return actor


AuditReaderDep = Annotated[Actor, Depends(audit_reader)]


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str = Field(description="<resource>.<verb>, e.g. thresholds.update, batch.start")
    target: str = Field(description="What changed: site/node/… (* = every)")
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    detail: str


class AuditPage(BaseModel):
    total: int = Field(description="Entries matching the filters, on every page")
    limit: int
    offset: int
    entries: list[AuditEntryOut] = Field(description="Newest first")


@router.get("", response_model=AuditPage, summary="The audit log, newest first, filtered")
def list_audit(
    session: SessionDep, _actor: AuditReaderDep,
    since: Annotated[IsoTime | None, Query(description="At or after")] = None,
    until: Annotated[IsoTime | None, Query(description="Before")] = None,
    actor: Annotated[str | None, Query(max_length=100, description="User name")] = None,
    action: Annotated[str | None, Query(max_length=60, description=(
        "Exact action, or a prefix ending in '.' (batch.)"))] = None,
    target: Annotated[str | None, Query(max_length=200, description=(
        "Target prefix: demo/ = the site, demo/secador-01 = one dryer"))] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    total, entries = audit.query(
        session, audit.AuditFilter(since=since, until=until, actor=actor, action=action,
                                   target_prefix=target), limit=limit, offset=offset)
    return AuditPage(total=total, limit=limit, offset=offset, entries=[
        AuditEntryOut(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target,
                      old=e.old, new=e.new, detail=e.detail) for e in entries])
