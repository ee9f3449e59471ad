"""Dryer nodes: list, detail (state, health, latest reading, running batch), events, gaps,
renaming, manual override of fans and vents."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cacao_dryer.contract import Channel, Command, OverrideAction, encode, topic
from cacao_dryer.errors import NotFoundError
from gateway.api.deps import ContextDep, OperatorDep, SessionDep, TechnicianDep
from gateway.metadata.models import AlertRecord, AuditEntry, Batch, Node, NodeEventRecord
from gateway.timeseries import StoredReading, missing_ranges

router = APIRouter(prefix="/api/nodes", tags=["nodes"])

# A node publishes its status at least every few minutes and telemetry every sample interval;
# silent for this long = its data is stale whatever its last status said.
STALE_AFTER = timedelta(minutes=10)


class LatestReading(BaseModel):
    seq: int
    measured_at: datetime
    readings: dict[str, float] = Field(description="Measurement key (unit in the name) → value")
    raining: bool | None
    mode: str
    alarms: list[str]
    batch_id: str | None

    @classmethod
    def of(cls, reading: StoredReading | None) -> LatestReading | None:
        if reading is None:
            return None
        return cls(seq=reading.seq, measured_at=reading.measured_at, readings=reading.fields,
                   raining=reading.raining, mode=reading.mode, alarms=list(reading.alarms),
                   batch_id=reading.batch_id)


class NodeSummary(BaseModel):
    site_id: str
    node_id: str
    name: str | None
    state: str = Field(description="online / offline (Last Will or clean stop) / unknown")
    stale: bool = Field(description="Nothing heard for longer than STALE_AFTER")
    last_seen_at: datetime
    first_seen_at: datetime
    firmware_version: str | None
    applied_config_version: int | None
    running_batch_id: str | None
    open_alerts: int
    latest: LatestReading | None


class NodeDetail(NodeSummary):
    status: dict[str, Any] | None = Field(description="The node's latest status message")


class NodeEventOut(BaseModel):
    seq: int
    occurred_at: datetime
    received_at: datetime
    type: str
    message: str
    data: dict[str, Any]


class Gaps(BaseModel):
    stored_ranges: list[tuple[int, int]]
    missing_ranges: list[tuple[int, int]]
    missing_readings: int


class NodeUpdate(BaseModel):
    name: str | None = Field(None, max_length=100)


class OverrideRequest(BaseModel):
    fan_speed_pct: float | None = Field(None, ge=0, le=100)
    vent_open_pct: float | None = Field(None, ge=0, le=100)
    duration_s: float = Field(gt=0, le=12 * 3600, description="Expires after this [s]")

    @model_validator(mode="after")
    def _something(self) -> OverrideRequest:
        if self.fan_speed_pct is None and self.vent_open_pct is None:
            raise ValueError("give fan_speed_pct or vent_open_pct (or both)")
        return self


class CommandSent(BaseModel):
    command_id: str
    delivered_to_broker: bool = Field(description="False: the broker was unreachable; retry")


def get_node(session: Session, site_id: str, node_id: str) -> Node:
    node = session.get(Node, (site_id, node_id))
    if node is None:
        raise NotFoundError(f"node {site_id}/{node_id} is not known to this gateway")
    return node


def _summary(session: Session, context: Any, node: Node, model: type[NodeSummary]
             ) -> NodeSummary:
    running = session.scalar(select(Batch.batch_id).where(
        Batch.site_id == node.site_id, Batch.node_id == node.node_id, Batch.ended_at.is_(None)))
    open_alerts = session.scalar(select(func.count()).select_from(AlertRecord).where(
        AlertRecord.site_id == node.site_id, AlertRecord.node_id == node.node_id,
        AlertRecord.closed_at.is_(None))) or 0
    extra = {"status": node.status} if model is NodeDetail else {}
    return model(
        site_id=node.site_id, node_id=node.node_id, name=node.name, state=node.state,
        stale=context.clock.now() - node.last_seen_at > STALE_AFTER,
        last_seen_at=node.last_seen_at, first_seen_at=node.first_seen_at,
        firmware_version=node.firmware_version,
        applied_config_version=node.applied_config_version, running_batch_id=running,
        open_alerts=open_alerts,
        latest=LatestReading.of(context.store.latest(node.site_id, node.node_id)), **extra)


@router.get("", response_model=list[NodeSummary], summary="Every dryer at a glance")
def list_nodes(session: SessionDep, context: ContextDep, _actor: OperatorDep,
               site_id: str | None = None) -> list[NodeSummary]:
    query = select(Node).order_by(Node.site_id, Node.node_id)
    if site_id is not None:
        query = query.where(Node.site_id == site_id)
    return [_summary(session, context, node, NodeSummary) for node in session.scalars(query)]


@router.get("/{site_id}/{node_id}", response_model=NodeDetail, summary="One dryer node")
def node_detail(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
                _actor: OperatorDep) -> NodeSummary:
    return _summary(session, context, get_node(session, site_id, node_id), NodeDetail)


@router.patch("/{site_id}/{node_id}", response_model=NodeDetail, summary="Rename a dryer")
def update_node(site_id: str, node_id: str, change: NodeUpdate, session: SessionDep,
                context: ContextDep, actor: TechnicianDep) -> NodeSummary:
    node = get_node(session, site_id, node_id)
    old = {"name": node.name}
    node.name = change.name
    session.add(AuditEntry(at=context.clock.now(), actor=actor.username, action="node.update",
                           target=f"{site_id}/{node_id}", old=old, new={"name": node.name}))
    session.flush()
    return _summary(session, context, node, NodeDetail)


@router.get("/{site_id}/{node_id}/events", response_model=list[NodeEventOut],
            summary="A node's events, newest first")
def node_events(site_id: str, node_id: str, session: SessionDep, _actor: OperatorDep,
                since: datetime | None = None, type: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[NodeEventOut]:
    get_node(session, site_id, node_id)
    query = (select(NodeEventRecord)
             .where(NodeEventRecord.site_id == site_id, NodeEventRecord.node_id == node_id)
             .order_by(NodeEventRecord.occurred_at.desc(), NodeEventRecord.seq.desc())
             .limit(limit))
    if since is not None:
        query = query.where(NodeEventRecord.occurred_at >= since)
    if type is not None:
        query = query.where(NodeEventRecord.type == type)
    return [NodeEventOut(seq=e.seq, occurred_at=e.occurred_at, received_at=e.received_at,
                         type=e.type, message=e.message, data=e.data)
            for e in session.scalars(query)]


@router.get("/{site_id}/{node_id}/gaps", response_model=Gaps,
            summary="Sequence numbers missing from the store: lost data")
def node_gaps(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
              _actor: OperatorDep) -> Gaps:
    get_node(session, site_id, node_id)
    stored = context.store.seq_ranges(site_id, node_id)
    missing = missing_ranges(stored)
    return Gaps(stored_ranges=stored, missing_ranges=missing,
                missing_readings=sum(last - first + 1 for first, last in missing))


@router.post("/{site_id}/{node_id}/override", response_model=CommandSent,
             summary="Drive fans and/or vents by hand for a limited time")
def override(site_id: str, node_id: str, request: OverrideRequest, session: SessionDep,
             context: ContextDep, actor: TechnicianDep) -> CommandSent:
    get_node(session, site_id, node_id)
    action = OverrideAction(fan_speed_pct=request.fan_speed_pct,
                            vent_open_pct=request.vent_open_pct, duration_s=request.duration_s)
    now = context.clock.now()
    command = Command(command_id=uuid.uuid4().hex, issued_at=now,
                      expires_at=now + timedelta(minutes=10), issued_by=actor.username,
                      action=action)
    session.add(AuditEntry(at=now, actor=actor.username, action="node.override",
                           target=f"{site_id}/{node_id}", old=None,
                           new=action.model_dump(exclude_none=True)))
    delivered = context.publisher.publish(topic(site_id, node_id, Channel.COMMAND),
                                          encode(command))
    return CommandSent(command_id=command.command_id, delivered_to_broker=delivered)
