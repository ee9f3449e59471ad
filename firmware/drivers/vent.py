"""Dryer vents: a flap on a hobby servo, or a motor/linear actuator driven by two relays.

Common API: ``set_open_pct(pct, now)``, ``update(now)`` (the node loop calls it every ~1 s),
``target_pct`` (None before the first command), ``open_pct`` (best estimate, always a number:
assumed closed until something is known), ``position_known``, ``busy``, ``close()``.
``now`` comes from the injected clock, so a ManualClock makes every move deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from gpiozero import AngularServo, DigitalOutputDevice
from gpiozero.pins import Factory

from cacao_dryer.errors import ActuatorError, ConfigError
from firmware.config import RelayVentConfig, ServoVentConfig

# Hobby servos (SG90, MG90S, MG996R...) turn about 0..180° for 0.5..2.5 ms pulses every 20 ms.
# Config angles are on that scale; trim closed/open_angle_deg on site to the flap's end points.
SERVO_MAX_ANGLE_DEG = 180.0
SERVO_MIN_PULSE_S = 0.5e-3
SERVO_MAX_PULSE_S = 2.5e-3

# A move to an end runs the full travel time plus this fraction, whatever the estimate says, so
# the actuator rests on its end stop and the estimate is exact again (estimate: actuator speed
# varies ~10–20 % with load, supply voltage and temperature).
END_MARGIN_FRACTION = 0.2
# Both relays off this long before the motor may start again (estimate: lets the motor stop and
# the relay contacts open before the polarity is reversed).
DEAD_TIME_S = 0.5
# Moves shorter than this are not worth a relay click.
DEADBAND_PCT = 1.0


def _checked_pct(vent: str, pct: float) -> float:
    if not (math.isfinite(pct) and 0.0 <= pct <= 100.0):
        raise ActuatorError(f"vent {vent!r}: opening {pct} % is outside 0..100 %")
    return float(pct)


class ServoVent:
    """A flap on a servo: the angle follows the opening linearly. The servo gets no pulses until
    the first command (it stays where it is at boot); afterwards it holds its position."""

    def __init__(self, config: ServoVentConfig, pin_factory: Factory | None = None) -> None:
        self.name = config.name
        self.config = config
        for key in ("closed_angle_deg", "open_angle_deg"):
            angle = getattr(config, key)
            if not 0.0 <= angle <= SERVO_MAX_ANGLE_DEG:
                raise ConfigError(f"vent {config.name!r}: {key} {angle} is outside "
                                  f"0..{SERVO_MAX_ANGLE_DEG:g}°")
        if config.closed_angle_deg == config.open_angle_deg:
            raise ConfigError(f"vent {config.name!r}: closed_angle_deg equals open_angle_deg")
        self._servo = AngularServo(
            config.pin, initial_angle=None, min_angle=0.0, max_angle=SERVO_MAX_ANGLE_DEG,
            min_pulse_width=SERVO_MIN_PULSE_S, max_pulse_width=SERVO_MAX_PULSE_S,
            pin_factory=pin_factory)
        self._target: float | None = None

    @property
    def target_pct(self) -> float | None:
        return self._target

    @property
    def open_pct(self) -> float:
        # a servo reaches its angle within a second; no feedback. Before the first command it
        # sits where it was left: assumed closed.
        return 0.0 if self._target is None else self._target

    @property
    def position_known(self) -> bool:
        return self._target is not None

    @property
    def busy(self) -> bool:
        return False

    @property
    def angle_deg(self) -> float | None:
        return self._servo.angle

    def set_open_pct(self, pct: float, now: datetime) -> None:
        self._target = _checked_pct(self.name, pct)
        closed, opened = self.config.closed_angle_deg, self.config.open_angle_deg
        self._servo.angle = closed + (opened - closed) * self._target / 100.0

    def update(self, now: datetime) -> None:
        """Nothing to do: the servo positions itself."""

    def close(self) -> None:
        self._servo.close()


@dataclass
class _Move:
    direction: int              # +1 opening, -1 closing
    goal_pct: float
    start_pct: float            # estimate when the move started
    duration_s: float
    homing: bool                # from an unknown position to an end stop
    run_s: float = 0.0

    def position_pct(self, rate_pct_per_s: float) -> float:
        return min(100.0, max(0.0, self.start_pct + self.direction * rate_pct_per_s * self.run_s))


class RelayVent:
    """A vent on a reversible motor or linear actuator with end stops, driven by an OPEN relay
    and a CLOSE relay. The position is estimated from running time.

    * The two relays are never on together: one is switched off before the other may start,
      and the motor rests ``DEAD_TIME_S`` between any stop and the next start.
    * The position is unknown at boot (assumed closed for ``open_pct``): the first command
      first drives to the end nearer its target for the full travel time plus margin
      (homing), then to the target.
    * A move to 0 % or 100 % always runs the full travel time plus margin, re-syncing the
      estimate against the end stop; a move in between runs for the distance's share of
      ``travel_time_s`` and stops at the first ``update`` after that.
    """

    def __init__(self, config: RelayVentConfig, pin_factory: Factory | None = None) -> None:
        self.name = config.name
        self.config = config
        self._open_relay = DigitalOutputDevice(config.open_pin, active_high=config.active_high,
                                               initial_value=False, pin_factory=pin_factory)
        try:
            self._close_relay = DigitalOutputDevice(
                config.close_pin, active_high=config.active_high, initial_value=False,
                pin_factory=pin_factory)
        except Exception:
            self._open_relay.close()
            raise
        self._rate_pct_per_s = 100.0 / config.travel_time_s
        self._end_run_s = config.travel_time_s * (1.0 + END_MARGIN_FRACTION)
        self._position = 0.0                   # estimate while stopped (assumed closed)
        self._known = False                    # the estimate was synced against an end stop
        self._at_end: float | None = None      # 0 or 100 once resting on that end stop
        self._target: float | None = None
        self._pending = False                  # target not reached yet
        self._move: _Move | None = None
        self._last_now: datetime | None = None
        self._rest_s = math.inf                # motor stopped for this long

    @property
    def target_pct(self) -> float | None:
        return self._target

    @property
    def open_pct(self) -> float:
        if self._move is not None:
            return self._move.position_pct(self._rate_pct_per_s)
        return self._position

    @property
    def position_known(self) -> bool:
        return self._known

    @property
    def busy(self) -> bool:
        """True while the motor runs or a move waits to start."""
        return self._pending

    @property
    def motor(self) -> str:
        """'opening', 'closing' or 'stopped' (what the relays do now)."""
        if self._open_relay.closed or self._close_relay.closed:
            return "stopped"
        if self._open_relay.is_active:
            return "opening"
        return "closing" if self._close_relay.is_active else "stopped"

    def set_open_pct(self, pct: float, now: datetime) -> None:
        pct = _checked_pct(self.name, pct)
        self._advance(now)
        if pct != self._target:
            self._target = pct
            self._pending = True
            if self._move is not None:
                self._replan(self._move)
        self._start_if_due()

    def update(self, now: datetime) -> None:
        self._advance(now)
        self._start_if_due()

    def close(self) -> None:
        """Stop the motor (both relays off) and release the pins."""
        for relay in (self._open_relay, self._close_relay):
            if not relay.closed:
                relay.off()
                relay.close()

    # --- internals ---------------------------------------------------------------------------

    def _plan(self) -> _Move | None:
        """The move from here to the target, or None if already there."""
        target = self._target
        if target is None:
            return None
        if not self._known:
            goal = 100.0 if target >= 50.0 else 0.0
            return _Move(1 if goal else -1, goal, self._position, self._end_run_s, homing=True)
        if target in (0.0, 100.0):
            if self._at_end == target:
                return None
            return _Move(1 if target else -1, target, self._position, self._end_run_s,
                         homing=False)
        distance = target - self._position
        if abs(distance) < DEADBAND_PCT:
            return None
        return _Move(1 if distance > 0 else -1, target, self._position,
                     abs(distance) / self._rate_pct_per_s, homing=False)

    def _replan(self, current: _Move) -> None:
        """The target changed while moving: carry on in the same direction, else stop."""
        self._position = current.position_pct(self._rate_pct_per_s)
        plan = self._plan()
        if plan is not None and plan.direction == current.direction:
            self._move = current if plan.homing else plan
        else:
            self._stop()

    def _advance(self, now: datetime) -> None:
        """Account for the running time since the last call; finish a move that is done."""
        # A wall clock stepped back (NTP on a Pi without RTC) counts as no time passing.
        elapsed = 0.0 if self._last_now is None else (now - self._last_now).total_seconds()
        self._last_now = now
        elapsed = max(0.0, elapsed)
        move = self._move
        if move is None:
            self._rest_s += elapsed
            return
        move.run_s += elapsed
        if move.run_s < move.duration_s:
            return
        if move.goal_pct in (0.0, 100.0):
            self._position = self._at_end = move.goal_pct
            self._known = True
        else:
            self._position = move.position_pct(self._rate_pct_per_s)
        self._stop()
        # After homing, go on to the target unless it was that end. After a move to the target,
        # done: re-planning from an overshoot estimate would make the vent hunt back and forth.
        self._pending = move.homing and self._plan() is not None

    def _start_if_due(self) -> None:
        if self._move is not None or not self._pending or self._rest_s < DEAD_TIME_S:
            return
        plan = self._plan()
        if plan is None:
            self._pending = False
            return
        self._move = plan
        self._at_end = None
        self._drive(plan.direction)

    def _stop(self) -> None:
        self._move = None
        self._rest_s = 0.0
        self._drive(0)

    def _drive(self, direction: int) -> None:
        """Switch the relays; the one to be switched off always goes first."""
        if direction >= 0:
            self._close_relay.off()
        if direction <= 0:
            self._open_relay.off()
        if direction > 0:
            self._open_relay.on()
        elif direction < 0:
            self._close_relay.on()


Vent = ServoVent | RelayVent
