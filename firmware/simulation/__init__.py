"""The simulated solar dryer: weather of northern Peru, dryer physics, and sensor chips that
read it (see docs/simulator.md)."""

from firmware.simulation.chips import SimulatedChips, probe_volts_for_moisture, rain_pin_is_high
from firmware.simulation.dryer import DryerModel, GreenhouseDesign
from firmware.simulation.weather import AmbientConditions, ConstantWeather, Weather

__all__ = [
    "AmbientConditions",
    "ConstantWeather",
    "DryerModel",
    "GreenhouseDesign",
    "SimulatedChips",
    "Weather",
    "probe_volts_for_moisture",
    "rain_pin_is_high",
]
