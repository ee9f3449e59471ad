"""Driver interfaces of a dryer node.

Two layers, as gpiozero separates devices from pin factories:

* **Chips** — the physical boundary. A real chip wraps a hardware library (imported lazily);
  a simulated chip reads the simulated dryer. Tests may use a scripted fake chip here, and
  only here.
* **Sensors** — our driver code (retries, outlier rejection, calibration, fault reporting),
  identical for real and simulated chips. One method: ``read()``.

Fans, vents and the rain input are gpiozero devices, so tests and the simulator drive them on
gpiozero's MockFactory pins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from firmware.config import DhtSensorConfig, LoadCellTrayConfig, MoistureProbeConfig

# --- chips (physical boundary) ---------------------------------------------------------------

class DhtChip(Protocol):
    """What ``adafruit_dht.DHT22`` offers: each property read triggers/uses a measurement and
    raises ``RuntimeError`` on a checksum or timing failure (frequent in the field)."""

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...


class AdcChannel(Protocol):
    """What ``adafruit_ads1x15.analog_in.AnalogIn`` offers: the input voltage (raises OSError
    when the I2C bus fails)."""

    @property
    def voltage(self) -> float: ...


class Hx711Chip(Protocol):
    """A 24-bit load-cell ADC: one raw signed reading in counts (raises on timeout)."""

    def read_counts(self) -> int: ...


# --- sensor readings -------------------------------------------------------------------------

@dataclass(frozen=True)
class AirReading:
    temp_c: float
    rh_pct: float


@dataclass(frozen=True)
class MoistureReading:
    moisture_pct_wb: float
    probe_v: float


class AirSensor(Protocol):
    name: str

    def read(self) -> AirReading:
        """A filtered reading. Raises SensorError for a failed sample (transient) and
        SensorFault once ``fault_after`` consecutive samples failed."""
        ...


class MoistureSensor(Protocol):
    name: str

    def read(self) -> MoistureReading: ...


class TraySensor(Protocol):
    name: str

    def read(self) -> float:
        """Mass of the beans on the tray, kg (tare removed)."""
        ...

    def tare(self) -> None:
        """Take the current raw reading as zero (empty tray)."""
        ...


class ChipSource(Protocol):
    """Opens the chips a node's sensors read, like a gpiozero pin factory opens pins.

    ``firmware.drivers.real_chips.RealChips`` talks to hardware (lazy imports);
    ``firmware.simulation.chips.SimulatedChips`` reads the simulated dryer. The config
    objects are the sensor sections of firmware/config.py.
    """

    def dht(self, config: DhtSensorConfig) -> DhtChip: ...

    def adc(self, config: MoistureProbeConfig) -> AdcChannel: ...

    def hx711(self, config: LoadCellTrayConfig) -> Hx711Chip: ...
