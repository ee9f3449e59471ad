"""When will this batch reach its target moisture? A Page thin-layer fit, pure and deterministic.

Page, MR = exp(−k·tⁿ), moisture ratio on DRY basis MR = (X − Xe)/(X0 − Xe) [Banboye2020,
Olabinjo: Page fits solar cacao best]. Choices (why, and accuracy measured on simulated
batches: docs/batches.md, "Drying-end prediction"):

* t counts *drying hours* when the site's time zone is given: 06–18 local fully, night hours
  with a weight fitted from the data (patios ≈ 0, covered at night [Beckett]; greenhouses
  ≈ 0.1–0.3); elapsed time otherwise. On elapsed time open-sun predictions were days late.
* the fit sees hourly medians (probe noise ±1 % and spikes vanish), least squares on % w.b. by
  Levenberg–Marquardt from the linearised fit, outlying hours (re-wetting) dropped once;
* the prediction runs along the curve from the beans' moisture *now*, so a night plateau or
  re-wetting lengthens it;
* the band adds, on ln(remaining time): the parameter covariance (inflated for correlated
  residuals) by the delta method, refits with Xe ± 0.5 point, and the weather to come.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cacao_dryer.errors import CacaoDryerError, PayloadError
from cacao_dryer.science import dry_to_wet_basis, gab_equilibrium_moisture_pct_wb, wet_to_dry_basis

# Equilibrium moisture when the caller knows no better: GAB at 55 % RH = 6.17 % w.b.
# [Sandoval2020], mid-range of a ventilated dryer's 50–60 % inside RH by day; beans need
# ≤ 65 % to dry at all [CargoHandbook]. Its uncertainty, ±0.5 point, spans GAB at 50–60 % RH
# (5.7–6.8 %). Both are estimates (docs/batches.md).
DEFAULT_EQUILIBRIUM_PCT_WB = round(gab_equilibrium_moisture_pct_wb(55.0), 2)
EQUILIBRIUM_SD_PCT = 0.5
# The weather to come is unknown: standard deviation it adds to ln(remaining time). Estimate,
# chosen so that 90 % bands hold the truth in ~90 % of simulated batches (docs/batches.md).
WEATHER_LOG_SD = 0.2
MIN_POINTS = 4          # bins needed: two parameters and two degrees of freedom
MIN_SPAN_H = 6.0        # hours of readings needed before any prediction
MIN_DROP_PCT = 1.0      # the bins must fall this many points below the first (probe ±1 %)
BIN_H = 1.0
OUTLIER_SIGMAS, OUTLIER_MIN_PCT = 4.0, 1.5
MAX_HORIZON_H = 60 * 24.0   # a curve that needs longer than 60 days predicts nothing
N_BOUNDS = (0.2, 5.0)       # the Page exponent stays physical
NIGHT_WEIGHTS = tuple(w / 10 for w in range(11))

Data = Sequence[tuple[float, float]]   # (hours, moisture % w.b.)


class FitError(CacaoDryerError, ValueError):
    """The readings cannot support a Page fit (too few, too short, not falling)."""


@dataclass(frozen=True)
class DryingClock:
    """Drying hours: local day hours count fully, night hours count ``night_weight``.
    Sunrise and sunset stay near 06:00 and 18:00 all year at 6.5° S (firmware/simulation)."""

    site_timezone: str = "America/Lima"
    night_weight: float = 1.0
    day_start_hour: int = 6
    day_end_hour: int = 18

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.site_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PayloadError(f"unknown time zone {self.site_timezone!r}") from None
        if not 0 <= self.day_start_hour < self.day_end_hour <= 24:
            raise PayloadError(f"drying day {self.day_start_hour}-{self.day_end_hour} h is not "
                               "a range of hours within one day")
        if not 0.0 <= self.night_weight <= 1.0:
            raise PayloadError(f"night_weight must be within 0..1, got {self.night_weight}")

    def _segments(self, start: datetime) -> Iterator[tuple[datetime, datetime, float]]:
        """Consecutive (from, to, weight) periods from ``start`` on, without end."""
        zone, cursor = ZoneInfo(self.site_timezone), start
        while True:
            local = cursor.astimezone(zone)
            midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
            day_from = midnight + timedelta(hours=self.day_start_hour)
            day_to = midnight + timedelta(hours=self.day_end_hour)
            boundary, weight = ((day_from, self.night_weight) if local < day_from else
                                (day_to, 1.0) if local < day_to else
                                (day_from + timedelta(days=1), self.night_weight))
            boundary = max(boundary.astimezone(start.tzinfo), cursor + timedelta(minutes=1))
            yield cursor, boundary, weight
            cursor = boundary

    def hours_between(self, start: datetime, end: datetime) -> float:
        """Drying hours from ``start`` to ``end`` (0 if ``end`` is earlier)."""
        total = 0.0
        for seg_from, seg_to, weight in self._segments(start):
            if seg_from >= end:
                return total
            total += weight * (min(seg_to, end) - seg_from) / timedelta(hours=1)
        raise AssertionError("unreachable")  # pragma: no cover

    def advance(self, start: datetime, hours: float) -> datetime:
        """The moment ``hours`` drying hours after ``start``."""
        left = max(hours, 0.0)
        for seg_from, seg_to, weight in self._segments(start):
            length_h = (seg_to - seg_from) / timedelta(hours=1)
            if weight > 0 and weight * length_h >= left:
                return seg_from + timedelta(hours=left / weight)
            left -= weight * length_h
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class MoisturePoint:
    """One bean moisture reading (probe, tray or spot check), % wet basis."""

    at: datetime
    moisture_pct_wb: float


@dataclass(frozen=True)
class PageFit:
    """MR = exp(−k·tⁿ), t in hours since ``start`` (drying hours on ``clock``, elapsed hours
    without one). ``covariance`` is of (ln k, n), inflated for correlated residuals."""

    start: datetime
    k_per_h: float
    n: float
    initial_moisture_pct_wb: float
    equilibrium_moisture_pct_wb: float
    r2: float
    residual_std_pct: float
    points_used: int
    covariance: tuple[tuple[float, float], tuple[float, float]]
    clock: DryingClock | None = None

    def moisture_at(self, moment: datetime) -> float:
        """Moisture % w.b. the fitted curve gives at ``moment`` (to draw it)."""
        hours = (self.clock.hours_between(self.start, moment) if self.clock
                 else max((moment - self.start) / timedelta(hours=1), 0.0))
        return _moisture(math.log(self.k_per_h), self.n, hours, *self._x())

    def _x(self) -> tuple[float, float]:
        return (wet_to_dry_basis(self.initial_moisture_pct_wb),
                wet_to_dry_basis(self.equilibrium_moisture_pct_wb))


@dataclass(frozen=True)
class DryingPrediction:
    """When the beans reach the target, within [earliest, latest] at ``confidence``.
    No ``predicted_at``: ``reason`` says why; target already reached: ``predicted_at`` is when
    (and ``reason`` says so)."""

    predicted_at: datetime | None
    hours_remaining: float | None
    earliest: datetime | None
    latest: datetime | None
    confidence: float
    current_moisture_pct_wb: float | None
    points_used: int
    fit: PageFit | None
    reason: str | None = None


def fit_page(points: Iterable[MoisturePoint],
             equilibrium_pct_wb: float = DEFAULT_EQUILIBRIUM_PCT_WB, *,
             site_timezone: str | None = None) -> PageFit:
    """Fit Page to ``points`` (any order): elapsed hours, or drying hours with a fitted night
    weight when ``site_timezone`` is given. FitError (one line) if the points cannot."""
    _check_equilibrium(equilibrium_pct_wb)
    clocks = () if site_timezone is None else tuple(
        DryingClock(site_timezone, w) for w in NIGHT_WEIGHTS)
    return _fit_bins(_bins(_clean(points)), equilibrium_pct_wb, clocks)


def predict_drying_end(points: Iterable[MoisturePoint], target_pct_wb: float, *, now: datetime,
                       equilibrium_pct_wb: float | None = None, confidence: float = 0.9,
                       site_timezone: str | None = None) -> DryingPrediction:
    """Predict when the beans reach ``target_pct_wb``. Never raises on odd readings (empty,
    constant, rising, NaN): the prediction then has no time and a ``reason``. PayloadError for
    bad arguments (naive datetimes, target at or below equilibrium, unknown time zone)."""
    _aware("now", now)
    if not 0.0 < confidence < 1.0:
        raise PayloadError(f"confidence must be between 0 and 1, got {confidence}")
    me = DEFAULT_EQUILIBRIUM_PCT_WB if equilibrium_pct_wb is None else equilibrium_pct_wb
    _check_equilibrium(me)
    if not math.isfinite(target_pct_wb) or target_pct_wb <= me:
        raise PayloadError(f"target moisture {target_pct_wb} % must be above the equilibrium "
                           f"moisture {me} %")
    clocks = () if site_timezone is None else tuple(
        DryingClock(site_timezone, w) for w in NIGHT_WEIGHTS)
    bins = _bins(_clean(points))
    used = sum(count for _, _, count in bins)

    def no_time(reason: str, fit: PageFit | None = None) -> DryingPrediction:
        current = bins[-1][1] if bins else None
        return DryingPrediction(None, None, None, None, confidence, current, used, fit, reason)

    if not bins:
        return no_time("no moisture readings")
    current = bins[-1][1]
    reached = _reached_at(bins, target_pct_wb)
    if reached is not None:
        return DryingPrediction(reached, 0.0, reached, reached, confidence, current, used, None,
                                f"target {target_pct_wb} % reached at {_iso(reached)}")
    try:
        fit = _fit_bins(bins, me, clocks)
    except FitError as exc:
        return no_time(str(exc))
    remaining = _remaining_h(fit, current, target_pct_wb)
    if remaining is None or remaining > MAX_HORIZON_H:
        return no_time(f"the fitted curve does not reach {target_pct_wb} % within "
                       f"{MAX_HORIZON_H / 24:.0f} days", fit)
    shifted = []   # remaining time when refitted with Me one uncertainty lower and higher
    for other_me in (max(me - EQUILIBRIUM_SD_PCT, 0.0), me + EQUILIBRIUM_SD_PCT):
        try:
            other = _fit_bins(bins, other_me, (fit.clock,) if fit.clock else ())
            shifted.append(_remaining_h(other, current, target_pct_wb))
        except FitError:
            shifted.append(None)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    spread = math.exp(min(z * _log_sd(fit, current, target_pct_wb, remaining, shifted), 5.0))
    origin = max(now, bins[-1][0])

    def after(hours: float) -> datetime:
        hours = min(hours, MAX_HORIZON_H)
        return fit.clock.advance(origin, hours) if fit.clock else origin + timedelta(hours=hours)

    predicted = after(remaining)
    return DryingPrediction(predicted, round((predicted - now) / timedelta(hours=1), 2),
                            after(remaining / spread), after(remaining * spread), confidence,
                            current, used, fit)


def hourly_medians(points: Iterable[MoisturePoint], bin_h: float = BIN_H,
                   ) -> list[MoisturePoint]:
    """The readings as the model sees them: per ``bin_h`` hours from the first one, the median
    moisture at the mean time (finite values only, time order). Shared with batch metrics."""
    return [MoisturePoint(at, value) for at, value, _ in _bins(_clean(points), bin_h)]


# --- readings -------------------------------------------------------------------------------

Bin = tuple[datetime, float, int]   # mean time, median moisture % w.b., readings in the bin


def _aware(name: str, moment: datetime) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise PayloadError(f"{name} must be a timezone-aware datetime, got {moment!r}")


def _check_equilibrium(me: float) -> None:
    if not (math.isfinite(me) and 0.0 <= me < 30.0):
        raise PayloadError(f"equilibrium moisture must be within 0..30 % w.b., got {me}")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _clean(points: Iterable[MoisturePoint]) -> list[MoisturePoint]:
    """Finite, physical readings in time order; a naive time is a caller's bug (PayloadError)."""
    kept = []
    for point in points:
        _aware("moisture point time", point.at)
        value = point.moisture_pct_wb
        if isinstance(value, int | float) and math.isfinite(value) and 0.0 < value < 95.0:
            kept.append(point)
    return sorted(kept, key=lambda p: p.at)


