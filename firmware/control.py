"""The dryer node's local controller: readings + thresholds + previous state → fans, vents, alarms.

``decide()`` is a pure function: it reads nothing but its arguments (no clock, no files, no
hardware) and returns the same ``Decision`` for the same arguments. The node calls it once per
sample with the newest readings and the state the previous call returned.

Rules, highest priority first (docs/control.md explains each one for technicians):

1. Fail-safe: no trustworthy inside air temperature → vents open, fans full, at once.
2. Hard limit: air ≥ air_temp_limit_c → vents open, fans full, at once, even under override.
3. Manual override (until it expires): the operator's fan/vent settings, at once.
4. Over-temperature alarm: air ≥ air_temp_alarm_c → vents open, fans full, at once.
5. Rain → vents closed (closing at once), fans off.
6. Cooling: air above fan_on_air_temp_c (or above early_phase_max_air_temp_c in the early
   phase) → vents open, fans full.
7. Drying too fast → fans at most at minimum speed, vents at most partly open.
8. Night, or humid outside air, once the beans are fairly dry → vents closed, fans off.
9. Moisture-aware ventilation: exchange air only when the inside dew point is well above the
   outside one and the incoming air would not re-wet the beans; otherwise vents closed, fans off.

Rules 5–9 only change an actuator after it has held its setting for its minimum time
(fan_min_on_s / fan_min_off_s, vent_min_interval_s); rules 1–4 and rain closing the vents act
immediately. Sources of numbers are keys of docs/references.md or marked ``estimate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from cacao_dryer.contract import Alarm, Mode, OverrideAction, Thresholds
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from cacao_dryer.science import (
    dew_point_c,
    gab_equilibrium_moisture_pct_wb,
    relative_humidity_pct,
    vapour_pressure_kpa,
)

FAN_OFF_PCT = 0.0
FAN_FULL_PCT = 100.0
VENT_CLOSED_PCT = 0.0
VENT_OPEN_PCT = 100.0
# Vent opening while the beans dry too fast: enough exchange to let moisture out, little
# airflow (estimate).
VENT_SLOW_DRYING_PCT = 25.0
# Temperature latches release this far below the threshold that set them (estimate: several
# times the DHT22's ±0.5 K accuracy, so sensor noise cannot flip fans and vents).
TEMP_HYSTERESIS_K = 2.0
# Bean moisture is averaged over about this long before any rule uses it: probes and load
# cells are noisy (±1.92 % for a load-cell tray [IIETA2025]) (estimate).
MOISTURE_SMOOTHING_S = 600.0
# The drying rate is measured over windows of this length ("per hour", estimate).
DRYING_RATE_WINDOW_S = 3600.0
# An alarm is raised at once and cleared only after its condition has been gone this long, so
# a value hovering at a threshold does not flood the gateway with raised/cleared events
# (estimate).
ALARM_CLEAR_AFTER_S = 300.0
# estimate: hysteresis of the humid-air alarms, a little above what DHT22 noise (±0.5 °C,
# ±2 % RH, datasheet) moves the dew-point margin (~0.5 K) and the GAB equilibrium (~0.3 %).
CONDENSATION_HYSTERESIS_K = 1.0
REWET_HYSTERESIS_PCT = 0.5
REWET_HYSTERESIS_RH_PCT = 3.0


class TempLevel(IntEnum):
    """How hot the inside air is, with hysteresis (a level drops TEMP_HYSTERESIS_K below)."""

    NORMAL = 0
    WARNING = 1  # ≥ air_temp_warn_c
    ALARM = 2    # ≥ air_temp_alarm_c: ventilate at once
    LIMIT = 3    # ≥ air_temp_limit_c: ventilate at once, whatever the override says


# --- inputs, state and decision --------------------------------------------------------------

def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {moment!r}")


@dataclass(frozen=True)
class Observed:
    """One reading and the time it was taken (node clock)."""

    value: float
    at: datetime

    def __post_init__(self) -> None:
        _require_aware(self.at, "Observed.at")


@dataclass(frozen=True)
class ControlInputs:
    """Everything the controller knows about the dryer at ``now``.

    Pass the last good reading of each quantity with the time it was taken, even if the latest
    sample failed: the controller itself decides when a reading is too old (stale_after_s).
    Pass ``None`` for a quantity the node has no sensor for. ``faulted_sensors`` holds the
    names of sensors at fault; a name that is a measurement key (``air_temp_c``,
    ``air_rh_pct``, ``ambient_temp_c``, ``ambient_rh_pct``, ``bean_moisture_pct_wb``) also
    makes the controller distrust that reading at once.
    """

    now: datetime
    utc_offset_h: float = 0.0
    air_temp: Observed | None = None      # inside the dryer, above the beans [°C]
    air_rh: Observed | None = None        # inside [%]
    ambient_temp: Observed | None = None  # outside, in the shade [°C]
    ambient_rh: Observed | None = None    # outside [%]
    bean_moisture: Observed | None = None  # [% wet basis]
    raining: bool | None = None           # None: no rain sensor (or it failed)
    faulted_sensors: frozenset[str] = frozenset()
    batch_started_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.now, "ControlInputs.now")
        if self.batch_started_at is not None:
            _require_aware(self.batch_started_at, "ControlInputs.batch_started_at")
        if not (math.isfinite(self.utc_offset_h) and -24 < self.utc_offset_h < 24):
            raise ValueError(f"ControlInputs.utc_offset_h {self.utc_offset_h} is not an offset")


@dataclass(frozen=True)
class Override:
    """Fans and/or vents forced by an operator until ``expires_at`` (None = leave it to auto)."""

    fan_speed_pct: float | None
    vent_open_pct: float | None
    expires_at: datetime

    def __post_init__(self) -> None:
        _require_aware(self.expires_at, "Override.expires_at")
        if self.fan_speed_pct is None and self.vent_open_pct is None:
            raise ValueError("Override needs fan_speed_pct or vent_open_pct")
        for name in ("fan_speed_pct", "vent_open_pct"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 100.0:
                raise ValueError(f"Override.{name} must be within 0..100 %, got {value}")

    @classmethod
    def from_action(cls, action: OverrideAction, received_at: datetime) -> Override:
        """The override an ``OverrideAction`` command asks for, counted from ``received_at``."""
        return cls(action.fan_speed_pct, action.vent_open_pct,
                   received_at + timedelta(seconds=action.duration_s))

    def in_force(self, now: datetime) -> bool:
        return now < self.expires_at


@dataclass(frozen=True)
class ControllerState:
    """What ``decide()`` remembers between calls. Treat it as opaque: pass back what it returned.

    The actuator fields are the controller's last command and when it last changed; the rest
    are hysteresis latches and the bean-moisture history for the drying rate.
    """

    fan_speed_pct: float
    fan_changed_at: datetime
    vent_open_pct: float
    vent_changed_at: datetime
    temp_level: TempLevel = TempLevel.NORMAL
    cooling: bool = False            # cooling latch (rule 6)
    ventilating: bool = False        # dew-point latch [Kellerklima] (rule 9)
    moisture_avg_pct_wb: float | None = None  # smoothed bean moisture …
    moisture_avg_at: datetime | None = None   # … as of this reading time
    moisture_ref_pct_wb: float | None = None  # start of the current drying-rate window
    moisture_ref_at: datetime | None = None
    drying_rate_pct_per_h: float | None = None  # last full window; > 0 means drying
    alarm_seen_at: tuple[tuple[Alarm, datetime], ...] = ()  # last time each condition held

    @classmethod
    def initial(cls, now: datetime) -> ControllerState:
        """Boot state: the fail-safe position (vents open, fans full), as if just commanded.

        The node does not know where the actuators are after a restart; assuming the safe
        position means the first decisions can only *leave* it after the minimum times, so even
        a node that keeps rebooting leaves the dryer ventilated rather than closed and hot.
        """
        _require_aware(now, "ControllerState.initial(now)")
        return cls(fan_speed_pct=FAN_FULL_PCT, fan_changed_at=now,
                   vent_open_pct=VENT_OPEN_PCT, vent_changed_at=now)


@dataclass(frozen=True)
class Decision:
    fan_speed_pct: float    # 0, or fan_min_speed_pct..100
    vent_open_pct: float    # 0..100
    mode: Mode              # MANUAL while an override is in force, else AUTO
    alarms: frozenset[Alarm]
    reasons: tuple[str, ...]  # short sentences for logs and the dashboard, most important first
    state: ControllerState  # pass to the next decide()


# --- what can be trusted ---------------------------------------------------------------------

_READINGS = (  # ControlInputs attribute, measurement key, words for people
    ("air_temp", "air_temp_c", "inside air temperature"),
    ("air_rh", "air_rh_pct", "inside humidity"),
    ("ambient_temp", "ambient_temp_c", "outside air temperature"),
    ("ambient_rh", "ambient_rh_pct", "outside humidity"),
    ("bean_moisture", "bean_moisture_pct_wb", "bean moisture"),
)


@dataclass(frozen=True)
class _Trusted:
    """The readings the controller trusts this cycle (None = unknown) and what it noticed."""

    air_temp_c: float | None
    air_rh_pct: float | None
    ambient_temp_c: float | None
    ambient_rh_pct: float | None
    bean_moisture: Observed | None  # raw; rules use the smoothed value
    alarms: frozenset[Alarm]
    reasons: tuple[str, ...]


def _trusted_readings(inputs: ControlInputs, t: Thresholds) -> _Trusted:
    """A reading is trusted when present, finite, physically plausible (measurement table),
    not from a faulted sensor and at most stale_after_s old (or ahead of the clock)."""
    values: dict[str, Observed | None] = {}
    alarms: set[Alarm] = set()
    reasons: list[str] = []
    if inputs.faulted_sensors:
        alarms.add(Alarm.SENSOR_FAULT)
        reasons.append("sensor fault: " + ", ".join(sorted(inputs.faulted_sensors)))
    for attr, key, words in _READINGS:
        observed: Observed | None = getattr(inputs, attr)
        values[attr] = None
        spec = MEASUREMENTS_BY_KEY[key]
        if key in inputs.faulted_sensors:
            continue
        if observed is None:
            if attr in ("air_temp", "air_rh") and not inputs.faulted_sensors:
                alarms.add(Alarm.STALE_DATA)
                reasons.append(f"no {words} reading")
            continue
        age_s = (inputs.now - observed.at).total_seconds()
        if not (math.isfinite(observed.value)
                and spec.minimum <= observed.value <= spec.maximum):
            alarms.add(Alarm.SENSOR_FAULT)
            reasons.append(f"{words} {observed.value} {spec.unit} is not plausible")
        elif age_s > t.stale_after_s:
            alarms.add(Alarm.STALE_DATA)
            reasons.append(f"{words} reading is {age_s:.0f} s old "
                           f"(stale after {t.stale_after_s:.0f} s)")
        elif age_s < -t.stale_after_s:
            alarms.add(Alarm.STALE_DATA)
            reasons.append(f"{words} reading is {-age_s:.0f} s ahead of the clock")
        else:
            values[attr] = observed

    def value(attr: str) -> float | None:
        observed = values[attr]
        return None if observed is None else observed.value

    return _Trusted(value("air_temp"), value("air_rh"), value("ambient_temp"),
                    value("ambient_rh"), values["bean_moisture"], frozenset(alarms),
                    tuple(reasons))


def _after_clock_step_back(state: ControllerState, now: datetime) -> ControllerState:
    """If the clock stepped back (e.g. NTP correcting a Pi without a real-time clock), restart
    the minimum-time waits from now and the moisture history from scratch: never freeze the
    actuators for hours, never let them chatter."""
    changes: dict[str, object] = {}
    if state.fan_changed_at > now:
        changes["fan_changed_at"] = now
    if state.vent_changed_at > now:
        changes["vent_changed_at"] = now
    if state.moisture_avg_at is not None and state.moisture_avg_at > now:
        changes.update(moisture_avg_pct_wb=None, moisture_avg_at=None, moisture_ref_pct_wb=None,
                       moisture_ref_at=None, drying_rate_pct_per_h=None)
    if any(at > now for _, at in state.alarm_seen_at):
        changes["alarm_seen_at"] = tuple((a, min(at, now)) for a, at in state.alarm_seen_at)
    return replace(state, **changes) if changes else state


# --- bean moisture and drying rate -----------------------------------------------------------

@dataclass(frozen=True)
class _Moisture:
    """Bean-moisture history (stored in ControllerState) and what the rules may use now."""

    avg_pct_wb: float | None = None
    avg_at: datetime | None = None
    ref_pct_wb: float | None = None
    ref_at: datetime | None = None
    stored_rate_pct_per_h: float | None = None
    trusted_now: bool = False

    @property
    def now_pct_wb(self) -> float | None:
        """Smoothed moisture, None unless this cycle's reading is trusted."""
        return self.avg_pct_wb if self.trusted_now else None

    @property
    def drying_rate_pct_per_h(self) -> float | None:
        """% w.b. lost per hour over the last full window; None before one, or untrusted."""
        return self.stored_rate_pct_per_h if self.trusted_now else None


