"""Batches: one load of beans in one dryer, from loading to emptying.

The metadata database is the truth about batches. An operator starts and ends a batch through
the API; the gateway writes the record first and then tells the node with a ``start_batch`` /
``end_batch`` command (the node needs it for its tray moisture and its early-phase rules). A
node that is offline does not stop the record: the response says whether the broker took the
command, and the audit log keeps it. A node can also start or end a batch on its own (a local
button, the simulator, a replayed outbox): the ingest hands those events to
``record_batch_event``, which creates or closes the record so both sides agree again.

Every change is written to the audit log in the same transaction as the change. Metrics and
the drying-end prediction are computed on demand from the time-series store by the pure
functions of ``gateway.batch_metrics`` and ``gateway.drying_model`` (section "analysis"
below); nothing derived is stored, so late readings (a node's outbox replay) are always
counted. Described for people in docs/batches.md, "Batches: API and life cycle".
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cacao_dryer.contract import (
    ID_PATTERN,
    Channel,
    Command,
    EndBatchAction,
    EventType,
    Identifier,
    StartBatchAction,
    Thresholds,
    encode,
    topic,
)
from cacao_dryer.errors import ConflictError, NotFoundError, PayloadError
from gateway import audit
from gateway import batch_metrics as metrics
from gateway.batch_metrics import BatchMetrics, EndSuggestion
from gateway.context import Publisher
from gateway.drying_model import DryingPrediction, MoisturePoint, predict_drying_end
from gateway.metadata.models import AuditEntry, Batch, Node, NodeEventRecord, Site, SpotCheck
from gateway.timeseries import SeriesPoint, TimeSeriesStore

log = logging.getLogger("cacao_dryer.gateway")

# A start command that reaches a node late would make it weigh its tray then, when the beans
# have already lost water, and its tray moisture would read too wet for the whole batch; so a
# batch command that cannot be delivered within the hour is dropped by the node (contract
# ``expires_at``) rather than executed late.
COMMAND_LIFETIME = timedelta(hours=1)
PUBLISH_TIMEOUT_S = 3.0
# Clocks of phones, PCs and nodes disagree by a few minutes; later than this is a typo.
FUTURE_TOLERANCE = timedelta(minutes=5)
NODE_ACTOR = "node"
MAX_MASS_KG = 20_000.0       # a large cooperative dryer holds a few tonnes; more is a typo
MAX_NOTES = 2000


class Crop(StrEnum):
    CACAO = "cacao"
    COFFEE = "coffee"


class SpotCheckMethod(StrEnum):
    HAND_METER = "hand_meter"   # capacitive/resistive grain meter, minutes, ±1-2 points
    OVEN = "oven"               # oven-dry reference (ISO 2291 for cacao), hours
    HALOGEN = "halogen"         # halogen moisture analyser, ~15 min


# --- requests (validated before anything is written) ----------------------------------------

_REQUEST = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)
LotCode = Annotated[str, Field(min_length=1, max_length=64, examples=["L-2026-031"])]
Producer = Annotated[str, Field(max_length=200, examples=["Asociación Alto Huallaga"])]
Notes = Annotated[str, Field(max_length=MAX_NOTES)]
MassKg = Annotated[float, Field(gt=0, le=MAX_MASS_KG)]
# The node accepts 10-80 % w.b. at loading (contract StartBatchAction); fermented cacao
# enters at 55-60 % [ICCO], washed coffee at ~50-55 %.
InitialMoisture = Annotated[float, Field(ge=10, le=80)]
Moisture = Annotated[float, Field(ge=0, le=80)]


class NewBatch(BaseModel):
    """What the operator says when the beans go in."""

    model_config = _REQUEST
    site_id: Identifier
    node_id: Identifier
    lot_code: LotCode
    producer: Producer = Field("", description="Producer or producer group")
    crop: Crop = Crop.CACAO
    initial_mass_kg: MassKg | None = Field(None, description="Wet beans loaded [kg]")
    initial_moisture_pct_wb: InitialMoisture = Field(
        description="Moisture at loading (hand meter) [% w.b.]")
    notes: Notes = ""
    started_at: AwareDatetime | None = Field(None, description="Default: now")


class BatchEnd(BaseModel):
    """What the operator says when the dryer is emptied."""

    model_config = _REQUEST
    ended_at: AwareDatetime | None = Field(None, description="Default: now")
    final_moisture_pct_wb: Moisture | None = None
    final_mass_kg: MassKg | None = None
    notes: Notes | None = Field(None, description="Appended to the batch's notes")


class NewSpotCheck(BaseModel):
    model_config = _REQUEST
    measured_at: AwareDatetime | None = Field(None, description="Default: now")
    moisture_pct_wb: Moisture
    method: SpotCheckMethod = SpotCheckMethod.HAND_METER
    note: str = Field("", max_length=500)


class BatchCorrection(BaseModel):
    """Corrections of what was typed; only the fields given change (``null`` clears an
    optional value). Times are not corrected here: they decide which readings belong to the
    batch."""

    model_config = _REQUEST
    lot_code: LotCode | None = None
    producer: Producer | None = None
    crop: Crop | None = None
    notes: Notes | None = None
    initial_mass_kg: MassKg | None = None
    initial_moisture_pct_wb: InitialMoisture | None = None
    final_mass_kg: MassKg | None = None
    final_moisture_pct_wb: Moisture | None = None

    @model_validator(mode="after")
    def _something_that_can_be_set(self) -> BatchCorrection:
        if not self.model_fields_set:
            raise ValueError("nothing to change: give at least one field")
        for name in ("lot_code", "producer", "crop", "notes", "initial_moisture_pct_wb"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be cleared, only changed")
        return self


@dataclass(frozen=True)
class BatchFilter:
    site_id: str | None = None
    node_id: str | None = None
    running: bool | None = None
    since: datetime | None = None      # started at or after
    until: datetime | None = None      # started before
    producer: str | None = None        # substring, any case
    lot_code: str | None = None        # substring, any case


@dataclass(frozen=True)
class CommandOutcome:
    """A batch command sent to a node: did the broker take it (QoS 1 acknowledgement)?"""

    command_id: str
    action: str
    issued_at: datetime
    expires_at: datetime
    delivered_to_broker: bool


@dataclass(frozen=True)
class CommandRecord:
    """A batch command as the gateway sent it, and the node's answer if it came."""

    command_id: str
    action: str
    issued_at: datetime
    issued_by: str
    delivered_to_broker: bool
    node_ok: bool | None = None          # None: no answer from the node (yet)
    node_message: str | None = None
    node_answered_at: datetime | None = None


