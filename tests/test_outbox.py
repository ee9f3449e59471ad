"""The durable outbox: sequence numbers, FIFO order, lazy acknowledgement, disk bound."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cacao_dryer.errors import OutboxError
from firmware.outbox import ROW_OVERHEAD_BYTES, DroppedRange, Outbox

TOPIC = "cacao/v1/site/node-1/telemetry"


def reading(seq: int) -> bytes:
    """A telemetry-like payload of fixed length (seq padded), so sizes are easy to reason on."""
    return f'{{"seq": {seq:>6}, "air_temp_c": 41.5}}'.encode()


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1_000_000)
    yield box
    box.close()


def test_sequence_numbers_start_at_one_and_count_per_counter(outbox: Outbox) -> None:
    seqs = [outbox.add(TOPIC, reading, "telemetry") for _ in range(3)]
    event_seq = outbox.add("cacao/v1/site/node-1/event", reading, "event")
    assert seqs == [1, 2, 3]
    assert event_seq == 1
    assert outbox.counter("telemetry") == 3
    assert outbox.counter("event") == 1
    assert outbox.counter("never-used") == 0


def test_payload_is_built_with_its_own_sequence_number(outbox: Outbox) -> None:
    outbox.add(TOPIC, reading, "telemetry")
    outbox.add(TOPIC, reading, "telemetry")
    assert [(m.seq, m.payload) for m in outbox.peek(10)] == [(1, reading(1)), (2, reading(2))]


def test_peek_returns_oldest_first_after_the_given_id(outbox: Outbox) -> None:
    for _ in range(5):
        outbox.add(TOPIC, reading, "telemetry")
    first_two = outbox.peek(2)
    rest = outbox.peek(10, after_id=first_two[-1].id)
    assert [m.seq for m in first_two] == [1, 2]
    assert [m.seq for m in rest] == [3, 4, 5]


def test_message_keeps_topic_qos_and_retain(outbox: Outbox) -> None:
    outbox.add("cacao/v1/site/node-1/status", reading, "status", qos=0, retain=True)
    message = outbox.peek(1)[0]
    assert (message.topic, message.qos, message.retain, message.counter) == (
        "cacao/v1/site/node-1/status", 0, True, "status")


def test_sequence_numbers_continue_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=1_000_000) as box:
        box.add(TOPIC, reading, "telemetry")
        box.add(TOPIC, reading, "telemetry")
    with Outbox(path, max_bytes=1_000_000) as box:
        assert box.add(TOPIC, reading, "telemetry") == 3
        assert [m.seq for m in box.peek(10)] == [1, 2, 3]


def test_failed_payload_stores_nothing_and_uses_no_number(outbox: Outbox) -> None:
    def broken(seq: int) -> bytes:
        raise ValueError("sensor gone")

    with pytest.raises(ValueError, match="sensor gone"):
        outbox.add(TOPIC, broken, "telemetry")
    assert outbox.depth() == 0
    assert outbox.add(TOPIC, reading, "telemetry") == 1


def test_payload_must_be_bytes(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="not bytes"):
        outbox.add(TOPIC, lambda seq: f"{seq}", "telemetry")  # type: ignore[arg-type,return-value]
    assert outbox.counter("telemetry") == 0


def test_removed_messages_are_no_longer_waiting(outbox: Outbox) -> None:
    for _ in range(4):
        outbox.add(TOPIC, reading, "telemetry")
    ids = [m.id for m in outbox.peek(10)]
    outbox.remove(ids[:2])
    assert outbox.depth() == 2
    assert [m.seq for m in outbox.peek(10)] == [3, 4]


def test_ids_keep_growing_after_the_outbox_was_emptied(outbox: Outbox) -> None:
    outbox.add(TOPIC, reading, "telemetry")
    first = outbox.peek(1)[0]
    outbox.remove([first.id])
    outbox.add(TOPIC, reading, "telemetry")  # deletes the acknowledged row, then inserts
    assert outbox.peek(10, after_id=first.id)[0].seq == 2


def test_removal_is_kept_on_disk_after_close(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=1_000_000) as box:
        for _ in range(3):
            box.add(TOPIC, reading, "telemetry")
        box.remove([box.peek(1)[0].id])
    with Outbox(path, max_bytes=1_000_000) as box:
        assert [m.seq for m in box.peek(10)] == [2, 3]


def test_removing_unknown_ids_is_harmless(outbox: Outbox) -> None:
    outbox.add(TOPIC, reading, "telemetry")
    outbox.remove([999, 1000])
    outbox.flush()
    assert outbox.depth() == 1


_CRASH_SCRIPT = """
import os, signal, sys
from pathlib import Path
from firmware.outbox import Outbox
box = Outbox(Path(sys.argv[1]), max_bytes=1_000_000, sync=sys.argv[2])
for _ in range(10):
    box.add("t/telemetry", lambda seq: b"reading %d" % seq, "telemetry")
box.remove([m.id for m in box.peek(3)])  # acknowledged, not yet deleted on disk (lazy)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sigkill_loses_no_message_and_no_sequence_number(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "outbox.sqlite"
    crashed = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(path), sync],
                             capture_output=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr.decode()
    with Outbox(path, max_bytes=1_000_000, sync=sync) as box:
        # The 3 acknowledged messages come back (sent twice: allowed); nothing is missing.
        assert [m.seq for m in box.peek(100)] == list(range(1, 11))
        assert box.add("t/telemetry", lambda seq: b"x", "telemetry") == 11