def _bins(points: Sequence[MoisturePoint], bin_h: float = BIN_H) -> list[Bin]:
    """Median moisture and mean time of each ``bin_h``-hour bin from the first reading."""
    groups: dict[int, list[MoisturePoint]] = {}
    for point in points:
        index = int((point.at - points[0].at) / timedelta(hours=bin_h))
        groups.setdefault(index, []).append(point)
    return [(points[0].at + timedelta(seconds=statistics.fmean(
                (p.at - points[0].at).total_seconds() for p in group)),
             statistics.median(p.moisture_pct_wb for p in group), len(group))
            for group in groups.values()]


def _reached_at(bins: Sequence[Bin], target: float) -> datetime | None:
    """When the beans got to the target and stayed there (all later bins at or below)."""
    index = len(bins)
    while index > 0 and bins[index - 1][1] <= target:
        index -= 1
    return bins[index][0] if index < len(bins) else None


# --- the fit --------------------------------------------------------------------------------

def _fit_bins(bins: Sequence[Bin], me: float, clocks: Sequence[DryingClock]) -> PageFit:
    if len(bins) < MIN_POINTS:
        raise FitError(f"{len(bins)} hourly moisture readings; at least {MIN_POINTS} needed")
    start, m0, _ = bins[0]
    span_h = (bins[-1][0] - start) / timedelta(hours=1)
    if span_h < MIN_SPAN_H:
        raise FitError(f"{span_h:.1f} h of moisture readings; at least {MIN_SPAN_H:.0f} h needed")
    if m0 <= me + MIN_DROP_PCT:
        raise FitError(f"initial moisture {m0:.1f} % is already near equilibrium {me} %")
    values = [value for _, value, _ in bins]
    if m0 - min(values[1:]) < MIN_DROP_PCT:
        raise FitError(f"moisture not falling (never {MIN_DROP_PCT} point below {m0:.1f} %)")
    x0, xe = wet_to_dry_basis(m0), wet_to_dry_basis(me)
    best: tuple[float, DryingClock | None, Data, float, float] | None = None
    for clock in clocks or (None,):
        times = [clock.hours_between(start, at) if clock else (at - start) / timedelta(hours=1)
                 for at, _, _ in bins]
        data = list(zip(times, values, strict=True))
        a, n = _levenberg_marquardt(data, x0, xe, _initial_guess(data, x0, xe))
        spread = statistics.median(abs(v - _moisture(a, n, t, x0, xe)) for t, v in data)
        if best is None or spread < best[0]:
            best = (spread, clock, data, a, n)
    assert best is not None
    _, clock, data, a, n = best
    residuals = [v - _moisture(a, n, t, x0, xe) for t, v in data]
    limit = max(OUTLIER_SIGMAS * 1.4826 * statistics.median(abs(r) for r in residuals),
                OUTLIER_MIN_PCT)
    kept = [d for d, r in zip(data, residuals, strict=True) if abs(r) <= limit or d[0] == 0]
    if len(data) > len(kept) >= MIN_POINTS:
        data = kept
        a, n = _levenberg_marquardt(data, x0, xe, (a, n))
        residuals = [v - _moisture(a, n, t, x0, xe) for t, v in data]
    sse = sum(r * r for r in residuals)
    dof = max(len(data) - 2, 1)
    mean = statistics.fmean(v for _, v in data)
    total = sum((v - mean) ** 2 for _, v in data)
    rho = sum(residuals[i] * residuals[i - 1] for i in range(1, len(data))) / sse if sse else 0.0
    rho = max(0.0, min(rho, 0.95))
    jtj, _ = _normal_equations(data, a, n, x0, xe)
    s2 = sse / dof * (1 + rho) / (1 - rho)
    det = jtj[0][0] * jtj[1][1] - jtj[0][1] ** 2
    cov = (((s2 * jtj[1][1] / det, -s2 * jtj[0][1] / det),
            (-s2 * jtj[0][1] / det, s2 * jtj[0][0] / det)) if det > 0
           else ((math.inf, 0.0), (0.0, math.inf)))
    return PageFit(start, math.exp(a), n, m0, me, 1.0 - sse / total if total > 0 else 0.0,
                   math.sqrt(sse / dof), len(data), cov, clock)