def _track_moisture(state: ControllerState, reading: Observed | None,
                    batch_started_at: datetime | None) -> _Moisture:
    """Smooth the bean moisture (exponential average over MOISTURE_SMOOTHING_S) and measure the
    drying rate as the fall of the smoothed value over each DRYING_RATE_WINDOW_S window. The
    history restarts with a new batch or after a gap longer than one window; a reading taken
    before the batch started describes other beans and is ignored."""
    old = _Moisture(state.moisture_avg_pct_wb, state.moisture_avg_at, state.moisture_ref_pct_wb,
                    state.moisture_ref_at, state.drying_rate_pct_per_h)
    if batch_started_at is not None:
        if old.avg_at is not None and old.avg_at < batch_started_at:
            old = _Moisture()  # new batch: the old beans' history is void
        if reading is not None and reading.at < batch_started_at:
            reading = None
    if reading is None:
        return old
    if (old.avg_pct_wb is None or old.avg_at is None or old.ref_pct_wb is None
            or old.ref_at is None
            or (reading.at - old.avg_at).total_seconds() > DRYING_RATE_WINDOW_S):
        value = float(reading.value)
        return _Moisture(value, reading.at, value, reading.at, None, True)
    avg, avg_at = old.avg_pct_wb, old.avg_at
    if reading.at > avg_at:
        dt_s = (reading.at - avg_at).total_seconds()
        avg += (1.0 - math.exp(-dt_s / MOISTURE_SMOOTHING_S)) * (reading.value - avg)
        avg_at = reading.at
    ref, ref_at, rate = old.ref_pct_wb, old.ref_at, old.stored_rate_pct_per_h
    window_s = (avg_at - ref_at).total_seconds()
    if window_s >= DRYING_RATE_WINDOW_S:
        rate = (ref - avg) / (window_s / 3600.0)
        ref, ref_at = avg, avg_at
    return _Moisture(avg, avg_at, ref, ref_at, rate, True)


