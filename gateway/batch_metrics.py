"""How did a batch dry? Metrics and quality flags from its readings, pure and deterministic.

Input is what the stores return (``SeriesPoint``-like: ``at`` and a ``values`` dict keyed as
in cacao_dryer/measurements.py), the batch record's numbers and the site's ``Thresholds``.
Samples may come in any order, with gaps and with fields missing; nothing here raises on odd
readings. Definitions and the sources of every limit: docs/batches.md, "Metrics and quality
flags" and "Suggesting the end of a batch".

Moisture is read through hourly medians (``drying_model.hourly_medians``), so probe noise
(±1 %) and single spikes neither fake a fast drying rate nor a re-wetting nor an early end.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from statistics import median
from types import MappingProxyType
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cacao_dryer.contract import Thresholds
from cacao_dryer.errors import PayloadError
from cacao_dryer.science import gab_equilibrium_moisture_pct_wb, moisture_from_tray_mass_pct_wb
from gateway.drying_model import MoisturePoint, hourly_medians

MOISTURE, AIR_TEMP, AIR_RH = "bean_moisture_pct_wb", "air_temp_c", "air_rh_pct"
SUSTAINED_WINDOW_H = 6.0      # a "sustained" drying rate is measured over 6 h (estimate)
MAX_SAMPLE_SPAN = timedelta(minutes=30)   # a sample stands for at most this much time
# Suggested defaults [docs/references.md]: ready ≤ target + 0.5 (7.5 %), rejected above 8 %
# [ICCO, CAOBISCO2016]; at least 3 days of drying; mould risk if above 8 % after 7 days [CRC].
READY_MARGIN_PCT = 0.5
REJECT_ABOVE_PCT_WB = 8.0
MIN_DRYING_H = 72.0
MOULD_CHECK_H = 7 * 24.0
# Re-wetting: 3-hour medians rising 1.5 points above their lowest. Smaller rises are within
# the noise of a probe (±1 %) or a load cell (±1.92 % [IIETA2025]) (estimate).
REWET_WINDOW_H = 3.0
REWET_RISE_PCT = 1.5
END_MEDIAN_WINDOW = timedelta(hours=1)   # suggest_end's rolling median
END_GAP = timedelta(hours=2)             # a longer gap breaks the hold
END_STALE = timedelta(hours=1)           # the last reading must be this recent
OVERHEAT_MIN_H = 1 / 6        # 10 min at the limit: more than a sensor hiccup (estimate)
EARLY_HEAT_MIN_H = 1.0        # an hour above the early-phase cap (estimate)

# Every reason a flag can give, for readers of other languages: its key and its parameters.
# A parameter's unit is in its name (_pct: % w.b., _pct_per_h: % w.b. per hour, _points: % w.b.
# points, _c: °C, _h: hours, days) and its value is a number written with the decimals given
# here, the same as in the English ``reason``; AS_SET: a threshold as the site set it (as few
# decimals as it needs, at most 3), TIME: an ISO 8601 UTC moment (show it in the site's time
# zone), SOURCE: where the moisture came from (``BatchMetrics.moisture_source``).
AS_SET, TIME, SOURCE = "as_set", "time", "moisture_source"
ParamFormat = int | str
ParamValue = int | float | str
REASONS: Mapping[str, Mapping[str, ParamFormat]] = MappingProxyType({
    "dried_too_fast.rate": {"rate_pct_per_h": 1, "window_h": 0, "limit_pct_per_h": AS_SET},
    "dried_too_fast.too_soon": {"moisture_pct": 1, "after_h": 0, "min_drying_h": 0},
    "overheated.above_limit": {"limit_c": AS_SET, "duration_h": 1, "max_c": 1},
    "overheated.early_phase": {"limit_c": AS_SET, "duration_h": 1, "max_c": 1},
    "rewetted.rise": {"low_pct": 1, "high_pct": 1, "rise_points": 1, "at": TIME},
    "too_long.still_wet": {"moisture_pct": 1, "days": 0, "reject_above_pct": AS_SET},
    "not_dry.above_ready": {"moisture_pct": 1, "source": SOURCE, "ready_pct": AS_SET,
                            "reject_above_pct": AS_SET},
    "over_dried.below_limit": {"moisture_pct": 1, "source": SOURCE, "limit_pct": AS_SET},
})


class SampleLike(Protocol):
    """A reading as the stores return it (``gateway.timeseries.SeriesPoint``)."""

    @property
    def at(self) -> datetime: ...
    @property
    def values(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class Sample:
    """A plain ``SampleLike`` for callers and tests that do not hold SeriesPoints."""

    at: datetime
    values: Mapping[str, float]


@dataclass(frozen=True)
class SpotCheck:
    at: datetime
    moisture_pct_wb: float


@dataclass(frozen=True)
class BatchData:
    """Everything the metrics need about one batch; ``end`` None = still running."""

    start: datetime
    now: datetime
    samples: Sequence[SampleLike] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    end: datetime | None = None
    spot_checks: Sequence[SpotCheck] = ()
    initial_moisture_pct_wb: float | None = None
    initial_mass_kg: float | None = None
    final_moisture_pct_wb: float | None = None
    final_mass_kg: float | None = None
    site_timezone: str = "America/Lima"


@dataclass(frozen=True)
class QualityFlag:
    code: str      # dried_too_fast, overheated, rewetted, too_long, not_dry, over_dried
    reason: str    # one line naming the numbers, in English
    reason_key: str = ""   # which of REASONS it is ("" = none: show ``reason``)
    reason_params: Mapping[str, ParamValue] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class BatchMetrics:
    duration_h: float
    initial_moisture_pct_wb: float | None
    final_moisture_pct_wb: float | None
    moisture_source: str | None   # final, final_mass, spot_check, reading
    average_drying_rate_pct_per_h: float | None
    max_sustained_rate_pct_per_h: float | None
    max_air_temp_c: float | None
    time_above_limit_h: float
    time_above_alarm_h: float
    min_night_humidity_margin_pct: float | None
    min_night_humidity_margin_at: datetime | None
    flags: list[QualityFlag]


@dataclass(frozen=True)
class EndSuggestion:
    should_end: bool
    since: datetime | None
    reason: str


def compute_metrics(batch: BatchData) -> BatchMetrics:
    """Metrics and quality flags of ``batch`` (definitions in docs/batches.md)."""
    zone = _zone(batch.site_timezone)
    for name, moment in (("start", batch.start), ("now", batch.now), ("end", batch.end),
                         *(("sample time", s.at) for s in batch.samples),
                         *(("spot check time", c.at) for c in batch.spot_checks)):
        if moment is not None:
            _aware(name, moment)
    t = batch.thresholds
    end = batch.end or batch.now
    duration_h = max((end - batch.start) / timedelta(hours=1), 0.0)
    samples = sorted((s for s in batch.samples if batch.start <= s.at <= end),
                     key=lambda s: s.at)
    moisture = hourly_medians(MoisturePoint(s.at, v) for s in samples
                              if (v := _value(s, MOISTURE)) is not None)
    initial = _finite(batch.initial_moisture_pct_wb)
    if initial is None and moisture:
        initial = moisture[0].moisture_pct_wb
    final, final_at, source = _final(batch, moisture, end)
    average = None
    if initial is not None and final is not None and final_at > batch.start:
        average = (initial - final) / ((final_at - batch.start) / timedelta(hours=1))
    fastest = _max_sustained_rate(moisture)
    hot_limit, hot_alarm, early_hot, max_air = _heat(samples, t, batch.start, moisture)
    margin, margin_at = _night_margin(samples, moisture, t, zone)

    flags: list[QualityFlag] = []
    ready = t.target_moisture_pct_wb + READY_MARGIN_PCT
    reached = next((p for p in moisture if p.moisture_pct_wb <= ready), None)
    if fastest is not None and fastest > t.max_drying_rate_pct_per_h:
        flags.append(_flag(
            "dried_too_fast", "dried_too_fast.rate",
            f"moisture fell {fastest:.1f} %/h over {SUSTAINED_WINDOW_H:.0f} h (limit "
            f"{t.max_drying_rate_pct_per_h:g} %/h)",
            rate_pct_per_h=fastest, window_h=SUSTAINED_WINDOW_H,
            limit_pct_per_h=t.max_drying_rate_pct_per_h))
    elif reached is not None and (h := _hours(batch.start, reached.at)) < MIN_DRYING_H:
        flags.append(_flag(
            "dried_too_fast", "dried_too_fast.too_soon",
            f"reached {reached.moisture_pct_wb:.1f} % after {h:.0f} h (at least "
            f"{MIN_DRYING_H:.0f} h expected)",
            moisture_pct=reached.moisture_pct_wb, after_h=h, min_drying_h=MIN_DRYING_H))
    if hot_limit >= OVERHEAT_MIN_H:
        flags.append(_flag(
            "overheated", "overheated.above_limit",
            f"air at or above {t.air_temp_limit_c:g} °C for {hot_limit:.1f} h (max "
            f"{max_air:.1f} °C)",
            limit_c=t.air_temp_limit_c, duration_h=hot_limit, max_c=max_air))
    elif early_hot >= EARLY_HEAT_MIN_H:
        flags.append(_flag(
            "overheated", "overheated.early_phase",
            f"air above {t.early_phase_max_air_temp_c:g} °C for {early_hot:.1f} h in the "
            f"early phase (max {max_air:.1f} °C)",
            limit_c=t.early_phase_max_air_temp_c, duration_h=early_hot, max_c=max_air))
    rise = _largest_rise(hourly_medians(moisture, REWET_WINDOW_H))
    if rise is not None and rise[1] - rise[0] >= REWET_RISE_PCT:
        low, high, at = rise
        flags.append(_flag(
            "rewetted", "rewetted.rise",
            f"moisture rose from {low:.1f} % to {high:.1f} % (+{high - low:.1f} points) by "
            f"{at.astimezone(zone):%Y-%m-%d %H:%M} local",
            low_pct=low, high_pct=high, rise_points=high - low, at=at))
    late = [p for p in moisture if _hours(batch.start, p.at) >= MOULD_CHECK_H]
    if late and late[0].moisture_pct_wb > REJECT_ABOVE_PCT_WB:
        flags.append(_flag(
            "too_long", "too_long.still_wet",
            f"still {late[0].moisture_pct_wb:.1f} % after {MOULD_CHECK_H / 24:.0f} days "
            f"(mould risk above {REJECT_ABOVE_PCT_WB:g} %)",
            moisture_pct=late[0].moisture_pct_wb, days=MOULD_CHECK_H / 24,
            reject_above_pct=REJECT_ABOVE_PCT_WB))
    if batch.end is not None and final is not None and final > ready:
        flags.append(_flag(
            "not_dry", "not_dry.above_ready",
            f"final moisture {final:.1f} % ({source}) is above {ready:g} % (rejected above "
            f"{REJECT_ABOVE_PCT_WB:g} %)",
            moisture_pct=final, source=source or "", ready_pct=ready,
            reject_above_pct=REJECT_ABOVE_PCT_WB))
    if final is not None and final < t.over_dry_moisture_pct_wb:
        flags.append(_flag(
            "over_dried", "over_dried.below_limit",
            f"moisture {final:.1f} % ({source}) is below {t.over_dry_moisture_pct_wb:g} % "
            "(brittle beans)",
            moisture_pct=final, source=source or "", limit_pct=t.over_dry_moisture_pct_wb))
    return BatchMetrics(
        round(duration_h, 2), _round(initial), _round(final), source, _round(average, 3),
        _round(fastest, 3), _round(max_air, 1), round(hot_limit, 2), round(hot_alarm, 2),
        _round(margin), margin_at, flags)


def suggest_end(samples: Iterable[SampleLike | MoisturePoint | SpotCheck], target_pct_wb: float,
                hold_h: float, now: datetime) -> EndSuggestion:
    """End the batch when the moisture's rolling median (each reading with those of the hour
    before it) has stayed at or below ``target_pct_wb`` for ``hold_h`` hours up to ``now``.
    The latest reading must be at most an hour old, and a gap of more than 2 h breaks the hold
    (no one knows what happened then)."""
    _aware("now", now)
    if not (math.isfinite(hold_h) and hold_h >= 0):
        raise PayloadError(f"hold_h must be a number of hours >= 0, got {hold_h}")
    if not (math.isfinite(target_pct_wb) and 0 < target_pct_wb < 100):
        raise PayloadError(f"target moisture must be within 0..100 % w.b., got {target_pct_wb}")
    points = []
    for s in samples:
        _aware("sample time", s.at)
        value = _finite(s.moisture_pct_wb if isinstance(s, MoisturePoint | SpotCheck)
                        else _value(s, MOISTURE))
        if value is not None and s.at <= now:
            points.append(MoisturePoint(s.at, value))
    points.sort(key=lambda p: p.at)
    if not points:
        return EndSuggestion(False, None, "no moisture readings")
    if now - points[-1].at > END_STALE:
        return EndSuggestion(False, None, f"no moisture reading since {_iso(points[-1].at)}")
    times = [p.at for p in points]
    since = None
    for index in range(len(points) - 1, -1, -1):
        window = points[bisect_right(times, times[index] - END_MEDIAN_WINDOW):index + 1]
        if median(p.moisture_pct_wb for p in window) > target_pct_wb:
            break
        since = times[index]
        if index and times[index] - times[index - 1] > END_GAP:
            break
    if since is None:
        latest = median(p.moisture_pct_wb for p in points
                        if p.at > times[-1] - END_MEDIAN_WINDOW)
        return EndSuggestion(False, None, f"moisture {latest:.1f} % is above the target "
                             f"{target_pct_wb:g} %")
    held_h = _hours(since, now)
    if held_h < hold_h:
        return EndSuggestion(False, since, f"at or below {target_pct_wb:g} % for "
                             f"{held_h:.1f} h of the {hold_h:g} h required")
    return EndSuggestion(True, since, f"at or below {target_pct_wb:g} % since {_iso(since)} "
                         f"({held_h:.1f} h, {hold_h:g} h required): ready to unload")


# --- helpers ----------------------------------------------------------------------------------

def _flag(code: str, key: str, reason: str, **params: float | str | datetime) -> QualityFlag:
    """A flag with its English ``reason`` and the same numbers as ``reason_params``, rounded
    as REASONS[key] says."""
    formats = REASONS[key]
    if set(params) != set(formats):
        raise ValueError(f"flag reason {key}: parameters {', '.join(sorted(params))} are not "
                         f"{', '.join(formats)}")
    return QualityFlag(code, reason, key,
                       {name: _param(formats[name], value) for name, value in params.items()})


def _param(fmt: ParamFormat, value: float | str | datetime) -> ParamValue:
    if isinstance(value, datetime):
        return _iso(value.astimezone(UTC))
    if isinstance(value, str):
        return value
    if fmt == AS_SET:
        return round(value, 3)
    if isinstance(fmt, int):
        return round(value) if fmt == 0 else round(value, fmt)
    raise ValueError(f"reason parameter format {fmt!r} does not take the number {value!r}")


def _aware(name: str, moment: datetime) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise PayloadError(f"{name} must be a timezone-aware datetime, got {moment!r}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PayloadError(f"unknown time zone {name!r}") from None


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _hours(start: datetime, end: datetime) -> float:
    return (end - start) / timedelta(hours=1)


def _finite(value: float | None) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _value(sample: SampleLike, key: str) -> float | None:
    values = getattr(sample, "values", None)
    return _finite(values.get(key)) if isinstance(values, Mapping) else None


def _final(batch: BatchData, moisture: Sequence[MoisturePoint], end: datetime,
           ) -> tuple[float | None, datetime, str | None]:
    """Final (or current) moisture: entered > tray mass balance > spot check > last reading."""
    if (value := _finite(batch.final_moisture_pct_wb)) is not None:
        return value, end, "final"
    mass0, moisture0, mass1 = (_finite(batch.initial_mass_kg),
                               _finite(batch.initial_moisture_pct_wb), _finite(batch.final_mass_kg))
    if mass0 is not None and moisture0 is not None and mass1 is not None and min(mass0, mass1) > 0:
        value = moisture_from_tray_mass_pct_wb(mass0, moisture0, mass1)
        if 0.0 <= value < 100.0:   # else the masses contradict each other: ignore them
            return value, end, "final_mass"
    checks = [c for c in batch.spot_checks if _finite(c.moisture_pct_wb) is not None
              and c.at <= end]
    if checks:
        check = max(checks, key=lambda c: c.at)
        return check.moisture_pct_wb, check.at, "spot_check"
    if moisture:
        return moisture[-1].moisture_pct_wb, moisture[-1].at, "reading"
    return None, end, None


def _max_sustained_rate(moisture: Sequence[MoisturePoint]) -> float | None:
    """Fastest fall over SUSTAINED_WINDOW_H, %/h: from each hourly median to the first one at
    least that much later (windows stretched by gaps beyond 1.5× are skipped)."""
    best = None
    j = 0
    for i, first in enumerate(moisture):
        j = max(j, i)
        while j < len(moisture) and _hours(first.at, moisture[j].at) < SUSTAINED_WINDOW_H:
            j += 1
        if j == len(moisture):
            break
        span_h = _hours(first.at, moisture[j].at)
        if span_h <= 1.5 * SUSTAINED_WINDOW_H:
            rate = (first.moisture_pct_wb - moisture[j].moisture_pct_wb) / span_h
            best = rate if best is None else max(best, rate)
    return best


def _spans(samples: Sequence[SampleLike]) -> list[float]:
    """Hours each sample stands for: until the next one, at most MAX_SAMPLE_SPAN (the last
    one: as long as the one before it)."""
    spans = [min(later.at - sample.at, MAX_SAMPLE_SPAN) / timedelta(hours=1)
             for sample, later in pairwise(samples)]
    return [*spans, spans[-1]] if spans else [0.0] * len(samples)


def _heat(samples: Sequence[SampleLike], t: Thresholds, start: datetime,
          moisture: Sequence[MoisturePoint]) -> tuple[float, float, float, float | None]:
    """Hours at/above the hard limit and the alarm, hours above the early-phase cap while in
    the early phase (first early_phase_h, or beans wetter than early_phase_moisture_pct_wb),
    and the highest air temperature."""
    limit_h = alarm_h = early_h = 0.0
    max_air = None
    wet_until = next((p.at for p in moisture
                      if p.moisture_pct_wb <= t.early_phase_moisture_pct_wb), None)
    for sample, span_h in zip(samples, _spans(samples), strict=True):
        air = _value(sample, AIR_TEMP)
        if air is None:
            continue
        max_air = air if max_air is None else max(max_air, air)
        limit_h += span_h if air >= t.air_temp_limit_c else 0.0
        alarm_h += span_h if air >= t.air_temp_alarm_c else 0.0
        early = (_hours(start, sample.at) < t.early_phase_h
                 or wet_until is None or sample.at < wet_until)
        early_h += span_h if early and air > t.early_phase_max_air_temp_c else 0.0
    return limit_h, alarm_h, early_h, max_air


def _night_margin(samples: Sequence[SampleLike], moisture: Sequence[MoisturePoint],
                  t: Thresholds, zone: ZoneInfo) -> tuple[float | None, datetime | None]:
    """Lowest (bean moisture − GAB equilibrium moisture at the inside air RH) [Sandoval2020]
    over night samples (night_start_hour..night_end_hour local), in % points; the bean moisture
    is the latest hourly median at most 3 h old. Negative: the air could re-wet the beans."""
    lowest: tuple[float | None, datetime | None] = (None, None)
    index = -1
    for sample in samples:
        while index + 1 < len(moisture) and moisture[index + 1].at <= sample.at:
            index += 1
        hour = sample.at.astimezone(zone).hour
        night = (hour >= t.night_start_hour or hour < t.night_end_hour
                 if t.night_start_hour > t.night_end_hour
                 else t.night_start_hour <= hour < t.night_end_hour)
        rh = _value(sample, AIR_RH)
        if not night or rh is None or index < 0:
            continue
        if sample.at - moisture[index].at > timedelta(hours=3):
            continue
        margin = moisture[index].moisture_pct_wb - gab_equilibrium_moisture_pct_wb(rh)
        if lowest[0] is None or margin < lowest[0]:
            lowest = (margin, sample.at)
    return lowest


def _largest_rise(moisture: Sequence[MoisturePoint]) -> tuple[float, float, datetime] | None:
    """Largest rise of the medians above their running low: (low, high, when)."""
    best = None
    low = math.inf
    for point in moisture:
        low = min(low, point.moisture_pct_wb)
        if best is None or point.moisture_pct_wb - low > best[1] - best[0]:
            best = (low, point.moisture_pct_wb, point.at)
    return best
