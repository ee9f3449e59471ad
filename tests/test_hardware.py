"""Building a node's hardware from its config, driving it, and the fail-safe shutdown."""

from __future__ import annotations

import pytest
from chip_fakes import SteadyChips
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from cacao_dryer.clock import ManualClock
from cacao_dryer.errors import ConfigError
from firmware.config import NodeSettings, parse_node_config
from firmware.drivers.base import AirReading, MoistureReading
from firmware.drivers.dht import DhtAirSensor
from firmware.drivers.vent import END_MARGIN_FRACTION, RelayVent, ServoVent
from firmware.hardware import SERVO_SETTLE_S, DryerHardware, build_hardware

TRAVEL_S = 20.0


def settings(**changes: object) -> NodeSettings:
    data: dict[str, object] = {
        "node_id": "secador-01", "site_id": "coop-tarapoto",
        "sensors": [
            {"type": "dht22", "name": "dryer-air", "location": "inside", "pin": 4},
            {"type": "dht22", "name": "outside-air", "location": "ambient", "pin": 17},
            {"type": "moisture_probe", "name": "probe", "calibration": [[1.0, 60.0],
                                                                        [2.0, 10.0]]},
            {"type": "load_cell_tray", "name": "tray", "data_pin": 5, "clock_pin": 6,
             "counts_per_kg": 1000.0},
            {"type": "rain", "pin": 26},
        ],
        "fans": [{"name": "fan-a", "type": "pwm", "pin": 18},
                 {"name": "fan-b", "type": "relay", "pin": 23}],
        "vents": [{"name": "roof", "type": "servo", "pin": 13},
                  {"name": "side", "type": "relay", "open_pin": 22, "close_pin": 27,
                   "travel_time_s": TRAVEL_S}],
    }
    data.update(changes)
    return parse_node_config(data)


def test_build_hardware_opens_every_configured_device(factory: MockFactory,
                                                      clock: ManualClock) -> None:
    chips = SteadyChips(temp_c=41.0, rh_pct=55.0, probe_v=1.5, counts=2500)
    hardware = build_hardware(settings(), chips, factory, clock)
    assert chips.opened == ["dryer-air", "outside-air", "probe", "tray"]
    assert isinstance(hardware.inside_air, DhtAirSensor)
    assert hardware.inside_air.name == "dryer-air"
    assert hardware.ambient_air is not None and hardware.ambient_air.name == "outside-air"
    assert hardware.inside_air.read() == AirReading(41.0, 55.0)
    assert hardware.moisture_probe is not None
    assert hardware.moisture_probe.read() == MoistureReading(35.0, 1.5)
    assert hardware.tray is not None and hardware.tray.read() == pytest.approx(2.5)
    assert hardware.rain is not None and not hardware.rain.is_raining
    assert [fan.name for fan in hardware.fans] == ["fan-a", "fan-b"]
    assert [type(vent) for vent in hardware.vents] == [ServoVent, RelayVent]


def test_sensors_left_out_of_the_config_are_none(factory: MockFactory,
                                                 clock: ManualClock) -> None:
    hardware = build_hardware(settings(sensors=[], fans=[], vents=[]), SteadyChips(), factory,
                              clock)
    assert hardware == DryerHardware(clock=clock, chips=hardware.chips)


def test_set_fans_and_vents_drive_all_of_them(factory: MockFactory, clock: ManualClock) -> None:
    hardware = build_hardware(settings(), SteadyChips(), factory, clock)
    hardware.set_fans(50.0)
    assert factory.pin(18).state == pytest.approx(0.5)
    assert factory.pin(23).state == 1
    hardware.set_vents(0.0, clock.now())
    assert hardware.vents[0].open_pct == 0.0
    assert factory.pin(27).state == 1  # the relay vent homes closed


def test_update_stops_relay_vents_at_their_target(factory: MockFactory,
                                                  clock: ManualClock) -> None:
    hardware = build_hardware(settings(), SteadyChips(), factory, clock)
    hardware.set_vents(100.0, clock.now())
    for _ in range(round(TRAVEL_S * (1 + END_MARGIN_FRACTION))):
        assert factory.pin(22).state == 1
        clock.advance(1.0)
        hardware.update(clock.now())
    assert factory.pin(22).state == 0
    assert hardware.vents[1].open_pct == 100.0


def test_second_moisture_probe_is_refused_and_pins_are_released(factory: MockFactory,
                                                                clock: ManualClock) -> None:
    chips = SteadyChips()
    config = settings(sensors=[
        {"type": "dht22", "name": "dryer-air", "location": "inside", "pin": 4},
        {"type": "rain", "pin": 26},
        {"type": "moisture_probe", "name": "probe-a", "calibration": [[1, 50], [2, 10]]},
        {"type": "moisture_probe", "name": "probe-b", "channel": 1,
         "calibration": [[1, 50], [2, 10]]},
    ])
    with pytest.raises(ConfigError, match="'probe-b': only one moisture probe"):
        build_hardware(config, chips, factory, clock)
    assert chips.closed
    DigitalOutputDevice(26, pin_factory=factory).close()  # the rain pin is free again


def test_fail_safe_close_stops_fans_and_opens_vents(factory: MockFactory,
                                                    clock: ManualClock) -> None:
    chips = SteadyChips()
    hardware = build_hardware(settings(), chips, factory, clock)
    hardware.set_fans(80.0)
    start = clock.now()
    hardware.close()
    waited_s = (clock.now() - start).total_seconds()
    assert waited_s >= TRAVEL_S * (1 + END_MARGIN_FRACTION)  # the relay vent drove fully open
    assert [change.state for change in factory.pin(18).states][-2:] == [0.8, 0]
    assert [bool(change.state) for change in factory.pin(23).states] == [False, True, False]
    assert [vent.open_pct for vent in hardware.vents] == [100.0, 100.0]
    assert [bool(change.state) for change in factory.pin(22).states] == [False, True, False]
    assert factory.pin(27).states[-1].state == 0
    assert chips.closed
    DigitalOutputDevice(18, pin_factory=factory).close()  # every pin is released


def test_fail_safe_close_turns_the_servo_to_its_open_angle(factory: MockFactory,
                                                clock: ManualClock) -> None:
    config = settings(vents=[{"name": "roof", "type": "servo", "pin": 13,
                              "closed_angle_deg": 20, "open_angle_deg": 110}])
    hardware = build_hardware(config, SteadyChips(), factory, clock)
    hardware.set_vents(0.0, clock.now())
    start = clock.now()
    hardware.close()
    *_, last_pulse, released = [change.state for change in factory.pin(13).states]
    assert last_pulse * 20 == pytest.approx(0.5 + 2.0 * 110 / 180)  # ms of a 20 ms frame
    assert released == 0
    assert (clock.now() - start).total_seconds() == SERVO_SETTLE_S  # time to get there


def test_close_without_fail_safe_leaves_things_where_they_are(factory: MockFactory,
                                                              clock: ManualClock) -> None:
    hardware = build_hardware(settings(), SteadyChips(), factory, clock)
    hardware.set_vents(0.0, clock.now())
    start = clock.now()
    hardware.close(fail_safe=False)
    assert clock.now() == start
    assert factory.pin(22).state == 0 and factory.pin(27).state == 0
    assert [bool(change.state) for change in factory.pin(22).states] == [False]


def test_closing_twice_is_harmless(factory: MockFactory, clock: ManualClock) -> None:
    hardware = build_hardware(settings(), SteadyChips(), factory, clock)
    hardware.close()
    after_first = clock.now()
    hardware.close()
    assert clock.now() == after_first
