"""The gateway's garbage collection pacing (gateway/gc_pacing.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.gc_pacing import GarbagePacer, collect_young


class Cycle:
    """An object in a reference cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def pacer() -> Iterator[GarbagePacer]:
    now = [100.0]
    pacer = GarbagePacer(every_s=5.0, monotonic=lambda: now[0])
    pacer.now = now  # type: ignore[attr-defined]
    try:
        yield pacer
    finally:
        pacer.stop()
        gc.unfreeze()  # this test process goes on with Python's own collector


def cycles_alive() -> int:
    return sum(isinstance(thing, Cycle) for thing in gc.get_objects())


def test_start_freezes_start_up_and_turns_automatic_collection_off(pacer) -> None:
    pacer.start()
    assert not gc.isenabled()
    assert gc.get_freeze_count() > 0
    pacer.stop()
    assert gc.isenabled()


def test_a_full_collection_comes_on_the_clock_not_on_allocations(pacer) -> None:
    pacer.start()
    for _ in range(20_000):  # far past the automatic collector's threshold (700)
        Cycle()
    assert cycles_alive() == 20_000  # nothing collected them: automatic GC is off
    pacer.now[0] += 4.9
    pacer.tick()
    assert pacer.collections == 0 and cycles_alive() == 20_000
    pacer.now[0] += 0.2
    pacer.tick()
    assert pacer.collections == 1 and cycles_alive() == 0


def test_collect_young_frees_a_batch_s_cycles_only_when_the_pacer_runs(pacer) -> None:
    for _ in range(100):
        Cycle()
    gc.disable()  # as after start(), without freezing: the cycles are young
    collect_young()
    assert cycles_alive() == 0
    gc.enable()
    threshold = gc.get_threshold()
    gc.set_threshold(0)  # automatic collection "on" but never triggering by itself
    try:
        for _ in range(100):
            Cycle()
        collect_young()  # Python's own collector is in charge: collect_young leaves it be
        assert cycles_alive() == 100
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
