"""Safety properties of the controller under random sequences (hypothesis).

Each example draws valid Thresholds from the model's own ranges, then a sequence of steps —
time passing, inside/outside readings that may be missing, stale, from the future, implausible
or from a faulted sensor, rain, operator overrides given and cleared — and runs ``decide()`` in
a loop carrying its state, as the node does. After every step:

1. Safety: whenever the inside air temperature is untrusted, or trusted and ≥ air_temp_limit_c,
   the fans run full and the vents are fully open (override or rain notwithstanding).
2. No chattering. A *fan change* is any change of the commanded fan speed (on↔off or a new
   speed); a *vent move* is any change of the commanded vent position. Every fan change comes at
   least fan_min_on_s after the previous fan change if the fan was running, fan_min_off_s if it
   was off; every vent move comes at least vent_min_interval_s after the previous vent move.
   Exempt: changes while a safety rule may act (air untrusted, or trusted air within
   TEMP_HYSTERESIS_K of air_temp_alarm_c or above), changes of an actuator an override in
   force sets, and vents closing while it rains.
3. Outputs lie within 0..100 %, and the fan is either off or at least fan_min_speed_pct.
4. ``decide`` is deterministic: the same arguments (or equal copies) give an equal Decision.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cacao_dryer.contract import Alarm, Mode, Thresholds
from firmware.control import (
    TEMP_HYSTERESIS_K,
    ControlInputs,
    ControllerState,
    Decision,
    Observed,
    Override,
    decide,
)

START = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
AIR_KEY = "air_temp_c"
SETTINGS = settings(max_examples=100, deadline=None)


# --- strategies ------------------------------------------------------------------------------

def _range(name: str) -> tuple[float, float]:
    metadata = Thresholds.model_fields[name].metadata
    low = next(m.ge for m in metadata if hasattr(m, "ge"))
    high = next(m.le for m in metadata if hasattr(m, "le"))
    return float(low), float(high)


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    """Any valid Thresholds: each field within the model's range, then the validator's
    orderings restored by sorting the related fields."""
    values: dict[str, Any] = {}
    for name, info in Thresholds.model_fields.items():
        low, high = _range(name)
        if info.annotation is int:
            values[name] = draw(st.integers(int(low), int(high)))
        else:
            values[name] = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
    temps = sorted(values[k] for k in ("air_temp_warn_c", "air_temp_alarm_c", "air_temp_limit_c"))
    values["air_temp_warn_c"], values["air_temp_alarm_c"], values["air_temp_limit_c"] = temps
    values["early_phase_max_air_temp_c"] = min(values["early_phase_max_air_temp_c"], temps[2])
    for low_key, high_key in (("fan_off_dew_point_diff_k", "fan_on_dew_point_diff_k"),
                              ("over_dry_moisture_pct_wb", "target_moisture_pct_wb"),
                              ("drying_rh_max_pct", "rewet_rh_pct")):
        values[low_key], values[high_key] = sorted((values[low_key], values[high_key]))
    assume(values["fan_off_dew_point_diff_k"] < values["fan_on_dew_point_diff_k"])
    assume(values["over_dry_moisture_pct_wb"] < values["target_moisture_pct_wb"])
    return Thresholds(**values)


@dataclass(frozen=True)
class Reading:
    value: float
    age_factor: float  # age as a multiple of stale_after_s (negative: from the future)


def _reading(kind: int, value: float, age_factor: float) -> Reading | None:
    if kind == 19:
        return None
    if kind == 18:  # implausible
        return Reading(float("nan") if age_factor < 0.3 else 150.0 if age_factor < 0.6
                       else -40.0, age_factor)
    if kind == 17:
        return Reading(value, age_factor * 3.0 - 1.5)  # often stale or from the future
    return Reading(value, age_factor)


def readings(low: float, high: float) -> st.SearchStrategy[Reading | None]:
    """Mostly fresh plausible readings; about one in seven missing, implausible or stale.
    (Hypothesis shrinks towards kind 0: the simplest failing case has good readings.)"""
    return st.builds(_reading, st.integers(0, 19), st.floats(low, high, allow_nan=False),
                     st.floats(0.0, 1.0))


@dataclass(frozen=True)
class OverrideCommand:
    fan_speed_pct: float | None
    vent_open_pct: float | None
    duration_s: int


@dataclass(frozen=True)
class Step:
    dt_s: int
    air_temp: Reading | None
    air_rh: Reading | None
    ambient_temp: Reading | None
    ambient_rh: Reading | None
    moisture: Reading | None
    raining: bool | None
    faulted: frozenset[str]
    command: OverrideCommand | str | None  # an override, "clear", or nothing


percent = st.floats(0.0, 100.0, allow_nan=False)
override_commands = st.builds(
    OverrideCommand, st.none() | percent, st.none() | percent, st.integers(1, 7200),
).filter(lambda c: c.fan_speed_pct is not None or c.vent_open_pct is not None)

steps = st.builds(
    Step,
    dt_s=st.one_of(st.integers(0, 60), st.integers(0, 1800)),
    air_temp=st.one_of(readings(15.0, 45.0), readings(15.0, 80.0)),
    air_rh=readings(0.0, 100.0),
    ambient_temp=readings(10.0, 45.0),
    ambient_rh=readings(0.0, 100.0),
    moisture=readings(3.0, 70.0),
    raining=st.sampled_from([False, None, True, False, False, False]),
    faulted=st.integers(0, 9).flatmap(lambda kind: st.just(frozenset()) if kind < 8 else
                                      st.frozensets(st.sampled_from(
                                          [AIR_KEY, "ambient_rh_pct", "ambient-dht"]))),
    command=st.integers(0, 19).flatmap(
        lambda kind: st.none() if kind < 17 else st.just("clear") if kind == 17
        else override_commands),
)

batch_ages_h = st.one_of(st.none(), st.floats(0.0, 200.0))


# --- running a sequence ----------------------------------------------------------------------

@dataclass(frozen=True)
class Cycle:
    inputs: ControlInputs
    override: Override | None
    decision: Decision


def run(t: Thresholds, sequence: list[Step], batch_age_h: float | None,
        utc_offset_h: float = -5.0) -> list[Cycle]:
    state = ControllerState.initial(START)
    now = START
    override: Override | None = None
    batch_started_at = None if batch_age_h is None else START - timedelta(hours=batch_age_h)
    cycles = []
    for step in sequence:
        now += timedelta(seconds=step.dt_s)
        if step.command == "clear":
            override = None
        elif isinstance(step.command, OverrideCommand):
            override = Override(step.command.fan_speed_pct, step.command.vent_open_pct,
                                now + timedelta(seconds=step.command.duration_s))

        def observed(reading: Reading | None, at: datetime = now) -> Observed | None:
            if reading is None:
                return None
            return Observed(reading.value, at - timedelta(
                seconds=reading.age_factor * t.stale_after_s))

        inputs = ControlInputs(
            now=now, utc_offset_h=utc_offset_h,
            air_temp=observed(step.air_temp), air_rh=observed(step.air_rh),
            ambient_temp=observed(step.ambient_temp), ambient_rh=observed(step.ambient_rh),
            bean_moisture=observed(step.moisture), raining=step.raining,
            faulted_sensors=step.faulted, batch_started_at=batch_started_at)
        decision = decide(inputs, t, state, override)
        cycles.append(Cycle(inputs, override, decision))
        state = decision.state
    return cycles


def trusted_air_temp_c(inputs: ControlInputs, t: Thresholds) -> float | None:
    """The test's own reading of 'trustworthy' (docs/control.md, fail-safe)."""
    reading = inputs.air_temp
    if reading is None or AIR_KEY in inputs.faulted_sensors:
        return None
    age_s = (inputs.now - reading.at).total_seconds()
    if not (math.isfinite(reading.value) and -10.0 <= reading.value <= 90.0):
        return None
    if abs(age_s) > t.stale_after_s:
        return None
    return reading.value