def _moisture(a: float, n: float, t: float, x0: float, xe: float) -> float:
    """Page curve, % w.b., at t hours; a = ln k."""
    exponent = math.exp(a) * t ** n if t > 0 else 0.0
    return dry_to_wet_basis(max(xe + (x0 - xe) * math.exp(-min(exponent, 700.0)), 0.0))


def _normal_equations(data: Data, a: float, n: float, x0: float, xe: float,
                      ) -> tuple[list[list[float]], list[float]]:
    """JᵀJ and Jᵀr of the moisture residuals over (ln k, n)."""
    jtj, jtr = [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]
    for t, value in data:
        if t <= 0:
            continue
        kt = math.exp(a) * t ** n
        x = xe + (x0 - xe) * math.exp(-min(kt, 700.0))
        d_a = -(x - xe) * kt * 100.0 / (1.0 + x) ** 2   # d(% w.b.)/d(ln k)
        row = (d_a, d_a * math.log(t))                    # and d/dn
        residual = value - dry_to_wet_basis(max(x, 0.0))
        for i in range(2):
            jtr[i] += row[i] * residual
            for j in range(2):
                jtj[i][j] += row[i] * row[j]
    return jtj, jtr


def _initial_guess(data: Data, x0: float, xe: float) -> tuple[float, float]:
    """Linearised Page: ln(−ln MR) = ln k + n·ln t over the points with 0.02 < MR < 0.98."""
    xs, ys = [], []
    for t, value in data:
        mr = (wet_to_dry_basis(value) - xe) / (x0 - xe)
        if t > 0 and 0.02 < mr < 0.98:
            xs.append(math.log(t))
            ys.append(math.log(-math.log(mr)))
    if len(xs) >= 2 and max(xs) - min(xs) > 0.1:
        slope, intercept = statistics.linear_regression(xs, ys)
        if N_BOUNDS[0] <= slope <= N_BOUNDS[1]:
            return intercept, slope
    return -math.log(max(max(t for t, _ in data), 1.0)), 1.0


