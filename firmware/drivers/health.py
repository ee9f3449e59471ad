"""Counting failed samples of one sensor, shared by the sensor drivers.

A *sample* is one ``read()`` of a sensor (which may try the chip several times). A failed
sample raises ``SensorError``; after ``fault_after`` failed samples in a row it raises
``SensorFault`` instead, until a good sample clears the count.
"""

from __future__ import annotations

import statistics

from cacao_dryer.errors import SensorError, SensorFault

# What a chip raises when it cannot be read: adafruit_dht raises RuntimeError on checksum and
# timing failures, the I2C bus raises OSError, our HX711 adapter raises TimeoutError (an OSError).
CHIP_ERRORS = (OSError, RuntimeError)


class SampleHealth:
    """Consecutive failed samples of one sensor, turned into one-line errors."""

    def __init__(self, sensor: str, fault_after: int) -> None:
        self.sensor = sensor            # e.g. "inside air sensor 'dryer-air' (DHT22 on GPIO4)"
        self.fault_after = fault_after
        self.failed_samples = 0         # in a row

    @property
    def faulty(self) -> bool:
        return self.failed_samples >= self.fault_after

    def good(self) -> None:
        self.failed_samples = 0

    def failed(self, why: str) -> SensorError:
        """Count one failed sample; returns the error for the caller to raise."""
        self.failed_samples += 1
        n = self.failed_samples
        if self.faulty:
            return SensorFault(f"{self.sensor}: FAULT, {why} ({n} failed samples in a row)")
        return SensorError(f"{self.sensor}: {why} (failed sample {n} of {self.fault_after} "
                           f"before a fault is reported)")


def majority_median(values: list[float], attempts: int) -> float | None:
    """Median of the good values of a burst, or None unless more than half of ``attempts``
    succeeded (a median of one or two reads from a flaky bus rejects no spike)."""
    if len(values) * 2 <= attempts:
        return None
    return statistics.median(values)
