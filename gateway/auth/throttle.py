"""Login rate limiting: too many failed logins for one username, or from one address, within
a window → refused for a while (HTTP 429 with Retry-After).

Per username, it stops guessing one person's password; per client address (a higher limit,
since a collection center's office PC is shared by many people behind one address), it stops
trying many usernames. Kept in memory: one gateway process serves a site, and a restart
forgetting the counts costs an attacker a restart they cannot cause. With several gateways
behind one address each counts its own. The number of remembered keys is bounded.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from datetime import datetime, timedelta

from cacao_dryer.clock import Clock

MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(self, clock: Clock, *, max_failures_per_user: int,
                 max_failures_per_ip: int, window: timedelta) -> None:
        self.clock = clock
        self.window = window
        self._limits = {"user": max_failures_per_user, "ip": max_failures_per_ip}
        self._failures: dict[tuple[str, str], deque[datetime]] = {}
        self._lock = threading.Lock()

    def retry_after_s(self, username: str, client_ip: str) -> int | None:
        """Seconds until a login for ``username`` from ``client_ip`` may be tried again, or
        None if it may be tried now."""
        now = self.clock.now()
        waits: list[float] = []
        with self._lock:
            for key in self._keys(username, client_ip):
                times = self._recent(key, now)
                if times is not None and len(times) >= self._limits[key[0]]:
                    # The window slides: one more try once the oldest failure in it expires.
                    waits.append((times[-self._limits[key[0]]] + self.window - now)
                                 .total_seconds())
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, username: str, client_ip: str) -> None:
        now = self.clock.now()
        with self._lock:
            if len(self._failures) >= MAX_KEYS:
                self._forget_old(now)
            for key in self._keys(username, client_ip):
                self._failures.setdefault(key, deque(maxlen=max(self._limits.values())))
                self._failures[key].append(now)

    def succeeded(self, username: str) -> None:
        """A right password clears that username's failures (not the address's)."""
        with self._lock:
            self._failures.pop(("user", username), None)

    @staticmethod
    def _keys(username: str, client_ip: str) -> tuple[tuple[str, str], ...]:
        return ("user", username.strip().lower()[:64]), ("ip", client_ip)

    def _recent(self, key: tuple[str, str], now: datetime) -> deque[datetime] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] + self.window <= now:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _forget_old(self, now: datetime) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        if len(self._failures) >= MAX_KEYS:  # a flood of distinct names: forget the stalest
            stalest = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in stalest[:len(stalest) // 2]:
                del self._failures[key]
