"""Moisture-probe calibration curves, shared by the node and the gateway (pure, no I/O).

A curve is ``[(volts, moisture_pct_wb), ...]`` with volts strictly increasing: the probe's
volts become bean moisture % wet basis by piecewise-linear interpolation, clamped to the end
values. The node's config file holds one (``MoistureProbeConfig.calibration``); the gateway
fits a new one from hand-meter readings (``fit_calibration``) and sends it to the node with a
``set_calibration`` command. Both check a curve with ``check_curve``, so the node accepts
from the gateway exactly what it would accept from its config file.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence

from cacao_dryer.errors import ConfigError

MIN_POINTS = 2
MAX_POINTS = 20                 # a set_calibration command carries at most this many points
MOISTURE_MIN_PCT_WB = 0.0
MOISTURE_MAX_PCT_WB = 80.0
VOLTS_RESOLUTION = 1e-4         # fit_calibration: volts equal to 0.1 mV are the same point

Curve = list[tuple[float, float]]


def check_curve(points: Sequence[tuple[float, float]]) -> Curve:
    """The curve as a list of (volts, moisture) tuples, or ValueError (one line): at least two
    points, finite numbers, volts strictly increasing, moisture within 0..80 % w.b."""
    curve = [(float(v), float(m)) for v, m in points]
    if len(curve) < MIN_POINTS:
        raise ValueError("calibration needs at least two [volts, moisture_pct_wb] points")
    if not all(math.isfinite(v) and math.isfinite(m) for v, m in curve):
        raise ValueError("calibration points must be finite numbers")
    if any(b <= a for a, b in itertools.pairwise(v for v, _ in curve)):
        raise ValueError("calibration volts must be strictly increasing")
    if any(not MOISTURE_MIN_PCT_WB <= m <= MOISTURE_MAX_PCT_WB for _, m in curve):
        raise ValueError("calibration moisture must be within 0..80 % w.b.")
    return curve


def volts_to_moisture_pct_wb(curve: Sequence[tuple[float, float]], volts: float) -> float:
    """Piecewise-linear interpolation on ``[(volts, moisture_pct_wb), ...]`` (volts strictly
    increasing), clamped to the end values. Range checks are the caller's."""
    xs = [v for v, _ in curve]
    if volts <= xs[0]:
        return curve[0][1]
    if volts >= xs[-1]:
        return curve[-1][1]
    i = bisect.bisect_right(xs, volts)
    (v0, m0), (v1, m1) = curve[i - 1], curve[i]
    return m0 + (m1 - m0) * (volts - v0) / (v1 - v0)


def fit_calibration(pairs: Iterable[tuple[float, float]], *,
                    max_points: int = MAX_POINTS) -> Curve:
    """A calibration curve from (probe volts, reference-meter moisture % w.b.) pairs.

    Sorts by volts and averages readings at the same voltage. A probe's response is monotonic,
    so where noisy meter readings make the curve zig-zag against its overall trend, the
    offending neighbours are pooled into their mean (isotonic regression, pool-adjacent-
    violators): the displayed moisture then never rises while the probe voltage moves the
    drying way. More than ``max_points`` points left are thinned by pooling the closest
    neighbours (in volts). The result is valid for ``check_curve``.
    Raises ConfigError (one line) for bad pairs or fewer than two distinct voltages left.
    """
    groups: dict[float, list[float]] = {}
    for volts, moisture in pairs:
        if not (math.isfinite(volts) and math.isfinite(moisture)):
            raise ConfigError(f"calibration pair ({volts}, {moisture}) is not a number")
        if not MOISTURE_MIN_PCT_WB <= moisture <= MOISTURE_MAX_PCT_WB:
            raise ConfigError(f"calibration moisture {moisture} % is outside 0..80 % w.b.")
        groups.setdefault(round(volts / VOLTS_RESOLUTION) * VOLTS_RESOLUTION, []).append(moisture)
    if len(groups) < 2:
        raise ConfigError("calibration needs readings at two or more different probe voltages")
    # blocks of [sum of volts, sum of moisture, count], pooled while they violate the trend
    points = sorted((v, statistics.fmean(ms), len(ms)) for v, ms in groups.items())
    trend = _slope_sign(points)
    blocks: list[list[float]] = []
    for volts, moisture, count in points:
        blocks.append([volts * count, moisture * count, count])
        while len(blocks) > 1 and trend * (_mean(blocks[-1]) - _mean(blocks[-2])) <= 0:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last, strict=True)]
    if len(blocks) < 2:
        raise ConfigError("calibration readings show no change of moisture with probe voltage")
    while len(blocks) > max(max_points, MIN_POINTS):
        # pooling two neighbours of a monotonic sequence keeps it monotonic
        gaps = [blocks[i + 1][0] / blocks[i + 1][2] - blocks[i][0] / blocks[i][2]
                for i in range(len(blocks) - 1)]
        i = gaps.index(min(gaps))
        blocks[i:i + 2] = [[a + b for a, b in zip(blocks[i], blocks[i + 1], strict=True)]]
    return [(round(v / n, 4), round(m / n, 2)) for v, m, n in blocks]


def extend_with(fitted: Sequence[tuple[float, float]], current: Sequence[tuple[float, float]],
                *, max_points: int = MAX_POINTS) -> Curve:
    """``fitted`` plus the points of the ``current`` curve beyond its volts on either side,
    where they continue its trend (moisture keeps moving the same way).

    Hand-meter readings of one batch cover part of the probe's range only (say 55 → 30 %); a
    curve of those points alone would make the probe report a fault as soon as the beans
    leave that range. Keeping the old curve's outer points avoids that. When the result would
    exceed ``max_points``, the kept points nearest the fitted range go first."""
    fitted = list(fitted)
    trend = 1 if fitted[-1][1] >= fitted[0][1] else -1
    low_v, high_v = fitted[0][0], fitted[-1][0]
    left: Curve = []
    anchor = fitted[0][1]
    for volts, moisture in sorted((p for p in current if p[0] < low_v - VOLTS_RESOLUTION),
                                  reverse=True):
        if trend * (anchor - moisture) > 0:
            left.insert(0, (volts, moisture))
            anchor = moisture
    right: Curve = []
    anchor = fitted[-1][1]
    for volts, moisture in sorted(p for p in current if p[0] > high_v + VOLTS_RESOLUTION):
        if trend * (moisture - anchor) > 0:
            right.append((volts, moisture))
            anchor = moisture
    while len(left) + len(fitted) + len(right) > max_points and (left or right):
        if len(left) >= len(right):
            left.pop(-1)   # the one nearest the fitted points
        else:
            right.pop(0)
    return [*left, *fitted, *right]


def _mean(block: list[float]) -> float:
    return block[1] / block[2]


def _slope_sign(points: list[tuple[float, float, int]]) -> int:
    """Sign of the count-weighted least-squares slope of moisture over volts (+1 or -1)."""
    total = sum(n for _, _, n in points)
    v_mean = sum(v * n for v, _, n in points) / total
    m_mean = sum(m * n for _, m, n in points) / total
    covariance = sum(n * (v - v_mean) * (m - m_mean) for v, m, n in points)
    return 1 if covariance >= 0 else -1
