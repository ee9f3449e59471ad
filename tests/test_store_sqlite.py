"""The SQLite time-series store: idempotent batches, gaps, downsampling, migration (real files)."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.contract import Alarm, Mode, Telemetry
from cacao_dryer.errors import ConfigError
from gateway.stores.sqlite import FIELD_COLUMNS, SqliteStore
from gateway.timeseries import StoredReading, StoreUnavailable, missing_ranges

SITE, NODE = "coop-piura", "secador-01"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of 600 s since the epoch


def reading(seq: int, node: str = NODE, at: datetime | None = None,
            **fields: float) -> StoredReading:
    """A reading taken every 10 s from T0 unless ``at`` says otherwise."""
    return StoredReading(
        site_id=SITE, node_id=node, seq=seq,
        measured_at=at or T0 + timedelta(seconds=10 * (seq - 1)),
        fields=fields or {"air_temp_c": 40.0 + seq % 7, "air_rh_pct": 50.0},
        mode="auto", batch_id="lote-1")


def stored_count(path: Path) -> int:
    """Rows in the file, counted by SQLite itself (not through the store)."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "gateway" / "readings.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(path) as opened:
        yield opened


# --- idempotence and atomicity ---------------------------------------------------------------

def test_duplicates_are_stored_once_and_write_counts_only_new(store: SqliteStore,
                                                              path: Path) -> None:
    first = store.write([reading(1), reading(2), reading(3)])
    replay = store.write([reading(2), reading(3), reading(4)])  # a node's replay after an outage
    assert (first, replay) == (3, 1)
    assert stored_count(path) == 4


def test_duplicates_within_one_batch_are_counted_once(store: SqliteStore, path: Path) -> None:
    assert store.write([reading(1), reading(1), reading(2), reading(1)]) == 2
    assert stored_count(path) == 2


def test_the_first_write_of_a_reading_wins(store: SqliteStore) -> None:
    store.write([reading(1, air_temp_c=41.0)])
    store.write([reading(1, air_temp_c=99.0)])  # same node and seq: a duplicate, not an update
    latest = store.latest(SITE, NODE)
    assert latest is not None
    assert latest.fields == {"air_temp_c": 41.0}


def test_same_seq_of_different_nodes_are_different_readings(store: SqliteStore) -> None:
    assert store.write([reading(1, node="secador-01"), reading(1, node="secador-02")]) == 2


def test_empty_batch_writes_nothing(store: SqliteStore, path: Path) -> None:
    assert store.write([]) == 0
    assert stored_count(path) == 0


def test_batch_that_fills_the_size_limit_midway_stores_nothing(path: Path) -> None:
    with SqliteStore(path, max_bytes=256 * 1024) as store:
        store.write([reading(seq) for seq in range(1, 11)])
        # 10,000 readings need ~1.6 MB: SQLite runs out of pages part way through the batch.
        with pytest.raises(StoreUnavailable, match="SQLITE_FULL"):
            store.write([reading(seq) for seq in range(11, 10_011)])
        assert stored_count(path) == 10
        assert store.seq_ranges(SITE, NODE) == [(1, 10)]
        assert store.write([reading(11)]) == 1  # the store still takes what fits


def test_write_while_another_process_holds_the_lock_is_unavailable(path: Path) -> None:
    with SqliteStore(path, busy_timeout_s=0.05) as store:
        other = sqlite3.connect(path, isolation_level=None)  # e.g. a backup or a sqlite3 shell
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="SQLITE_BUSY") as caught:
                store.write([reading(1), reading(2)])
            assert "\n" not in str(caught.value)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert stored_count(path) == 0
        assert store.write([reading(1), reading(2)]) == 2  # the retry after the lock is gone


