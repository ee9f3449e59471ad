"""Batches: start and end (commands to the node), spot checks, corrections, the list managers
review, one batch with its progress, metrics, drying-end prediction and end suggestion, and
CSV exports. The rules live in ``gateway.batches``; this module is HTTP only."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, tzinfo
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from cacao_dryer.errors import PayloadError
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from gateway import batches as service
from gateway.api.deps import ContextDep, IsoTime, ManagerDep, OperatorDep, SessionDep
from gateway.api.routes.nodes import NodeEventOut
from gateway.api.routes.readings import SERIES_FIELDS, UNITS, choose_bucket_s
from gateway.batch_metrics import REASONS, QualityFlag
from gateway.context import GatewayContext
from gateway.metadata.models import Batch, SpotCheck

router = APIRouter(prefix="/api/batches", tags=["batches"])
log = logging.getLogger("cacao_dryer.gateway")

EXPORT_FIELDS = (*MEASUREMENTS_BY_KEY, "fan_speed_pct", "vent_open_pct")
MAX_EXPORT_ROWS = 100_000
MAX_PAGE = 500


# --- response models --------------------------------------------------------------------------

class BatchOut(BaseModel):
    batch_id: str
    site_id: str
    node_id: str
    lot_code: str
    producer: str
    crop: str
    started_at: datetime
    ended_at: datetime | None
    running: bool
    duration_h: float = Field(description="Loading to emptying (running: to now) [h]")
    initial_mass_kg: float | None
    initial_moisture_pct_wb: float | None
    final_mass_kg: float | None
    final_moisture_pct_wb: float | None
    notes: str
    started_by: str = Field(description="Who started it; 'node' = the node on its own")
    ended_by: str | None

    @classmethod
    def of(cls, batch: Batch, now: datetime) -> BatchOut:
        return cls(batch_id=batch.batch_id, site_id=batch.site_id, node_id=batch.node_id,
                   lot_code=batch.lot_code, producer=batch.producer, crop=batch.crop,
                   started_at=batch.started_at, ended_at=batch.ended_at,
                   running=batch.ended_at is None, duration_h=service.duration_h(batch, now),
                   initial_mass_kg=batch.initial_mass_kg,
                   initial_moisture_pct_wb=batch.initial_moisture_pct_wb,
                   final_mass_kg=batch.final_mass_kg,
                   final_moisture_pct_wb=batch.final_moisture_pct_wb, notes=batch.notes,
                   started_by=batch.started_by, ended_by=batch.ended_by)


class CommandOut(BaseModel):
    command_id: str
    action: str
    issued_at: datetime
    expires_at: datetime = Field(description="The node drops the command after this")
    delivered_to_broker: bool = Field(
        description="False: the broker was unreachable; the record stands, tell the node "
                    "by hand or end and restart the batch when it is back")


class BatchWithCommand(BatchOut):
    command: CommandOut


class SpotCheckOut(BaseModel):
    id: int
    measured_at: datetime
    moisture_pct_wb: float
    method: str
    note: str
    recorded_by: str

    @classmethod
    def of(cls, check: SpotCheck) -> SpotCheckOut:
        return cls(id=check.id, measured_at=check.measured_at,
                   moisture_pct_wb=check.moisture_pct_wb, method=check.method,
                   note=check.note, recorded_by=check.recorded_by)


class NodeCommandOut(BaseModel):
    command_id: str
    action: str
    issued_at: datetime
    issued_by: str
    delivered_to_broker: bool
    node_ok: bool | None = Field(description="The node's command_result; null = no answer yet")
    node_message: str | None
    node_answered_at: datetime | None


class NodeSideOut(BaseModel):
    started_at: datetime | None = Field(description="The node's batch_started event")
    ended_at: datetime | None = Field(description="The node's batch_ended event")
    commands: list[NodeCommandOut]


class BatchDetail(BatchOut):
    spot_checks: list[SpotCheckOut]
    target_moisture_pct_wb: float
    current_moisture_pct_wb: float | None
    current_moisture_at: datetime | None
    current_moisture_source: str | None = Field(
        description="final (given at the end), reading (the node's last 1-minute mean) or "
                    "spot_check (newer than the last reading)")
    progress_pct: float | None = Field(description="0 at loading, 100 at the target moisture")
    node: NodeSideOut


class BatchPage(BaseModel):
    total: int = Field(description="Batches matching the filters")
    limit: int
    offset: int
    items: list[BatchOut]


# --- life cycle -------------------------------------------------------------------------------

def _reconcile_thresholds(context: GatewayContext) -> None:
    """The dryer's thresholds depend on its batch stage: push the new ones now rather than
    at the next periodic reconcile (runs after the response, once the batch is committed)."""
    from gateway import thresholds

    try:
        thresholds.reconcile(context)
    except Exception:  # the periodic job retries within a minute
        log.exception("threshold reconcile after a batch change failed")


@router.post("", response_model=BatchWithCommand, status_code=201,
             summary="Start a batch in a dryer (and tell its node)")
def start_batch(request: service.NewBatch, session: SessionDep, context: ContextDep,
                actor: OperatorDep, background: BackgroundTasks) -> BatchWithCommand:
    now = context.clock.now()
    batch, outcome = service.start_batch(session, context.publisher, request, actor.username,
                                         now)
    session.commit()  # before the reconcile below reads it in its own transaction
    background.add_task(_reconcile_thresholds, context)
    return BatchWithCommand(**BatchOut.of(batch, now).model_dump(),
                            command=CommandOut(**vars(outcome)))


@router.post("/{batch_id}/end", response_model=BatchWithCommand,
             summary="End a running batch (and tell its node)")
def end_batch(batch_id: str, request: service.BatchEnd, session: SessionDep,
              context: ContextDep, actor: OperatorDep,
              background: BackgroundTasks) -> BatchWithCommand:
    now = context.clock.now()
    batch, outcome = service.end_batch(session, context.publisher, batch_id, request,
                                       actor.username, now)
    session.commit()
    background.add_task(_reconcile_thresholds, context)
    return BatchWithCommand(**BatchOut.of(batch, now).model_dump(),
                            command=CommandOut(**vars(outcome)))


@router.patch("/{batch_id}", response_model=BatchOut, summary="Correct what was typed")
def correct_batch(batch_id: str, request: service.BatchCorrection, session: SessionDep,
                  context: ContextDep, actor: OperatorDep) -> BatchOut:
    now = context.clock.now()
    return BatchOut.of(service.correct_batch(session, batch_id, request, actor.username, now),
                       now)


@router.post("/{batch_id}/spot-checks", response_model=SpotCheckOut, status_code=201,
             summary="Record a hand-meter (or oven, halogen) moisture measurement")
def add_spot_check(batch_id: str, request: service.NewSpotCheck, session: SessionDep,
                   context: ContextDep, actor: OperatorDep) -> SpotCheckOut:
    return SpotCheckOut.of(service.add_spot_check(session, batch_id, request, actor.username,
                                                  context.clock.now()))


@router.get("/{batch_id}/spot-checks", response_model=list[SpotCheckOut],
            summary="A batch's spot checks, oldest first")
def list_spot_checks(batch_id: str, session: SessionDep, _actor: OperatorDep
                     ) -> list[SpotCheckOut]:
    return [SpotCheckOut.of(check) for check in service.spot_checks(session, batch_id)]


# --- reading ----------------------------------------------------------------------------------

def _filter(site_id: str | None, node_id: str | None, running: bool | None,
            since: datetime | None, until: datetime | None, producer: str | None,
            lot_code: str | None) -> service.BatchFilter:
    if since is not None and until is not None and since >= until:
        raise PayloadError("since must be before until")
    return service.BatchFilter(site_id=site_id, node_id=node_id, running=running,
                               since=since, until=until, producer=producer,
                               lot_code=lot_code)


@router.get("", response_model=BatchPage, summary="Batches, newest first")
def list_batches(session: SessionDep, context: ContextDep, _actor: OperatorDep,
                 site_id: str | None = None, node_id: str | None = None,
                 running: bool | None = None,
                 since: Annotated[IsoTime | None, Query(
                     description="Started at or after")] = None,
                 until: Annotated[IsoTime | None, Query(
                     description="Started before")] = None,
                 producer: Annotated[str | None, Query(
                     max_length=200, description="Part of the producer's name")] = None,
                 lot_code: Annotated[str | None, Query(
                     max_length=64, description="Part of the lot code")] = None,
                 flag: Annotated[str | None, Query(description=(
                     "Only batches with this quality flag (computed now; at most "
                     f"{service.MAX_FLAG_SCAN} batches may match the other filters)"))] = None,
                 limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                 offset: Annotated[int, Query(ge=0)] = 0) -> BatchPage:
    now = context.clock.now()
    where = _filter(site_id, node_id, running, since, until, producer, lot_code)
    if flag is None:
        total, page = service.list_batches(session, where, limit=limit, offset=offset)
    else:
        total, page = service.list_flagged(session, context.store, where, flag, now,
                                           limit=limit, offset=offset)
    return BatchPage(total=total, limit=limit, offset=offset,
                     items=[BatchOut.of(batch, now) for batch in page])


# --- analysis ---------------------------------------------------------------------------------

class PageFitOut(BaseModel):
    k_per_h: float
    n: float
    r2: float
    residual_std_pct: float = Field(description="Typical distance of the readings from the "
                                                "curve [% w.b.]")
    initial_moisture_pct_wb: float
    equilibrium_moisture_pct_wb: float
    night_weight: float | None = Field(
        description="How much a night hour counted as drying time (0..1); null = elapsed time")


class PredictionOut(BaseModel):
    batch_id: str
    target_moisture_pct_wb: float
    source: str = Field(description="readings (the node's moisture) or spot_checks")
    every_s: int = Field(description="Readings were averaged over buckets this wide [s]")
    predicted_at: datetime | None = Field(description="When the beans reach the target")
    hours_remaining: float | None
    earliest: datetime | None = Field(description="Lower end of the uncertainty band")
    latest: datetime | None = Field(description="Upper end of the uncertainty band")
    confidence: float = Field(description="Probability the band is meant to cover")
    current_moisture_pct_wb: float | None
    points_used: int
    reason: str | None = Field(description="Why there is no prediction, or since when the "
                                           "target is reached")
    fit: PageFitOut | None


@router.get("/{batch_id}/prediction", response_model=PredictionOut,
            summary="When the beans will reach the target moisture (Page model), with a band")
def prediction(batch_id: str, session: SessionDep, context: ContextDep, _actor: OperatorDep,
               confidence: Annotated[float, Query(ge=0.5, le=0.99)] = 0.9) -> PredictionOut:
    now = context.clock.now()
    batch = service.get_batch(session, batch_id)
    result = service.predict_end(session, context.store, batch, now, confidence)
    found = result.prediction
    fit = found.fit
    return PredictionOut(
        batch_id=batch_id, target_moisture_pct_wb=result.target_moisture_pct_wb,
        source=result.source, every_s=result.every_s, predicted_at=found.predicted_at,
        hours_remaining=found.hours_remaining, earliest=found.earliest, latest=found.latest,
        confidence=found.confidence, current_moisture_pct_wb=_rounded(
            found.current_moisture_pct_wb), points_used=found.points_used, reason=found.reason,
        fit=None if fit is None else PageFitOut(
            k_per_h=fit.k_per_h, n=fit.n, r2=fit.r2, residual_std_pct=fit.residual_std_pct,
            initial_moisture_pct_wb=fit.initial_moisture_pct_wb,
            equilibrium_moisture_pct_wb=fit.equilibrium_moisture_pct_wb,
            night_weight=fit.clock.night_weight if fit.clock else None))


class QualityFlagOut(BaseModel):
    code: str = Field(description=", ".join(service.QUALITY_FLAGS))
    reason: str = Field(description="One line in English naming the numbers")
    reason_key: str = Field("", description=(
        "Which reason it is, for a text in the reader's language (" + ", ".join(REASONS)
        + "); empty: only `reason` says why"))
    reason_params: dict[str, int | float | str] = Field(default_factory=dict, description=(
        "The reason's numbers, rounded as `reason` shows them, units in their names (_pct % "
        "w.b., _pct_per_h % w.b. per hour, _points % w.b. points, _c °C, _h hours, days); "
        "`at` is an ISO 8601 UTC time, `source` where the moisture came from (as "
        "`moisture_source`). Reference: docs/batches.md"))

    @classmethod
    def of(cls, flag: QualityFlag) -> QualityFlagOut:
        return cls(code=flag.code, reason=flag.reason, reason_key=flag.reason_key,
                   reason_params=dict(flag.reason_params))


class MetricsOut(BaseModel):
    batch_id: str
    running: bool
    every_s: int = Field(description="Readings were averaged over buckets this wide [s]")
    readings: int = Field(description="Buckets of readings the metrics saw")
    duration_h: float
    initial_moisture_pct_wb: float | None
    final_moisture_pct_wb: float | None = Field(description="Final, or current while running")
    moisture_source: str | None = Field(description="final, final_mass, spot_check or reading")
    average_drying_rate_pct_per_h: float | None
    max_sustained_rate_pct_per_h: float | None = Field(
        description="Fastest fall of moisture over 6 h [% w.b./h]")
    max_air_temp_c: float | None
    time_above_limit_h: float = Field(description="Air at or above the hard limit (65 °C)")
    time_above_alarm_h: float
    min_night_humidity_margin_pct: float | None = Field(
        description="Lowest bean moisture minus the equilibrium moisture of the inside air at "
                    "night [% points]; negative = the air could re-wet the beans")
    min_night_humidity_margin_at: datetime | None
    flags: list[QualityFlagOut]


@router.get("/{batch_id}/metrics", response_model=MetricsOut,
            summary="How the batch dried: rates, heat, night humidity, quality flags")
def batch_metrics(batch_id: str, session: SessionDep, context: ContextDep,
                  _actor: OperatorDep) -> MetricsOut:
    now = context.clock.now()
    batch = service.get_batch(session, batch_id)
    return _metrics_out(batch, service.batch_metrics(session, context.store, batch, now))


def _metrics_out(batch: Batch, result: service.MetricsResult) -> MetricsOut:
    found = result.metrics
    return MetricsOut(
        batch_id=batch.batch_id, running=batch.ended_at is None, every_s=result.every_s,
        readings=result.readings, duration_h=found.duration_h,
        initial_moisture_pct_wb=found.initial_moisture_pct_wb,
        final_moisture_pct_wb=found.final_moisture_pct_wb,
        moisture_source=found.moisture_source,
        average_drying_rate_pct_per_h=found.average_drying_rate_pct_per_h,
        max_sustained_rate_pct_per_h=found.max_sustained_rate_pct_per_h,
        max_air_temp_c=found.max_air_temp_c, time_above_limit_h=found.time_above_limit_h,
        time_above_alarm_h=found.time_above_alarm_h,
        min_night_humidity_margin_pct=found.min_night_humidity_margin_pct,
        min_night_humidity_margin_at=found.min_night_humidity_margin_at,
        flags=[QualityFlagOut.of(f) for f in found.flags])


class EndSuggestionOut(BaseModel):
    batch_id: str
    should_end: bool
    since: datetime | None = Field(description="At or below the target since then")
    reason: str
    target_moisture_pct_wb: float
    hold_h: float
    source: str | None = Field(description="readings or spot_checks; null for an ended batch")


@router.get("/{batch_id}/end-suggestion", response_model=EndSuggestionOut,
            summary="Whether the beans have been dry long enough to unload")
def end_suggestion(batch_id: str, session: SessionDep, context: ContextDep,
                   _actor: OperatorDep,
                   hold_h: Annotated[float, Query(ge=0, le=72, description=(
                       "Hours the moisture must have stayed at or below the target"))
                   ] = service.DEFAULT_END_HOLD_H) -> EndSuggestionOut:
    batch = service.get_batch(session, batch_id)
    advice = service.suggest_batch_end(session, context.store, batch, context.clock.now(),
                                       hold_h)
    return EndSuggestionOut(batch_id=batch_id, should_end=advice.suggestion.should_end,
                            since=advice.suggestion.since, reason=advice.suggestion.reason,
                            target_moisture_pct_wb=advice.target_moisture_pct_wb,
                            hold_h=advice.hold_h, source=advice.source)


# --- what the dashboard's batch pages draw -----------------------------------------------------

CHART_FIELDS = ("air_temp_c", "air_rh_pct", "bean_moisture_pct_wb")
MAX_COMPARE = 4
COMPARE_POINTS = 500   # per batch: enough for a curve on a phone, ~10 kB of JSON each


class ReferenceLines(BaseModel):
    """The dryer's thresholds the batch is judged by, drawn as lines on its charts."""

    target_moisture_pct_wb: float
    air_temp_alarm_c: float
    air_temp_limit_c: float