def _levenberg_marquardt(data: Data, x0: float, xe: float, guess: tuple[float, float],
                         ) -> tuple[float, float]:
    """Least squares over (ln k, n), the 2×2 damped normal equations solved by hand."""
    def sse(a: float, n: float) -> float:
        return sum((v - _moisture(a, n, t, x0, xe)) ** 2 for t, v in data)

    (a, n), damping = guess, 1e-3
    best = sse(a, n)
    for _ in range(100):
        jtj, jtr = _normal_equations(data, a, n, x0, xe)
        while damping < 1e8:
            m00, m11 = jtj[0][0] * (1 + damping), jtj[1][1] * (1 + damping)
            det = m00 * m11 - jtj[0][1] ** 2
            if det > 0:
                new_a = min(max(a + (m11 * jtr[0] - jtj[0][1] * jtr[1]) / det, -30.0), 20.0)
                new_n = min(max(n + (m00 * jtr[1] - jtj[0][1] * jtr[0]) / det, N_BOUNDS[0]),
                            N_BOUNDS[1])
                new_sse = sse(new_a, new_n)
                if new_sse <= best:
                    step = abs(new_a - a) + abs(new_n - n)
                    a, n, best, damping = new_a, new_n, new_sse, damping / 10
                    break
            damping *= 10
        else:
            return a, n   # no step improves: a minimum
        if step < 1e-10:
            return a, n
    return a, n


