"""Readings of a node: the latest one and time series, downsampled on the server so a 7-day
batch at 10 s resolution stays a few thousand points."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cacao_dryer.errors import NotFoundError, PayloadError
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from gateway.api.deps import ContextDep, OperatorDep, SessionDep
from gateway.api.routes.nodes import LatestReading, get_node
from gateway.timeseries import STATE_FIELDS

router = APIRouter(prefix="/api/readings", tags=["readings"])

SERIES_FIELDS = (*MEASUREMENTS_BY_KEY, *STATE_FIELDS)
UNITS = {key: m.unit for key, m in MEASUREMENTS_BY_KEY.items()} | {
    "fan_speed_pct": "%", "vent_open_pct": "%", "config_version": ""}
DEFAULT_FIELDS = ("air_temp_c", "air_rh_pct", "bean_moisture_pct_wb")
MAX_POINTS = 5000
MAX_RANGE = timedelta(days=60)
# Bucket widths the API picks from, so charts of neighbouring ranges line up.
NICE_BUCKETS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                  86400)


class SeriesOut(BaseModel):
    site_id: str
    node_id: str
    start: datetime
    end: datetime
    every_s: float | None = Field(description="Bucket width; null = raw readings")
    fields: list[str]
    units: dict[str, str]
    times: list[datetime]
    values: dict[str, list[float | None]] = Field(
        description="Field → one value per time (null where the field was not measured)")


def choose_bucket_s(start: datetime, end: datetime, max_points: int) -> float:
    """The smallest 'nice' bucket that keeps the series within ``max_points``.

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> choose_bucket_s(t, t + timedelta(days=7), 2000)
    600
    """
    span_s = (end - start).total_seconds()
    for bucket in NICE_BUCKETS_S:
        if span_s / bucket <= max_points:
            return bucket
    return math.ceil(span_s / max_points)


@router.get("/{site_id}/{node_id}/latest", response_model=LatestReading,
            summary="The node's newest reading")
def latest(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
           _actor: OperatorDep) -> LatestReading:
    get_node(session, site_id, node_id)
    reading = LatestReading.of(context.store.latest(site_id, node_id))
    if reading is None:
        raise NotFoundError(f"node {site_id}/{node_id} has no stored reading yet")
    return reading


@router.get("/{site_id}/{node_id}/series", response_model=SeriesOut,
            summary="A node's readings over time, averaged into buckets")
def series(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
           _actor: OperatorDep,
           start: datetime | None = None, end: datetime | None = None,
           fields: Annotated[list[str] | None, Query()] = None,
           every_s: Annotated[float | None, Query(gt=0, le=86400)] = None,
           max_points: Annotated[int, Query(ge=10, le=MAX_POINTS)] = 2000,
           raw: bool = False) -> SeriesOut:
    """Default: the last 24 h of air temperature, humidity and bean moisture. The bucket is
    chosen to stay under ``max_points`` unless ``every_s`` is given; ``raw=true`` returns the
    readings themselves (refused when there would be more than the maximum)."""
    get_node(session, site_id, node_id)
    end = end or context.clock.now()
    start = start or end - timedelta(hours=24)
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise PayloadError(f"{name}: give a time zone (e.g. 2026-11-23T15:00:00Z)")
    if start >= end:
        raise PayloadError("start must be before end")
    if end - start > MAX_RANGE:
        raise PayloadError(f"range longer than {MAX_RANGE.days} days: ask in parts")
    wanted = list(dict.fromkeys(fields or DEFAULT_FIELDS))
    unknown = [f for f in wanted if f not in SERIES_FIELDS]
    if unknown:
        raise PayloadError(f"fields: unknown {', '.join(unknown)} "
                           f"(known: {', '.join(SERIES_FIELDS)})")
    bucket: float | None = None if raw else (every_s or choose_bucket_s(start, end, max_points))
    if bucket is not None and (end - start).total_seconds() / bucket > MAX_POINTS:
        raise PayloadError(f"every_s {bucket:g} gives more than {MAX_POINTS} points")
    points = context.store.series(site_id, node_id, start, end, wanted, bucket)
    if bucket is None and len(points) > MAX_POINTS:
        raise PayloadError(f"{len(points)} raw readings in range (max {MAX_POINTS}): "
                           "drop raw=true or narrow the range")
    return SeriesOut(
        site_id=site_id, node_id=node_id, start=start, end=end, every_s=bucket, fields=wanted,
        units={f: UNITS[f] for f in wanted},
        times=[p.at for p in points],
        values={f: [p.values.get(f) for p in points] for f in wanted})
