"""DHT22 / DHT11 air temperature and humidity, filtered so garbage never leaves the node.

The DHT22 fails reads often in the field (adafruit_dht raises RuntimeError on a bad checksum or
a short pulse train), and now and then a corrupted frame passes the checksum. One ``read()``:

1. tries the chip up to ``1 + retries`` times (temperature then humidity: one measurement);
2. rejects physically impossible values (ranges of cacao_dryer/measurements.py);
3. rejects a read that jumps implausibly far from the median of recent good reads, unless
   ``CONFIRM_READS`` consecutive reads agree on the new level (a real step, e.g. a door opened);
4. returns the median of the last ``median_window`` good reads.

A sample with no good read raises SensorError; after ``fault_after`` such samples in a row,
SensorFault (the recent history is then dropped, so the first good read after a fault counts).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from firmware.config import DhtSensorConfig
from firmware.drivers.base import AirReading, DhtChip
from firmware.drivers.health import CHIP_ERRORS, SampleHealth

# Largest change from the recent median accepted without confirmation (estimate). Inside air
# swings from night (~21 °C [SENAMHI]) to midday (40–60 °C [Kallari, Hohenheim]) over hours,
# i.e. a few °C and well under 10 % RH within the ~1 min a 5-read median spans, even when fans
# start or a cloud passes. A DHT22 frame corrupted past its checksum is off by a bit weight
# (12.8, 25.6, 51.2... °C or % RH): these limits catch all but the smallest, which the median
# absorbs. A genuine step (door opened, rain front) is accepted after CONFIRM_READS reads.
MAX_JUMP_TEMP_C = 10.0
MAX_JUMP_RH_PCT = 20.0
# Consecutive agreeing "jumps" taken as a real change of level rather than corruption.
CONFIRM_READS = 3

_RANGE_KEYS = {"inside": ("air_temp_c", "air_rh_pct"),
               "ambient": ("ambient_temp_c", "ambient_rh_pct")}


class DhtAirSensor:
    """An AirSensor on one DHT22/DHT11 chip."""

    def __init__(self, chip: DhtChip, config: DhtSensorConfig) -> None:
        self.name = config.name
        self.config = config
        self._chip = chip
        temp_key, rh_key = _RANGE_KEYS[config.location]
        self._temp_range = MEASUREMENTS_BY_KEY[temp_key]
        self._rh_range = MEASUREMENTS_BY_KEY[rh_key]
        self._history: deque[AirReading] = deque(maxlen=config.median_window)
        self._suspects: list[AirReading] = []
        self.health = SampleHealth(
            f"{config.location} air sensor {config.name!r} "
            f"({config.type.upper()} on GPIO{config.pin})", config.fault_after)

    @property
    def faulty(self) -> bool:
        return self.health.faulty

    def read(self) -> AirReading:
        attempts = 1 + self.config.retries
        why = "no read"
        for _ in range(attempts):
            try:
                temp_c = self._chip.temperature
                rh_pct = self._chip.humidity
            except CHIP_ERRORS as exc:
                why = f"read failed ({exc})"
                continue
            if temp_c is None or rh_pct is None:
                why = "chip returned no value"
                continue
            reading = AirReading(float(temp_c), float(rh_pct))
            problem = self._impossible(reading) or self._accept(reading)
            if problem is None:
                self.health.good()
                return self._median()
            why = problem
        error = self.health.failed(f"no good read in {attempts} tries (last: {why})")
        if self.health.faulty:
            self._history.clear()
            self._suspects.clear()
        raise error

    def _impossible(self, reading: AirReading) -> str | None:
        """Why a raw read is physically impossible, or None."""
        t, rh = self._temp_range, self._rh_range
        if not (math.isfinite(reading.temp_c) and t.minimum <= reading.temp_c <= t.maximum):
            return f"temperature {reading.temp_c} °C outside {t.minimum:g}..{t.maximum:g} °C"
        if not (math.isfinite(reading.rh_pct) and rh.minimum <= reading.rh_pct <= rh.maximum):
            return f"humidity {reading.rh_pct} % outside {rh.minimum:g}..{rh.maximum:g} %"
        return None

    def _accept(self, reading: AirReading) -> str | None:
        """Add a plausible read to the history unless it is an unconfirmed jump."""
        if not self._history or _close(reading, self._median()):
            self._history.append(reading)
            self._suspects.clear()
            return None
        if self._suspects and not _close(reading, _median_of(self._suspects)):
            self._suspects.clear()
        self._suspects.append(reading)
        if len(self._suspects) >= CONFIRM_READS:
            self._history.clear()
            self._history.extend(self._suspects)
            self._suspects.clear()
            return None
        median = self._median()
        return (f"{reading.temp_c:.1f} °C / {reading.rh_pct:.1f} % jumps too far from the "
                f"recent {median.temp_c:.1f} °C / {median.rh_pct:.1f} %")

    def _median(self) -> AirReading:
        return _median_of(self._history)


def _median_of(readings: deque[AirReading] | list[AirReading]) -> AirReading:
    return AirReading(statistics.median(r.temp_c for r in readings),
                      statistics.median(r.rh_pct for r in readings))


def _close(reading: AirReading, reference: AirReading) -> bool:
    return (abs(reading.temp_c - reference.temp_c) <= MAX_JUMP_TEMP_C
            and abs(reading.rh_pct - reference.rh_pct) <= MAX_JUMP_RH_PCT)