# --- the prediction -------------------------------------------------------------------------

def _hours_to(a: float, n: float, moisture: float, fit: PageFit) -> float | None:
    """Hours after the fit's start at which the curve reaches ``moisture`` (None: never)."""
    x0, xe = fit._x()
    if moisture <= fit.equilibrium_moisture_pct_wb:
        return None
    mr = (wet_to_dry_basis(moisture) - xe) / (x0 - xe)
    return 0.0 if mr >= 1.0 else (-math.log(mr) / math.exp(a)) ** (1.0 / n)


def _remaining_h(fit: PageFit, current: float, target: float,
                 a: float | None = None, n: float | None = None) -> float | None:
    """Hours along the curve from the current moisture to the target."""
    a = math.log(fit.k_per_h) if a is None else a
    n = fit.n if n is None else n
    end, now_h = _hours_to(a, n, target, fit), _hours_to(a, n, current, fit)
    return None if end is None or now_h is None else max(end - now_h, 0.0)


def _log_sd(fit: PageFit, current: float, target: float, remaining: float,
            shifted: Sequence[float | None]) -> float:
    """Standard deviation of ln(remaining hours) (module docstring)."""
    if remaining <= 0:
        return 0.0
    a, n, gradient = math.log(fit.k_per_h), fit.n, []
    for da, dn in ((1e-4, 0.0), (0.0, 1e-4)):
        moved = _remaining_h(fit, current, target, a + da, n + dn)
        if moved is None or moved <= 0:
            return math.inf
        gradient.append(math.log(moved / remaining) / (da + dn))
    (c00, c01), (_, c11) = fit.covariance
    var = gradient[0] ** 2 * c00 + 2 * gradient[0] * gradient[1] * c01 + gradient[1] ** 2 * c11
    for other in shifted:
        var += (math.log(other / remaining) if other else math.inf) ** 2 / len(shifted)
    var += WEATHER_LOG_SD ** 2
    return math.sqrt(var) if math.isfinite(var) and var >= 0 else math.inf
