"""The real chips on a Raspberry Pi: DHT22/DHT11, ADS1115, HX711.

Every hardware library is imported inside the method that opens a chip, so this module imports
on any laptop; a missing library is a ConfigError telling the technician what to install.

Libraries (the ``pi`` extra): adafruit-circuitpython-dht, adafruit-circuitpython-ads1x15 (both
on Adafruit Blinka: ``board``, ``busio``) and ``hx711`` 1.1.2.3 (PyPI; Marco Roose, after
gandalf15/HX711), which drives the pins through RPi.GPIO (on a Pi 5: the rpi-lgpio package).
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import Any

from cacao_dryer.errors import ConfigError, SensorError
from firmware.config import (
    DHT_RETRY_WAIT_S,
    DhtSensorConfig,
    LoadCellTrayConfig,
    MoistureProbeConfig,
)
from firmware.drivers.base import AdcChannel, DhtChip, Hx711Chip

INSTALL_HINT = "pip install 'cacao-dryer[pi]'"

# adafruit_dht measures again only if more than 2 s passed since its last attempt, else it
# returns the previous values (stale after a failed read!). DHT22 datasheet: one reading per 2 s.
DHT_MIN_INTERVAL_S = DHT_RETRY_WAIT_S
ADS1115_GAINS = (2 / 3, 1, 2, 4, 8, 16)


def _import(module: str, needed_for: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except (ImportError, NotImplementedError, RuntimeError) as exc:
        # NotImplementedError/RuntimeError: Blinka's ``board`` on a computer that is not a Pi.
        raise ConfigError(f"{needed_for} needs the Python module {module!r}, which cannot be "
                          f"loaded ({exc}); on the Pi run: {INSTALL_HINT}") from None


class RealDht:
    """A DhtChip on adafruit_dht: ``temperature`` takes a fresh measurement (waiting out the
    chip's 2 s interval if needed, real time: this is the sensor's own timing), ``humidity``
    returns the humidity of that same measurement."""

    def __init__(self, device: Any) -> None:
        self._device = device
        self._last_attempt: float | None = None

    @property
    def temperature(self) -> float | None:
        if self._last_attempt is not None:
            wait_s = DHT_MIN_INTERVAL_S - (time.monotonic() - self._last_attempt)
            if wait_s > 0:
                time.sleep(wait_s)
        self._last_attempt = time.monotonic()
        self._device.measure()
        return self._device.temperature

    @property
    def humidity(self) -> float | None:
        return self._device.humidity

    def close(self) -> None:
        self._device.exit()


class RealHx711:
    """An Hx711Chip on the ``hx711`` package. Its public ``get_raw_data`` loops forever when the
    chip does not answer (it retries until it has enough reads), which would hang the node on a
    loose wire; ``_read`` gives up after ~0.4 s and returns False, so we use that."""

    def __init__(self, device: Any, where: str) -> None:
        self._device = device
        self._where = where

    def read_counts(self) -> int:
        try:
            value = self._device._read()
        except Exception as exc:  # the library raises its own exception types
            raise OSError(f"HX711 {self._where}: {exc}") from exc
        if value is False or value is None:
            raise TimeoutError(f"HX711 {self._where}: no data (not ready or invalid)")
        return int(value)


class RealChips:
    """ChipSource for a Raspberry Pi. ``close()`` releases DHT helper processes and I2C."""

    def __init__(self) -> None:
        self._i2c: Any = None
        self._adcs: dict[int, Any] = {}
        self._dhts: list[RealDht] = []

    def dht(self, config: DhtSensorConfig) -> DhtChip:
        what = f"air sensor {config.name!r}"
        adafruit_dht = _import("adafruit_dht", what)
        board = _import("board", what)
        pin = getattr(board, f"D{config.pin}", None)
        if pin is None:
            raise ConfigError(f"{what}: GPIO{config.pin} is not a pin of this board")
        cls = adafruit_dht.DHT22 if config.type == "dht22" else adafruit_dht.DHT11
        try:
            chip = RealDht(cls(pin))
        except (OSError, RuntimeError, ValueError) as exc:
            raise SensorError(f"{what}: cannot open {config.type.upper()} on GPIO{config.pin} "
                              f"({exc})") from None
        self._dhts.append(chip)
        return chip

    def adc(self, config: MoistureProbeConfig) -> AdcChannel:
        what = f"moisture probe {config.name!r}"
        board = _import("board", what)
        busio = _import("busio", what)
        ads1x15 = _import("adafruit_ads1x15", what)
        gain = next(g for g in ADS1115_GAINS if abs(g - config.gain) < 1e-3)
        where = f"ADS1115 at I2C 0x{config.i2c_address:02X}"
        try:
            if self._i2c is None:
                self._i2c = busio.I2C(board.SCL, board.SDA)
            ads = self._adcs.get(config.i2c_address)
            if ads is None:
                ads = ads1x15.ADS1115(self._i2c, gain=gain, address=config.i2c_address)
                self._adcs[config.i2c_address] = ads
            elif ads.gain != gain:
                raise ValueError("another probe on this ADS1115 uses a different gain")
            return ads1x15.AnalogIn(ads, config.channel)
        except (OSError, RuntimeError, ValueError) as exc:
            raise SensorError(f"{what}: cannot open {where} ({exc}; check wiring, I2C enabled "
                              f"in raspi-config, ADDR jumper)") from None

    def hx711(self, config: LoadCellTrayConfig) -> Hx711Chip:
        what = f"load-cell tray {config.name!r}"
        hx711 = _import("hx711", what)
        where = f"on GPIO{config.data_pin}/GPIO{config.clock_pin}"
        try:
            device = hx711.HX711(dout_pin=config.data_pin, pd_sck_pin=config.clock_pin,
                                 gain=128, channel="A")
        except Exception as exc:  # the library raises its own exception types
            raise SensorError(f"{what}: cannot open HX711 {where} ({exc})") from None
        return RealHx711(device, where)

    def close(self) -> None:
        for chip in self._dhts:
            chip.close()
        self._dhts.clear()
        if self._i2c is not None:
            self._i2c.deinit()
            self._i2c = None
        self._adcs.clear()
