"""Moisture-probe calibration from hand-meter readings: look up, fit, preview, save and send.

A technician measures the beans in a dryer with a hand meter a few times (or takes the spot
checks already recorded for a batch) and enters (time, hand-meter % w.b.) pairs. For each pair
the gateway finds the probe volts the node reported at that time (the stored reading nearest
within ``MATCH_WINDOW``; a pair may give the volts directly instead), fits a new curve with
``cacao_dryer.calibration.fit_calibration`` and shows, per pair, what the probe's current curve
says, what the hand meter said and what the new curve would say. Saving records the
calibration (with who saved it, in the audit log) and sends it to the node as a
``set_calibration`` command; the node's ``command_result`` event, handed over by the node
registry, marks it applied or rejected.

The node's current curve is what it last reported itself: its ``boot`` event and every
``set_calibration`` result carry ``probe_calibration`` (its points and whether they came from
the config file or the gateway). Described for people in docs/dashboard.md, "Calibrating the
moisture probe from the dashboard".
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from cacao_dryer.calibration import (
    check_curve,
    extend_with,
    fit_calibration,
    volts_to_moisture_pct_wb,
)
from cacao_dryer.contract import (
    Channel,
    Command,
    EventType,
    SetCalibrationAction,
    encode,
    topic,
    utc_iso,
)
from cacao_dryer.errors import NotFoundError, PayloadError
from gateway import audit
from gateway.context import GatewayContext
from gateway.metadata.models import Batch, Calibration, Node, NodeEventRecord, SpotCheck
from gateway.timeseries import TimeSeriesStore

log = logging.getLogger("cacao_dryer.gateway")

COMMAND_PREFIX = "cal-"                 # command ids of calibrations: the registry's filter
MATCH_WINDOW = timedelta(minutes=2)     # a hand-meter reading's probe reading: at most this far
FUTURE_TOLERANCE = timedelta(minutes=5)  # clocks of phones and the gateway disagree a little
# A late calibration is still right (unlike a batch start): the node may take it for a day.
COMMAND_LIFETIME = timedelta(hours=24)
PUBLISH_TIMEOUT_S = 3.0
MAX_PAIRS = 60
EARLIEST_YEAR = 2000   # older hand-meter readings are typos (and beyond the stores' range)
PROBE_V = "moisture_probe_v"
MOISTURE = "bean_moisture_pct_wb"


# --- requests ---------------------------------------------------------------------------------

class PairIn(BaseModel):
    """One hand-meter reading: when it was taken (the probe volts are looked up) or the probe
    volts themselves."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    measured_at: AwareDatetime | None = Field(
        None, description="When the beans were measured with the hand meter")
    probe_v: float | None = Field(None, ge=-0.5, le=6.5,
                                  description="The probe's volts, if known [V]")
    meter_moisture_pct_wb: float = Field(ge=0, le=80,
                                         description="The hand meter's reading [% w.b.]")
    spot_check_id: int | None = Field(None, ge=1, description="The batch spot check it is")

    @model_validator(mode="after")
    def _time_or_volts(self) -> PairIn:
        if self.measured_at is None and self.probe_v is None:
            raise ValueError("give measured_at (the probe volts are looked up) or probe_v")
        if self.measured_at is not None and self.measured_at.year < EARLIEST_YEAR:
            raise ValueError(f"measured_at is before {EARLIEST_YEAR}: a typo?")
        return self


class CalibrationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    pairs: list[PairIn] = Field(min_length=2, max_length=MAX_PAIRS)
    keep_outside_points: bool = Field(
        True, description="Keep the current curve's points beyond the readings' volts, so "
        "the probe still reads beans wetter or drier than today's")
    comment: str = Field("", max_length=500)


# --- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeCurve:
    """The curve a node reported using (boot or set_calibration result)."""

    sensor: str
    points: list[tuple[float, float]]
    source: str                 # config (the node's file) or gateway (a calibration)
    reported_at: datetime


@dataclass(frozen=True)
class ResolvedPair:
    measured_at: datetime | None
    probe_v: float
    reading_at: datetime | None          # the stored reading the volts came from
    meter_moisture_pct_wb: float
    before_pct_wb: float | None          # the probe's current curve (or the stored reading)
    after_pct_wb: float                  # the new curve
    spot_check_id: int | None

    def as_json(self) -> dict[str, Any]:
        return {"measured_at": utc_iso(self.measured_at) if self.measured_at else None,
                "probe_v": self.probe_v,
                "reading_at": utc_iso(self.reading_at) if self.reading_at else None,
                "meter_moisture_pct_wb": self.meter_moisture_pct_wb,
                "before_pct_wb": self.before_pct_wb, "after_pct_wb": self.after_pct_wb,
                "spot_check_id": self.spot_check_id}


@dataclass(frozen=True)
class Preview:
    site_id: str
    node_id: str
    current: NodeCurve | None
    points: list[tuple[float, float]]    # the curve that would be sent
    fitted: list[tuple[float, float]]    # from the readings alone
    pairs: list[ResolvedPair]
    rmse_before_pct: float | None        # root mean square of (probe − hand meter)
    rmse_after_pct: float