class BatchSeriesOut(BaseModel):
    batch_id: str
    site_id: str
    node_id: str
    start: datetime = Field(description="The batch's start")
    end: datetime = Field(description="Its end; running: now (plus 5 min for node clocks)")
    every_s: float = Field(description="Readings were averaged over buckets this wide [s]")
    fields: list[str]
    units: dict[str, str]
    times: list[datetime] = Field(description="Each bucket's start")
    values: dict[str, list[float | None]] = Field(
        description="Field → one value per time (null where the field was not measured)")
    reference: ReferenceLines


class CompareItem(BaseModel):
    batch: BatchOut
    metrics: MetricsOut
    every_s: float = Field(description="The curve's bucket width [s]")
    hours: list[float] = Field(description="Hours since the batch's start, one per point")
    moisture_pct_wb: list[float | None] = Field(description="Bean moisture [% w.b.]")


class CompareOut(BaseModel):
    items: list[CompareItem]


def _reference(session: Session, batch: Batch) -> ReferenceLines:
    limits = service.thresholds_for(session, batch.site_id, batch.node_id)
    return ReferenceLines(target_moisture_pct_wb=limits.target_moisture_pct_wb,
                          air_temp_alarm_c=limits.air_temp_alarm_c,
                          air_temp_limit_c=limits.air_temp_limit_c)


