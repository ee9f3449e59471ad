"""The audit log: who changed what, when, old → new.

Every change made through the gateway (threshold profiles, batches, renames, overrides …) is
recorded with ``record`` in the SAME transaction as the change itself, so the log can never
miss a change that happened nor show one that was rolled back. ``query`` reads it back for
technicians and managers (GET /api/audit), newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from gateway.metadata.models import AuditEntry

MAX_DETAIL = 500  # AuditEntry.detail


def record(session: Session, actor: str, action: str, target: str,
           old: dict[str, Any] | None, new: dict[str, Any] | None, detail: str = "", *,
           at: datetime) -> AuditEntry:
    """Add one entry to the session's transaction (committed or rolled back with it).

    ``action`` is ``<resource>.<verb>`` (``thresholds.update``); ``target`` names the thing
    with ``/`` between levels (``demo/secador-01/*``) so a prefix selects a site or a dryer."""
    entry = AuditEntry(at=at, actor=actor, action=action, target=target, old=old, new=new,
                       detail=" ".join(detail.split())[:MAX_DETAIL])
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None          # at >= since
    until: datetime | None = None          # at < until
    actor: str | None = None               # exact user name
    action: str | None = None              # exact, or a prefix ending in "." (``batch.``)
    target_prefix: str | None = None       # ``demo/`` = the whole site


def query(session: Session, where: AuditFilter, *, limit: int = 100, offset: int = 0
          ) -> tuple[int, list[AuditEntry]]:
    """(how many entries match, one page of them), newest first."""
    total = session.scalar(_filtered(select(func.count()).select_from(AuditEntry), where)) or 0
    page = session.scalars(_filtered(select(AuditEntry), where)
                           .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
                           .offset(offset).limit(limit))
    return total, list(page)


def _filtered(statement: Select[Any], where: AuditFilter) -> Select[Any]:
    if where.since is not None:
        statement = statement.where(AuditEntry.at >= where.since)
    if where.until is not None:
        statement = statement.where(AuditEntry.at < where.until)
    if where.actor:
        statement = statement.where(AuditEntry.actor == where.actor)
    if where.action:
        if where.action.endswith("."):
            statement = statement.where(AuditEntry.action.startswith(where.action,
                                                                     autoescape=True))
        else:
            statement = statement.where(AuditEntry.action == where.action)
    if where.target_prefix:
        statement = statement.where(AuditEntry.target.startswith(where.target_prefix,
                                                                 autoescape=True))
    return statement
