"""Fake chips for tests: DHT22, ADS1115 channel and HX711 that are not attached.

They implement the chip protocols of firmware/drivers/base.py and nothing else — the physical
boundary is the only place tests fake. Each answers from a script of values and exceptions
(raised when their turn comes), then repeats ``then`` forever, or fails the test loudly if
no ``then`` was given.
"""

from __future__ import annotations

from typing import Any

from firmware.config import DhtSensorConfig, LoadCellTrayConfig, MoistureProbeConfig

_EXHAUSTED = object()


class _Script:
    def __init__(self, items: tuple[Any, ...], then: Any) -> None:
        self._items = list(items)
        self._then = then
        self.calls = 0

    def next(self) -> Any:
        self.calls += 1
        if self._items:
            item = self._items.pop(0)
        elif self._then is not _EXHAUSTED:
            item = self._then
        else:
            raise AssertionError(f"fake chip read {self.calls} times, script has fewer items")
        if isinstance(item, BaseException):
            raise item
        return item


class ScriptedDht:
    """Items: (temp_c, rh_pct) or an exception. ``temperature`` measures; ``humidity`` returns
    the same measurement's humidity (as adafruit_dht within its 2 s interval)."""

    def __init__(self, *items: tuple[float | None, float | None] | BaseException,
                 then: Any = _EXHAUSTED) -> None:
        self._script = _Script(items, then)
        self._rh: float | None = None

    @property
    def measurements(self) -> int:
        return self._script.calls

    @property
    def temperature(self) -> float | None:
        temp_c, self._rh = self._script.next()
        return temp_c

    @property
    def humidity(self) -> float | None:
        return self._rh


class ScriptedAdc:
    """Items: volts or an exception (e.g. OSError for an I2C failure)."""

    def __init__(self, *items: float | BaseException, then: Any = _EXHAUSTED) -> None:
        self._script = _Script(items, then)

    @property
    def reads(self) -> int:
        return self._script.calls

    @property
    def voltage(self) -> float:
        return float(self._script.next())


class ScriptedHx711:
    """Items: raw counts or an exception (e.g. TimeoutError)."""

    def __init__(self, *items: int | BaseException, then: Any = _EXHAUSTED) -> None:
        self._script = _Script(items, then)

    @property
    def reads(self) -> int:
        return self._script.calls

    def read_counts(self) -> int:
        return int(self._script.next())


class SteadyChips:
    """A ChipSource whose chips always read the same values; remembers what it opened."""

    def __init__(self, temp_c: float = 30.0, rh_pct: float = 60.0, probe_v: float = 1.5,
                 counts: int = 0) -> None:
        self.temp_c, self.rh_pct, self.probe_v, self.counts = temp_c, rh_pct, probe_v, counts
        self.opened: list[str] = []
        self.closed = False

    def dht(self, config: DhtSensorConfig) -> ScriptedDht:
        self.opened.append(config.name)
        return ScriptedDht(then=(self.temp_c, self.rh_pct))

    def adc(self, config: MoistureProbeConfig) -> ScriptedAdc:
        self.opened.append(config.name)
        return ScriptedAdc(then=self.probe_v)

    def hx711(self, config: LoadCellTrayConfig) -> ScriptedHx711:
        self.opened.append(config.name)
        return ScriptedHx711(then=self.counts)

    def close(self) -> None:
        self.closed = True
