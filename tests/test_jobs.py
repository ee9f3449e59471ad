"""Periodic gateway jobs keep running when a round fails, and stop cleanly."""

from __future__ import annotations

import logging
import threading

import pytest
from support import wait_for

from gateway.jobs import Job, Jobs


def test_a_failing_round_is_counted_and_the_next_round_runs(
        caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []

    def flaky() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("database\nlocked")

    job = Job("flaky", 0.0, flaky)
    with caplog.at_level(logging.ERROR, logger="cacao_dryer.gateway"):
        job.run_once()
        job.run_once()
    assert (job.runs, job.failures, job.last_error) == (2, 1, None)
    assert "job flaky failed: database locked" in caplog.text


def test_the_same_error_is_logged_once_per_hour(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise OSError("disk full")

    job = Job("broken", 0.0, broken)
    with caplog.at_level(logging.ERROR, logger="cacao_dryer.gateway"):
        for _ in range(5):
            job.run_once()
    assert job.failures == 5 and job.last_error == "disk full"
    assert [r.getMessage() for r in caplog.records] == ["job broken failed: disk full"]


def test_jobs_run_periodically_until_stopped() -> None:
    ran = threading.Event()
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] >= 3:
            ran.set()

    jobs = Jobs()
    jobs.add("tick", 0.01, tick)
    jobs.start()
    wait_for(ran.is_set, timeout=5, what="three rounds")
    jobs.stop()
    after_stop = count[0]
    threading.Event().wait(0.05)  # a stopped job must not tick again
    assert count[0] == after_stop
