"""Dryer nodes: list, detail (state, health, latest reading, running batch), events, gaps,
renaming, manual override of fans and vents (start, cancel, and what the node made of it),
taring the load-cell tray."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from cacao_dryer.contract import (
    Channel,
    ClearOverrideAction,
    Command,
    EventType,
    OverrideAction,
    TareTrayAction,
    encode,
    topic,
)
from cacao_dryer.errors import ConflictError, NotFoundError
from gateway.api.deps import (
    Actor,
    ContextDep,
    IsoTime,
    OperatorDep,
    SessionDep,
    TechnicianDep,
)
from gateway.context import GatewayContext
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
    # Strict: `true` is not 1 % and "80" is not 80 % for a fan the operator drives by hand.
    model_config = ConfigDict(strict=True)

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
    return _summaries(session, context, [node], model)[0]


def _summaries(session: Session, context: Any, nodes: list[Node], model: type[NodeSummary]
               ) -> list[NodeSummary]:
    """Summaries of ``nodes`` with three look-ups in all (running batches, open alert counts,
    latest readings), not three per dryer: the overview of 100 dryers is one page load."""
    keys = [(node.site_id, node.node_id) for node in nodes]
    if not keys:
        return []
    wanted = tuple_(Batch.site_id, Batch.node_id).in_(keys)
    running = {(site, node_id): batch_id for site, node_id, batch_id in session.execute(
        select(Batch.site_id, Batch.node_id, Batch.batch_id)
        .where(Batch.ended_at.is_(None), wanted))}
    open_alerts = {(site, node_id): count for site, node_id, count in session.execute(
        select(AlertRecord.site_id, AlertRecord.node_id, func.count())
        .where(AlertRecord.closed_at.is_(None),
               tuple_(AlertRecord.site_id, AlertRecord.node_id).in_(keys))
        .group_by(AlertRecord.site_id, AlertRecord.node_id))}
    latest = context.store.latest_many(keys)
    now = context.clock.now()
    return [model(
        site_id=node.site_id, node_id=node.node_id, name=node.name, state=node.state,
        stale=now - node.last_seen_at > STALE_AFTER,
        last_seen_at=node.last_seen_at, first_seen_at=node.first_seen_at,
        firmware_version=node.firmware_version,
        applied_config_version=node.applied_config_version,
        running_batch_id=running.get(key), open_alerts=open_alerts.get(key, 0),
        latest=LatestReading.of(latest.get(key)),
        **({"status": node.status} if model is NodeDetail else {}))
        for node, key in zip(nodes, keys, strict=True)]


@router.get("", response_model=list[NodeSummary], summary="Every dryer at a glance")
def list_nodes(session: SessionDep, context: ContextDep, _actor: OperatorDep,
               site_id: str | None = None) -> list[NodeSummary]:
    query = select(Node).order_by(Node.site_id, Node.node_id)
    if site_id is not None:
        query = query.where(Node.site_id == site_id)
    return _summaries(session, context, list(session.scalars(query)), NodeSummary)


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
                since: IsoTime | None = None, type: str | None = None,
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


# A command the node has not executed within this is dropped by the node (contract expires_at).
COMMAND_LIFETIME = timedelta(minutes=10)
# The node reports the end of its override (override_ended); without that report (offline,
# rebooted without saying) the override is taken as over this long after its expiry.
OVERRIDE_END_SLACK = timedelta(minutes=10)
OVERRIDE_EVENTS = (EventType.OVERRIDE_STARTED.value, EventType.OVERRIDE_ENDED.value,
                   EventType.COMMAND_RESULT.value, EventType.BOOT.value)

OverrideState = Literal["none", "sent", "active", "ended", "refused", "unanswered"]


class OverrideStatus(BaseModel):
    """The latest manual override asked of a dryer through this gateway, and what the node
    made of it (its override_started / override_ended / command_result events)."""

    state: OverrideState = Field(description=(
        "none: never asked; sent: waiting for the node; active: the node confirmed it and it "
        "has not ended; ended: expired, cancelled or the node restarted; refused: the node "
        "said no (node_message); unanswered: the command expired without an answer"))
    mode: str | None = Field(description="The node's control mode in its latest reading "
                                         "(auto / manual)")
    command_id: str | None
    requested_by: str | None
    requested_at: datetime | None
    fan_speed_pct: float | None
    vent_open_pct: float | None
    duration_s: float | None
    delivered_to_broker: bool | None
    started_at: datetime | None = Field(description="The node's override_started (node clock)")
    expires_at: datetime | None = Field(description="started_at + duration_s (node clock)")
    ended_at: datetime | None = Field(description="The node's override_ended or boot event; "
                                                  "or expires_at when the node never said")
    node_message: str | None = Field(description="The node's words on the end or refusal")


def _override_status(session: Session, context: GatewayContext, site_id: str, node_id: str
                     ) -> OverrideStatus:
    latest = context.store.latest(site_id, node_id)
    mode = latest.mode if latest is not None else None
    entry = session.scalar(select(AuditEntry).where(
        AuditEntry.action == "node.override", AuditEntry.target == f"{site_id}/{node_id}")
        .order_by(AuditEntry.id.desc()).limit(1))
    asked = entry.new if entry is not None and isinstance(entry.new, dict) else {}
    command_id = asked.get("command_id")
    if entry is None or not isinstance(command_id, str):
        return OverrideStatus(state="none", mode=mode, command_id=None, requested_by=None,
                              requested_at=None, fan_speed_pct=None, vent_open_pct=None,
                              duration_s=None, delivered_to_broker=None, started_at=None,
                              expires_at=None, ended_at=None, node_message=None)
    now = context.clock.now()
    duration = float(asked.get("duration_s") or 0)
    # Node clocks may be off by a while: look a day around the request.
    events = session.scalars(select(NodeEventRecord).where(
        NodeEventRecord.site_id == site_id, NodeEventRecord.node_id == node_id,
        NodeEventRecord.type.in_(OVERRIDE_EVENTS),
        NodeEventRecord.occurred_at >= entry.at - timedelta(days=1))
        .order_by(NodeEventRecord.seq))
    started: NodeEventRecord | None = None
    ended: NodeEventRecord | None = None
    answer: NodeEventRecord | None = None
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if data.get("command_id") == command_id:
            if event.type == EventType.OVERRIDE_STARTED.value and started is None:
                started = event
            elif event.type == EventType.COMMAND_RESULT.value and answer is None:
                answer = event
        elif (started is not None and ended is None and event.type in (
                EventType.OVERRIDE_ENDED.value, EventType.BOOT.value,
                EventType.OVERRIDE_STARTED.value)):
            ended = event  # expired, cancelled, the node restarted, or another override
    state: OverrideState
    expires_at = ended_at = None
    message = None
    if started is not None:
        expires_at = started.occurred_at + timedelta(seconds=duration)
        if ended is not None:
            state, ended_at, message = "ended", ended.occurred_at, ended.message
        elif now > expires_at + OVERRIDE_END_SLACK:
            state, ended_at = "ended", expires_at
        else:
            state = "active"
    elif answer is not None and isinstance(answer.data, dict) and answer.data.get("ok") is False:
        state, message = "refused", answer.message
    elif now > entry.at + COMMAND_LIFETIME:
        state = "unanswered"
    else:
        state = "sent"
    delivered = asked.get("delivered_to_broker")
    return OverrideStatus(
        state=state, mode=mode, command_id=command_id, requested_by=entry.actor,
        requested_at=entry.at, fan_speed_pct=asked.get("fan_speed_pct"),
        vent_open_pct=asked.get("vent_open_pct"), duration_s=duration or None,
        delivered_to_broker=delivered if isinstance(delivered, bool) else None,
        started_at=started.occurred_at if started is not None else None,
        expires_at=expires_at, ended_at=ended_at, node_message=message)


def _send_command(session: Session, context: GatewayContext, actor: Actor, site_id: str,
                  node_id: str,
                  action: OverrideAction | ClearOverrideAction | TareTrayAction,
                  audit_action: str
                  ) -> CommandSent:
    now = context.clock.now()
    command = Command(command_id=uuid.uuid4().hex, issued_at=now,
                      expires_at=now + COMMAND_LIFETIME, issued_by=actor.username,
                      action=action)
    asked = action.model_dump(exclude_none=True, exclude={"type"})
    entry = AuditEntry(at=now, actor=actor.username, action=audit_action,
                       target=f"{site_id}/{node_id}", old=None,
                       new={**asked, "command_id": command.command_id})
    session.add(entry)
    delivered = context.publisher.publish(topic(site_id, node_id, Channel.COMMAND),
                                          encode(command))
    entry.new = {**asked, "command_id": command.command_id, "delivered_to_broker": delivered}
    return CommandSent(command_id=command.command_id, delivered_to_broker=delivered)


@router.post("/{site_id}/{node_id}/override", response_model=CommandSent,
             summary="Drive fans and/or vents by hand for a limited time")
def override(site_id: str, node_id: str, request: OverrideRequest, session: SessionDep,
             context: ContextDep, actor: TechnicianDep) -> CommandSent:
    get_node(session, site_id, node_id)
    action = OverrideAction(fan_speed_pct=request.fan_speed_pct,
                            vent_open_pct=request.vent_open_pct, duration_s=request.duration_s)
    return _send_command(session, context, actor, site_id, node_id, action, "node.override")


@router.delete("/{site_id}/{node_id}/override", response_model=CommandSent,
               summary="Cancel a manual override: back to automatic control now")
def clear_override(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
                   actor: TechnicianDep) -> CommandSent:
    get_node(session, site_id, node_id)
    return _send_command(session, context, actor, site_id, node_id, ClearOverrideAction(),
                         "node.override_clear")


@router.get("/{site_id}/{node_id}/override", response_model=OverrideStatus,
            summary="The latest manual override and whether the node has it in force")
def override_status(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
                    _actor: OperatorDep) -> OverrideStatus:
    get_node(session, site_id, node_id)
    return _override_status(session, context, site_id, node_id)


@router.post("/{site_id}/{node_id}/tare", response_model=CommandSent,
             summary="Tare the load-cell tray: its weight now, empty, becomes zero")
def tare_tray(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
              actor: TechnicianDep) -> CommandSent:
    """Sends ``tare_tray``; the node answers with a ``command_result`` event (``ok``, or why
    not: no tray, the tray cannot be read). Refused while a batch runs: the tray then holds
    the batch's sample, and moisture by mass loss counts from its weight at loading."""
    get_node(session, site_id, node_id)
    running = session.scalar(select(Batch.batch_id).where(
        Batch.site_id == site_id, Batch.node_id == node_id, Batch.ended_at.is_(None)))
    if running is not None:
        raise ConflictError(f"batch {running} is running in {site_id}/{node_id}: end it and "
                            "empty the tray before taring")
    return _send_command(session, context, actor, site_id, node_id, TareTrayAction(),
                         "node.tare")