@router.get("/compare", response_model=CompareOut,
            summary="2-4 batches side by side: record, metrics and moisture curve")
def compare_batches(session: SessionDep, context: ContextDep, _actor: OperatorDep,
                    ids: Annotated[str, Query(
                        max_length=MAX_COMPARE * 41,
                        description="Batch ids separated by commas (2 to 4)")]
                    ) -> CompareOut:
    """Each batch's record, metrics (computed now) and moisture against hours since its
    start, averaged to at most 500 points, in the order asked for."""
    wanted = [part.strip() for part in ids.split(",") if part.strip()]
    if not 2 <= len(wanted) <= MAX_COMPARE:
        raise PayloadError(f"ids: give 2 to {MAX_COMPARE} batch ids separated by commas, "
                           f"not {len(wanted)}")
    if len(set(wanted)) != len(wanted):
        raise PayloadError("ids: a batch is named twice")
    batches = [service.get_batch(session, batch_id) for batch_id in wanted]
    now = context.clock.now()
    items = []
    for batch in batches:
        start, end = service.batch_span(batch, now)
        bucket = choose_bucket_s(start, end, COMPARE_POINTS)
        points = service.batch_series(context.store, batch, [service.MOISTURE], bucket, now)
        curve = [(p, value) for p in points
                 if (value := p.values.get(service.MOISTURE)) is not None]
        items.append(CompareItem(
            batch=BatchOut.of(batch, now),
            metrics=_metrics_out(batch, service.batch_metrics(session, context.store, batch,
                                                              now)),
            every_s=bucket,
            hours=[round((p.at - batch.started_at).total_seconds() / 3600, 3)
                   for p, _ in curve],
            moisture_pct_wb=[round(value, 2) for _, value in curve]))
    return CompareOut(items=items)


