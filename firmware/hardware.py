"""All the hardware of one dryer node, built from its config.

``build_hardware(settings, chips, pin_factory, clock)`` opens every sensor, fan and vent the
config names: sensors read through ``chips`` (RealChips on a Pi, SimulatedChips in simulation),
fans/vents/rain input on gpiozero pins from ``pin_factory`` (None = the Pi's real pins;
``MockFactory(pin_class=MockPWMPin)`` in simulation and tests).

Fail-safe on shutdown (``close()``): fans OFF and vents OPEN. Overheating is the irreversible
risk for the beans (they must not exceed 65 °C [ICCO]); a greenhouse dryer already runs 40–60 °C
at midday [Kallari, Hohenheim] and, closed and unventilated, runs hotter (estimate), while open
vents let the heat out by natural draught. Rain or humid night air through open vents re-wets
beans slowly and reversibly. Fans are switched off because nothing supervises them once the
node is down (and a stopped process cannot hold a pin anyway). Opening a relay-driven vent
takes its full travel time, so ``close()`` waits up to ``travel_time_s × 1.2`` (+ ~3 s) of
clock time: give the service a longer stop timeout (systemd's default 90 s covers 70 s travel).
Pass ``fail_safe=False`` to release everything where it is, at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gpiozero.pins import Factory

from cacao_dryer.clock import Clock
from cacao_dryer.errors import ActuatorError, ConfigError
from firmware.config import (
    DhtSensorConfig,
    LoadCellTrayConfig,
    MoistureProbeConfig,
    NodeSettings,
    RainSensorConfig,
    ServoVentConfig,
)
from firmware.drivers.base import AirSensor, ChipSource, MoistureSensor, TraySensor
from firmware.drivers.dht import DhtAirSensor
from firmware.drivers.fan import Fan
from firmware.drivers.load_cell import LoadCellTray
from firmware.drivers.moisture_probe import MoistureProbe
from firmware.drivers.rain import RainSensor
from firmware.drivers.vent import DEAD_TIME_S, END_MARGIN_FRACTION, RelayVent, ServoVent, Vent

SERVO_SETTLE_S = 1.0   # estimate: a hobby servo turns 180° in well under 1 s
UPDATE_TICK_S = 1.0    # how often close() updates relay vents while they open


@dataclass(frozen=True)
class DryerHardware:
    clock: Clock
    inside_air: AirSensor | None = None
    ambient_air: AirSensor | None = None
    moisture_probe: MoistureSensor | None = None
    tray: TraySensor | None = None
    rain: RainSensor | None = None
    fans: Sequence[Fan] = ()
    vents: Sequence[Vent] = ()
    chips: ChipSource | None = None   # closed with the hardware if it has a close()
    _closed: list[bool] = field(default_factory=lambda: [False], init=False, repr=False,
                                compare=False)

    def set_fans(self, pct: float) -> None:
        for fan in self.fans:
            fan.set_speed_pct(pct)

    def set_vents(self, pct: float, now: datetime) -> None:
        for vent in self.vents:
            vent.set_open_pct(pct, now)

    def update(self, now: datetime) -> None:
        """Call every ~1 s: relay vents stop when their estimated position reaches the target."""
        for vent in self.vents:
            vent.update(now)

    def close(self, fail_safe: bool = True) -> None:
        """Release everything. With ``fail_safe`` (default) first fans off and vents open,
        waiting on the clock until relay vents are open (see the module docstring).
        A second call does nothing."""
        if self._closed[0]:
            return
        self._closed[0] = True
        errors: list[Exception] = []
        if fail_safe:
            try:
                self._go_fail_safe()
            except Exception as exc:
                errors.append(exc)
        devices: list[Any] = [*self.fans, *self.vents, self.rain, self.chips]
        for device in devices:
            close = getattr(device, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise ActuatorError(f"closing the dryer hardware: {errors[0]}") from errors[0]

    def _go_fail_safe(self) -> None:
        self.set_fans(0.0)
        self.set_vents(100.0, self.clock.now())
        if any(isinstance(vent, ServoVent) for vent in self.vents):
            self.clock.sleep(SERVO_SETTLE_S)
        relay_vents = [vent for vent in self.vents if isinstance(vent, RelayVent)]
        if not relay_vents:
            return
        limit_s = max(v.config.travel_time_s for v in relay_vents) * (1 + END_MARGIN_FRACTION)
        limit_s += DEAD_TIME_S + 2 * UPDATE_TICK_S
        waited_s = 0.0
        while any(vent.busy for vent in relay_vents) and waited_s < limit_s:
            self.clock.sleep(UPDATE_TICK_S)
            waited_s += UPDATE_TICK_S
            self.update(self.clock.now())


def build_hardware(settings: NodeSettings, chips: ChipSource, pin_factory: Factory | None,
                   clock: Clock) -> DryerHardware:
    """Open the node's hardware. On any error, what was opened (and ``chips``) is closed
    again before the error propagates."""
    opened: list[Any] = []
    try:
        slots: dict[str, Any] = {}
        for sensor in settings.sensors:
            device: Any
            if isinstance(sensor, DhtSensorConfig):
                slot, device = f"{sensor.location}_air", DhtAirSensor(chips.dht(sensor), sensor)
            elif isinstance(sensor, MoistureProbeConfig):
                slot, device = "moisture_probe", MoistureProbe(chips.adc(sensor), sensor)
            elif isinstance(sensor, LoadCellTrayConfig):
                slot, device = "tray", LoadCellTray(chips.hx711(sensor), sensor)
            else:
                assert isinstance(sensor, RainSensorConfig)
                slot, device = "rain", RainSensor(sensor, pin_factory)
                opened.append(device)
            if slot in slots:
                raise ConfigError(f"sensor {sensor.name!r}: only one {slot.replace('_', ' ')} "
                                  f"is supported (already {slots[slot].name!r})")
            slots[slot] = device
        fans = []
        for fan_config in settings.fans:
            fans.append(Fan(fan_config, pin_factory))
            opened.append(fans[-1])
        vents: list[Vent] = []
        for vent_config in settings.vents:
            if isinstance(vent_config, ServoVentConfig):
                vents.append(ServoVent(vent_config, pin_factory))
            else:
                vents.append(RelayVent(vent_config, pin_factory))
            opened.append(vents[-1])
    except BaseException:
        for device in [*reversed(opened), chips]:
            close = getattr(device, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # keep the original error
                    close()
        raise
    return DryerHardware(clock=clock, fans=tuple(fans), vents=tuple(vents), chips=chips,
                         **slots)