# --- situation: levels, latches, phase, night ------------------------------------------------

def _temperature_level(air_c: float | None, previous: TempLevel, t: Thresholds) -> TempLevel:
    """Highest level whose threshold the air reaches; a level already reached holds until the
    air falls TEMP_HYSTERESIS_K below its threshold. Unknown air keeps the previous level."""
    if air_c is None:
        return previous
    level = TempLevel.NORMAL
    for candidate, threshold_c in ((TempLevel.WARNING, t.air_temp_warn_c),  # [ICCO]
                                   (TempLevel.ALARM, t.air_temp_alarm_c),   # [ICCO]
                                   (TempLevel.LIMIT, t.air_temp_limit_c)):  # [ICCO]
        if air_c >= threshold_c or (previous >= candidate
                                    and air_c > threshold_c - TEMP_HYSTERESIS_K):
            level = candidate
    return level


def _early_phase(now: datetime, batch_started_at: datetime | None, moisture_pct_wb: float | None,
                 t: Thresholds) -> bool:
    """First early_phase_h of a batch [UWI], or beans wetter than early_phase_moisture_pct_wb.
    Knowing neither the batch nor the moisture, assume the early phase: gentler is safer."""
    young = (batch_started_at is not None
             and (now - batch_started_at).total_seconds() < t.early_phase_h * 3600.0)
    wet = moisture_pct_wb is not None and moisture_pct_wb > t.early_phase_moisture_pct_wb
    unknown = batch_started_at is None and moisture_pct_wb is None
    return young or wet or unknown