@router.get("/{batch_id}/series", response_model=BatchSeriesOut,
            summary="A batch's readings from start to end, averaged into buckets")
def batch_series(batch_id: str, session: SessionDep, context: ContextDep,
                 _actor: OperatorDep,
                 fields: Annotated[list[str] | None, Query(
                     description="Default: air temperature, air humidity, bean moisture")
                 ] = None,
                 max_points: Annotated[int, Query(ge=10, le=5000)] = 1500) -> BatchSeriesOut:
    """The whole batch in one call: the bucket is the smallest of the readings API's widths
    that keeps it under ``max_points`` (a 7-day batch of 10-second readings: 10-minute
    means, 1,008 points). The thresholds come along for reference lines."""
    now = context.clock.now()
    batch = service.get_batch(session, batch_id)
    wanted = list(dict.fromkeys(fields or CHART_FIELDS))
    unknown = [f for f in wanted if f not in SERIES_FIELDS]
    if unknown:
        raise PayloadError(f"fields: unknown {', '.join(unknown)} "
                           f"(known: {', '.join(SERIES_FIELDS)})")
    start, end = service.batch_span(batch, now)
    bucket = choose_bucket_s(start, end, max_points)
    points = service.batch_series(context.store, batch, wanted, bucket, now)
    return BatchSeriesOut(
        batch_id=batch_id, site_id=batch.site_id, node_id=batch.node_id, start=start,
        end=end, every_s=bucket, fields=wanted, units={f: UNITS[f] for f in wanted},
        times=[p.at for p in points],
        values={f: [_rounded(p.values.get(f)) for p in points] for f in wanted},
        reference=_reference(session, batch))