@dataclass(frozen=True)
class NodeView:
    """What the node itself reported about a batch."""

    started_at: datetime | None          # its batch_started event
    ended_at: datetime | None            # its batch_ended event
    commands: list[CommandRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    target_moisture_pct_wb: float
    current_moisture_pct_wb: float | None
    current_moisture_at: datetime | None
    current_moisture_source: str | None  # reading / spot_check / final
    progress_pct: float | None           # 0 at loading, 100 at the target


# --- look-ups ---------------------------------------------------------------------------------

def get_batch(session: Session, batch_id: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFoundError(f"batch {batch_id} is not known to this gateway")
    return batch


def get_node(session: Session, site_id: str, node_id: str) -> Node:
    node = session.get(Node, (site_id, node_id))
    if node is None:
        raise NotFoundError(f"node {site_id}/{node_id} is not known to this gateway")
    return node


def running_batch(session: Session, site_id: str, node_id: str) -> Batch | None:
    return session.scalar(select(Batch).where(Batch.site_id == site_id,
                                              Batch.node_id == node_id,
                                              Batch.ended_at.is_(None)))


def target_moisture_for(session: Session, site_id: str, node_id: str) -> float:
    """Target moisture of a dryer's beans [% w.b.]: that of ``thresholds_for``."""
    return thresholds_for(session, site_id, node_id).target_moisture_pct_wb


def thresholds_for(session: Session, site_id: str, node_id: str) -> Thresholds:
    """Thresholds a batch is judged by: the newest config pushed to the dryer (its profile
    layers resolved, docs/thresholds.md), else the built-in defaults (7 % target [ICCO])."""
    from gateway.thresholds import latest_push, pushed_thresholds

    push = latest_push(session, site_id, node_id)
    return (pushed_thresholds(push) if push is not None else None) or Thresholds()


def site_zone(session: Session, site_id: str, fallback: str = "America/Lima") -> ZoneInfo:
    site = session.get(Site, site_id)
    for name in (site.timezone if site else None, fallback, "UTC"):
        if not name:
            continue
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def list_batches(session: Session, where: BatchFilter, *, limit: int | None = None,
                 offset: int = 0) -> tuple[int, list[Batch]]:
    """(how many match, the page), newest first."""
    query = _filtered(select(Batch), where)
    total = session.scalar(_filtered(select(func.count()).select_from(Batch), where)) or 0
    query = query.order_by(Batch.started_at.desc(), Batch.batch_id.desc()).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return total, list(session.scalars(query))


def _filtered(query: Select[Any], where: BatchFilter) -> Select[Any]:
    if where.site_id is not None:
        query = query.where(Batch.site_id == where.site_id)
    if where.node_id is not None:
        query = query.where(Batch.node_id == where.node_id)
    if where.running is True:
        query = query.where(Batch.ended_at.is_(None))
    elif where.running is False:
        query = query.where(Batch.ended_at.is_not(None))
    if where.since is not None:
        query = query.where(Batch.started_at >= where.since)
    if where.until is not None:
        query = query.where(Batch.started_at < where.until)
    if where.producer:
        query = query.where(Batch.producer.icontains(where.producer, autoescape=True))
    if where.lot_code:
        query = query.where(Batch.lot_code.icontains(where.lot_code, autoescape=True))
    return query


def spot_check_counts(session: Session, batch_ids: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for first in range(0, len(batch_ids), 500):  # stay far below bound-parameter limits
        chunk = list(batch_ids[first:first + 500])
        counts |= {batch_id: count for batch_id, count in session.execute(
            select(SpotCheck.batch_id, func.count()).where(SpotCheck.batch_id.in_(chunk))
            .group_by(SpotCheck.batch_id))}
    return counts


def spot_checks(session: Session, batch_id: str) -> list[SpotCheck]:
    get_batch(session, batch_id)
    return list(session.scalars(select(SpotCheck).where(SpotCheck.batch_id == batch_id)
                                .order_by(SpotCheck.measured_at, SpotCheck.id)))


# --- the life cycle ---------------------------------------------------------------------------

def new_batch_id(session: Session, node_id: str, started_at: datetime, zone: ZoneInfo) -> str:
    """``<node>-<local yyyymmddhhmm>`` (a contract Identifier, at most 40 characters), with
    ``-2``, ``-3``... if that is taken; the node id is shortened when needed."""
    stamp = started_at.astimezone(zone).strftime("%Y%m%d%H%M")
    for number in range(1, 1000):
        suffix = f"-{stamp}" + (f"-{number}" if number > 1 else "")
        candidate = node_id[:40 - len(suffix)] + suffix
        if session.get(Batch, candidate) is None:
            return candidate
    raise ConflictError(f"dryer {node_id}: too many batches started at {stamp}")


def start_batch(session: Session, publisher: Publisher, request: NewBatch, actor: str,
                now: datetime) -> tuple[Batch, CommandOutcome]:
    """Record a new batch and send ``start_batch`` to its node.

    ConflictError when the dryer has a batch running, or when the start is earlier than the
    end of the dryer's previous batch (their readings would be counted twice)."""
    site_id, node_id = request.site_id, request.node_id
    get_node(session, site_id, node_id)
    started_at = request.started_at or now
    _not_in_future("started_at", started_at, now)
    running = running_batch(session, site_id, node_id)
    if running is not None:
        raise ConflictError(f"dryer {site_id}/{node_id} already has batch {running.batch_id} "
                            f"running since {iso(running.started_at)}: end it first")
    previous = session.scalar(select(Batch).where(
        Batch.site_id == site_id, Batch.node_id == node_id, Batch.ended_at > started_at)
        .order_by(Batch.ended_at.desc()).limit(1))
    if previous is not None and previous.ended_at is not None:
        raise ConflictError(f"started_at {iso(started_at)} is before batch "
                            f"{previous.batch_id} on this dryer ended "
                            f"({iso(previous.ended_at)})")
    batch_id = new_batch_id(session, node_id, started_at,
                            site_zone(session, site_id))
    batch = Batch(batch_id=batch_id, site_id=site_id, node_id=node_id,
                  lot_code=request.lot_code, producer=request.producer, crop=request.crop.value,
                  started_at=started_at, initial_mass_kg=request.initial_mass_kg,
                  initial_moisture_pct_wb=request.initial_moisture_pct_wb,
                  notes=request.notes, started_by=actor)
    session.add(batch)
    _flush_or_conflict(session, f"dryer {site_id}/{node_id} already has a batch running")
    # Record first, command second: if the commit failed after the command went out, the
    # node's batch_started event would still create the record (record_batch_event).
    outcome = send_batch_command(
        publisher, site_id, node_id,
        StartBatchAction(batch_id=batch_id,
                         initial_moisture_pct_wb=request.initial_moisture_pct_wb),
        actor, now)
    _audit(session, now, actor, "batch.start", batch, None,
           _snapshot(batch, _RECORD_FIELDS) | {"command": _command_json(outcome)})
    return batch, outcome


def end_batch(session: Session, publisher: Publisher, batch_id: str, request: BatchEnd,
              actor: str, now: datetime) -> tuple[Batch, CommandOutcome]:
    """Close a running batch and send ``end_batch`` to its node; ConflictError if it ended
    already."""
    batch = get_batch(session, batch_id)
    if batch.ended_at is not None:
        raise ConflictError(f"batch {batch_id} already ended at {iso(batch.ended_at)}"
                            + (f" (by {batch.ended_by})" if batch.ended_by else ""))
    ended_at = request.ended_at or now
    _not_in_future("ended_at", ended_at, now)
    if ended_at <= batch.started_at:
        raise PayloadError(f"ended_at {iso(ended_at)} is not after the batch's start "
                           f"({iso(batch.started_at)})")
    old = _snapshot(batch, _END_FIELDS)
    batch.ended_at = ended_at
    batch.ended_by = actor
    if request.final_moisture_pct_wb is not None:
        batch.final_moisture_pct_wb = request.final_moisture_pct_wb
    if request.final_mass_kg is not None:
        batch.final_mass_kg = request.final_mass_kg
    if request.notes:
        batch.notes = _appended(batch.notes, request.notes)
    session.flush()
    outcome = send_batch_command(publisher, batch.site_id, batch.node_id,
                                 EndBatchAction(batch_id=batch_id), actor, now)
    _audit(session, now, actor, "batch.end", batch, old,
           _snapshot(batch, _END_FIELDS) | {"command": _command_json(outcome)})
    return batch, outcome


def add_spot_check(session: Session, batch_id: str, request: NewSpotCheck, actor: str,
                   now: datetime) -> SpotCheck:
    """A moisture measurement by hand; also allowed after the end (an oven result of the
    final sample)."""
    batch = get_batch(session, batch_id)
    measured_at = request.measured_at or now
    _not_in_future("measured_at", measured_at, now)
    if measured_at < batch.started_at:
        raise PayloadError(f"measured_at {iso(measured_at)} is before batch {batch_id} "
                           f"started ({iso(batch.started_at)})")
    check = SpotCheck(batch_id=batch_id, measured_at=measured_at,
                      moisture_pct_wb=request.moisture_pct_wb, method=request.method.value,
                      note=request.note, recorded_by=actor)
    session.add(check)
    session.flush()
    _audit(session, now, actor, "batch.spot_check", batch, None,
           {"id": check.id, "measured_at": iso(measured_at),
            "moisture_pct_wb": check.moisture_pct_wb, "method": check.method,
            "note": check.note})
    return check


def correct_batch(session: Session, batch_id: str, request: BatchCorrection, actor: str,
                  now: datetime) -> Batch:
    """Apply corrections; the audit entry keeps the old and new value of each changed
    field. Final values need an ended batch (they are given when ending)."""
    batch = get_batch(session, batch_id)
    changes = {name: getattr(request, name) for name in request.model_fields_set}
    if "crop" in changes:
        changes["crop"] = Crop(changes["crop"]).value
    finals = {"final_mass_kg", "final_moisture_pct_wb"} & changes.keys()
    if finals and batch.ended_at is None:
        raise ConflictError(f"batch {batch_id} is still running: give "
                            f"{', '.join(sorted(finals))} when ending it")
    changed = {name: value for name, value in changes.items()
               if getattr(batch, name) != value}
    if not changed:
        return batch
    old = _snapshot(batch, changed)
    for name, value in changed.items():
        setattr(batch, name, value)
    session.flush()
    _audit(session, now, actor, "batch.update", batch, old, _snapshot(batch, changed))
    return batch


def send_batch_command(publisher: Publisher, site_id: str, node_id: str,
                       action: StartBatchAction | EndBatchAction, actor: str,
                       now: datetime) -> CommandOutcome:
    """Publish a batch command (QoS 1, not retained) and wait briefly for the broker."""
    kind = "start" if isinstance(action, StartBatchAction) else "end"
    command = Command(command_id=f"{kind}-{action.batch_id}-{secrets.token_hex(4)}",
                      issued_at=now, expires_at=now + COMMAND_LIFETIME, issued_by=actor[:100],
                      action=action)
    delivered = publisher.publish(topic(site_id, node_id, Channel.COMMAND), encode(command),
                                  timeout=PUBLISH_TIMEOUT_S)
    if not delivered:
        log.warning("%s/%s: the broker did not take command %s (%s)", site_id, node_id,
                    command.command_id, action.type)
    return CommandOutcome(command_id=command.command_id, action=action.type, issued_at=now,
                          expires_at=now + COMMAND_LIFETIME, delivered_to_broker=delivered)


# --- what nodes report ------------------------------------------------------------------------

def record_batch_event(session: Session, site_id: str, node_id: str, event_type: str,
                       batch_id: str | None, data: dict[str, Any], at: datetime) -> None:
    """A node's ``batch_started`` / ``batch_ended`` event, called once per stored event by
    the node registry (in its transaction).

    - ``batch_started`` for a batch the gateway does not know (the node started it itself):
      the record is created, ``started_by="node"``, lot code = batch id (an operator fills
      in the rest). A batch still running on that dryer ends where the new one starts; a
      start older than the running batch's start (a late outbox replay) is recorded as ended
      when the next batch began.
    - ``batch_ended`` closes the batch if it is still open (``ended_by="node"``).
    - Known batches, repeats, other event types and odd data change nothing (logged).
    """
    if not isinstance(batch_id, str) or not _is_identifier(batch_id):
        log.warning("%s/%s: %s event without a valid batch_id (%r): ignored", site_id,
                    node_id, event_type, batch_id)
        return
    if at.tzinfo is None:
        log.warning("%s/%s: %s event at a naive time: ignored", site_id, node_id, event_type)
        return
    batch = session.get(Batch, batch_id)
    if batch is not None and (batch.site_id, batch.node_id) != (site_id, node_id):
        log.warning("%s/%s reports batch %s, which belongs to %s/%s: ignored", site_id,
                    node_id, batch_id, batch.site_id, batch.node_id)
        return
    if event_type == EventType.BATCH_STARTED.value:
        if batch is None:
            _create_from_node(session, site_id, node_id, batch_id, data, at)
    elif event_type == EventType.BATCH_ENDED.value:
        if batch is None:
            log.warning("%s/%s ended batch %s, unknown to the gateway: ignored", site_id,
                        node_id, batch_id)
        elif batch.ended_at is None:
            _close_by_node(session, batch, max(at, batch.started_at + timedelta(seconds=1)),
                           f"the node ended batch {batch_id}")
    else:
        log.warning("%s/%s: %s is not a batch event: ignored", site_id, node_id, event_type)


def _create_from_node(session: Session, site_id: str, node_id: str, batch_id: str,
                      data: dict[str, Any], at: datetime) -> None:
    moisture = data.get("initial_moisture_pct_wb")
    initial = (float(moisture) if isinstance(moisture, int | float)
               and not isinstance(moisture, bool) and 10 <= moisture <= 80 else None)
    ended_at = session.scalar(select(func.min(Batch.started_at)).where(
        Batch.site_id == site_id, Batch.node_id == node_id, Batch.started_at > at))
    running = running_batch(session, site_id, node_id)
    if ended_at is None and running is not None:
        if running.started_at < at:  # the node replaced it: one batch per dryer
            _close_by_node(session, running, at,
                           f"the node started batch {batch_id} in this dryer")
        else:
            ended_at = running.started_at
    batch = Batch(batch_id=batch_id, site_id=site_id, node_id=node_id, lot_code=batch_id,
                  producer="", crop=Crop.CACAO.value, started_at=at, ended_at=ended_at,
                  ended_by=NODE_ACTOR if ended_at else None,
                  initial_moisture_pct_wb=initial,
                  notes="started on the node; lot details not entered yet",
                  started_by=NODE_ACTOR)
    session.add(batch)
    session.flush()
    log.info("%s/%s started batch %s on its own", site_id, node_id, batch_id)
    _audit(session, at, NODE_ACTOR, "batch.start", batch, None,
           _snapshot(batch, _RECORD_FIELDS))


def _close_by_node(session: Session, batch: Batch, ended_at: datetime, why: str) -> None:
    old = _snapshot(batch, _END_FIELDS)
    batch.ended_at = ended_at
    batch.ended_by = NODE_ACTOR
    session.flush()
    log.info("%s/%s: batch %s closed: %s", batch.site_id, batch.node_id, batch.batch_id, why)
    _audit(session, ended_at, NODE_ACTOR, "batch.end", batch, old,
           _snapshot(batch, _END_FIELDS), detail=why)


def node_view(session: Session, batch: Batch, now: datetime) -> NodeView:
    """The node's side of a batch: its batch events and its answers to our commands (from the
    audit log and the node's stored events)."""
    entries = session.scalars(select(AuditEntry).where(
        AuditEntry.target == _target(batch),
        AuditEntry.action.in_(("batch.start", "batch.end"))).order_by(AuditEntry.id))
    sent = [(entry, entry.new["command"]) for entry in entries
            if isinstance(entry.new, dict) and isinstance(entry.new.get("command"), dict)]
    # Node clocks may be off by a while: look a day around the batch.
    window_start = batch.started_at - timedelta(days=1)
    window_end = (batch.ended_at or now) + timedelta(days=1)
    events = session.scalars(select(NodeEventRecord).where(
        NodeEventRecord.site_id == batch.site_id, NodeEventRecord.node_id == batch.node_id,
        NodeEventRecord.type.in_((EventType.BATCH_STARTED.value, EventType.BATCH_ENDED.value,
                                  EventType.COMMAND_RESULT.value)),
        NodeEventRecord.occurred_at >= window_start,
        NodeEventRecord.occurred_at <= window_end).order_by(NodeEventRecord.seq))
    started = ended = None
    answers: dict[str, NodeEventRecord] = {}
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == EventType.COMMAND_RESULT.value:
            if isinstance(data.get("command_id"), str):
                answers.setdefault(data["command_id"], event)
        elif data.get("batch_id") == batch.batch_id:
            if event.type == EventType.BATCH_STARTED.value and started is None:
                started = event.occurred_at
            elif event.type == EventType.BATCH_ENDED.value and ended is None:
                ended = event.occurred_at
    commands = []
    for entry, command in sent:
        answer = answers.get(str(command.get("command_id")))
        answer_ok = (answer.data.get("ok") if answer is not None
                     and isinstance(answer.data, dict) else None)
        commands.append(CommandRecord(
            command_id=str(command.get("command_id")), action=str(command.get("action")),
            issued_at=entry.at, issued_by=entry.actor,
            delivered_to_broker=bool(command.get("delivered_to_broker")),
            node_ok=answer_ok if isinstance(answer_ok, bool) else None,
            node_message=answer.message if answer is not None else None,
            node_answered_at=answer.occurred_at if answer is not None else None))
    return NodeView(started_at=started, ended_at=ended, commands=commands)


# --- readings of a batch ----------------------------------------------------------------------

MOISTURE = "bean_moisture_pct_wb"


def batch_span(batch: Batch, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the readings that belong to a batch (running: up to now, plus the
    clock tolerance for nodes slightly ahead)."""
    end = batch.ended_at if batch.ended_at is not None else now + FUTURE_TOLERANCE
    return batch.started_at, max(end, batch.started_at + timedelta(microseconds=1))


def batch_series(store: TimeSeriesStore, batch: Batch, fields: Sequence[str],
                 every_s: float | None, now: datetime) -> list[SeriesPoint]:
    start, end = batch_span(batch, now)
    return store.series(batch.site_id, batch.node_id, start, end, list(fields), every_s)


def batch_events(session: Session, batch: Batch, now: datetime,
                 limit: int = 200) -> list[NodeEventRecord]:
    """The dryer's events while the batch ran ([start, end], running: up to now plus the
    clock tolerance), newest first."""
    start, end = batch_span(batch, now)
    return list(session.scalars(
        select(NodeEventRecord)
        .where(NodeEventRecord.site_id == batch.site_id,
               NodeEventRecord.node_id == batch.node_id,
               NodeEventRecord.occurred_at >= start, NodeEventRecord.occurred_at <= end)
        .order_by(NodeEventRecord.occurred_at.desc(), NodeEventRecord.seq.desc())
        .limit(limit)))


def progress(session: Session, store: TimeSeriesStore, batch: Batch, now: datetime,
             checks: Sequence[SpotCheck] = ()) -> Progress:
    """Where the beans are: the final moisture once given, else the newest of the last
    reading (1-minute mean) and the last spot check; progress 0 % at loading, 100 % at the
    target."""
    target = target_moisture_for(session, batch.site_id, batch.node_id)
    current: tuple[float, datetime, str] | None = None
    if batch.final_moisture_pct_wb is not None and batch.ended_at is not None:
        current = (batch.final_moisture_pct_wb, batch.ended_at, "final")
    else:
        start, end = batch_span(batch, now)
        recent = store.series(batch.site_id, batch.node_id, max(start, end - timedelta(hours=6)),
                              end, [MOISTURE], 60)
        if recent:
            current = (recent[-1].values[MOISTURE], recent[-1].at, "reading")
        if checks and (current is None or checks[-1].measured_at > current[1]):
            current = (checks[-1].moisture_pct_wb, checks[-1].measured_at, "spot_check")
    if current is None:
        return Progress(target, None, None, None, None)
    value, at, source = current
    initial = batch.initial_moisture_pct_wb
    done: float | None = None
    if initial is not None and initial > target:
        done = min(100.0, max(0.0, (initial - value) / (initial - target) * 100.0))
    return Progress(target, round(value, 2), at, source,
                    None if done is None else round(done, 1))


# --- analysis: prediction, metrics, end suggestion --------------------------------------------

ANALYSIS_FIELDS = ("air_temp_c", "air_rh_pct", "ambient_temp_c", "ambient_rh_pct", MOISTURE,
                   "tray_mass_kg")
# Readings are averaged into the finest of these buckets that keeps a batch under
# ANALYSIS_MAX_POINTS: 1 min up to 3.5 days, 5 min for a 7-day batch (2,016 points), so a long
# batch stays fast while short peaks of air temperature are not averaged away.
ANALYSIS_BUCKETS_S = (60, 120, 300, 600, 900, 1800, 3600)
ANALYSIS_MAX_POINTS = 5000


def analysis_bucket_s(start: datetime, end: datetime) -> int:
    span_s = max((end - start).total_seconds(), 0.0)
    for bucket in ANALYSIS_BUCKETS_S:
        if span_s / bucket <= ANALYSIS_MAX_POINTS:
            return bucket
    return math.ceil(span_s / ANALYSIS_MAX_POINTS)


@dataclass(frozen=True)
class PredictionResult:
    prediction: DryingPrediction
    target_moisture_pct_wb: float
    source: str            # readings (the node's moisture) or spot_checks (no readings)
    every_s: int           # bucket of the readings the fit saw


def predict_end(session: Session, store: TimeSeriesStore, batch: Batch, now: datetime,
                confidence: float = 0.9) -> PredictionResult:
    """When the batch reaches its target moisture (``gateway.drying_model``, Page fit on the
    node's moisture readings; a dryer without probe or tray is fitted on its spot checks and
    the loading moisture). An ended batch is predicted as of its end."""
    target = target_moisture_for(session, batch.site_id, batch.node_id)
    start, end = batch_span(batch, now)
    bucket = analysis_bucket_s(start, end)
    points = [MoisturePoint(p.at, p.values[MOISTURE])
              for p in store.series(batch.site_id, batch.node_id, start, end, [MOISTURE],
                                    bucket)]
    source = "readings"
    if not points:
        source = "spot_checks"
        points = [MoisturePoint(c.measured_at, c.moisture_pct_wb)
                  for c in spot_checks(session, batch.batch_id)]
        if batch.initial_moisture_pct_wb is not None:
            points.insert(0, MoisturePoint(batch.started_at, batch.initial_moisture_pct_wb))
    as_of = min(now, batch.ended_at) if batch.ended_at is not None else now
    zone = site_zone(session, batch.site_id)
    prediction = predict_drying_end(points, target, now=as_of, confidence=confidence,
                                    site_timezone=zone.key)
    return PredictionResult(prediction, target, source, bucket)


# How long the moisture must have stayed at or below the target before the gateway suggests
# ending (estimate; per request with ``hold_h``): long enough that a reading of the hot midday
# surface is confirmed after moisture inside the beans evened out [Hii2009] and that a humid
# evening that re-wets them is seen, short enough not to keep dry beans in the dryer for
# another day.
DEFAULT_END_HOLD_H = 6.0
QUALITY_FLAGS = ("dried_too_fast", "overheated", "rewetted", "too_long", "not_dry",
                 "over_dried")
MAX_FLAG_SCAN = 100   # batches whose metrics one request computes (~0.3-0.6 s each for 7 days)


@dataclass(frozen=True)
class MetricsResult:
    metrics: BatchMetrics
    every_s: int
    readings: int          # buckets of readings the metrics saw


def batch_metrics(session: Session, store: TimeSeriesStore, batch: Batch,
                  now: datetime) -> MetricsResult:
    """Duration, drying rates, heat, night humidity margin and quality flags of a batch,
    computed now from its stored readings (``gateway.batch_metrics``)."""
    start, end = batch_span(batch, now)
    bucket = analysis_bucket_s(start, end)
    samples = store.series(batch.site_id, batch.node_id, start, end, list(ANALYSIS_FIELDS),
                           bucket)
    checks = [metrics.SpotCheck(c.measured_at, c.moisture_pct_wb)
              for c in spot_checks(session, batch.batch_id)]
    data = metrics.BatchData(
        start=batch.started_at, now=now, samples=samples,
        thresholds=thresholds_for(session, batch.site_id, batch.node_id), end=batch.ended_at,
        spot_checks=checks, initial_moisture_pct_wb=batch.initial_moisture_pct_wb,
        initial_mass_kg=batch.initial_mass_kg,
        final_moisture_pct_wb=batch.final_moisture_pct_wb, final_mass_kg=batch.final_mass_kg,
        site_timezone=site_zone(session, batch.site_id).key)
    return MetricsResult(metrics.compute_metrics(data), bucket, len(samples))


@dataclass(frozen=True)
class EndAdvice:
    suggestion: EndSuggestion
    target_moisture_pct_wb: float
    hold_h: float
    source: str | None     # readings / spot_checks; None for an ended batch


def suggest_batch_end(session: Session, store: TimeSeriesStore, batch: Batch, now: datetime,
                      hold_h: float = DEFAULT_END_HOLD_H) -> EndAdvice:
    """Whether to unload now: moisture at or below the target for ``hold_h`` hours
    (``gateway.batch_metrics.suggest_end``), from the readings, or the spot checks when the
    dryer measures no moisture."""
    target = target_moisture_for(session, batch.site_id, batch.node_id)
    if batch.ended_at is not None:
        return EndAdvice(EndSuggestion(False, None, f"batch ended at {iso(batch.ended_at)}"),
                         target, hold_h, None)
    start, end = batch_span(batch, now)
    samples: list[Any] = store.series(batch.site_id, batch.node_id, start, end, [MOISTURE],
                                      analysis_bucket_s(start, end))
    source = "readings"
    if not samples:
        source = "spot_checks"
        samples = [metrics.SpotCheck(c.measured_at, c.moisture_pct_wb)
                   for c in spot_checks(session, batch.batch_id)]
    return EndAdvice(metrics.suggest_end(samples, target, hold_h, now), target, hold_h, source)


def list_flagged(session: Session, store: TimeSeriesStore, where: BatchFilter, flag: str,
                 now: datetime, *, limit: int | None = None, offset: int = 0,
                 max_scan: int = MAX_FLAG_SCAN) -> tuple[int, list[Batch]]:
    """Like ``list_batches``, only batches whose metrics raise ``flag``. Metrics are computed
    on demand, so at most ``max_scan`` batches are looked at (PayloadError beyond)."""
    if flag not in QUALITY_FLAGS:
        raise PayloadError(f"flag {flag!r} is not a quality flag (one of "
                           f"{', '.join(QUALITY_FLAGS)})")
    total, candidates = list_batches(session, where, limit=max_scan + 1)
    if total > max_scan:
        raise PayloadError(f"flag filter: {total} batches match the other filters, at most "
                           f"{max_scan} can be checked: narrow with since/until, site_id "
                           "or node_id")
    flagged = [batch for batch in candidates
               if any(f.code == flag for f in batch_metrics(session, store, batch,
                                                            now).metrics.flags)]
    page = flagged[offset:] if limit is None else flagged[offset:offset + limit]
    return len(flagged), page


# --- helpers ----------------------------------------------------------------------------------

_RECORD_FIELDS = ("site_id", "node_id", "lot_code", "producer", "crop", "started_at",
                  "initial_mass_kg", "initial_moisture_pct_wb", "notes", "started_by")
_END_FIELDS = ("ended_at", "ended_by", "final_moisture_pct_wb", "final_mass_kg", "notes")


def _target(batch: Batch) -> str:
    return f"{batch.site_id}/{batch.node_id}/{batch.batch_id}"


def _snapshot(batch: Batch, names: Sequence[str] | dict[str, Any]) -> dict[str, Any]:
    return {name: _json_value(getattr(batch, name)) for name in names}


def _json_value(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def _command_json(outcome: CommandOutcome) -> dict[str, Any]:
    return {"command_id": outcome.command_id, "action": outcome.action,
            "expires_at": iso(outcome.expires_at),
            "delivered_to_broker": outcome.delivered_to_broker}


def _audit(session: Session, at: datetime, actor: str, action: str, batch: Batch,
           old: dict[str, Any] | None, new: dict[str, Any] | None, detail: str = "") -> None:
    audit.record(session, actor[:100], action, _target(batch), old, new, detail, at=at)


def _flush_or_conflict(session: Session, message: str) -> None:
    """Flush; a unique-index violation (another request won the race) becomes a 409 (the
    request's transaction is rolled back)."""
    try:
        session.flush()
    except IntegrityError:
        raise ConflictError(message) from None


def _not_in_future(name: str, moment: datetime, now: datetime) -> None:
    if moment > now + FUTURE_TOLERANCE:
        raise PayloadError(f"{name} {iso(moment)} is in the future (now {iso(now)})")


def _appended(notes: str, more: str) -> str:
    return (f"{notes}\n{more}" if notes else more)[:MAX_NOTES * 4]


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with a Z, as in every payload and export."""
    return moment.isoformat().replace("+00:00", "Z")


def _is_identifier(value: str) -> bool:
    return len(value) <= 40 and _IDENTIFIER.fullmatch(value) is not None


_IDENTIFIER = re.compile(ID_PATTERN)


def duration_h(batch: Batch, now: datetime) -> float:
    """Hours from loading to emptying (running: to now)."""
    end = batch.ended_at or now
    return round(max(0.0, (end - batch.started_at).total_seconds()) / 3600.0, 2)