def _is_night(now: datetime, utc_offset_h: float, t: Thresholds) -> bool:
    """Local hour in [night_start_hour, night_end_hour), wrapping past midnight; equal hours
    mean the node never treats it as night."""
    hour = (now + timedelta(hours=utc_offset_h)).hour
    start, end = t.night_start_hour, t.night_end_hour
    if start == end:
        return False
    return (start <= hour < end) if start < end else (hour >= start or hour < end)


def _cooling_threshold_c(early: bool, t: Thresholds) -> float:
    if early:  # cap the air gently in the early phase [UWI, ICCO, Jinap1994]
        return min(t.fan_on_air_temp_c, t.early_phase_max_air_temp_c)
    return t.fan_on_air_temp_c


def _cooling_latch(air_c: float | None, was_cooling: bool, threshold_c: float) -> bool:
    if air_c is None:
        return False
    return air_c > threshold_c or (was_cooling and air_c > threshold_c - TEMP_HYSTERESIS_K)


def _incoming_rh_pct(seen: _Trusted) -> float | None:
    """Humidity the outside air will have once it is inside the dryer, at the inside air
    temperature (the same water vapour, warmed or cooled). This, not the outside RH, is what
    the beans meet: air warmed from 30 °C/75 % to 45 °C drops to about 33 % RH."""
    if seen.ambient_temp_c is None or seen.ambient_rh_pct is None:
        return None
    if seen.air_temp_c is None:
        return seen.ambient_rh_pct
    vapour_kpa = vapour_pressure_kpa(seen.ambient_temp_c, seen.ambient_rh_pct)
    return relative_humidity_pct(seen.air_temp_c, vapour_kpa)


