"""The node's local controller (firmware/control.py), one behaviour per test.

Scenes are built around a sunny late morning in San Martín (11:00 local, UTC−5), day 3 of a
batch, beans at 25 %, and air that dries: inside 40 °C / 50 %, outside 28 °C / 60 %.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cacao_dryer.contract import Alarm, Mode, OverrideAction, Thresholds
from cacao_dryer.science import dew_point_c, saturation_vapour_pressure_kpa
from firmware.control import (
    ALARM_CLEAR_AFTER_S,
    FAN_FULL_PCT,
    TEMP_HYSTERESIS_K,
    VENT_OPEN_PCT,
    VENT_SLOW_DRYING_PCT,
    ControlInputs,
    ControllerState,
    Decision,
    Observed,
    Override,
    decide,
)

T0 = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 11:00 in Peru (UTC−5)
NIGHT = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)  # 22:00 in Peru
DEFAULTS = Thresholds()
LONG_AGO = T0 - timedelta(days=1)
AIR = (40.0, 50.0)
AMBIENT = (28.0, 60.0)
_UNSET = object()


def scene(now: datetime = T0, *, air: tuple[float, float] | None = AIR,
          ambient: tuple[float, float] | None = AMBIENT, moisture: float | None = 25.0,
          raining: bool | None = False, batch_age_h: float | None = 72.0,
          faulted: frozenset[str] = frozenset(), read_at: datetime | None = None,
          utc_offset_h: float = -5.0) -> ControlInputs:
    """Readings taken at ``read_at`` (default: now)."""
    at = read_at or now

    def seen(value: float | None) -> Observed | None:
        return None if value is None else Observed(value, at)

    return ControlInputs(
        now=now, utc_offset_h=utc_offset_h,
        air_temp=seen(air[0] if air else None), air_rh=seen(air[1] if air else None),
        ambient_temp=seen(ambient[0] if ambient else None),
        ambient_rh=seen(ambient[1] if ambient else None),
        bean_moisture=seen(moisture), raining=raining, faulted_sensors=faulted,
        batch_started_at=None if batch_age_h is None else now - timedelta(hours=batch_age_h))


def settled(fan: float = 0.0, vent: float = 0.0, since: datetime = LONG_AGO,
            **latches: object) -> ControllerState:
    """Actuators that have held their position long enough to move freely."""
    return ControllerState(fan_speed_pct=fan, fan_changed_at=since, vent_open_pct=vent,
                           vent_changed_at=since, **latches)  # type: ignore[arg-type]


def rh_for_dew_point(temp_c: float, dew_c: float) -> float:
    return 100.0 * saturation_vapour_pressure_kpa(dew_c) / saturation_vapour_pressure_kpa(temp_c)


def ambient_with_dew_difference(difference_k: float, air: tuple[float, float] = AIR,
                                ambient_temp_c: float = 28.0) -> tuple[float, float]:
    inside_dew_c = dew_point_c(*air)
    return ambient_temp_c, rh_for_dew_point(ambient_temp_c, inside_dew_c - difference_k)


def decide_now(inputs: ControlInputs, state: ControllerState | None = None,
               override: Override | None = None,
               thresholds: Thresholds = DEFAULTS) -> Decision:
    return decide(inputs, thresholds, state or settled(), override)


def is_full_ventilation(decision: Decision) -> bool:
    return decision.fan_speed_pct == FAN_FULL_PCT and decision.vent_open_pct == VENT_OPEN_PCT


def is_closed_and_off(decision: Decision) -> bool:
    return decision.fan_speed_pct == 0.0 and decision.vent_open_pct == 0.0


# --- over-temperature ------------------------------------------------------------------------

def test_vents_open_and_fans_full_when_air_above_limit():
    just_closed = settled(since=T0 - timedelta(seconds=1))
    decision = decide_now(scene(air=(66.0, 10.0), ambient=None), just_closed)
    assert is_full_ventilation(decision)
    assert Alarm.AIR_TEMP_LIMIT in decision.alarms


def test_air_at_alarm_level_ventilates_without_waiting_for_minimum_times():
    just_closed = settled(since=T0 - timedelta(seconds=1))
    decision = decide_now(scene(air=(60.0, 15.0), ambient=None), just_closed)
    assert is_full_ventilation(decision)
    assert Alarm.AIR_TEMP_ALARM in decision.alarms


def test_temperature_alarms_are_cumulative():
    decision = decide_now(scene(air=(65.5, 10.0)))
    assert {Alarm.AIR_TEMP_WARNING, Alarm.AIR_TEMP_ALARM, Alarm.AIR_TEMP_LIMIT} <= decision.alarms


def test_warning_level_raises_only_the_warning():
    decision = decide_now(scene(air=(56.0, 15.0)))
    assert Alarm.AIR_TEMP_WARNING in decision.alarms
    assert not {Alarm.AIR_TEMP_ALARM, Alarm.AIR_TEMP_LIMIT} & decision.alarms


def test_over_temperature_ventilation_holds_until_air_is_hysteresis_below_alarm():
    hot = decide_now(scene(air=(61.0, 15.0), ambient=None, raining=True))
    state = hot.state
    just_inside_band = decide(scene(T0 + timedelta(hours=1), air=(59.0, 15.0), ambient=None,
                                    raining=True), DEFAULTS, state, None)
    assert is_full_ventilation(just_inside_band)
    below_band = decide(scene(T0 + timedelta(hours=2), air=(60.0 - TEMP_HYSTERESIS_K - 0.1, 15.0),
                              ambient=None, raining=True), DEFAULTS, just_inside_band.state, None)
    assert below_band.vent_open_pct == 0.0  # rain takes over again


def test_over_temperature_wins_over_rain():
    decision = decide_now(scene(air=(62.0, 15.0), raining=True), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.RAIN in decision.alarms


def test_fan_cools_when_air_above_fan_on_temperature():
    decision = decide_now(scene(air=(51.0, 20.0), ambient=None))
    assert is_full_ventilation(decision)


def test_early_phase_caps_air_by_ventilating():
    young_batch = scene(air=(46.0, 30.0), ambient=None, moisture=50.0, batch_age_h=10.0)
    assert is_full_ventilation(decide_now(young_batch))


def test_air_below_fan_on_temperature_is_not_cooled_after_early_phase():
    old_batch = scene(air=(46.0, 30.0), ambient=None, moisture=25.0, batch_age_h=72.0)
    assert is_closed_and_off(decide_now(old_batch))


def test_wet_beans_count_as_early_phase_even_in_an_old_batch():
    wet = scene(air=(46.0, 30.0), ambient=None, moisture=40.0, batch_age_h=100.0)
    assert is_full_ventilation(decide_now(wet))


def test_unknown_batch_and_moisture_are_treated_as_early_phase():
    unknown = scene(air=(46.0, 30.0), ambient=None, moisture=None, batch_age_h=None)
    assert is_full_ventilation(decide_now(unknown))


# --- minimum times (no chattering) ------------------------------------------------------------

def test_fan_waits_min_off_time_before_restart():
    stopped_recently = settled(since=T0 - timedelta(seconds=DEFAULTS.fan_min_off_s - 60))
    decision = decide_now(scene(), stopped_recently)  # ventilation wanted
    assert decision.fan_speed_pct == 0.0
    assert any("minimum rest time" in reason for reason in decision.reasons)


def test_fan_restarts_once_min_off_time_has_passed():
    stopped = settled(since=T0 - timedelta(seconds=DEFAULTS.vent_min_interval_s))
    decision = decide_now(scene(), stopped)
    assert decision.fan_speed_pct == FAN_FULL_PCT


def test_fan_waits_min_on_time_before_stopping():
    started_recently = settled(fan=100.0, vent=100.0, since=T0 - timedelta(seconds=60))
    decision = decide_now(scene(air=(40.0, 20.0)), started_recently)  # nothing to dry
    assert decision.fan_speed_pct == FAN_FULL_PCT


def test_fan_speed_change_while_running_also_waits_min_on_time():
    running = settled(fan=100.0, vent=100.0, since=T0 - timedelta(seconds=60),
                      drying_rate_pct_per_h=3.0, moisture_avg_pct_wb=25.0, moisture_avg_at=T0,
                      moisture_ref_pct_wb=25.0, moisture_ref_at=T0)
    decision = decide_now(scene(), running)  # too fast: would slow to minimum speed
    assert decision.fan_speed_pct == FAN_FULL_PCT


def test_vent_moves_at_most_once_per_min_interval():
    moved_recently = ControllerState(fan_speed_pct=0.0, fan_changed_at=LONG_AGO,
                                     vent_open_pct=0.0,
                                     vent_changed_at=T0 - timedelta(seconds=60))
    decision = decide_now(scene(), moved_recently)  # ventilation wanted
    assert decision.vent_open_pct == 0.0
    assert decision.fan_speed_pct == FAN_FULL_PCT  # the fan's own timer allows it
    later = decide(scene(T0 + timedelta(seconds=DEFAULTS.vent_min_interval_s)), DEFAULTS,
                   decision.state, None)
    assert later.vent_open_pct == VENT_OPEN_PCT


def test_boot_state_is_full_ventilation_held_for_minimum_times():
    boot = ControllerState.initial(T0)
    decision = decide_now(scene(air=(40.0, 20.0)), boot)  # nothing asks for ventilation
    assert is_full_ventilation(decision)
    later = decide(scene(T0 + timedelta(seconds=DEFAULTS.vent_min_interval_s), air=(40.0, 20.0)),
                   DEFAULTS, decision.state, None)
    assert is_closed_and_off(later)


def test_clock_stepping_back_restarts_waits_instead_of_freezing():
    future_change = settled(since=T0 + timedelta(days=365))
    first = decide_now(scene(), future_change)
    assert first.state.fan_changed_at == T0
    after_wait = decide(scene(T0 + timedelta(seconds=DEFAULTS.vent_min_interval_s)), DEFAULTS,
                        first.state, None)
    assert is_full_ventilation(after_wait)


def test_raised_minimum_speed_lifts_a_slow_running_fan():
    slow = settled(fan=20.0, vent=100.0, since=T0)
    decision = decide_now(scene(), slow, thresholds=Thresholds(fan_min_speed_pct=40.0))
    assert decision.fan_speed_pct >= 40.0


def test_safety_acts_at_once_even_when_the_minimum_fan_speed_was_just_raised():
    slow = settled(fan=20.0, vent=0.0, since=T0)
    decision = decide_now(scene(air=(66.0, 10.0)), slow,
                          thresholds=Thresholds(fan_min_speed_pct=40.0))
    assert is_full_ventilation(decision)


# --- drying rate ---------------------------------------------------------------------------

def drying_run(rate_pct_per_h: float, minutes: int, *, air: tuple[float, float] = AIR,
               start_pct: float = 30.0) -> Decision:
    """Ten-minute readings of beans losing ``rate_pct_per_h``; returns the last decision."""
    state = settled()
    decision: Decision | None = None
    for minute in range(0, minutes + 1, 10):
        now = T0 + timedelta(minutes=minute)
        moisture = start_pct - rate_pct_per_h * minute / 60.0
        decision = decide(scene(now, air=air, moisture=moisture), DEFAULTS, state, None)
        state = decision.state
    assert decision is not None
    return decision


def test_drying_too_fast_raises_alarm_and_reduces_airflow():
    decision = drying_run(3.0, 70)
    assert Alarm.DRYING_TOO_FAST in decision.alarms
    assert 0.0 < decision.fan_speed_pct <= DEFAULTS.fan_min_speed_pct
    assert decision.vent_open_pct <= VENT_SLOW_DRYING_PCT


def test_normal_drying_rate_keeps_full_ventilation():
    decision = drying_run(0.5, 70)
    assert Alarm.DRYING_TOO_FAST not in decision.alarms
    assert is_full_ventilation(decision)


def test_drying_rate_is_unknown_during_first_hour():
    decision = drying_run(5.0, 50)
    assert Alarm.DRYING_TOO_FAST not in decision.alarms
    assert decision.state.drying_rate_pct_per_h is None


def test_drying_too_fast_never_overrides_over_temperature_ventilation():
    decision = drying_run(3.0, 70, air=(61.0, 12.0))
    assert Alarm.DRYING_TOO_FAST in decision.alarms
    assert is_full_ventilation(decision)


def test_new_batch_restarts_drying_rate():
    fast = drying_run(3.0, 70)
    now = T0 + timedelta(minutes=80)
    new_batch = scene(now, moisture=55.0, batch_age_h=0.01)
    decision = decide(new_batch, DEFAULTS, fast.state, None)
    assert Alarm.DRYING_TOO_FAST in fast.alarms
    assert decision.state.drying_rate_pct_per_h is None
    assert decision.state.moisture_ref_at == now
    assert Alarm.DRYING_TOO_FAST not in decision.alarms


def test_moisture_reading_from_before_the_batch_is_ignored():
    before_batch = scene(moisture=7.0, batch_age_h=0.01,
                         read_at=T0 - timedelta(minutes=1))
    decision = decide_now(before_batch)
    assert Alarm.TARGET_REACHED not in decision.alarms


# --- moisture-aware ventilation -----------------------------------------------------------

def test_fan_starts_when_inside_dew_point_exceeds_outside_by_on_difference():
    ambient = ambient_with_dew_difference(DEFAULTS.fan_on_dew_point_diff_k + 0.1)
    decision = decide_now(scene(ambient=ambient))
    assert is_full_ventilation(decision)


def test_fan_stays_off_inside_the_dew_point_hysteresis_band():
    ambient = ambient_with_dew_difference(2.0)  # between off (1 K) and on (3 K)
    decision = decide_now(scene(ambient=ambient), settled(ventilating=False))
    assert is_closed_and_off(decision)


def test_fan_keeps_running_inside_the_dew_point_hysteresis_band():
    ambient = ambient_with_dew_difference(2.0)
    decision = decide_now(scene(ambient=ambient), settled(100.0, 100.0, ventilating=True))
    assert is_full_ventilation(decision)


def test_fan_stops_below_off_dew_point_difference():
    ambient = ambient_with_dew_difference(DEFAULTS.fan_off_dew_point_diff_k - 0.1)
    decision = decide_now(scene(ambient=ambient), settled(100.0, 100.0, ventilating=True))
    assert is_closed_and_off(decision)


def test_outside_air_that_would_rewet_is_not_pulled_in():
    # Cool night-like air that stays humid inside: 24 °C/70 % outside, dryer at 25 °C.
    # Inside dew point is far above outside, but that air (~66 % RH at 25 °C) would bring
    # beans at 7.5 % to ~7.6 %.
    air = (25.0, 95.0)
    decision = decide_now(scene(air=air, ambient=(24.0, 70.0), moisture=7.5))
    assert is_closed_and_off(decision)
    assert any("wetter than" in reason for reason in decision.reasons)


def test_outside_air_is_judged_at_the_temperature_it_reaches_inside():
    # 28 °C/75 % outside has an EMC of ~9 % at its own temperature, but warmed to 45 °C it
    # drops to ~30 % RH (EMC ~4 %): it still dries beans at 8 %.
    decision = decide_now(scene(air=(45.0, 45.0), ambient=(28.0, 75.0), moisture=8.0))
    assert is_full_ventilation(decision)


def test_missing_moisture_blocks_outside_air_above_rewet_humidity():
    # Saturated dryer air, outside (26 °C, ~77 %) dew point 3.3 K lower: the dew-point rule
    # would ventilate, but that air cools to ~82 % RH inside (≥ rewet_rh_pct 80 %).
    air = (25.0, 100.0)
    ambient = ambient_with_dew_difference(3.3, air=air, ambient_temp_c=26.0)
    decision = decide_now(scene(air=air, ambient=ambient, moisture=None, batch_age_h=10.0))
    assert is_closed_and_off(decision)
    assert any("regain water" in reason for reason in decision.reasons)


def test_missing_ambient_sensor_means_no_ventilation_for_drying():
    decision = decide_now(scene(ambient=None))
    assert is_closed_and_off(decision)
    assert Alarm.STALE_DATA not in decision.alarms


def test_missing_ambient_sensor_still_allows_cooling():
    decision = decide_now(scene(air=(52.0, 20.0), ambient=None))
    assert is_full_ventilation(decision)


def test_stale_ambient_reading_falls_back_to_inside_rules():
    stale = scene()
    stale = ControlInputs(**{**stale.__dict__, "ambient_temp": Observed(28.0, T0 - timedelta(
        seconds=DEFAULTS.stale_after_s + 1))})
    decision = decide_now(stale)
    assert is_closed_and_off(decision)
    assert Alarm.STALE_DATA in decision.alarms


# --- night, humidity, rain -----------------------------------------------------------------

def test_rain_closes_vents():
    decision = decide_now(scene(raining=True), settled(0.0, 100.0))
    assert decision.vent_open_pct == 0.0
    assert Alarm.RAIN in decision.alarms


def test_rain_closes_vents_without_waiting_for_the_vent_interval():
    just_opened = settled(100.0, 100.0, since=T0 - timedelta(seconds=30))
    decision = decide_now(scene(raining=True), just_opened)
    assert decision.vent_open_pct == 0.0


def test_rain_stops_fans_after_their_minimum_run_time():
    just_started = settled(100.0, 100.0, since=T0 - timedelta(seconds=30))
    first = decide_now(scene(raining=True), just_started)
    assert first.fan_speed_pct == FAN_FULL_PCT
    later = decide(scene(T0 + timedelta(seconds=DEFAULTS.fan_min_on_s), raining=True),
                   DEFAULTS, first.state, None)
    assert later.fan_speed_pct == 0.0


def test_vents_reopen_after_rain_only_after_the_vent_interval():
    closed_by_rain = decide_now(scene(raining=True), settled(100.0, 100.0))
    dry_again = decide(scene(T0 + timedelta(seconds=60)), DEFAULTS, closed_by_rain.state, None)
    assert dry_again.vent_open_pct == 0.0


def test_night_closes_vents_once_beans_below_threshold():
    decision = decide_now(scene(NIGHT, moisture=15.0), settled(100.0, 100.0))
    assert is_closed_and_off(decision)


def test_night_keeps_ventilating_wet_beans():
    wet_night = scene(NIGHT, air=(26.0, 95.0), ambient=(22.0, 92.0), moisture=45.0)
    assert is_full_ventilation(decide_now(wet_night))


def test_night_follows_local_time_not_utc():
    # 03:00 UTC is night in Peru (22:00) but morning in Kenya (06:00, UTC+3).
    assert is_closed_and_off(decide_now(scene(NIGHT, moisture=15.0, utc_offset_h=-5.0)))
    assert is_full_ventilation(decide_now(scene(NIGHT, moisture=15.0, utc_offset_h=3.0)))


def test_humid_outside_air_closes_vents_for_dry_beans():
    # Outside 86 % RH: the dew-point rule alone would still ventilate (inside is very humid).
    decision = decide_now(scene(air=(45.0, 60.0), ambient=(26.0, 86.0), moisture=15.0),
                          settled(100.0, 100.0))
    assert is_closed_and_off(decision)


def test_humid_outside_air_is_still_used_for_wet_beans():
    decision = decide_now(scene(air=(45.0, 60.0), ambient=(26.0, 86.0), moisture=30.0))
    assert is_full_ventilation(decision)


def test_condensation_risk_when_air_near_its_dew_point():
    decision = decide_now(scene(air=(25.0, 92.0)))
    assert Alarm.CONDENSATION_RISK in decision.alarms


def test_condensation_risk_on_the_cover_at_night():
    # Inside 27 °C/80 % (dew point ~23.3 °C, 3.7 K margin) but the cover is at ~22 °C outside.
    decision = decide_now(scene(NIGHT, air=(27.0, 80.0), ambient=(22.0, 90.0), moisture=15.0))
    assert Alarm.CONDENSATION_RISK in decision.alarms


def test_no_condensation_risk_in_dry_air():
    assert Alarm.CONDENSATION_RISK not in decide_now(scene()).alarms


def test_condensation_risk_clears_only_past_its_hysteresis_band():
    """A humid night hovering at the 2 K margin must not raise and clear the alarm."""
    later = T0 + timedelta(seconds=ALARM_CLEAR_AFTER_S + 60)
    raised = decide_now(scene(air=(25.0, rh_for_dew_point(25.0, 23.5))))  # 1.5 K margin
    assert Alarm.CONDENSATION_RISK in raised.alarms
    hovering = decide(scene(later, air=(25.0, rh_for_dew_point(25.0, 22.5))),  # 2.5 K
                      DEFAULTS, raised.state, None)
    assert Alarm.CONDENSATION_RISK in hovering.alarms
    clear = decide(scene(later + timedelta(seconds=ALARM_CLEAR_AFTER_S + 60),
                         air=(25.0, rh_for_dew_point(25.0, 21.5))),  # 3.5 K: past the band
                   DEFAULTS, hovering.state, None)
    assert Alarm.CONDENSATION_RISK not in clear.alarms


def test_margin_just_above_threshold_raises_nothing_when_no_alarm_was_shown():
    decision = decide_now(scene(air=(25.0, rh_for_dew_point(25.0, 22.5))))  # 2.5 K
    assert Alarm.CONDENSATION_RISK not in decision.alarms


def test_rewetting_risk_when_inside_air_would_wet_dry_beans():
    decision = decide_now(scene(air=(26.0, 85.0), moisture=8.0))
    assert Alarm.REWETTING_RISK in decision.alarms


def test_no_rewetting_risk_for_wet_beans_in_humid_air():
    decision = decide_now(scene(air=(26.0, 85.0), moisture=40.0))
    assert Alarm.REWETTING_RISK not in decision.alarms


# --- fail-safe -----------------------------------------------------------------------------

def test_stale_air_reading_fails_safe():
    old = T0 - timedelta(seconds=DEFAULTS.stale_after_s + 1)
    decision = decide_now(scene(read_at=old), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.STALE_DATA in decision.alarms


def test_missing_air_reading_fails_safe():
    decision = decide_now(scene(air=None), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.STALE_DATA in decision.alarms


def test_faulted_air_sensor_fails_safe_at_once():
    decision = decide_now(scene(faulted=frozenset({"air_temp_c"})), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.SENSOR_FAULT in decision.alarms


def test_sensor_fault_alarm_names_the_sensor():
    decision = decide_now(scene(faulted=frozenset({"ambient-dht"})))
    assert Alarm.SENSOR_FAULT in decision.alarms
    assert any("ambient-dht" in reason for reason in decision.reasons)


def test_implausible_air_reading_fails_safe():
    decision = decide_now(scene(air=(float("nan"), 50.0)), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.SENSOR_FAULT in decision.alarms


def test_reading_from_the_future_is_not_trusted():
    ahead = T0 + timedelta(seconds=DEFAULTS.stale_after_s + 1)
    decision = decide_now(scene(read_at=ahead), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.STALE_DATA in decision.alarms


def test_reading_just_within_stale_limit_is_trusted():
    recent = T0 - timedelta(seconds=DEFAULTS.stale_after_s)
    decision = decide_now(scene(air=(40.0, 20.0), read_at=recent))
    assert is_closed_and_off(decision)
    assert Alarm.STALE_DATA not in decision.alarms


def test_fail_safe_ventilates_even_in_rain():
    decision = decide_now(scene(air=None, raining=True), settled(since=T0))
    assert is_full_ventilation(decision)
    assert Alarm.REWETTING_RISK in decision.alarms  # operator: cover the beans


def test_fail_safe_wins_over_manual_override():
    closed = Override(fan_speed_pct=0.0, vent_open_pct=0.0, expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(air=None), settled(since=T0), closed)
    assert is_full_ventilation(decision)
    assert decision.mode is Mode.MANUAL
    assert any("despite the manual override" in reason for reason in decision.reasons)


# --- manual override -------------------------------------------------------------------------

def test_override_forces_fan_and_vent_immediately():
    override = Override(fan_speed_pct=60.0, vent_open_pct=40.0,
                        expires_at=T0 + timedelta(minutes=30))
    decision = decide_now(scene(), settled(since=T0 - timedelta(seconds=1)), override)
    assert (decision.fan_speed_pct, decision.vent_open_pct) == (60.0, 40.0)
    assert decision.mode is Mode.MANUAL


def test_override_expires():
    override = Override(fan_speed_pct=0.0, vent_open_pct=0.0, expires_at=T0 + timedelta(minutes=30))
    during = decide_now(scene(), settled(), override)
    after = decide(scene(T0 + timedelta(minutes=30)), DEFAULTS, during.state, override)
    assert during.mode is Mode.MANUAL and is_closed_and_off(during)
    assert after.mode is Mode.AUTO
    assert any("override ended" in reason for reason in after.reasons)


def test_auto_resumes_after_override_respecting_minimum_times():
    override = Override(fan_speed_pct=0.0, vent_open_pct=0.0, expires_at=T0 + timedelta(minutes=1))
    during = decide_now(scene(), settled(100.0, 100.0), override)
    after = decide(scene(T0 + timedelta(minutes=2)), DEFAULTS, during.state, override)
    assert is_closed_and_off(after)  # ventilation wanted, but the fan rests 5 min first
    resumed = decide(scene(T0 + timedelta(minutes=11)), DEFAULTS, after.state, override)
    assert is_full_ventilation(resumed)


def test_override_cannot_block_over_temperature_ventilation():
    closed = Override(fan_speed_pct=0.0, vent_open_pct=0.0, expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(air=(65.0, 10.0)), settled(since=T0), closed)
    assert is_full_ventilation(decision)
    assert any("despite the manual override" in reason for reason in decision.reasons)


def test_override_keeps_control_below_the_hard_limit():
    closed = Override(fan_speed_pct=0.0, vent_open_pct=0.0, expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(air=(62.0, 10.0)), settled(since=T0), closed)
    assert is_closed_and_off(decision)
    assert Alarm.AIR_TEMP_ALARM in decision.alarms


def test_override_fan_speed_below_minimum_is_raised_to_minimum():
    slow = Override(fan_speed_pct=10.0, vent_open_pct=None, expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(), override=slow)
    assert decision.fan_speed_pct == DEFAULTS.fan_min_speed_pct


def test_override_of_fan_only_leaves_vents_automatic():
    fan_only = Override(fan_speed_pct=50.0, vent_open_pct=None, expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(raining=True), settled(0.0, 100.0), fan_only)
    assert decision.fan_speed_pct == 50.0
    assert decision.vent_open_pct == 0.0  # rain still closes the vents


def test_override_wins_over_rain():
    open_vents = Override(fan_speed_pct=None, vent_open_pct=100.0,
                          expires_at=T0 + timedelta(hours=1))
    decision = decide_now(scene(raining=True), settled(), open_vents)
    assert decision.vent_open_pct == 100.0


def test_override_from_action_counts_duration_from_receipt():
    action = OverrideAction(fan_speed_pct=80.0, duration_s=900)
    override = Override.from_action(action, T0)
    assert override.expires_at == T0 + timedelta(minutes=15)
    assert (override.fan_speed_pct, override.vent_open_pct) == (80.0, None)


@pytest.mark.parametrize(("fan", "vent"), [(None, None), (101.0, None), (None, -1.0)])
def test_override_rejects_invalid_settings(fan, vent):
    with pytest.raises(ValueError, match="Override"):
        Override(fan_speed_pct=fan, vent_open_pct=vent, expires_at=T0)


# --- moisture alarms and alarm clearing -----------------------------------------------------

def test_target_reached_alarm():
    decision = decide_now(scene(moisture=DEFAULTS.target_moisture_pct_wb))
    assert Alarm.TARGET_REACHED in decision.alarms
    assert Alarm.OVER_DRY not in decision.alarms


def test_over_dry_alarm():
    decision = decide_now(scene(moisture=DEFAULTS.over_dry_moisture_pct_wb - 0.5))
    assert {Alarm.OVER_DRY, Alarm.TARGET_REACHED} <= decision.alarms


def test_no_moisture_alarms_above_target():
    decision = decide_now(scene(moisture=DEFAULTS.target_moisture_pct_wb + 1.0))
    assert not {Alarm.OVER_DRY, Alarm.TARGET_REACHED} & decision.alarms


def test_alarm_clears_only_after_its_condition_has_been_gone_for_the_clear_delay():
    raised = decide_now(scene(raining=True))
    gone = scene(T0 + timedelta(seconds=ALARM_CLEAR_AFTER_S - 10))
    still = decide(gone, DEFAULTS, raised.state, None)
    cleared = decide(scene(T0 + timedelta(seconds=ALARM_CLEAR_AFTER_S)), DEFAULTS, still.state,
                     None)
    assert Alarm.RAIN in still.alarms
    assert Alarm.RAIN not in cleared.alarms


# --- inputs and purity -----------------------------------------------------------------------

def test_naive_time_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        ControlInputs(now=datetime(2026, 3, 2, 12, 0))


def test_decide_is_deterministic():
    inputs, state = scene(raining=True), settled(100.0, 100.0)
    assert decide_now(inputs, state) == decide_now(inputs, state)


def test_reasons_explain_the_decision():
    decision = decide_now(scene())
    assert decision.reasons[0].startswith("inside dew point")