# --- look-ups ---------------------------------------------------------------------------------

def get_node(session: Session, site_id: str, node_id: str) -> Node:
    node = session.get(Node, (site_id, node_id))
    if node is None:
        raise NotFoundError(f"node {site_id}/{node_id} is not known to this gateway")
    return node


def node_curve(session: Session, site_id: str, node_id: str) -> NodeCurve | None:
    """The probe curve the node last said it uses, or None (no probe, or not heard yet)."""
    events = session.scalars(
        select(NodeEventRecord)
        .where(NodeEventRecord.site_id == site_id, NodeEventRecord.node_id == node_id,
               NodeEventRecord.type.in_((EventType.BOOT.value,
                                         EventType.COMMAND_RESULT.value)))
        .order_by(NodeEventRecord.seq.desc()).limit(200))
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        reported = data.get("probe_calibration")
        if not isinstance(reported, dict):
            continue
        try:
            points = check_curve(reported["points"])
            return NodeCurve(sensor=str(reported["sensor"]), points=points,
                             source=str(reported.get("source", "config")),
                             reported_at=event.occurred_at)
        except (KeyError, TypeError, ValueError):
            log.warning("%s/%s: event %d has an unreadable probe_calibration", site_id,
                        node_id, event.seq)
            continue
    return None


def probe_reading_near(store: TimeSeriesStore, site_id: str, node_id: str, at: datetime
                       ) -> tuple[datetime, float, float | None] | None:
    """(time, probe volts, bean moisture) of the stored reading nearest ``at`` that has probe
    volts, within MATCH_WINDOW; None if there is none."""
    points = store.series(site_id, node_id, at - MATCH_WINDOW,
                          at + MATCH_WINDOW + timedelta(microseconds=1), [PROBE_V, MOISTURE])
    best = min((p for p in points if PROBE_V in p.values),
               key=lambda p: abs((p.at - at).total_seconds()), default=None)
    if best is None:
        return None
    return best.at, best.values[PROBE_V], best.values.get(MOISTURE)


# --- preview, save, the node's answer ---------------------------------------------------------

def preview(session: Session, store: TimeSeriesStore, site_id: str, node_id: str,
            request: CalibrationRequest, now: datetime) -> Preview:
    """Fit and compare, no side effects. PayloadError / ConfigError (one line) when a pair
    has no probe reading or the readings give no curve."""
    get_node(session, site_id, node_id)
    current = node_curve(session, site_id, node_id)
    found: list[tuple[PairIn, datetime | None, float, float | None]] = []
    for number, pair in enumerate(request.pairs, start=1):
        if pair.measured_at is not None and pair.measured_at > now + FUTURE_TOLERANCE:
            raise PayloadError(f"pair {number}: measured_at {utc_iso(pair.measured_at)} is in "
                               "the future")
        if pair.probe_v is not None:
            found.append((pair, None, pair.probe_v, None))
            continue
        assert pair.measured_at is not None
        near = probe_reading_near(store, site_id, node_id, pair.measured_at)
        if near is None:
            raise PayloadError(
                f"pair {number}: no probe reading of {site_id}/{node_id} within "
                f"{MATCH_WINDOW.total_seconds() / 60:g} min of {utc_iso(pair.measured_at)}")
        found.append((pair, near[0], near[1], near[2]))
    fitted = fit_calibration([(volts, pair.meter_moisture_pct_wb)
                              for pair, _at, volts, _m in found])
    points = (extend_with(fitted, current.points) if request.keep_outside_points
              and current is not None else fitted)
    resolved = []
    for pair, reading_at, volts, stored in found:
        before = (volts_to_moisture_pct_wb(current.points, volts) if current is not None
                  else stored)
        resolved.append(ResolvedPair(
            measured_at=pair.measured_at, probe_v=round(volts, 4), reading_at=reading_at,
            meter_moisture_pct_wb=pair.meter_moisture_pct_wb,
            before_pct_wb=None if before is None else round(before, 2),
            after_pct_wb=round(volts_to_moisture_pct_wb(points, volts), 2),
            spot_check_id=pair.spot_check_id))
    befores = [(p.before_pct_wb, p.meter_moisture_pct_wb) for p in resolved]
    return Preview(
        site_id=site_id, node_id=node_id, current=current, points=points, fitted=fitted,
        pairs=resolved,
        rmse_before_pct=(None if any(b is None for b, _ in befores)
                         else _rmse([(b, m) for b, m in befores if b is not None])),
        rmse_after_pct=_rmse([(p.after_pct_wb, p.meter_moisture_pct_wb) for p in resolved]))


