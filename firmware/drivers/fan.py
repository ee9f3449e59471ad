"""A dryer fan: PWM speed control through a MOSFET/driver, or on/off through a relay."""

from __future__ import annotations

import math

from gpiozero import DigitalOutputDevice, PWMOutputDevice
from gpiozero.pins import Factory

from cacao_dryer.errors import ActuatorError
from firmware.config import FanConfig


class Fan:
    """``set_speed_pct(pct)``; ``speed_pct`` is what is actually applied (a relay fan is 0 or
    100: any requested speed above 0 switches it on). Starts OFF."""

    def __init__(self, config: FanConfig, pin_factory: Factory | None = None) -> None:
        self.name = config.name
        self.config = config
        self._output: PWMOutputDevice | DigitalOutputDevice
        if config.type == "pwm":
            self._output = PWMOutputDevice(
                config.pin, active_high=config.active_high, initial_value=0.0,
                frequency=config.pwm_frequency_hz, pin_factory=pin_factory)
        else:
            self._output = DigitalOutputDevice(
                config.pin, active_high=config.active_high, initial_value=False,
                pin_factory=pin_factory)

    @property
    def speed_pct(self) -> float:
        if self._output.closed:
            return 0.0
        return float(self._output.value) * 100.0

    def set_speed_pct(self, pct: float) -> None:
        if not (math.isfinite(pct) and 0.0 <= pct <= 100.0):
            raise ActuatorError(f"fan {self.name!r}: speed {pct} % is outside 0..100 %")
        if isinstance(self._output, PWMOutputDevice):
            self._output.value = pct / 100.0
        else:
            self._output.value = pct > 0.0

    def close(self) -> None:
        """Switch the fan off and release its pin (again: no-op)."""
        if self._output.closed:
            return
        try:
            self._output.off()
        finally:
            self._output.close()
