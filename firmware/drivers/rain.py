"""Digital rain sensor (e.g. a YL-83 plate with an LM393 comparator board) on one GPIO input."""

from __future__ import annotations

from gpiozero import DigitalInputDevice
from gpiozero.pins import Factory

from firmware.config import RainSensorConfig


class RainSensor:
    """``is_raining`` is True while the plate is wet.

    The input is pulled towards the *dry* level (up when ``wet_when_low``, the usual comparator
    board, which has its own pull-up too): a broken wire then reads dry rather than floating.
    """

    def __init__(self, config: RainSensorConfig, pin_factory: Factory | None = None) -> None:
        self.name = config.name
        self.config = config
        # pull_up=True makes gpiozero treat LOW as active; pull_up=False makes HIGH active.
        self._input = DigitalInputDevice(config.pin, pull_up=config.wet_when_low,
                                         pin_factory=pin_factory)

    @property
    def is_raining(self) -> bool:
        return bool(self._input.is_active)

    def close(self) -> None:
        self._input.close()