def _outside_air_would_rewet(seen: _Trusted, moisture_pct_wb: float | None,
                             t: Thresholds) -> str | None:
    """Why the outside air would re-wet the beans, or None. Grain-bin practice: only move air
    whose equilibrium moisture is below the crop's moisture [GrainLink, Ceres]; the EMC is the
    cacao GAB isotherm at 25 °C [Sandoval2020], which overestimates it in warm air (EMC falls
    as temperature rises [Oliveira2011]) — the safe direction. Without a moisture reading, air
    at or above rewet_rh_pct counts as re-wetting [Sandoval2020]."""
    incoming_rh = _incoming_rh_pct(seen)
    if incoming_rh is None:
        return None
    if moisture_pct_wb is not None:
        emc = gab_equilibrium_moisture_pct_wb(incoming_rh)
        if emc >= moisture_pct_wb:
            return (f"outside air (≈{incoming_rh:.0f} % RH inside) would bring the beans to "
                    f"{emc:.1f} %, wetter than their {moisture_pct_wb:.1f} %")
        return None
    if incoming_rh >= t.rewet_rh_pct:
        return (f"outside air (≈{incoming_rh:.0f} % RH inside) is at or above "
                f"{t.rewet_rh_pct:.0f} % RH, where beans regain water")
    return None


def _dew_point_difference_k(seen: _Trusted) -> float | None:
    """Inside dew point minus outside dew point [Kellerklima]; None if either is unknown."""
    air_c, air_rh, out_c, out_rh = (seen.air_temp_c, seen.air_rh_pct, seen.ambient_temp_c,
                                    seen.ambient_rh_pct)
    if air_c is None or air_rh is None or out_c is None or out_rh is None:
        return None
    return dew_point_c(air_c, air_rh) - dew_point_c(out_c, out_rh)


def _ventilation_latch(difference_k: float | None, was_on: bool, t: Thresholds) -> bool:
    """On at ≥ fan_on_dew_point_diff_k, off below fan_off_dew_point_diff_k [Kellerklima]."""
    if difference_k is None:
        return False
    if was_on:
        return difference_k >= t.fan_off_dew_point_diff_k
    return difference_k >= t.fan_on_dew_point_diff_k


# --- rules -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setting:
    pct: float
    why: str
    immediate: bool = False  # skip the minimum on/off time / vent interval


@dataclass(frozen=True)
class _Target:
    fan: _Setting
    vent: _Setting


def _both(fan_pct: float, vent_pct: float, why: str, immediate: bool = False) -> _Target:
    return _Target(_Setting(fan_pct, why, immediate), _Setting(vent_pct, why, immediate))


def _fan_speed(pct: float, t: Thresholds) -> float:
    """0 stays 0; any other speed is at least fan_min_speed_pct (slower fans stall)."""
    return FAN_OFF_PCT if pct <= 0 else min(FAN_FULL_PCT, max(pct, t.fan_min_speed_pct))


def _ventilate_to_dry(seen: _Trusted, difference_k: float | None, ventilating: bool,
                      rewet_why: str | None, t: Thresholds) -> _Target:
    """Rule 9, the default: exchange air only when it removes water from the dryer."""
    if seen.ambient_temp_c is None or seen.ambient_rh_pct is None:
        return _both(FAN_OFF_PCT, VENT_CLOSED_PCT,
                     "outside air unknown: no ventilation for drying (inside-only rules)")
    if difference_k is None:
        return _both(FAN_OFF_PCT, VENT_CLOSED_PCT,
                     "inside humidity unknown: no ventilation for drying")
    if rewet_why is not None:
        return _both(FAN_OFF_PCT, VENT_CLOSED_PCT, f"{rewet_why}: vents closed")
    if ventilating:
        return _both(FAN_FULL_PCT, VENT_OPEN_PCT,
                     f"inside dew point {difference_k:.1f} K above outside: ventilating to dry")
    return _both(FAN_OFF_PCT, VENT_CLOSED_PCT,
                 f"inside dew point only {difference_k:.1f} K above outside: outside air "
                 f"would not dry (needs {t.fan_on_dew_point_diff_k:.1f} K)")


def _close_for_night_or_humid_air(seen: _Trusted, moisture_pct_wb: float | None, night: bool,
                                  t: Thresholds) -> _Target | None:
    """Rule 8: once beans are below close_vents_below_moisture_pct_wb (or their moisture is
    unknown), close at night and when outside RH > close_vents_ambient_rh_pct [Beckett]."""
    dry_enough = moisture_pct_wb is None or moisture_pct_wb < t.close_vents_below_moisture_pct_wb
    if not dry_enough:
        return None
    limit = t.close_vents_below_moisture_pct_wb
    beans = ("beans" if moisture_pct_wb is None
             else f"beans at {moisture_pct_wb:.1f} % (< {limit:.0f} %)")
    if night:
        return _both(FAN_OFF_PCT, VENT_CLOSED_PCT,
                     f"night and {beans}: vents closed and fans resting, as beans are covered "
                     "at night")
    if seen.ambient_rh_pct is not None and seen.ambient_rh_pct > t.close_vents_ambient_rh_pct:
        return _both(FAN_OFF_PCT, VENT_CLOSED_PCT,
                     f"outside air at {seen.ambient_rh_pct:.0f} % RH "
                     f"(> {t.close_vents_ambient_rh_pct:.0f} %): vents closed for {beans}")
    return None


