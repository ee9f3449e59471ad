"""Alerts: list with filters, one alert, acknowledge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from cacao_dryer.contract import AlertKind, AlertSeverity
from cacao_dryer.errors import NotFoundError
from gateway.alert_service import AlertService
from gateway.api.deps import ContextDep, IsoTime, OperatorDep, SessionDep
from gateway.metadata.models import AlertRecord

router = APIRouter(prefix="/api/alerts", tags=["alerts"])


class AlertOut(BaseModel):
    alert_id: int
    site_id: str
    node_id: str
    kind: AlertKind
    severity: AlertSeverity
    state: Literal["open", "closed"]
    message: str
    value: float | None
    batch_id: str | None
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None

    @classmethod
    def of(cls, record: AlertRecord) -> AlertOut:
        return cls(alert_id=record.alert_id, site_id=record.site_id, node_id=record.node_id,
                   kind=AlertKind(record.kind), severity=AlertSeverity(record.severity),
                   state="open" if record.closed_at is None else "closed",
                   message=record.message, value=record.value, batch_id=record.batch_id,
                   opened_at=record.opened_at, updated_at=record.updated_at,
                   closed_at=record.closed_at, acknowledged_by=record.acknowledged_by,
                   acknowledged_at=record.acknowledged_at)


class Acknowledge(BaseModel):
    note: str = Field("", max_length=500, description="What was done about it")


@router.get("", response_model=list[AlertOut], summary="Alerts, newest first")
def list_alerts(session: SessionDep, _actor: OperatorDep,
                state: Literal["open", "closed", "all"] = "open",
                site_id: str | None = None, node_id: str | None = None,
                kind: AlertKind | None = None, severity: AlertSeverity | None = None,
                batch_id: str | None = None, since: IsoTime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> list[AlertOut]:
    query = select(AlertRecord).order_by(AlertRecord.opened_at.desc(),
                                         AlertRecord.alert_id.desc())
    if state == "open":
        query = query.where(AlertRecord.closed_at.is_(None))
    elif state == "closed":
        query = query.where(AlertRecord.closed_at.is_not(None))
    for column, value in ((AlertRecord.site_id, site_id), (AlertRecord.node_id, node_id),
                          (AlertRecord.kind, kind.value if kind else None),
                          (AlertRecord.severity, severity.value if severity else None),
                          (AlertRecord.batch_id, batch_id)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AlertRecord.opened_at >= since)
    return [AlertOut.of(r) for r in session.scalars(query.limit(limit).offset(offset))]


@router.get("/{alert_id}", response_model=AlertOut, summary="One alert")
def get_alert(alert_id: int, session: SessionDep, _actor: OperatorDep) -> AlertOut:
    record = session.get(AlertRecord, alert_id)
    if record is None:
        raise NotFoundError(f"alert {alert_id} does not exist")
    return AlertOut.of(record)


@router.post("/{alert_id}/ack", response_model=AlertOut,
             summary="Acknowledge an open alert (someone is on it)")
def acknowledge(alert_id: int, body: Acknowledge, context: ContextDep,
                actor: OperatorDep) -> AlertOut:
    service: AlertService = context.alerts or AlertService(context)
    service.acknowledge(alert_id, actor.username, body.note)
    with context.metadata.session() as session:
        record = session.get(AlertRecord, alert_id)
        assert record is not None
        return AlertOut.of(record)
