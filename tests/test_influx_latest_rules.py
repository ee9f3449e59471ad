"""The pure rules behind the InfluxDB stores' ``latest`` (gateway/stores/influx_common.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.stores.influx_common import (
    LATEST_LOOKBACK_NS,
    SeqAt,
    highest_seq,
    lookback_start_ns,
)
from gateway.stores.line_protocol import MAX_TIME_NS, MIN_TIME_NS

candidates = st.lists(st.none() | st.builds(SeqAt, st.integers(0, 2**53),
                                             st.integers(MIN_TIME_NS, MAX_TIME_NS)))


@given(candidates)
def test_the_winner_has_the_highest_seq_and_of_equals_the_newest_time(
        found: list[SeqAt | None]) -> None:
    winner = highest_seq(found)
    present = [c for c in found if c is not None]
    if not present:
        assert winner is None
        return
    assert winner in present
    assert all((c.seq, c.at_ns) <= (winner.seq, winner.at_ns) for c in present)


def test_of_equal_seqs_the_newer_reading_wins() -> None:
    """A seq reused after a restart (a node bug): the later reading is the current one."""
    assert highest_seq([SeqAt(9, 60), SeqAt(9, 50), SeqAt(7, 100)]) == SeqAt(9, 60)


def test_the_look_back_starts_before_the_newest_reading_and_never_before_influxdbs_range(
        ) -> None:
    assert lookback_start_ns(10**18) == 10**18 - LATEST_LOOKBACK_NS
    assert lookback_start_ns(MIN_TIME_NS + 5) == MIN_TIME_NS