def _slow_down_when_drying_too_fast(target: _Target, rate: float | None,
                                    t: Thresholds) -> _Target:
    """Rule 7: drying faster than max_drying_rate_pct_per_h makes beans acidic
    [APROCAM2021, CET2017, Jinap1994]: fans no faster than their minimum, vents partly closed."""
    if rate is None or rate <= t.max_drying_rate_pct_per_h:
        return target
    why = (f"drying {rate:.2f} %/h, faster than {t.max_drying_rate_pct_per_h:.2f} %/h: "
           "less airflow")
    fan_pct = min(target.fan.pct, _fan_speed(t.fan_min_speed_pct, t))
    vent_pct = min(target.vent.pct, VENT_SLOW_DRYING_PCT)
    return _Target(_Setting(fan_pct, why) if fan_pct != target.fan.pct else target.fan,
                   _Setting(vent_pct, why) if vent_pct != target.vent.pct else target.vent)


def _cool(air_c: float | None, cooling: bool, threshold_c: float,
          early_cap: bool) -> _Target | None:
    """Rule 6: above fan_on_air_temp_c, or the early-phase cap, ventilate to cool."""
    if not cooling or air_c is None:
        return None
    cap = "the early-phase cap of " if early_cap else ""
    return _both(FAN_FULL_PCT, VENT_OPEN_PCT,
                 f"air {air_c:.1f} °C, above {cap}{threshold_c:.1f} °C: ventilating to cool "
                 f"until below {threshold_c - TEMP_HYSTERESIS_K:.1f} °C")


def _close_for_rain(raining: bool | None, state: ControllerState) -> _Target | None:
    """Rule 5: rain closes the vents at once (no waiting: water must not blow in) and stops the
    fans (after their minimum run time; with vents shut they only stir inside air)."""
    if raining is not True:
        return None
    why = "raining: vents closed, fans off"
    return _Target(_Setting(FAN_OFF_PCT, why),
                   _Setting(VENT_CLOSED_PCT, why, immediate=state.vent_open_pct > VENT_CLOSED_PCT))


def _ventilate_over_temperature(level: TempLevel, air_c: float | None,
                                t: Thresholds) -> _Target | None:
    """Rule 4: at the alarm level, full ventilation at once [ICCO]."""
    if level < TempLevel.ALARM or air_c is None:
        return None
    return _both(FAN_FULL_PCT, VENT_OPEN_PCT,
                 f"air {air_c:.1f} °C, alarm at {t.air_temp_alarm_c:.1f} °C: full ventilation "
                 f"until below {t.air_temp_alarm_c - TEMP_HYSTERESIS_K:.1f} °C", immediate=True)


def _apply_override(target: _Target, override: Override, t: Thresholds) -> _Target:
    """Rule 3: the operator's settings, at once (no minimum times); the rest stays automatic."""
    until = _utc_clock(override.expires_at)
    fan, vent = target.fan, target.vent
    if override.fan_speed_pct is not None:
        pct = _fan_speed(override.fan_speed_pct, t)
        raised = (f" (raised to the {t.fan_min_speed_pct:.0f} % minimum)"
                  if pct != override.fan_speed_pct else "")
        fan = _Setting(pct, f"manual override until {until}: fans {pct:.0f} %{raised}", True)
    if override.vent_open_pct is not None:
        vent = _Setting(override.vent_open_pct,
                        f"manual override until {until}: vents {override.vent_open_pct:.0f} %",
                        True)
    return _Target(fan, vent)


def _safety(seen: _Trusted, level: TempLevel, manual: bool, t: Thresholds) -> _Target | None:
    """Rules 1 and 2: beans burn irreversibly above the limit [ICCO]; with no trustworthy air
    temperature the node cannot rule that out, so it ventilates fully — in rain and under a
    manual override too (a wet rain sensor can stay wet after the sun is back)."""
    despite = " despite the manual override" if manual else ""
    if seen.air_temp_c is None:
        return _both(FAN_FULL_PCT, VENT_OPEN_PCT,
                     f"fail-safe: no trustworthy inside air temperature, full ventilation{despite}",
                     immediate=True)
    if level >= TempLevel.LIMIT:
        return _both(FAN_FULL_PCT, VENT_OPEN_PCT,
                     f"air {seen.air_temp_c:.1f} °C, bean limit {t.air_temp_limit_c:.1f} °C: "
                     f"full ventilation{despite}", immediate=True)
    return None


# --- minimum times ---------------------------------------------------------------------------

def _utc_clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M UTC")