@router.get("/{batch_id}/events", response_model=list[NodeEventOut],
            summary="The dryer's events while the batch ran, newest first")
def batch_events(batch_id: str, session: SessionDep, context: ContextDep,
                 _actor: OperatorDep,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[NodeEventOut]:
    batch = service.get_batch(session, batch_id)
    return [NodeEventOut(seq=e.seq, occurred_at=e.occurred_at, received_at=e.received_at,
                         type=e.type, message=e.message, data=e.data)
            for e in service.batch_events(session, batch, context.clock.now(), limit)]


# After /compare (and every other fixed path), so those are not taken for a batch id.
@router.get("/{batch_id}", response_model=BatchDetail,
            summary="One batch: record, spot checks, current moisture, progress, node side")
def batch_detail(batch_id: str, session: SessionDep, context: ContextDep,
                 _actor: OperatorDep) -> BatchDetail:
    now = context.clock.now()
    batch = service.get_batch(session, batch_id)
    checks = service.spot_checks(session, batch_id)
    progress = service.progress(session, context.store, batch, now, checks)
    node = service.node_view(session, batch, now)
    return BatchDetail(
        **BatchOut.of(batch, now).model_dump(),
        spot_checks=[SpotCheckOut.of(check) for check in checks],
        target_moisture_pct_wb=progress.target_moisture_pct_wb,
        current_moisture_pct_wb=progress.current_moisture_pct_wb,
        current_moisture_at=progress.current_moisture_at,
        current_moisture_source=progress.current_moisture_source,
        progress_pct=progress.progress_pct,
        node=NodeSideOut(started_at=node.started_at, ended_at=node.ended_at,
                         commands=[NodeCommandOut(**vars(c)) for c in node.commands]))


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- exports (managers) -----------------------------------------------------------------------

def _csv(rows: Iterable[Iterable[object]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return service.iso(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _download(rows: Iterable[Iterable[object]], filename: str) -> StreamingResponse:
    return StreamingResponse(_csv(rows), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition":
                                      f'attachment; filename="{filename}"'})


@router.get("/{batch_id}/readings.csv", response_class=StreamingResponse,
            summary="A batch's readings as CSV (means per bucket, or raw)")
def export_readings(batch_id: str, session: SessionDep, context: ContextDep,
                    _actor: ManagerDep,
                    every_s: Annotated[float, Query(gt=0, le=86400,
                                                    description="Bucket width [s]")] = 300,
                    raw: bool = False) -> StreamingResponse:
    """One row per bucket of ``every_s`` seconds (the mean of each field), or per reading
    with ``raw=true``; times in UTC and in the site's time zone. Empty cells: not measured
    in that bucket."""
    now = context.clock.now()
    batch = service.get_batch(session, batch_id)
    start, end = service.batch_span(batch, now)
    bucket = None if raw else every_s
    if bucket is not None and (end - start).total_seconds() / bucket > MAX_EXPORT_ROWS:
        raise PayloadError(f"every_s {bucket:g} gives more than {MAX_EXPORT_ROWS} rows: "
                           "choose a wider bucket")
    points = service.batch_series(context.store, batch, EXPORT_FIELDS, bucket, now)
    if len(points) > MAX_EXPORT_ROWS:
        raise PayloadError(f"{len(points)} raw readings (max {MAX_EXPORT_ROWS}): export "
                           "with every_s instead")
    zone = service.site_zone(session, batch.site_id)
    header = ["batch_id", "measured_at", "measured_at_local", *EXPORT_FIELDS]
    rows = ([batch_id, _cell(p.at), _local(p.at, zone),
             *(_cell(p.values.get(f)) for f in EXPORT_FIELDS)] for p in points)
    return _download([header, *rows], f"{batch_id}.csv")


def _local(moment: datetime | None, zone: tzinfo) -> str:
    """A time in the site's zone as spreadsheets read it (``2026-03-01 07:00:00``)."""
    return "" if moment is None else moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


SUMMARY_COLUMNS = ("batch_id", "site_id", "node_id", "lot_code", "producer", "crop",
                   "started_at", "ended_at", "timezone", "started_at_local",
                   "ended_at_local", "duration_h", "initial_mass_kg",
                   "initial_moisture_pct_wb", "final_mass_kg", "final_moisture_pct_wb",
                   "spot_checks", "started_by", "ended_by", "notes")
METRIC_COLUMNS = ("moisture_source", "average_drying_rate_pct_per_h",
                  "max_sustained_rate_pct_per_h", "max_air_temp_c", "time_above_limit_h",
                  "time_above_alarm_h", "min_night_humidity_margin_pct", "quality_flags",
                  "flag_reasons")


@router.get(".csv", response_class=StreamingResponse, summary="Batch summaries as CSV")
def export_batches(session: SessionDep, context: ContextDep, _actor: ManagerDep,
                   site_id: str | None = None, node_id: str | None = None,
                   running: bool | None = None,
                   since: IsoTime | None = None, until: IsoTime | None = None,
                   producer: Annotated[str | None, Query(max_length=200)] = None,
                   lot_code: Annotated[str | None, Query(max_length=64)] = None,
                   flag: Annotated[str | None, Query(description=(
                       "Only batches with this quality flag, as in the list"))] = None,
                   metrics: Annotated[bool, Query(description=(
                       "Add metric and quality-flag columns (computed now; at most "
                       f"{service.MAX_FLAG_SCAN} batches)"))] = False
                   ) -> StreamingResponse:
    """The same filters as the list; every matching batch, newest first."""
    now = context.clock.now()
    where = _filter(site_id, node_id, running, since, until, producer, lot_code)
    if flag is not None and flag not in service.QUALITY_FLAGS:
        raise PayloadError(f"flag {flag!r} is not a quality flag (one of "
                           f"{', '.join(service.QUALITY_FLAGS)})")
    total, found = service.list_batches(session, where)
    if (metrics or flag is not None) and total > service.MAX_FLAG_SCAN:
        raise PayloadError(f"metrics for {total} batches requested, at most "
                           f"{service.MAX_FLAG_SCAN}: narrow with since/until, site_id or "
                           "node_id")
    computed: dict[str, MetricsOut] = {}
    if metrics or flag is not None:  # once per batch, for the filter and the columns
        computed = {batch.batch_id: _metrics_out(batch, service.batch_metrics(
            session, context.store, batch, now)) for batch in found}
    if flag is not None:
        found = [batch for batch in found
                 if any(f.code == flag for f in computed[batch.batch_id].flags)]
    counts = service.spot_check_counts(session, [b.batch_id for b in found])
    zones = {site: service.site_zone(session, site) for site in {b.site_id for b in found}}
    columns = [*SUMMARY_COLUMNS, *(METRIC_COLUMNS if metrics else ())]
    rows: list[list[object]] = [columns]
    for batch in found:
        zone = zones[batch.site_id]
        values = BatchOut.of(batch, now).model_dump() | {
            "spot_checks": counts.get(batch.batch_id, 0), "timezone": str(zone),
            "started_at_local": _local(batch.started_at, zone),
            "ended_at_local": _local(batch.ended_at, zone)}
        if metrics:
            found_metrics = computed[batch.batch_id]
            values |= found_metrics.model_dump(include=set(METRIC_COLUMNS)) | {
                "quality_flags": " ".join(f.code for f in found_metrics.flags),
                "flag_reasons": "; ".join(f.reason for f in found_metrics.flags)}
        rows.append([_cell(values[column]) for column in columns])
    return _download(rows, "batches.csv")

