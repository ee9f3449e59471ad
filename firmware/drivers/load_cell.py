"""Load-cell sample tray through an HX711: the mass of the beans on the tray.

mass_kg = (median of ``samples`` raw counts − tare_offset_counts) / counts_per_kg. The median
rejects spikes from vibration (wind on the cover, people turning beans) [Sitorus2020]. Moisture
from mass loss is computed elsewhere (cacao_dryer.science.moisture_from_tray_mass_pct_wb).
"""

from __future__ import annotations

from cacao_dryer.errors import SensorError
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from firmware.config import LoadCellTrayConfig
from firmware.drivers.base import Hx711Chip
from firmware.drivers.health import CHIP_ERRORS, SampleHealth, majority_median

# An empty tray reads a little below zero as the cell drifts with temperature; report that as
# 0 kg rather than a failure (estimate: a few grams of drift on a 5–20 kg cell, with margin).
# Re-tare daily [IIETA2025].
NEGATIVE_TOLERANCE_KG = 0.05
_MASS = MEASUREMENTS_BY_KEY["tray_mass_kg"]


class LoadCellTray:
    """A TraySensor on one HX711."""

    def __init__(self, chip: Hx711Chip, config: LoadCellTrayConfig) -> None:
        self.name = config.name
        self.config = config
        self._chip = chip
        self.tare_offset_counts = config.tare_offset_counts
        self.health = SampleHealth(
            f"load-cell tray {config.name!r} (HX711 on GPIO{config.data_pin}/"
            f"GPIO{config.clock_pin})", config.fault_after)

    @property
    def faulty(self) -> bool:
        return self.health.faulty

    def read(self) -> float:
        counts, why = self._median_counts()
        if counts is None:
            raise self.health.failed(why)
        mass_kg = (counts - self.tare_offset_counts) / self.config.counts_per_kg
        if mass_kg < -NEGATIVE_TOLERANCE_KG:
            raise self.health.failed(
                f"negative mass {mass_kg:.3f} kg (tray lifted, or tare/calibration wrong)")
        if mass_kg > _MASS.maximum:
            raise self.health.failed(
                f"implausible mass {mass_kg:.1f} kg (over {_MASS.maximum:g} kg: check wiring "
                f"and counts_per_kg)")
        self.health.good()
        return max(mass_kg, 0.0)

    def tare(self) -> None:
        """Take the current reading of the empty tray as zero. The caller persists
        ``tare_offset_counts`` if it must survive a restart."""
        counts, why = self._median_counts()
        if counts is None:
            raise SensorError(f"{self.health.sensor}: cannot tare, {why}")
        self.tare_offset_counts = counts

    def _median_counts(self) -> tuple[float | None, str]:
        """Median of a burst of raw reads, or None and why if too few succeeded."""
        counts: list[float] = []
        why = "no read"
        attempts = self.config.samples
        for _ in range(attempts):
            try:
                counts.append(float(self._chip.read_counts()))
            except CHIP_ERRORS as exc:
                why = f"HX711 read failed ({exc})"
        median = majority_median(counts, attempts)
        if median is None:
            return None, f"{len(counts)} of {attempts} reads succeeded (last: {why})"
        return median, ""