def _wait_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _next_fan(wanted: _Setting, state: ControllerState, now: datetime,
              t: Thresholds) -> tuple[float, datetime, str | None]:
    """A fan change (on↔off or a new speed) waits until the fan has run fan_min_on_s / rested
    fan_min_off_s at its current setting, unless the rule asking for it acts immediately."""
    current = state.fan_speed_pct
    if wanted.pct == current:
        return current, state.fan_changed_at, None
    waited_s = (now - state.fan_changed_at).total_seconds()
    hold_s = t.fan_min_on_s if current > FAN_OFF_PCT else t.fan_min_off_s
    if wanted.immediate or waited_s >= hold_s:
        return wanted.pct, now, None
    held = _fan_speed(current, t)  # a new config may have raised the minimum speed
    what = f"runs at {held:.0f} %" if held > FAN_OFF_PCT else "stays off"
    return held, state.fan_changed_at if held == current else now, (
        f"fan {what} {_wait_text(hold_s - waited_s)} more (minimum "
        f"{'run' if held > FAN_OFF_PCT else 'rest'} time) before going to {wanted.pct:.0f} %")


def _next_vent(wanted: _Setting, state: ControllerState, now: datetime,
               t: Thresholds) -> tuple[float, datetime, str | None]:
    """A vent moves at most once per vent_min_interval_s, unless the rule acts immediately."""
    current = state.vent_open_pct
    if wanted.pct == current:
        return current, state.vent_changed_at, None
    waited_s = (now - state.vent_changed_at).total_seconds()
    if wanted.immediate or waited_s >= t.vent_min_interval_s:
        return wanted.pct, now, None
    return current, state.vent_changed_at, (
        f"vents stay at {current:.0f} % {_wait_text(t.vent_min_interval_s - waited_s)} more "
        f"(minimum time between moves) before going to {wanted.pct:.0f} %")


# --- alarms ----------------------------------------------------------------------------------

def _alarm_conditions(seen: _Trusted, moisture: _Moisture, night: bool, vent_pct: float,
                      raining: bool | None, t: Thresholds,
                      shown: frozenset[Alarm] = frozenset()) -> tuple[set[Alarm], list[str]]:
    """Every alarm whose condition holds right now (before the clear delay), and why.

    ``shown``: alarms raised before. Humid-air alarms clear only past a hysteresis band, so a
    tropical night hovering at the threshold (plus sensor noise) does not raise and clear
    them every few minutes."""
    alarms, reasons = set(seen.alarms), []
    air_c, air_rh, bean_pct = seen.air_temp_c, seen.air_rh_pct, moisture.now_pct_wb
    if air_c is not None:
        for alarm, threshold_c in ((Alarm.AIR_TEMP_WARNING, t.air_temp_warn_c),
                                   (Alarm.AIR_TEMP_ALARM, t.air_temp_alarm_c),
                                   (Alarm.AIR_TEMP_LIMIT, t.air_temp_limit_c)):
            if air_c >= threshold_c:
                alarms.add(alarm)
    rate = moisture.drying_rate_pct_per_h
    if rate is not None and rate > t.max_drying_rate_pct_per_h:
        alarms.add(Alarm.DRYING_TOO_FAST)
        reasons.append(f"beans losing {rate:.2f} %/h (limit {t.max_drying_rate_pct_per_h:.2f})")
    if raining is True:
        alarms.add(Alarm.RAIN)
    if bean_pct is not None and bean_pct <= t.target_moisture_pct_wb:
        alarms.add(Alarm.TARGET_REACHED)
        reasons.append(f"beans at {bean_pct:.1f} %, target {t.target_moisture_pct_wb:.1f} %")
        if bean_pct < t.over_dry_moisture_pct_wb:
            alarms.add(Alarm.OVER_DRY)
    if air_c is not None and air_rh is not None:
        inside_dew_c = dew_point_c(air_c, air_rh)
        # Condensation in the dryer air, or at night on the cover, which then cools to about
        # the outside temperature (estimate; by day the sun keeps the cover warmer).
        cover_c = seen.ambient_temp_c if night else None
        margin_k = t.condensation_margin_k + (
            CONDENSATION_HYSTERESIS_K if Alarm.CONDENSATION_RISK in shown else 0.0)
        if air_c - inside_dew_c < margin_k or (
                cover_c is not None and cover_c - inside_dew_c < margin_k):
            alarms.add(Alarm.CONDENSATION_RISK)
            reasons.append(f"dew point inside {inside_dew_c:.1f} °C: condensation likely")
        # The inside air itself re-wets the beans [Sandoval2020].
        was_rewetting = Alarm.REWETTING_RISK in shown
        if bean_pct is not None:
            rewets = gab_equilibrium_moisture_pct_wb(air_rh) >= bean_pct - (
                REWET_HYSTERESIS_PCT if was_rewetting else 0.0)
        else:
            rewets = air_rh >= t.rewet_rh_pct - (REWET_HYSTERESIS_RH_PCT if was_rewetting
                                                 else 0.0)
        if rewets:
            alarms.add(Alarm.REWETTING_RISK)
            reasons.append(f"inside air at {air_rh:.0f} % RH can re-wet the beans")
    # Vents open (by a safety rule or an operator) to rain or to air that re-wets the beans.
    if vent_pct > VENT_CLOSED_PCT and (
            raining is True or _outside_air_would_rewet(seen, bean_pct, t) is not None):
        alarms.add(Alarm.REWETTING_RISK)
        reasons.append("vents open to rain or to air that re-wets the beans")
    return alarms, reasons


