"""GET /api/health: is the gateway able to take readings and answer? (no login needed, so a
monitoring probe or the node installer can ask)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from cacao_dryer import __version__
from gateway.api.deps import ContextDep

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    now: datetime
    started_at: datetime | None
    metadata_database: Literal["ok", "unavailable"]
    readings_received: int
    readings_stored: int
    readings_spooled: int
    invalid_messages: int
    problems: list[str]


@router.get("/health", response_model=Health, summary="Gateway health")
def health(context: ContextDep) -> Health:
    problems: list[str] = []
    metadata_ok = True
    try:
        with context.metadata.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        metadata_ok = False
        problems.append(f"metadata database: {' '.join(str(exc).split())[:200]}")
    stats = context.ingest_stats
    if stats.spooled > stats.stored and stats.spooled:
        problems.append("time-series store not taking writes: readings are being spooled")
    return Health(status="ok" if not problems else "degraded", version=__version__,
                  now=context.clock.now(), started_at=context.started_at,
                  metadata_database="ok" if metadata_ok else "unavailable",
                  readings_received=stats.received, readings_stored=stats.stored,
                  readings_spooled=stats.spooled, invalid_messages=sum(stats.invalid.values()),
                  problems=problems)