def overridden(cycle: Cycle, field_name: str) -> bool:
    override = cycle.override
    return (override is not None and cycle.inputs.now < override.expires_at
            and getattr(override, field_name) is not None)


# --- properties ------------------------------------------------------------------------------

@SETTINGS
@given(thresholds(), st.lists(steps, min_size=5, max_size=40), batch_ages_h)
def test_never_fans_off_and_vents_closed_while_air_is_too_hot_or_unknown(t, sequence, age_h):
    for cycle in run(t, sequence, age_h):
        air_c = trusted_air_temp_c(cycle.inputs, t)
        if air_c is None or air_c >= t.air_temp_limit_c:
            assert cycle.decision.fan_speed_pct == 100.0, cycle.decision.reasons
            assert cycle.decision.vent_open_pct == 100.0, cycle.decision.reasons
        if air_c is not None and air_c >= t.air_temp_limit_c:
            assert Alarm.AIR_TEMP_LIMIT in cycle.decision.alarms


@SETTINGS
@given(thresholds(), st.lists(steps, min_size=10, max_size=40), batch_ages_h)
def test_no_actuator_changes_faster_than_its_minimum_interval(t, sequence, age_h):
    fan_pct, fan_changed_at = 100.0, START  # ControllerState.initial(START)
    vent_pct, vent_changed_at = 100.0, START
    for cycle in run(t, sequence, age_h):
        now, decision = cycle.inputs.now, cycle.decision
        air_c = trusted_air_temp_c(cycle.inputs, t)
        safety = air_c is None or air_c > t.air_temp_alarm_c - TEMP_HYSTERESIS_K
        if decision.fan_speed_pct != fan_pct:
            if not (safety or overridden(cycle, "fan_speed_pct")):
                hold_s = t.fan_min_on_s if fan_pct > 0 else t.fan_min_off_s
                assert (now - fan_changed_at).total_seconds() >= hold_s, decision.reasons
            fan_pct, fan_changed_at = decision.fan_speed_pct, now
        if decision.vent_open_pct != vent_pct:
            closing_in_rain = cycle.inputs.raining is True and decision.vent_open_pct < vent_pct
            if not (safety or overridden(cycle, "vent_open_pct") or closing_in_rain):
                assert (now - vent_changed_at).total_seconds() >= t.vent_min_interval_s, \
                    decision.reasons
            vent_pct, vent_changed_at = decision.vent_open_pct, now