def save(context: GatewayContext, site_id: str, node_id: str, request: CalibrationRequest,
         actor: str) -> Calibration:
    """Record the calibration (and the audit entry) and commit, then send it to the node.

    Committed before the command goes out, so the node's answer, which may come back within
    milliseconds through the ingest, always finds the record."""
    now = context.clock.now()
    command_id = f"{COMMAND_PREFIX}{secrets.token_hex(8)}"
    with context.metadata.session() as session:
        result = preview(session, context.store, site_id, node_id, request, now)
        sensor = result.current.sensor if result.current is not None else None
        record = Calibration(
            site_id=site_id, node_id=node_id, sensor=sensor,
            points=[list(p) for p in result.points],
            pairs=[p.as_json() for p in result.pairs], comment=request.comment,
            created_by=actor[:100], created_at=now, command_id=command_id,
            delivered_to_broker=False)
        session.add(record)
        session.flush()
        audit.record(session, actor, "calibration.send",
                     f"{site_id}/{node_id}/{sensor or 'probe'}",
                     {"points": [list(p) for p in result.current.points],
                      "source": result.current.source} if result.current else None,
                     {"calibration_id": record.id, "points": record.points,
                      "pairs": len(result.pairs), "command_id": command_id,
                      "rmse_before_pct": result.rmse_before_pct,
                      "rmse_after_pct": result.rmse_after_pct},
                     request.comment, at=now)
    command = Command(command_id=command_id, issued_at=now, expires_at=now + COMMAND_LIFETIME,
                      issued_by=actor[:100],
                      action=SetCalibrationAction(sensor=sensor, points=result.points))
    delivered = context.publisher.publish(topic(site_id, node_id, Channel.COMMAND),
                                          encode(command), timeout=PUBLISH_TIMEOUT_S)
    if not delivered:
        log.warning("%s/%s: the broker did not take calibration command %s", site_id, node_id,
                    command_id)
    with context.metadata.session() as session:
        stored = session.get(Calibration, record.id)
        assert stored is not None
        stored.delivered_to_broker = delivered
        session.flush()
        return stored


def record_command_result(session: Session, site_id: str, node_id: str, data: dict[str, Any],
                          message: str, at: datetime) -> None:
    """A node's ``command_result`` event (once per stored event, in the registry's
    transaction): marks the calibration it answers applied or rejected. The first answer
    counts; results of other commands are not ours."""
    command_id = data.get("command_id")
    if not isinstance(command_id, str) or not command_id.startswith(COMMAND_PREFIX):
        return
    record = session.scalar(select(Calibration).where(Calibration.command_id == command_id))
    if record is None or (record.site_id, record.node_id) != (site_id, node_id):
        log.warning("%s/%s answered calibration command %s, which is not its own: ignored",
                    site_id, node_id, command_id)
        return
    if record.applied is not None:
        return
    record.applied = data.get("ok") is True
    record.applied_at = at
    record.node_message = message[:500]
    log.info("%s/%s %s calibration %d: %s", site_id, node_id,
             "applied" if record.applied else "rejected", record.id, message)


def history(session: Session, site_id: str, node_id: str, limit: int = 20
            ) -> list[Calibration]:
    get_node(session, site_id, node_id)
    return list(session.scalars(
        select(Calibration).where(Calibration.site_id == site_id,
                                  Calibration.node_id == node_id)
        .order_by(Calibration.created_at.desc(), Calibration.id.desc()).limit(limit)))


def state_of(record: Calibration) -> str:
    """pending (sent, no answer yet), applied, rejected, or not_delivered (the broker did not
    take the command: save again)."""
    if record.applied is True:
        return "applied"
    if record.applied is False:
        return "rejected"
    return "pending" if record.delivered_to_broker else "not_delivered"


@dataclass(frozen=True)
class SpotCheckCandidate:
    spot_check_id: int
    batch_id: str
    measured_at: datetime
    moisture_pct_wb: float
    method: str
    probe_v: float | None
    reading_at: datetime | None


def spot_check_candidates(session: Session, store: TimeSeriesStore, site_id: str,
                          node_id: str, since: datetime, limit: int = 100
                          ) -> list[SpotCheckCandidate]:
    """The dryer's batch spot checks since ``since``, newest first, with the probe volts found
    at their time (None: no probe reading then): ready-made calibration pairs."""
    get_node(session, site_id, node_id)
    checks = session.execute(
        select(SpotCheck, Batch.batch_id).join(Batch, SpotCheck.batch_id == Batch.batch_id)
        .where(Batch.site_id == site_id, Batch.node_id == node_id,
               SpotCheck.measured_at >= since)
        .order_by(SpotCheck.measured_at.desc(), SpotCheck.id.desc()).limit(limit))
    found = []
    for check, batch_id in checks:
        near = probe_reading_near(store, site_id, node_id, check.measured_at)
        found.append(SpotCheckCandidate(
            spot_check_id=check.id, batch_id=batch_id, measured_at=check.measured_at,
            moisture_pct_wb=check.moisture_pct_wb, method=check.method,
            probe_v=None if near is None else round(near[1], 4),
            reading_at=None if near is None else near[0]))
    return found


def _rmse(pairs: Sequence[tuple[float, float]]) -> float:
    return round(math.sqrt(sum((a - b) ** 2 for a, b in pairs) / len(pairs)), 2)