def _hold_alarms(active: set[Alarm], state: ControllerState,
                 now: datetime) -> tuple[frozenset[Alarm], tuple[tuple[Alarm, datetime], ...]]:
    """Raise at once; clear after the condition has been gone ALARM_CLEAR_AFTER_S."""
    seen_at = dict(state.alarm_seen_at)
    seen_at.update({alarm: now for alarm in active})
    shown = {alarm for alarm, at in seen_at.items()
             if (now - at).total_seconds() < ALARM_CLEAR_AFTER_S or alarm in active}
    return frozenset(shown), tuple(sorted((a, seen_at[a]) for a in shown))


# --- the controller --------------------------------------------------------------------------

def decide(inputs: ControlInputs, thresholds: Thresholds, state: ControllerState,
           override: Override | None) -> Decision:
    """Fan speed, vent position and alarms for ``inputs.now``. Pure and deterministic."""
    t, now = thresholds, inputs.now
    state = _after_clock_step_back(state, now)
    seen = _trusted_readings(inputs, t)
    moisture = _track_moisture(state, seen.bean_moisture, inputs.batch_started_at)
    bean_pct = moisture.now_pct_wb

    level = _temperature_level(seen.air_temp_c, state.temp_level, t)
    early = _early_phase(now, inputs.batch_started_at, bean_pct, t)
    night = _is_night(now, inputs.utc_offset_h, t)
    cool_above_c = _cooling_threshold_c(early, t)
    cooling = _cooling_latch(seen.air_temp_c, state.cooling, cool_above_c)
    difference_k = _dew_point_difference_k(seen)
    ventilating = _ventilation_latch(difference_k, state.ventilating, t)
    rewet_why = _outside_air_would_rewet(seen, bean_pct, t)
    manual = override is not None and override.in_force(now)

    # Lowest priority first; each later rule may replace what the earlier ones decided.
    target = _ventilate_to_dry(seen, difference_k, ventilating, rewet_why, t)
    target = _close_for_night_or_humid_air(seen, bean_pct, night, t) or target
    target = _slow_down_when_drying_too_fast(target, moisture.drying_rate_pct_per_h, t)
    target = _cool(seen.air_temp_c, cooling, cool_above_c,
                   early_cap=cool_above_c < t.fan_on_air_temp_c) or target
    target = _close_for_rain(inputs.raining, state) or target
    target = _ventilate_over_temperature(level, seen.air_temp_c, t) or target
    if override is not None and manual:
        target = _apply_override(target, override, t)
    target = _safety(seen, level, manual, t) or target

    fan_pct, fan_changed_at, fan_wait = _next_fan(target.fan, state, now, t)
    vent_pct, vent_changed_at, vent_wait = _next_vent(target.vent, state, now, t)

    active, alarm_reasons = _alarm_conditions(
        seen, moisture, night, vent_pct, inputs.raining, t,
        frozenset(alarm for alarm, _ in state.alarm_seen_at))
    alarms, alarm_seen_at = _hold_alarms(active, state, now)

    reasons = [target.fan.why]
    if target.vent.why != target.fan.why:
        reasons.append(target.vent.why)
    reasons += [text for text in (fan_wait, vent_wait) if text]
    if override is not None and not manual:
        reasons.append(f"manual override ended at {_utc_clock(override.expires_at)}: "
                       "automatic control")
    reasons += seen.reasons
    reasons += alarm_reasons

    new_state = replace(
        state,
        fan_speed_pct=fan_pct, fan_changed_at=fan_changed_at,
        vent_open_pct=vent_pct, vent_changed_at=vent_changed_at,
        temp_level=level, cooling=cooling, ventilating=ventilating,
        moisture_avg_pct_wb=moisture.avg_pct_wb, moisture_avg_at=moisture.avg_at,
        moisture_ref_pct_wb=moisture.ref_pct_wb, moisture_ref_at=moisture.ref_at,
        drying_rate_pct_per_h=moisture.stored_rate_pct_per_h, alarm_seen_at=alarm_seen_at,
    )
    return Decision(fan_speed_pct=fan_pct, vent_open_pct=vent_pct,
                    mode=Mode.MANUAL if manual else Mode.AUTO, alarms=alarms,
                    reasons=tuple(reasons), state=new_state)
