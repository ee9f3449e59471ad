"""Bean-moisture probe (capacitive or resistive) read through an ADS1115 ADC.

Volts become moisture % wet basis by a piecewise-linear calibration curve fitted per lot against
a reference meter (docs/references.md, "Measuring moisture on a node"). Beyond the ends of the
curve we do not extrapolate: within ``CLAMP_MARGIN_FRACTION`` of the curve's span the end value
is reported (ADC noise around a calibration point); further out the probe is unplugged, shorted
or in a lot it was not calibrated for, and the sample fails.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence

from cacao_dryer.errors import ConfigError
from firmware.config import MoistureProbeConfig
from firmware.drivers.base import AdcChannel, MoistureReading
from firmware.drivers.health import CHIP_ERRORS, SampleHealth, majority_median

READS_PER_SAMPLE = 5            # ADS1115 at 128 samples/s: ~40 ms for a burst
CLAMP_MARGIN_FRACTION = 0.05    # of the curve's volt span (estimate: covers ADC and probe noise)
VOLTS_RESOLUTION = 1e-4         # fit_calibration: volts equal to 0.1 mV are the same point


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


class MoistureProbe:
    """A MoistureSensor on one ADS1115 channel."""

    def __init__(self, channel: AdcChannel, config: MoistureProbeConfig) -> None:
        self.name = config.name
        self.config = config
        self._channel = channel
        self._curve = list(config.calibration)
        low, high = self._curve[0][0], self._curve[-1][0]
        margin = CLAMP_MARGIN_FRACTION * (high - low)
        self._accepted_v = (low - margin, high + margin)
        self.health = SampleHealth(
            f"moisture probe {config.name!r} (ADS1115 0x{config.i2c_address:02X} "
            f"channel {config.channel})", config.fault_after)

    @property
    def faulty(self) -> bool:
        return self.health.faulty

    def read(self) -> MoistureReading:
        volts: list[float] = []
        why = "no read"
        for _ in range(READS_PER_SAMPLE):
            try:
                value = float(self._channel.voltage)
            except CHIP_ERRORS as exc:
                why = f"I2C read failed ({exc})"
                continue
            if math.isfinite(value):
                volts.append(value)
        probe_v = majority_median(volts, READS_PER_SAMPLE)
        if probe_v is None:
            raise self.health.failed(
                f"{len(volts)} of {READS_PER_SAMPLE} reads succeeded (last: {why})")
        low, high = self._accepted_v
        if not low <= probe_v <= high:
            first, last = self._curve[0][0], self._curve[-1][0]
            raise self.health.failed(
                f"probe reads {probe_v:.3f} V, outside calibration {first:g}..{last:g} V")
        self.health.good()
        return MoistureReading(volts_to_moisture_pct_wb(self._curve, probe_v), probe_v)


def fit_calibration(pairs: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """A calibration curve from (probe volts, reference-meter moisture % w.b.) pairs.

    Sorts by volts and averages readings at the same voltage. A probe's response is monotonic,
    so where noisy meter readings make the curve zig-zag against its overall trend, the
    offending neighbours are pooled into their mean (isotonic regression, pool-adjacent-
    violators): the displayed moisture then never rises while the probe voltage moves the
    drying way. The result is valid for ``MoistureProbeConfig.calibration``.
    Raises ConfigError (one line) for bad pairs or fewer than two distinct voltages left.
    """
    groups: dict[float, list[float]] = {}
    for volts, moisture in pairs:
        if not (math.isfinite(volts) and math.isfinite(moisture)):
            raise ConfigError(f"calibration pair ({volts}, {moisture}) is not a number")
        if not 0 <= moisture <= 80:
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
    return [(round(v / n, 4), round(m / n, 2)) for v, m, n in blocks]


def _mean(block: list[float]) -> float:
    return block[1] / block[2]


def _slope_sign(points: list[tuple[float, float, int]]) -> int:
    """Sign of the count-weighted least-squares slope of moisture over volts (+1 or -1)."""
    total = sum(n for _, _, n in points)
    v_mean = sum(v * n for v, _, n in points) / total
    m_mean = sum(m * n for _, m, n in points) / total
    covariance = sum(n * (v - v_mean) * (m - m_mean) for v, m, n in points)
    return 1 if covariance >= 0 else -1
