"""Bean-moisture probe (capacitive or resistive) read through an ADS1115 ADC.

Volts become moisture % wet basis by a piecewise-linear calibration curve fitted per lot against
a reference meter (docs/references.md, "Measuring moisture on a node"; the curve code, shared
with the gateway, is ``cacao_dryer.calibration``). Beyond the ends of the
curve we do not extrapolate: within ``CLAMP_MARGIN_FRACTION`` of the curve's span the end value
is reported (ADC noise around a calibration point); further out the probe is unplugged, shorted
or in a lot it was not calibrated for, and the sample fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cacao_dryer.calibration import check_curve, volts_to_moisture_pct_wb
from firmware.config import MoistureProbeConfig
from firmware.drivers.base import AdcChannel, MoistureReading
from firmware.drivers.health import CHIP_ERRORS, SampleHealth, majority_median

READS_PER_SAMPLE = 5            # ADS1115 at 128 samples/s: ~40 ms for a burst
CLAMP_MARGIN_FRACTION = 0.05    # of the curve's volt span (estimate: covers ADC and probe noise)


class MoistureProbe:
    """A MoistureSensor on one ADS1115 channel."""

    def __init__(self, channel: AdcChannel, config: MoistureProbeConfig) -> None:
        self.name = config.name
        self.config = config
        self._channel = channel
        self._curve: list[tuple[float, float]] = []
        self._accepted_v = (0.0, 0.0)
        self.set_calibration(config.calibration)
        self.health = SampleHealth(
            f"moisture probe {config.name!r} (ADS1115 0x{config.i2c_address:02X} "
            f"channel {config.channel})", config.fault_after)

    @property
    def calibration(self) -> list[tuple[float, float]]:
        """The curve in use: the config file's, or the one a ``set_calibration`` command sent
        (firmware.agent keeps that across restarts)."""
        return list(self._curve)

    def set_calibration(self, points: Sequence[tuple[float, float]]) -> None:
        """Use a new curve from the next reading on; ValueError (one line) if it is invalid,
        and then the old curve stays."""
        curve = check_curve(points)
        low, high = curve[0][0], curve[-1][0]
        margin = CLAMP_MARGIN_FRACTION * (high - low)
        self._curve = curve
        self._accepted_v = (low - margin, high + margin)

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
