"""GET /api/health: is the gateway able to take readings and answer? (no login needed, so a
monitoring probe or the node installer can ask)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text

from cacao_dryer import __version__
from gateway.api.deps import ContextDep
from gateway.timeseries import StoreUnavailable

router = APIRouter(prefix="/api", tags=["health"])


STORE_PING_TIMEOUT_S = 2.0  # a probe asking every few seconds must get an answer quickly


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="degraded when any part below is not ok; `problems` says what, one line "
                    "each")
    version: str
    now: datetime
    started_at: datetime | None
    metadata_database: Literal["ok", "unavailable"]
    readings_store: Literal["ok", "unavailable"] = Field(
        description="the time-series store answered a ping just now")
    mqtt_broker: Literal["connected", "disconnected", "not used"] = Field(
        description="the gateway's connection to the broker that brings the nodes' data (a "
                    "dashboard run alone: its live view's connection)")
    readings_received: int
    readings_stored: int
    readings_spooled: int = Field(description="readings spooled since the gateway started")
    readings_waiting_in_spool: int = Field(
        description="readings in the local spool now, not yet in the store (not queryable "
                    "yet, never lost)")
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
    store_ok = True
    try:
        context.store.ping(STORE_PING_TIMEOUT_S)
    except StoreUnavailable as exc:
        store_ok = False
        problems.append(f"readings store: {' '.join(str(exc).split())[:200]}")
    stats = context.ingest_stats
    if stats.spool_waiting:
        problems.append(f"{stats.spool_waiting} readings waiting in the local spool for the "
                        "readings store (kept safe; queryable once written)")
    broker = "not used" if context.broker is None else \
        "connected" if context.broker.connected else "disconnected"
    if broker == "disconnected":
        problems.append("MQTT broker: not connected, no data is arriving (nodes keep their "
                        "readings and send them when the link is back)")
    return Health(status="ok" if not problems else "degraded", version=__version__,
                  now=context.clock.now(), started_at=context.started_at,
                  metadata_database="ok" if metadata_ok else "unavailable",
                  readings_store="ok" if store_ok else "unavailable", mqtt_broker=broker,
                  readings_received=stats.received, readings_stored=stats.stored,
                  readings_spooled=stats.spooled,
                  readings_waiting_in_spool=stats.spool_waiting,
                  invalid_messages=sum(stats.invalid.values()), problems=problems)
