"""systemd readiness and watchdog notifications (``sd_notify``), without a library.

Under a unit with ``Type=notify`` and ``WatchdogSec=``, systemd sets ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC``; the node loop pings every tick and systemd restarts a node whose loop hangs
(a stuck sensor read, a deadlock). Outside systemd (tests, a laptop) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from contextlib import suppress


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        # Ping at twice the rate systemd requires, as sd_watchdog_enabled(3) recommends.
        self._ping_every_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, message: str) -> None:
        if not self._address:
            return
        # OSError: systemd is gone (shutdown); there is nothing useful to do about it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
            sock.sendto(message.encode(), self._address)

    def ping(self) -> None:
        """WATCHDOG=1, at most at the rate the watchdog needs."""
        if self._ping_every_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._ping_every_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")
