"""Fans, vents and the rain input on gpiozero's own MockFactory pins."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from cacao_dryer.clock import ManualClock
from cacao_dryer.errors import ActuatorError, ConfigError
from firmware.config import FanConfig, RainSensorConfig, RelayVentConfig, ServoVentConfig
from firmware.drivers.fan import Fan
from firmware.drivers.rain import RainSensor
from firmware.drivers.vent import DEAD_TIME_S, END_MARGIN_FRACTION, RelayVent, ServoVent

TRAVEL_S = 30.0
FULL_RUN_S = TRAVEL_S * (1 + END_MARGIN_FRACTION)   # 36 s
OPEN_PIN, CLOSE_PIN = 22, 27


def history(factory: MockFactory, pin: int) -> list[bool]:
    """Every level the pin had, from its creation (MockPin.assert_states stops at the shorter
    list, so we compare whole histories instead)."""
    return [bool(change.state) for change in factory.pin(pin).states]


# --- fans ------------------------------------------------------------------------------------

def fan(factory: MockFactory, **changes: object) -> Fan:
    values: dict[str, object] = {"name": "fan-1", "type": "pwm", "pin": 18}
    values.update(changes)
    return Fan(FanConfig.model_validate(values), factory)


def test_fan_starts_off(factory: MockFactory) -> None:
    device = fan(factory)
    assert device.speed_pct == 0.0
    assert factory.pin(18).state == 0


def test_pwm_fan_duty_cycle_follows_speed(factory: MockFactory) -> None:
    device = fan(factory, pwm_frequency_hz=250.0)
    device.set_speed_pct(40.0)
    assert factory.pin(18).state == pytest.approx(0.4)
    assert factory.pin(18).frequency == 250.0
    assert device.speed_pct == pytest.approx(40.0)


def test_active_low_pwm_fan_inverts_the_duty_cycle(factory: MockFactory) -> None:
    device = fan(factory, active_high=False)
    assert factory.pin(18).state == 1  # off
    device.set_speed_pct(40.0)
    assert factory.pin(18).state == pytest.approx(0.6)


def test_relay_fan_is_on_for_any_speed_and_reports_what_is_applied(factory: MockFactory) -> None:
    device = fan(factory, type="relay", pin=23)
    device.set_speed_pct(30.0)
    assert factory.pin(23).state == 1
    assert device.speed_pct == 100.0
    device.set_speed_pct(0.0)
    assert factory.pin(23).state == 0
    assert device.speed_pct == 0.0


def test_active_low_relay_fan_pulls_the_pin_low_to_run(factory: MockFactory) -> None:
    device = fan(factory, type="relay", pin=23, active_high=False)
    assert factory.pin(23).state == 1
    device.set_speed_pct(100.0)
    assert factory.pin(23).state == 0
    assert history(factory, 23) == [False, True, False]  # (mock pins start low, as inputs)


@pytest.mark.parametrize("speed", [-1.0, 100.5, float("nan")])
def test_fan_refuses_impossible_speeds(factory: MockFactory, speed: float) -> None:
    device = fan(factory)
    with pytest.raises(ActuatorError, match="fan 'fan-1'"):
        device.set_speed_pct(speed)
    assert device.speed_pct == 0.0


def test_closing_a_fan_switches_it_off_and_releases_the_pin(factory: MockFactory) -> None:
    device = fan(factory, type="relay", pin=23)
    device.set_speed_pct(100.0)
    device.close()
    device.close()  # twice is harmless
    assert history(factory, 23) == [False, True, False]
    fan(factory, type="relay", pin=23)  # the pin is free again


# --- rain ------------------------------------------------------------------------------------

def test_rain_sensor_wet_when_low(factory: MockFactory) -> None:
    rain = RainSensor(RainSensorConfig(type="rain", pin=26), factory)
    assert not rain.is_raining  # pulled up: a board with nothing driving reads dry
    factory.pin(26).drive_low()
    assert rain.is_raining
    factory.pin(26).drive_high()
    assert not rain.is_raining


def test_rain_sensor_wet_when_high(factory: MockFactory) -> None:
    rain = RainSensor(RainSensorConfig(type="rain", pin=26, wet_when_low=False), factory)
    assert not rain.is_raining
    factory.pin(26).drive_high()
    assert rain.is_raining


# --- servo vent ------------------------------------------------------------------------------

def servo(factory: MockFactory, **changes: object) -> ServoVent:
    values: dict[str, object] = {"name": "roof", "type": "servo", "pin": 13,
                                 "closed_angle_deg": 10.0, "open_angle_deg": 100.0}
    values.update(changes)
    return ServoVent(ServoVentConfig.model_validate(values), factory)


def pulse_ms(factory: MockFactory, pin: int) -> float:
    return float(factory.pin(pin).state) * 20.0  # duty cycle of a 20 ms frame


def test_servo_gets_no_pulses_before_the_first_command(factory: MockFactory) -> None:
    vent = servo(factory)
    assert factory.pin(13).state == 0
    assert vent.target_pct is None and not vent.position_known
    assert vent.open_pct == 0.0  # assumed closed


@pytest.mark.parametrize(("pct", "angle"), [(0.0, 10.0), (50.0, 55.0), (100.0, 100.0)])
def test_servo_angle_follows_the_opening(factory: MockFactory, clock: ManualClock,
                                         pct: float, angle: float) -> None:
    vent = servo(factory)
    vent.set_open_pct(pct, clock.now())
    assert vent.angle_deg == pytest.approx(angle)
    # 0..180° ↔ 0.5..2.5 ms
    assert pulse_ms(factory, 13) == pytest.approx(0.5 + 2.0 * angle / 180.0)
    assert vent.open_pct == pct == vent.target_pct


def test_servo_may_open_towards_smaller_angles(factory: MockFactory, clock: ManualClock) -> None:
    vent = servo(factory, closed_angle_deg=170.0, open_angle_deg=80.0)
    vent.set_open_pct(100.0, clock.now())
    assert vent.angle_deg == pytest.approx(80.0)


def test_servo_angles_outside_its_range_are_a_config_error(factory: MockFactory) -> None:
    with pytest.raises(ConfigError, match="open_angle_deg 200"):
        servo(factory, open_angle_deg=200.0)


def test_vent_refuses_impossible_openings(factory: MockFactory, clock: ManualClock) -> None:
    with pytest.raises(ActuatorError, match="vent 'roof'"):
        servo(factory).set_open_pct(120.0, clock.now())


# --- relay vent ------------------------------------------------------------------------------

def relay_vent(factory: MockFactory, **changes: object) -> RelayVent:
    values: dict[str, object] = {"name": "side", "type": "relay", "open_pin": OPEN_PIN,
                                 "close_pin": CLOSE_PIN, "travel_time_s": TRAVEL_S}
    values.update(changes)
    return RelayVent(RelayVentConfig.model_validate(values), factory)


def relays(factory: MockFactory) -> tuple[bool, bool]:
    """(open relay energized, close relay energized) for active-high relays."""
    return bool(factory.pin(OPEN_PIN).state), bool(factory.pin(CLOSE_PIN).state)


def run(vent: RelayVent, factory: MockFactory, clock: ManualClock, seconds: float,
        tick_s: float = 1.0) -> None:
    """The node loop: update every tick; the relays are never both on."""
    for _ in range(round(seconds / tick_s)):
        clock.advance(tick_s)
        vent.update(clock.now())
        assert relays(factory) != (True, True)


def homed_closed(factory: MockFactory, clock: ManualClock, **changes: object) -> RelayVent:
    vent = relay_vent(factory, **changes)
    vent.set_open_pct(0.0, clock.now())
    run(vent, factory, clock, FULL_RUN_S + 1)
    assert vent.open_pct == 0.0 and not vent.busy
    return vent


def test_relay_vent_is_stopped_and_unknown_at_boot(factory: MockFactory) -> None:
    vent = relay_vent(factory)
    assert relays(factory) == (False, False)
    assert vent.motor == "stopped" and not vent.position_known
    assert vent.open_pct == 0.0  # assumed closed


def test_first_command_homes_against_the_nearer_end_stop(factory: MockFactory,
                                                         clock: ManualClock) -> None:
    vent = relay_vent(factory)
    vent.set_open_pct(100.0, clock.now())
    assert relays(factory) == (True, False)
    run(vent, factory, clock, TRAVEL_S / 2)
    assert vent.open_pct == pytest.approx(50.0)  # estimated from the assumed closed start
    run(vent, factory, clock, FULL_RUN_S - 1 - TRAVEL_S / 2)
    assert relays(factory) == (True, False)  # full travel plus margin: it could start anywhere
    assert not vent.position_known
    run(vent, factory, clock, 1)
    assert relays(factory) == (False, False)
    assert vent.open_pct == 100.0 and vent.position_known and not vent.busy


def test_homing_then_goes_on_to_a_target_in_between(factory: MockFactory,
                                                    clock: ManualClock) -> None:
    vent = relay_vent(factory)
    vent.set_open_pct(30.0, clock.now())  # nearer the closed end: home closed first
    assert relays(factory) == (False, True)
    run(vent, factory, clock, FULL_RUN_S)
    assert vent.open_pct == 0.0 and vent.busy
    run(vent, factory, clock, 1)  # dead time passed: opening
    assert relays(factory) == (True, False)
    run(vent, factory, clock, TRAVEL_S * 0.3)
    assert relays(factory) == (False, False)
    assert vent.open_pct == pytest.approx(30.0, abs=100 / TRAVEL_S)
    assert not vent.busy


def test_interrupted_homing_homes_again_the_other_way(factory: MockFactory,
                                                      clock: ManualClock) -> None:
    vent = relay_vent(factory)
    vent.set_open_pct(100.0, clock.now())
    run(vent, factory, clock, 10)
    vent.set_open_pct(0.0, clock.now())
    assert relays(factory) == (False, False)
    run(vent, factory, clock, 1)
    assert relays(factory) == (False, True)
    run(vent, factory, clock, FULL_RUN_S - 1)
    assert relays(factory) == (False, True)  # still unknown: the full travel plus margin
    run(vent, factory, clock, 1)
    assert relays(factory) == (False, False)
    assert vent.position_known and vent.open_pct == 0.0


def test_relay_vent_reaches_a_target_after_its_share_of_travel_time(
        factory: MockFactory, clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(50.0, clock.now())
    assert relays(factory) == (True, False)
    run(vent, factory, clock, 14)
    assert relays(factory) == (True, False)
    assert vent.open_pct == pytest.approx(14 * 100 / TRAVEL_S)
    run(vent, factory, clock, 1)  # 15 s = half of the 30 s travel
    assert relays(factory) == (False, False)
    assert vent.open_pct == pytest.approx(50.0)
    assert vent.target_pct == 50.0


def test_relay_vent_does_not_hunt_after_overshooting(factory: MockFactory,
                                                     clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(45.0, clock.now())  # 13.5 s of travel, but updates come every 1 s
    run(vent, factory, clock, 20)
    assert vent.open_pct == pytest.approx(14 * 100 / TRAVEL_S)  # honest estimate: 46.7 %
    assert history(factory, CLOSE_PIN) == [False, True, False]  # homing only, never drove back
    vent.set_open_pct(45.0, clock.now())  # the same command again changes nothing
    run(vent, factory, clock, 5)
    assert relays(factory) == (False, False)


def test_full_close_runs_full_travel_to_resync_at_the_end_stop(factory: MockFactory,
                                                               clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(50.0, clock.now())
    run(vent, factory, clock, 16)
    vent.set_open_pct(0.0, clock.now())
    run(vent, factory, clock, 15)  # the estimate would say closed after 15 s...
    assert relays(factory) == (False, True)  # ...but it drives on against the end stop
    run(vent, factory, clock, FULL_RUN_S - 15)
    assert relays(factory) == (False, False)
    assert vent.open_pct == 0.0


def test_reversing_stops_both_relays_for_the_dead_time(factory: MockFactory,
                                                       clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(100.0, clock.now())
    run(vent, factory, clock, 10)
    vent.set_open_pct(0.0, clock.now())
    assert relays(factory) == (False, False)
    clock.advance(DEAD_TIME_S / 2)
    vent.update(clock.now())
    assert relays(factory) == (False, False)
    clock.advance(DEAD_TIME_S / 2)
    vent.update(clock.now())
    assert relays(factory) == (False, True)


def test_new_target_in_the_same_direction_keeps_the_motor_running(
        factory: MockFactory, clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(100.0, clock.now())
    run(vent, factory, clock, 6)  # at 20 %
    vent.set_open_pct(50.0, clock.now())
    assert relays(factory) == (True, False)
    run(vent, factory, clock, 9)  # 30 % more
    assert relays(factory) == (False, False)
    assert vent.open_pct == pytest.approx(50.0)
    assert history(factory, OPEN_PIN) == [False, True, False]


def test_relay_vent_never_energizes_both_relays(factory: MockFactory,
                                                clock: ManualClock) -> None:
    vent = relay_vent(factory)
    for pct in (80.0, 0.0, 100.0, 20.0, 60.0, 0.0, 100.0, 100.0, 35.0):
        vent.set_open_pct(pct, clock.now())
        assert relays(factory) != (True, True)
        run(vent, factory, clock, 7, tick_s=0.25)
    run(vent, factory, clock, 2 * FULL_RUN_S)
    assert not vent.busy


def test_active_low_relays_idle_high(factory: MockFactory, clock: ManualClock) -> None:
    vent = relay_vent(factory, active_high=False)
    assert factory.pin(OPEN_PIN).state == 1 and factory.pin(CLOSE_PIN).state == 1
    vent.set_open_pct(100.0, clock.now())
    assert factory.pin(OPEN_PIN).state == 0 and factory.pin(CLOSE_PIN).state == 1


def test_clock_stepping_back_does_not_move_the_estimate_backwards(
        factory: MockFactory, clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(50.0, clock.now())
    run(vent, factory, clock, 6)
    before = vent.open_pct
    clock.advance(-3600)
    vent.update(clock.now())
    assert vent.open_pct == before
    run(vent, factory, clock, 9)
    assert vent.open_pct == pytest.approx(50.0)


def test_clock_stepping_back_does_not_stall_a_reversal(factory: MockFactory,
                                                       clock: ManualClock) -> None:
    vent = homed_closed(factory, clock)
    vent.set_open_pct(100.0, clock.now())
    run(vent, factory, clock, 5)
    vent.set_open_pct(0.0, clock.now())
    clock.advance(-3600)
    vent.update(clock.now())
    run(vent, factory, clock, 1)
    assert relays(factory) == (False, True)


def test_closing_a_relay_vent_stops_the_motor(factory: MockFactory, clock: ManualClock) -> None:
    vent = relay_vent(factory)
    vent.set_open_pct(100.0, clock.now())
    vent.close()
    assert history(factory, OPEN_PIN) == [False, True, False]
    assert history(factory, CLOSE_PIN) == [False]