@SETTINGS
@given(thresholds(), st.lists(steps, min_size=5, max_size=40), batch_ages_h,
       st.floats(-12.0, 14.0))
def test_outputs_stay_in_range_and_fans_never_crawl(t, sequence, age_h, utc_offset_h):
    for cycle in run(t, sequence, age_h, utc_offset_h):
        decision = cycle.decision
        assert 0.0 <= decision.vent_open_pct <= 100.0
        assert 0.0 <= decision.fan_speed_pct <= 100.0
        assert decision.fan_speed_pct == 0.0 or decision.fan_speed_pct >= t.fan_min_speed_pct
        in_force = cycle.override is not None and cycle.inputs.now < cycle.override.expires_at
        assert decision.mode is (Mode.MANUAL if in_force else Mode.AUTO)
        assert decision.reasons


@SETTINGS
@given(thresholds(), st.lists(steps, min_size=1, max_size=25), batch_ages_h)
def test_decide_is_deterministic(t, sequence, age_h):
    state = ControllerState.initial(START)
    for cycle in run(t, sequence, age_h):
        again = decide(cycle.inputs, t, state, cycle.override)
        twin = decide(copy.deepcopy(cycle.inputs), t.model_copy(), copy.deepcopy(state),
                      copy.deepcopy(cycle.override))
        assert again == cycle.decision
        assert twin == cycle.decision
        state = cycle.decision.state
