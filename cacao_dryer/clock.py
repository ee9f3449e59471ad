"""Injected clocks: real time for production, accelerated or hand-driven time for simulation/tests.

Every piece of code that needs the time takes a ``Clock``; nothing calls ``datetime.now()`` or
``time.sleep()`` directly, so the simulator can run a 5-day batch in minutes and tests never
sleep to wait for time to pass.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

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