def test_second_user_of_the_same_outbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=1_000_000) as box:
        box.add(TOPIC, reading, "telemetry")
        with pytest.raises(OutboxError, match="in use by another process"):
            Outbox(path, max_bytes=1_000_000)


def test_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    row_bytes = len(TOPIC) + len(reading(1)) + ROW_OVERHEAD_BYTES
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=10 * row_bytes + 5) as box:
        for _ in range(25):
            box.add(TOPIC, reading, "telemetry")
        assert [m.seq for m in box.peek(100)] == list(range(16, 26))
        assert box.dropped_total() == 15
        assert box.stored_bytes() <= box.max_bytes


def test_dropped_ranges_are_reported_once_and_merged(tmp_path: Path) -> None:
    row_bytes = len(TOPIC) + len(reading(1)) + ROW_OVERHEAD_BYTES
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=5 * row_bytes) as box:
        for _ in range(12):
            box.add(TOPIC, reading, "telemetry")
        assert box.take_dropped() == [DroppedRange("telemetry", 1, 7)]
        assert box.take_dropped() == []
        box.add(TOPIC, reading, "telemetry")
        assert box.take_dropped() == [DroppedRange("telemetry", 8, 8)]


def test_dropped_count_and_ranges_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    row_bytes = len(TOPIC) + len(reading(1)) + ROW_OVERHEAD_BYTES
    with Outbox(path, max_bytes=3 * row_bytes) as box:
        for _ in range(5):
            box.add(TOPIC, reading, "telemetry")
    with Outbox(path, max_bytes=3 * row_bytes) as box:
        assert box.dropped_total() == 2
        assert box.take_dropped() == [DroppedRange("telemetry", 1, 2)]


def test_acknowledged_messages_make_room_before_anything_is_dropped(tmp_path: Path) -> None:
    row_bytes = len(TOPIC) + len(reading(1)) + ROW_OVERHEAD_BYTES
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=5 * row_bytes) as box:
        for _ in range(5):
            box.add(TOPIC, reading, "telemetry")
        box.remove([m.id for m in box.peek(5)])
        for _ in range(5):
            box.add(TOPIC, reading, "telemetry")
        assert box.dropped_total() == 0
        assert [m.seq for m in box.peek(10)] == [6, 7, 8, 9, 10]


def test_message_larger_than_the_outbox_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=200) as box:
        with pytest.raises(OutboxError, match="larger than the whole outbox"):
            box.add(TOPIC, lambda seq: b"x" * 500, "telemetry")
        assert box.counter("telemetry") == 0


def test_database_file_stays_near_the_bound_under_churn(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    max_bytes = 64 * 1024
    with Outbox(path, max_bytes=max_bytes, sync="normal") as box:
        for _ in range(3000):
            box.add(TOPIC, lambda seq: b"%d " % seq + b"x" * 250, "telemetry")
        assert box.dropped_total() > 2000
    # The WAL is checkpointed into the database at close; pages freed by dropping are reused.
    assert path.stat().st_size <= 1.5 * max_bytes + 16 * 1024


@pytest.mark.parametrize("topic", ["", "cacao/v1/+/node-1/telemetry", "cacao/#"])
def test_rejects_topics_that_cannot_be_published_to(outbox: Outbox, topic: str) -> None:
    with pytest.raises(OutboxError, match="not a topic"):
        outbox.add(topic, reading, "telemetry")
    assert outbox.counter("telemetry") == 0


def test_flush_after_close_does_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1000)
    box.add(TOPIC, reading, "telemetry")
    box.close()
    box.remove([1])
    box.flush()
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1000) as reopened:
        assert reopened.depth() == 1


def test_rejects_unknown_sync_mode(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="sync must be"):
        Outbox(tmp_path / "outbox.sqlite", max_bytes=1000, sync="sometimes")


def test_rejects_counter_names_that_are_not_identifiers(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="counter name"):
        outbox.add(TOPIC, reading, "outbox.dropped_total")


def test_not_a_database_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=str(path)):
        Outbox(path, max_bytes=1000)


def test_concurrent_adds_and_removes_keep_numbers_unique_and_gapless(outbox: Outbox) -> None:
    def add_many() -> None:
        for _ in range(200):
            outbox.add(TOPIC, reading, "telemetry")

    def ack_some() -> None:
        for _ in range(50):
            outbox.remove([m.id for m in outbox.peek(3)])

    threads = [threading.Thread(target=add_many) for _ in range(3)]
    threads.append(threading.Thread(target=ack_some))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outbox.flush()
    waiting = [m.seq for m in outbox.peek(1000)]
    assert outbox.counter("telemetry") == 600
    assert waiting == sorted(set(waiting))
    assert all(1 <= seq <= 600 for seq in waiting)


def test_protected_counter_is_dropped_only_when_nothing_else_is_left(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=4000, sync="normal",
                    drop_last=("event",))
    outbox.add("t/event", lambda seq: b"e" * 200, "event")
    for _ in range(40):
        outbox.add("t/telemetry", lambda seq: b"r" * 200, "telemetry")
    kept = [(m.counter, m.seq) for m in outbox.peek(1000)]
    assert ("event", 1) in kept
    assert all(r.counter == "telemetry" for r in outbox.take_dropped())
    outbox.close()
