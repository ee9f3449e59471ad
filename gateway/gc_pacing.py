"""Garbage collection paced by the gateway's own rhythm instead of by allocation counts.

Python's automatic collector runs every few hundred allocations. Ingest allocates thousands
of short-lived objects per batch (pydantic models, dicts, readings), so it kept triggering
collections that walked the young objects of the batch in hand and found nothing: about 40 %
of the decoding CPU in a micro-benchmark (bench/GATEWAY_RESULTS.md, "CPU per reading"). A
gateway process
therefore, once started:

- freezes what start-up made (``gc.freeze``: modules, the app, routes, schemas live until
  the process ends), so no collection walks them again;
- turns automatic collection off;
- collects the young generation after each durable ingest batch (``collect_young``: the
  batch's cycles, e.g. httpx keeps each request with its 1 MB body in one, are garbage then);
- collects everything every ``COLLECT_EVERY_S`` (``GarbagePacer.tick``), so garbage of the
  web server and jobs lives at most that long.

Only processes that tick a pacer run this way; anything else (tests, tools) keeps Python's
automatic collector, and ``collect_young`` does nothing there.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

COLLECT_EVERY_S = 5.0


def collect_young() -> None:
    """After a batch: the young generation, when the pacer has turned automatic GC off."""
    if not gc.isenabled():
        gc.collect(0)


class GarbagePacer:
    def __init__(self, every_s: float = COLLECT_EVERY_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._monotonic = monotonic
        self._last = monotonic()
        self.collections = 0

    def start(self) -> None:
        """Call once start-up is done (what exists now is frozen)."""
        gc.freeze()
        gc.disable()
        self._last = self._monotonic()

    def tick(self) -> None:
        """Call often (every second or so): a full collection once ``every_s`` has passed."""
        now = self._monotonic()
        if now - self._last >= self.every_s:
            gc.collect()
            self.collections += 1
            self._last = now

    def stop(self) -> None:
        """Automatic collection back on (shutting down, or a test's process)."""
        gc.enable()
