"""Helpers shared by the tests: a private Mosquitto, condition waits, an MQTT test subscriber."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` s.

    Tests wait on conditions, never on fixed sleeps: the poll interval only bounds latency.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