def test_reads_go_on_while_another_process_writes(store: SqliteStore, path: Path) -> None:
    store.write([reading(1)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM readings")  # uncommitted: readers must not see it
    try:
        latest = store.latest(SITE, NODE)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert latest is not None
    assert latest.seq == 1


def test_write_after_close_is_unavailable_and_stores_nothing(path: Path) -> None:
    store = SqliteStore(path)
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.write([reading(1)])
    with pytest.raises(StoreUnavailable, match="closed"):
        store.latest(SITE, NODE)
    assert stored_count(path) == 0


def test_close_is_idempotent(path: Path) -> None:
    store = SqliteStore(path)
    store.close()
    store.close()
    assert stored_count(path) == 0


def test_written_readings_are_in_the_file_after_reopening(path: Path) -> None:
    with SqliteStore(path) as store:
        store.write([reading(1), reading(2)])
    with SqliteStore(path) as store:
        assert store.seq_ranges(SITE, NODE) == [(1, 2)]


def test_database_uses_a_wal_journal(path: Path) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("bad, message", [
    ({"air_temp_c": 40.0, "soil_ph": 7.0}, "unknown field"),
    ({"air_temp_c": float("nan")}, "not a finite number"),
])
def test_invalid_reading_fails_the_batch_before_anything_is_written(
        store: SqliteStore, path: Path, bad: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.write([reading(1), reading(2, **bad)])
    assert stored_count(path) == 0


def test_reading_without_time_zone_is_rejected(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        store.write([reading(1, at=datetime(2026, 3, 1, 12, 0))])


def test_concurrent_writer_and_readers_see_consistent_data(store: SqliteStore) -> None:
    errors: list[BaseException] = []
    seen: list[int] = []

    def write() -> None:
        try:
            for start in range(1, 2001, 100):
                store.write([reading(seq) for seq in range(start, start + 100)])
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(50):
                latest = store.latest(SITE, NODE)
                seen.append(latest.seq if latest else 0)
                ranges = store.seq_ranges(SITE, NODE)
                seen.extend(last for _, last in ranges)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(6))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(seq % 100 == 0 for seq in seen)  # a batch is never seen half written
    assert store.seq_ranges(SITE, NODE) == [(1, 2000)]


# --- sequence ranges and gaps ----------------------------------------------------------------

def test_seq_ranges_and_gaps_of_100k_readings_written_out_of_order(store: SqliteStore) -> None:
    lost = {500, 501, 502, 40_000, 99_999} | set(range(70_000, 70_100))
    seqs = [seq for seq in range(1, 100_001) if seq not in lost]
    shuffled = random.Random(3).sample(seqs, len(seqs))
    shuffled += shuffled[:3000]  # and replays
    for start in range(0, len(shuffled), 5000):
        store.write([reading(seq) for seq in shuffled[start:start + 5000]])
    ranges = store.seq_ranges(SITE, NODE)
    assert ranges == [(1, 499), (503, 39_999), (40_001, 69_999), (70_100, 99_998),
                      (100_000, 100_000)]
    assert missing_ranges(ranges) == [(500, 502), (40_000, 40_000), (70_000, 70_099),
                                      (99_999, 99_999)]


def test_seq_ranges_are_per_node(store: SqliteStore) -> None:
    store.write([reading(1, node="secador-01"), reading(2, node="secador-01"),
                 reading(5, node="secador-02")])
    assert store.seq_ranges(SITE, "secador-01") == [(1, 2)]
    assert store.seq_ranges(SITE, "secador-02") == [(5, 5)]
    assert store.seq_ranges(SITE, "secador-99") == []


def test_replay_that_fills_a_gap_joins_the_ranges(store: SqliteStore) -> None:
    store.write([reading(seq) for seq in (*range(1, 11), *range(21, 31))])
    store.write([reading(seq) for seq in range(11, 21)])
    assert store.seq_ranges(SITE, NODE) == [(1, 30)]


def as_ranges(seqs: set[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 60), max_size=15), max_size=8))
def test_seq_ranges_match_what_was_written_whatever_the_batches(tmp_path_factory: pytest.
                                                                 TempPathFactory,
                                                                 batches: list[list[int]]
                                                                 ) -> None:
    path = tmp_path_factory.mktemp("prop") / "readings.sqlite3"
    with SqliteStore(path) as store:
        for batch in batches:
            store.write([reading(seq) for seq in batch])
        expected = as_ranges({seq for batch in batches for seq in batch})
        assert store.seq_ranges(SITE, NODE) == expected
    with sqlite3.connect(path) as db:  # rebuilt from the readings (window functions): same
        db.execute("DROP TABLE seq_runs")
    with SqliteStore(path) as store:
        assert store.seq_ranges(SITE, NODE) == expected


# --- series and downsampling -----------------------------------------------------------------

def test_series_returns_the_readings_in_the_range_oldest_first(store: SqliteStore) -> None:
    store.write([reading(seq, air_temp_c=float(seq)) for seq in range(6, 0, -1)])
    points = store.series(SITE, NODE, T0 + timedelta(seconds=10), T0 + timedelta(seconds=40),
                          ["air_temp_c"])
    assert [(p.at, p.values) for p in points] == [
        (T0 + timedelta(seconds=10), {"air_temp_c": 2.0}),  # start is included
        (T0 + timedelta(seconds=20), {"air_temp_c": 3.0}),
        (T0 + timedelta(seconds=30), {"air_temp_c": 4.0}),  # end (40 s) is not
    ]


def test_series_leaves_out_a_reading_outside_the_range_between_readings_inside(
        store: SqliteStore) -> None:
    # The node's clock jumped a day ahead for reading 3 only: it is not in the first hour.
    store.write([reading(1, air_temp_c=1.0), reading(2, air_temp_c=2.0),
                 reading(3, at=T0 + timedelta(days=1), air_temp_c=3.0),
                 reading(4, air_temp_c=4.0)])
    hour = store.series(SITE, NODE, T0, T0 + timedelta(hours=1), ["air_temp_c"])
    buckets = store.series(SITE, NODE, T0, T0 + timedelta(hours=1), ["air_temp_c"],
                           every_s=3600)
    assert [p.values["air_temp_c"] for p in hour] == [1.0, 2.0, 4.0]
    assert [p.values for p in buckets] == [{"air_temp_c": 7.0 / 3}]


def test_downsampling_averages_each_field_per_bucket(store: SqliteStore) -> None:
    # 30 minutes of readings every 10 s: seq 1..180, air temperature = seq; humidity only on
    # even seqs (a flaky sensor): its mean is over the readings that have it.
    readings = []
    for seq in range(1, 181):
        fields = {"air_temp_c": float(seq)}
        if seq % 2 == 0:
            fields["air_rh_pct"] = 50.0 + seq
        readings.append(reading(seq, **fields))
    store.write(readings)
    points = store.series(SITE, NODE, T0, T0 + timedelta(minutes=30),
                          ["air_temp_c", "air_rh_pct"], every_s=600)
    assert [p.at for p in points] == [T0 + timedelta(minutes=m) for m in (0, 10, 20)]
    assert [p.values["air_temp_c"] for p in points] == [30.5, 90.5, 150.5]  # means of 1..60 ...
    assert [p.values["air_rh_pct"] for p in points] == [81.0, 141.0, 201.0]  # 50 + mean(2..60)


def test_downsampling_buckets_are_aligned_to_the_epoch_not_to_start(store: SqliteStore) -> None:
    store.write([reading(seq, air_temp_c=float(seq)) for seq in range(1, 121)])  # 20 minutes
    start = T0 + timedelta(minutes=5)
    points = store.series(SITE, NODE, start, T0 + timedelta(minutes=20), ["air_temp_c"],
                          every_s=600)
    # First bucket 12:00-12:10 holds only what is after start (12:05 = seq 31..60).
    assert [(p.at, p.values) for p in points] == [
        (T0, {"air_temp_c": 45.5}), (T0 + timedelta(minutes=10), {"air_temp_c": 90.5})]


def test_series_leaves_out_missing_values_and_empty_points(store: SqliteStore) -> None:
    store.write([reading(1, air_temp_c=40.0, air_rh_pct=50.0), reading(2, air_rh_pct=51.0),
                 reading(3, air_temp_c=42.0)])
    points = store.series(SITE, NODE, T0, T0 + timedelta(hours=1), ["air_temp_c"])
    assert [p.values for p in points] == [{"air_temp_c": 40.0}, {"air_temp_c": 42.0}]


def test_series_of_a_node_without_readings_is_empty(store: SqliteStore) -> None:
    store.write([reading(1)])
    assert store.series(SITE, "secador-99", T0, T0 + timedelta(days=1), ["air_temp_c"],
                        every_s=60) == []


@pytest.mark.parametrize("field", ["soil_ph", 'air_temp_c" FROM readings; --', "seq",
                                   "site_id"])
def test_series_rejects_an_unknown_field(store: SqliteStore, field: str) -> None:
    with pytest.raises(ValueError, match="unknown field") as caught:
        store.series(SITE, NODE, T0, T0 + timedelta(hours=1), ["air_temp_c", field])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("every_s", [0, -600, float("nan"), float("inf"), 1e-9])
def test_series_rejects_a_bucket_width_that_is_not_positive(store: SqliteStore,
                                                            every_s: float) -> None:
    with pytest.raises(ValueError, match="every_s"):
        store.series(SITE, NODE, T0, T0 + timedelta(hours=1), ["air_temp_c"], every_s=every_s)


def test_series_needs_a_time_zone(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        store.series(SITE, NODE, datetime(2026, 3, 1), T0, ["air_temp_c"])


def test_series_accepts_every_field_of_the_measurement_table(store: SqliteStore) -> None:
    store.write([reading(1, **{name: 1.0 for name in FIELD_COLUMNS})])
    points = store.series(SITE, NODE, T0, T0 + timedelta(minutes=1), FIELD_COLUMNS)
    assert points[0].values == {name: 1.0 for name in FIELD_COLUMNS}


# --- latest and round trip -------------------------------------------------------------------

def test_latest_is_the_reading_with_the_highest_seq(store: SqliteStore) -> None:
    # The node's clock was set back between readings 2 and 3: seq still says which is newer.
    store.write([reading(3, at=T0, air_temp_c=43.0), reading(1, air_temp_c=41.0),
                 reading(2, at=T0 + timedelta(hours=1), air_temp_c=42.0)])
    latest = store.latest(SITE, NODE)
    assert latest is not None
    assert (latest.seq, latest.fields["air_temp_c"]) == (3, 43.0)


def test_latest_of_an_unknown_node_is_none(store: SqliteStore) -> None:
    store.write([reading(1)])
    assert store.latest(SITE, "secador-99") is None


def test_latest_many_answers_for_every_dryer_at_once(store: SqliteStore) -> None:
    store.write([reading(1, node="secador-01"), reading(2, node="secador-01"),
                 reading(7, node="secador-02")])
    found = store.latest_many([(SITE, "secador-01"), (SITE, "secador-02"),
                               (SITE, "secador-99")])
    assert {key: r.seq for key, r in found.items()} == {(SITE, "secador-01"): 2,
                                                         (SITE, "secador-02"): 7}
    assert found[(SITE, "secador-02")] == store.latest(SITE, "secador-02")
    assert store.latest_many([]) == {}


def test_telemetry_round_trips_through_the_store(store: SqliteStore) -> None:
    peru = timezone(timedelta(hours=-5))
    message = Telemetry(
        site_id=SITE, node_id=NODE, seq=8641,
        measured_at=datetime(2026, 3, 2, 9, 15, 30, 123456, tzinfo=peru),
        readings={"air_temp_c": 52.3, "air_rh_pct": 38.1, "bean_moisture_pct_wb": 21.7,
                  "tray_mass_kg": 4.125},  # ambient sensor and probe voltage missing
        sensor_faults={"ambient": "no answer"}, raining=False, fan_speed_pct=60.0,
        vent_open_pct=35.5, mode=Mode.MANUAL,
        alarms=[Alarm.AIR_TEMP_WARNING, Alarm.DRYING_TOO_FAST], config_version=3,
        batch_id="lote-secador-01-202603011500")
    written = StoredReading.from_telemetry(message)
    store.write([written])
    assert store.latest(SITE, NODE) == written


@pytest.mark.parametrize("raining", [True, False, None])
def test_rain_state_keeps_true_false_and_unknown(store: SqliteStore,
                                                 raining: bool | None) -> None:
    base = reading(1)
    store.write([StoredReading(SITE, NODE, 1, base.measured_at, base.fields, raining=raining)])
    latest = store.latest(SITE, NODE)
    assert latest is not None
    assert latest.raining is raining


# --- schema and migration --------------------------------------------------------------------

# The readings table as a gateway wrote it before ``tray_mass_kg`` was measured, with no
# seq_runs table yet: what an older installation has on disk.
OLD_SCHEMA = """
CREATE TABLE readings (
    site_id TEXT NOT NULL, node_id TEXT NOT NULL, seq INTEGER NOT NULL,
    measured_at_us INTEGER NOT NULL, raining INTEGER CHECK (raining IN (0, 1)),
    mode TEXT NOT NULL, alarms TEXT NOT NULL DEFAULT '', batch_id TEXT,
    air_temp_c REAL, air_rh_pct REAL, ambient_temp_c REAL, ambient_rh_pct REAL,
    bean_moisture_pct_wb REAL, moisture_probe_v REAL,
    fan_speed_pct REAL, vent_open_pct REAL, config_version REAL,
    PRIMARY KEY (site_id, node_id, seq)
) WITHOUT ROWID;
INSERT INTO readings (site_id, node_id, seq, measured_at_us, mode, air_temp_c) VALUES
    ('coop-piura', 'secador-01', 1, 1772366400000000, 'auto', 40.5),
    ('coop-piura', 'secador-01', 2, 1772366410000000, 'auto', 40.7),
    ('coop-piura', 'secador-01', 4, 1772366430000000, 'auto', 40.9);
PRAGMA user_version = 1;
"""


def old_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)


def test_a_new_measurement_gets_its_column_when_an_old_database_is_opened(path: Path) -> None:
    old_database(path)
    with SqliteStore(path) as store:
        assert store.write([reading(5, tray_mass_kg=4.5, air_temp_c=41.0)]) == 1
        points = store.series(SITE, NODE, T0, T0 + timedelta(minutes=1),
                              ["air_temp_c", "tray_mass_kg"])
    old, new = points[0], points[-1]
    assert old.values == {"air_temp_c": 40.5}  # measured before the column existed: missing
    assert new.values == {"air_temp_c": 41.0, "tray_mass_kg": 4.5}
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(readings)")]
    assert "tray_mass_kg" in columns


def test_sequence_ranges_of_an_old_database_are_rebuilt_on_opening(path: Path) -> None:
    old_database(path)
    with SqliteStore(path) as store:
        assert store.seq_ranges(SITE, NODE) == [(1, 2), (4, 4)]
        store.write([reading(3)])
        assert store.seq_ranges(SITE, NODE) == [(1, 4)]


def test_a_database_from_a_newer_gateway_is_refused(path: Path) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(ConfigError, match="newer gateway"):
        SqliteStore(path)


def test_a_file_that_is_not_a_database_is_refused_with_one_line(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"these are not the readings you are looking for\n" * 100)
    with pytest.raises(ConfigError, match="not a usable database") as caught:
        SqliteStore(path)
    assert "\n" not in str(caught.value)


def test_ping_reads_the_file_and_says_why_not_once_closed(store: SqliteStore) -> None:
    store.ping()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.ping()
