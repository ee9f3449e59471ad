"""Periodic background jobs of the gateway (alert evaluation, threshold reconcile, ...).

Each job runs in its own thread every ``every_s`` seconds; a job that raises is logged (once
per distinct message per hour, so a broken database does not flood the journal) and tried
again at the next period. Stopping waits for the running round to finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("cacao_dryer.gateway")

LOG_REPEAT_S = 3600.0


@dataclass
class Job:
    name: str
    every_s: float
    run: Callable[[], object]
    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    _logged: dict[str, float] = field(default_factory=dict)

    def run_once(self) -> None:
        try:
            self.run()
            self.last_error = None
        except Exception as exc:
            self.failures += 1
            message = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.last_error = message
            now = time.monotonic()
            if now - self._logged.get(message, -LOG_REPEAT_S) >= LOG_REPEAT_S:
                self._logged[message] = now
                log.error("job %s failed: %s", self.name, message, exc_info=exc)
        finally:
            self.runs += 1


class Jobs:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, name: str, every_s: float, run: Callable[[], object]) -> Job:
        job = Job(name, every_s, run)
        self.jobs.append(job)
        return job

    def start(self) -> None:
        for job in self.jobs:
            thread = threading.Thread(target=self._loop, args=(job,), name=f"job-{job.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self, job: Job) -> None:
        while not self._stop.is_set():
            job.run_once()
            self._stop.wait(job.every_s)

    def alive(self) -> bool:
        """Every job's thread runs (a job's error is logged and retried, never fatal)."""
        return all(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
