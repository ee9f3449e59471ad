"""Simulated sensor chips that read the simulated dryer, with noise and faults on demand.

``SimulatedChips`` is a ``firmware.drivers.base.ChipSource``: the node opens its sensors' chips
from it exactly as from ``RealChips``, so the same drivers run on a laptop. The chips only READ
the model (at the model's current time); the node agent, which owns the fans and vents, steps it.

Each chip draws its noise from its own generator seeded by ``(seed, sensor name)``: a run is
repeatable, and reading one sensor more often does not change another's readings.

Faults (``DryerModel.inject_fault(name, kind, until)``), per chip:

=========  ======================================  ==================  =====================
kind       DHT22/DHT11                             probe (ADS1115)     tray (HX711)
=========  ======================================  ==================  =====================
dead       RuntimeError "DHT sensor not found"     OSError (I2C 121)   TimeoutError
stuck      last values forever                     last voltage        last counts
noisy      10 × noise                              20 × noise          20 × noise, spikes
checksum   RuntimeError "Checksum did not          garbled: full       garbled: −1 or
           validate" on every measurement          scale or 0 V        ±saturation
=========  ======================================  ==================  =====================
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import Factory

    from cacao_dryer.clock import Clock
    from firmware.config import (
        DhtSensorConfig,
        LoadCellTrayConfig,
        MoistureProbeConfig,
        RainSensorConfig,
    )
    from firmware.simulation.dryer import DryerModel

# DHT accuracy and resolution, from the AM2302/DHT22 and DHT11 datasheets: (±°C, ±% RH, step).
DHT_ACCURACY = {"dht22": (0.5, 2.0, 0.1), "dht11": (2.0, 5.0, 1.0)}
# Measuring ranges from the same datasheets: (min °C, max °C, min % RH, max % RH).
DHT_RANGE = {"dht22": (-40.0, 80.0, 0.0, 99.9), "dht11": (0.0, 50.0, 20.0, 90.0)}
# adafruit_dht measures at most every 2 s (DHT22) / 1 s (DHT11); reads in between return the
# cached values.
DHT_MIN_INTERVAL_S = {"dht22": 2.0, "dht11": 1.0}
DHT_CHECKSUM_ERROR_RATE = 0.05   # long leads in a humid dryer (estimate)
PROBE_NOISE_V = 0.005            # probe + ADC noise, 1 σ (estimate)
TRAY_NOISE_KG = 0.005            # load cell + HX711 noise, 1 σ (estimate)
TRAY_SPIKE_RATE = 0.02           # share of reads hit by vibration [Sitorus2020] (estimate)
TRAY_SPIKE_KG = (0.1, 1.0)       # size of a vibration spike (estimate)
HX711_MIN, HX711_MAX = -(2**23), 2**23 - 1
# ADS1115 full-scale voltage by amplifier gain (datasheet).
ADS1115_FULL_SCALE_V = {2 / 3: 6.144, 1: 4.096, 2: 2.048, 4: 1.024, 8: 0.512, 16: 0.256}


def probe_volts_for_moisture(moisture_pct_wb: float,
                             calibration: list[tuple[float, float]]) -> float:
    """Invert a probe's piecewise-linear calibration ``[(volts, moisture_pct_wb), ...]``: the
    voltage at which the curve reads ``moisture_pct_wb``. Outside the curve, the end segment is
    extended (as the curve itself would be).

    >>> probe_volts_for_moisture(30.0, [(1.0, 60.0), (2.0, 30.0), (3.0, 5.0)])
    2.0
    >>> round(probe_volts_for_moisture(17.5, [(1.0, 60.0), (2.0, 30.0), (3.0, 5.0)]), 3)
    2.5
    """
    segments = list(itertools.pairwise(calibration))
    for (v1, m1), (v2, m2) in segments:
        if min(m1, m2) <= moisture_pct_wb <= max(m1, m2):
            return _interpolate(moisture_pct_wb, (v1, m1), (v2, m2))
    first, last = calibration[0][1], calibration[-1][1]
    near_first = abs(moisture_pct_wb - first) <= abs(moisture_pct_wb - last)
    (v1, m1), (v2, m2) = segments[0] if near_first else segments[-1]
    return _interpolate(moisture_pct_wb, (v1, m1), (v2, m2))


def _interpolate(moisture: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    (v1, m1), (v2, m2) = a, b
    if m1 == m2:
        return (v1 + v2) / 2
    return v1 + (moisture - m1) * (v2 - v1) / (m2 - m1)


def rain_pin_is_high(wet: bool, wet_when_low: bool) -> bool:
    """The level a rain comparator board puts on its output."""
    return wet != wet_when_low


def _full_scale_v(gain: float) -> float:
    return ADS1115_FULL_SCALE_V[min(ADS1115_FULL_SCALE_V, key=lambda g: abs(g - gain))]


class SimulatedDht:
    """Behaves like ``adafruit_dht.DHT22``: each property read measures (at most every 2 s,
    cached in between) and raises ``RuntimeError`` on a failed transfer."""

    def __init__(self, model: DryerModel, clock: Clock, config: DhtSensorConfig,
                 rng: random.Random, checksum_error_rate: float) -> None:
        self._model = model
        self._clock = clock
        self._config = config
        self._rng = rng
        self._checksum_error_rate = checksum_error_rate
        self._min_interval_s = DHT_MIN_INTERVAL_S[config.type]
        self._measured_at: datetime | None = None
        self._temperature: float | None = None
        self._humidity: float | None = None

    @property
    def temperature(self) -> float | None:
        self._measure()
        return self._temperature

    @property
    def humidity(self) -> float | None:
        self._measure()
        return self._humidity

    def _truth(self) -> tuple[float, float]:
        if self._config.location == "inside":
            return self._model.air_temp_c, self._model.air_rh_pct
        return self._model.ambient.temp_c, self._model.ambient.rh_pct

    def _measure(self) -> None:
        now = self._clock.now()
        fault = self._model.fault(self._config.name, now)
        if fault == "dead":
            raise RuntimeError("DHT sensor not found, check wiring")
        if (self._measured_at is not None
                and (now - self._measured_at).total_seconds() < self._min_interval_s):
            return
        self._measured_at = now
        if fault == "checksum" or self._rng.random() < self._checksum_error_rate:
            raise RuntimeError("Checksum did not validate. Try again.")
        if fault == "stuck" and self._temperature is not None:
            return
        temp_c, rh_pct = self._truth()
        temp_acc, rh_acc, step = DHT_ACCURACY[self._config.type]
        scale = 10.0 if fault == "noisy" else 1.0
        t_min, t_max, rh_min, rh_max = DHT_RANGE[self._config.type]
        temp_c += self._bounded_noise(temp_acc * scale)
        rh_pct += self._bounded_noise(rh_acc * scale)
        self._temperature = round(min(t_max, max(t_min, temp_c)) / step) * step
        self._humidity = round(min(rh_max, max(rh_min, rh_pct)) / step) * step

    def _bounded_noise(self, accuracy: float) -> float:
        """Gaussian with σ = accuracy/2, cut at ± accuracy (the datasheet's bound)."""
        return min(accuracy, max(-accuracy, self._rng.gauss(0.0, accuracy / 2)))


class SimulatedProbeAdc:
    """An ADS1115 channel with a moisture probe: ``voltage`` from the simulated bean moisture
    through the inverse of the probe's calibration curve, plus noise."""

    def __init__(self, model: DryerModel, clock: Clock, config: MoistureProbeConfig,
                 rng: random.Random) -> None:
        self._model = model
        self._clock = clock
        self._config = config
        self._rng = rng
        self._full_scale_v = _full_scale_v(config.gain)
        self._last_v: float | None = None

    @property
    def voltage(self) -> float:
        fault = self._model.fault(self._config.name, self._clock.now())
        if fault == "dead":
            raise OSError(121, "Remote I/O error (ADS1115 not answering on I2C)")
        if fault == "checksum":
            return self._rng.choice((self._full_scale_v, 0.0))
        if fault == "stuck" and self._last_v is not None:
            return self._last_v
        volts = probe_volts_for_moisture(self._model.bean_moisture_pct_wb,
                                         self._config.calibration)
        volts += self._rng.gauss(0.0, PROBE_NOISE_V * (20.0 if fault == "noisy" else 1.0))
        self._last_v = min(self._full_scale_v, max(0.0, volts))
        return self._last_v


class SimulatedHx711:
    """An HX711 under the sample tray: counts = tare offset + tray mass × counts per kg,
    plus noise and the odd vibration spike."""

    def __init__(self, model: DryerModel, clock: Clock, config: LoadCellTrayConfig,
                 rng: random.Random) -> None:
        self._model = model
        self._clock = clock
        self._config = config
        self._rng = rng
        self._last_counts: int | None = None

    def read_counts(self) -> int:
        fault = self._model.fault(self._config.name, self._clock.now())
        if fault == "dead":
            raise TimeoutError("HX711 did not become ready (no data)")
        if fault == "checksum":
            return self._rng.choice((-1, HX711_MAX, HX711_MIN))
        if fault == "stuck" and self._last_counts is not None:
            return self._last_counts
        noisy = fault == "noisy"
        mass_kg = self._model.tray_mass_kg
        mass_kg += self._rng.gauss(0.0, TRAY_NOISE_KG * (20.0 if noisy else 1.0))
        if self._rng.random() < (0.3 if noisy else TRAY_SPIKE_RATE):
            mass_kg += self._rng.choice((-1.0, 1.0)) * self._rng.uniform(*TRAY_SPIKE_KG)
        counts = self._config.tare_offset_counts + mass_kg * self._config.counts_per_kg
        self._last_counts = min(HX711_MAX, max(HX711_MIN, round(counts)))
        return self._last_counts


class SimulatedChips:
    """The chips of a simulated node, reading one ``DryerModel``.

    >>> from datetime import UTC, datetime
    >>> from cacao_dryer.clock import ManualClock
    >>> from firmware.config import LoadCellTrayConfig
    >>> from firmware.simulation import DryerModel, Weather
    >>> clock = ManualClock(datetime(2026, 1, 5, 17, 0, tzinfo=UTC))
    >>> model = DryerModel(Weather(seed=1), load_kg=400, start=clock.now())
    >>> chips = SimulatedChips(model, clock, seed=1)
    >>> tray = chips.hx711(LoadCellTrayConfig(type="load_cell_tray", name="tray", data_pin=5,
    ...                                       clock_pin=6, counts_per_kg=1000.0))
    >>> 4000 < tray.read_counts() < 6000     # a 5 kg sample tray
    True
    """

    def __init__(self, model: DryerModel, clock: Clock, seed: int = 0, *,
                 dht_checksum_error_rate: float = DHT_CHECKSUM_ERROR_RATE) -> None:
        if not 0.0 <= dht_checksum_error_rate <= 1.0:
            raise ValueError(f"dht_checksum_error_rate must be within 0..1, "
                             f"got {dht_checksum_error_rate}")
        self.model = model
        self._clock = clock
        self._seed = seed
        self._dht_checksum_error_rate = dht_checksum_error_rate
        self._rain_rng = self._rng("rain", "rain")

    def _rng(self, chip: str, name: str) -> random.Random:
        return random.Random(f"cacao-chip:{self._seed}:{chip}:{name}")

    def dht(self, config: DhtSensorConfig) -> SimulatedDht:
        return SimulatedDht(self.model, self._clock, config, self._rng("dht", config.name),
                            self._dht_checksum_error_rate)

    def adc(self, config: MoistureProbeConfig) -> SimulatedProbeAdc:
        return SimulatedProbeAdc(self.model, self._clock, config, self._rng("adc", config.name))

    def hx711(self, config: LoadCellTrayConfig) -> SimulatedHx711:
        return SimulatedHx711(self.model, self._clock, config, self._rng("hx711", config.name))

    def sync_rain_pin(self, pin_factory: Factory, config: RainSensorConfig) -> bool:
        """Drive the rain sensor's input pin on a gpiozero ``MockFactory`` to what the board
        would output now; returns the pin level (True = high).

        Faults: dead → the board is unpowered and the pull-up holds the pin high; stuck → the
        pin keeps its level; noisy/checksum → the comparator chatters (random level)."""
        pin = pin_factory.pin(config.pin)
        fault = self.model.fault(config.name, self._clock.now())
        if fault == "stuck":
            return bool(pin.state)
        if fault == "dead":
            high = True
        elif fault in ("noisy", "checksum"):
            high = self._rain_rng.random() < 0.5
        else:
            high = rain_pin_is_high(self.model.raining, config.wet_when_low)
        if high:
            pin.drive_high()
        else:
            pin.drive_low()
        return high
