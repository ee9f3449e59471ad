"""Injected clocks: real time for production, accelerated or hand-driven time for simulation/tests.

Every piece of code that needs the time takes a ``Clock``; nothing calls ``datetime.now()`` or
``time.sleep()`` directly, so the simulator can run a 5-day batch in minutes and tests never
sleep to wait for time to pass.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


@runtime_checkable
class SteppingClock(Protocol):
    """A clock that can say when it was stepped: moved other than by time passing (NTP
    correcting a Raspberry Pi without a real-time clock, ``date -s``, a fault test)."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...

    def stepped_s(self) -> float:
        """Seconds this clock has been stepped in all since it was made (negative: back).
        Changes only when the clock steps; compare two calls to see a step between them."""
        ...


def stepped_s(clock: Clock) -> float | None:
    """``clock.stepped_s()``, or None for a clock that cannot tell (a ``ManualClock``)."""
    return clock.stepped_s() if isinstance(clock, SteppingClock) else None


class SystemClock:
    """Wall-clock time."""

    def __init__(self) -> None:
        self._wall_minus_monotonic_s = time.time() - time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def stepped_s(self) -> float:
        """How far the wall clock was stepped since this object was made: the monotonic clock
        never steps, so a change of wall minus monotonic time is a step (NTP's slewing moves
        it by milliseconds only)."""
        return time.time() - time.monotonic() - self._wall_minus_monotonic_s

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class AcceleratedClock:
    """Time that runs ``speed`` times faster than real time, from ``start``.

    >>> clock = AcceleratedClock(datetime(2026, 1, 1, tzinfo=UTC), speed=3600)
    >>> clock.sleep(3600)   # one simulated hour takes one real second
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("AcceleratedClock start must be timezone-aware")
        if speed <= 0:
            raise ValueError(f"AcceleratedClock speed must be > 0, got {speed}")
        self._start = start
        self._speed = speed
        self._t0 = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self._speed)


class ManualClock:
    """A clock that moves only when told; ``sleep`` advances it instantly (for tests)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock start must be timezone-aware")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)


class OffsetClock:
    """``base``'s time moved by an offset that may change while running: the system clock of a
    simulated node, wrong by ``offset_s`` against true time (``base``). A new offset steps the
    clock at once, as NTP or ``date -s`` steps a Raspberry Pi's (``firmware.simulation``).

    >>> true_time = ManualClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    >>> pi = OffsetClock(true_time)
    >>> pi.set_offset(-3 * 3600)
    >>> pi.now().hour, pi.stepped_s()
    (9, -10800.0)
    """

    def __init__(self, base: Clock, offset_s: float = 0.0) -> None:
        self._base = base
        self._offset_s = 0.0
        self.set_offset(offset_s)

    @property
    def base(self) -> Clock:
        """True time (what the simulated world runs on)."""
        return self._base

    @property
    def offset_s(self) -> float:
        return self._offset_s

    @property
    def speed(self) -> float:
        """The base clock's speed (an ``AcceleratedClock``'s), else 1."""
        return float(getattr(self._base, "speed", 1.0))

    def set_offset(self, seconds: float) -> None:
        """From now on show ``seconds`` more than true time (0: right again)."""
        if not math.isfinite(seconds):
            raise ValueError(f"OffsetClock offset must be a finite number of seconds, "
                             f"got {seconds!r}")
        self._offset_s = float(seconds)  # one assignment: safe to read from other threads

    def now(self) -> datetime:
        return self._base.now() + timedelta(seconds=self._offset_s)

    def sleep(self, seconds: float) -> None:
        self._base.sleep(seconds)

    def stepped_s(self) -> float:
        return self._offset_s + (stepped_s(self._base) or 0.0)
