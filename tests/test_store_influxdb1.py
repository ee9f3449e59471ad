"""The InfluxDB 1.x time-series store against a real, private influxd (Debian's 1.6.7)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from support import wait_for
from support.influxd import InfluxDaemon, WalErrorProxy
from support.mosquitto import free_port
from support.readings import NODE, SITE, T0, reading, readings

from gateway.stores.influx_common import LATEST_LOOKBACK_NS
from gateway.stores.influxdb1 import MAX_LINES_PER_REQUEST, InfluxDB1Store
from gateway.timeseries import StoredReading, StoreRejected, StoreUnavailable, missing_ranges

pytestmark = pytest.mark.integration

DB = "cacao"



@pytest.fixture
def store(influxd: InfluxDaemon) -> Iterator[InfluxDB1Store]:
    with InfluxDB1Store(influxd.url, DB, timeout_s=5) as opened:
        yield opened


@pytest.fixture
def flushing_influxd(tmp_path: Path) -> Iterator[InfluxDaemon]:
    """A private influxd that moves written points from its in-memory cache into TSM files
    (blocks of up to 1,000 values, which EXPLAIN ANALYZE counts) once 256 kB are cached,
    instead of at 25 MB or after 10 idle minutes: a history lies where a long-running
    server keeps it."""
    server = InfluxDaemon(tmp_path / "influxd")
    config, changed = re.subn(r"(?m)^(\s*cache-snapshot-memory-size) = \d+$", r"\1 = 262144",
                              server.config_file.read_text())
    assert changed == 1, "influxd's config has no cache-snapshot-memory-size to lower"
    server.config_file.write_text(config)
    server.start()
    yield server
    server.kill()


def blocks_decoded(influxd: InfluxDaemon, statement: str) -> int:
    """TSM blocks InfluxDB decodes to answer an InfluxQL statement (EXPLAIN ANALYZE)."""
    answer = influxd.query(f"EXPLAIN ANALYZE {statement}", DB)
    plan = [row[0] for row in answer["results"][0]["series"][0]["values"]]
    return sum(int(found[1]) for line in plan
               if (found := re.search(r"_blocks_decoded: (\d+)", line)))


def record_statements(store: InfluxDB1Store) -> list[str]:
    """The InfluxQL statements the store sends from now on, as seen on the wire."""
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path == "/query":
            sent.extend(parse_qs(request.content.decode())["q"][0].split(";\n"))

    store._client.event_hooks = {"request": [record]}
    return sent


def stored_points(influxd: InfluxDaemon, node: str = NODE) -> list[tuple[int, int]]:
    """(time ns, seq) of every point of a node, read straight from influxd."""
    answer = influxd.query(f"SELECT seq FROM dryer_reading WHERE node = '{node}'", DB)
    series = answer["results"][0].get("series", [])
    return [(time, seq) for time, seq in series[0]["values"]] if series else []


# --- writing exactly once -----------------------------------------------------------------

def test_a_new_batch_is_stored_and_counted_as_new(store: InfluxDB1Store,
                                                  influxd: InfluxDaemon) -> None:
    assert store.write(readings(range(1, 101))) == 100
    assert sorted(seq for _, seq in stored_points(influxd)) == list(range(1, 101))


def test_writing_the_same_readings_again_stores_each_once(store: InfluxDB1Store,
                                                          influxd: InfluxDaemon) -> None:
    batch = readings(range(1, 51))
    store.write(batch)
    assert store.write(batch) == 0
    assert len(stored_points(influxd)) == 50


def test_a_replay_overlapping_stored_readings_counts_only_the_new_ones(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    store.write(readings(range(1, 21)))
    assert store.write(readings(range(11, 31))) == 10
    assert len(stored_points(influxd)) == 30


def test_without_counting_duplicates_a_replay_is_still_stored_once(
        influxd: InfluxDaemon) -> None:
    """count_duplicates=false (the fast ingest option) skips the "which are stored already"
    query: every reading is reported new, but InfluxDB still holds each seq once."""
    with InfluxDB1Store(influxd.url, DB, timeout_s=5, count_duplicates=False) as fast:
        assert fast.write(readings(range(1, 21))) == 20
        assert fast.write(readings(range(11, 31))) == 20  # 10 of them replays, not counted
        assert fast.write([reading(40), reading(40)]) == 1
    assert sorted(seq for _, seq in stored_points(influxd)) == [*range(1, 31), 40]


def test_a_reading_twice_in_one_batch_is_stored_and_counted_once(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    assert store.write([reading(5), reading(6), reading(5)]) == 2
    assert len(stored_points(influxd)) == 2


def test_readings_with_the_same_clock_time_are_two_points(store: InfluxDB1Store,
                                                          influxd: InfluxDaemon) -> None:
    """A node whose clock stepped back takes two readings at the same instant: InfluxDB would
    overwrite one point with the other if they shared a timestamp."""
    same_moment = T0 + timedelta(hours=1)
    assert store.write([reading(41, same_moment), reading(42, same_moment)]) == 2
    assert sorted(seq for _, seq in stored_points(influxd)) == [41, 42]
    assert store.seq_ranges(SITE, NODE) == [(41, 42)]


def test_readings_of_different_nodes_at_the_same_time_are_separate_points(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    assert store.write([reading(1, T0, node="secador-01"), reading(1, T0, node="secador-02")]) == 2
    assert len(stored_points(influxd, "secador-01")) == 1
    assert len(stored_points(influxd, "secador-02")) == 1


def test_a_replay_spanning_weeks_counts_its_new_readings(store: InfluxDB1Store,
                                                         influxd: InfluxDaemon) -> None:
    old = [reading(seq, T0 - timedelta(days=30) + timedelta(seconds=seq)) for seq in (1, 2, 3)]
    new = [reading(seq, T0 + timedelta(seconds=seq)) for seq in (4, 5)]
    store.write([old[0], *new])
    assert store.write([*old, *new]) == 2
    assert len(stored_points(influxd)) == 5


def test_a_batch_larger_than_one_request_is_stored_whole(store: InfluxDB1Store,
                                                         influxd: InfluxDaemon) -> None:
    count = MAX_LINES_PER_REQUEST + 7
    assert store.write(readings(range(1, count + 1))) == count
    assert store.seq_ranges(SITE, NODE) == [(1, count)]


def test_the_database_is_created_on_first_use_with_its_retention(influxd: InfluxDaemon) -> None:
    with InfluxDB1Store(influxd.url, "dryers-2026", retention="52w") as store:
        store.write(readings(range(1, 3)))
    policies = influxd.query('SHOW RETENTION POLICIES ON "dryers-2026"')
    assert policies["results"][0]["series"][0]["values"][0][1] == "8736h0m0s"


def test_a_database_dropped_while_running_is_created_again(store: InfluxDB1Store,
                                                           influxd: InfluxDaemon) -> None:
    store.write(readings(range(1, 3)))
    influxd.query(f"DROP DATABASE {DB}")
    assert store.write(readings(range(3, 5))) == 2
    assert sorted(seq for _, seq in stored_points(influxd)) == [3, 4]


def test_readings_older_than_the_retention_period_are_dropped_not_refused(
        influxd: InfluxDaemon) -> None:
    recent = datetime.now(UTC)
    with InfluxDB1Store(influxd.url, DB, retention="1h") as store:
        written = store.write([reading(1, recent - timedelta(days=2)), reading(2, recent)])
    assert written == 1
    assert [seq for _, seq in stored_points(influxd)] == [2]


# --- failures -----------------------------------------------------------------------------

def test_a_stopped_influxd_makes_writes_unavailable_until_it_is_back(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    store.write(readings(range(1, 11)))
    influxd.stop()
    with pytest.raises(StoreUnavailable, match="cannot"):
        store.write(readings(range(11, 21)))
    influxd.start()
    assert store.write(readings(range(11, 21))) == 10
    assert store.seq_ranges(SITE, NODE) == [(1, 20)]


def test_a_hung_influxd_times_out_as_unavailable(influxd: InfluxDaemon) -> None:
    with InfluxDB1Store(influxd.url, DB, timeout_s=0.3) as store:
        store.write(readings(range(1, 3)))
        influxd.pause()
        try:
            with pytest.raises(StoreUnavailable, match="timed out"):
                store.write(readings(range(3, 5)))
        finally:
            influxd.resume()
        assert store.write(readings(range(3, 5))) == 2


def test_nothing_is_contacted_until_the_store_is_used() -> None:
    store = InfluxDB1Store(f"http://127.0.0.1:{free_port()}", DB, timeout_s=1)
    with pytest.raises(StoreUnavailable):
        store.write(readings(range(1, 2)))
    store.close()


def test_a_500_after_storing_is_unavailable_and_the_retry_counts_the_batch_as_new(
        influxd: InfluxDaemon) -> None:
    """influxd 1.6 answers '500 engine: error syncing wal' under load, often having stored
    the points: the caller is told nothing was stored, retries, and must get every reading
    stored once and counted as new once."""
    with WalErrorProxy(influxd) as proxy, InfluxDB1Store(proxy.url, DB) as store:
        store.write(readings(range(1, 6)))
        proxy.fail_writes(1)
        with pytest.raises(StoreUnavailable, match="500: engine: error syncing wal"):
            store.write(readings(range(6, 11)))
        assert len(stored_points(influxd)) == 10  # stored despite the 500
        assert store.write(readings(range(6, 11))) == 5
        assert store.write(readings(range(6, 11))) == 0
    assert len(stored_points(influxd)) == 10


def test_wrong_credentials_are_rejected_not_retried(tmp_path: Path) -> None:
    with InfluxDaemon(tmp_path / "influxd", auth_enabled=True) as influxd:
        influxd.create_admin("admin", "s3cret")
        with InfluxDB1Store(influxd.url, DB, "admin", "wrong") as store, \
                pytest.raises(StoreRejected, match="401"):
            store.write(readings(range(1, 3)))
        with InfluxDB1Store(influxd.url, DB, "admin", "s3cret") as store:
            assert store.write(readings(range(1, 3))) == 2


def test_a_user_without_privileges_on_the_database_is_rejected(tmp_path: Path) -> None:
    with InfluxDaemon(tmp_path / "influxd", auth_enabled=True) as influxd:
        influxd.create_admin("admin", "s3cret")
        influxd.query(f"CREATE DATABASE {DB}", auth=("admin", "s3cret"))
        influxd.query("CREATE USER gateway WITH PASSWORD 'pw'", auth=("admin", "s3cret"))
        influxd.query(f"GRANT READ ON {DB} TO gateway", auth=("admin", "s3cret"))
        with InfluxDB1Store(influxd.url, DB, "gateway", "pw") as store, \
                pytest.raises(StoreRejected, match="not authorized to write"):
            store.write(readings(range(1, 3)))


def test_a_field_stored_with_another_type_is_rejected(store: InfluxDB1Store,
                                                      influxd: InfluxDaemon) -> None:
    """InfluxDB fixes a field's type per shard (a week): a string in the same week clashes."""
    influxd.query(f"CREATE DATABASE {DB}")
    at_ns = int(T0.timestamp()) * 10**9
    httpx.post(f"{influxd.url}/write", params={"db": DB},
               content=f'dryer_reading,node={NODE},site={SITE} air_temp_c="hot" {at_ns}')
    with pytest.raises(StoreRejected, match="field type conflict"):
        store.write(readings(range(1, 3)))


def test_unknown_fields_are_refused_before_anything_is_written(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    with pytest.raises(ValueError, match="unknown field"):
        store.write([reading(1), reading(2, wind_speed_m_s=3.0)])
    assert stored_points(influxd) == []


def test_a_closed_store_is_unavailable(store: InfluxDB1Store) -> None:
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.write(readings(range(1, 2)))


# --- reading back -------------------------------------------------------------------------

def test_seq_ranges_show_the_gaps(store: InfluxDB1Store) -> None:
    store.write(readings([*range(1, 11), *range(14, 21), 22]))
    ranges = store.seq_ranges(SITE, NODE)
    assert ranges == [(1, 10), (14, 20), (22, 22)]
    assert missing_ranges(ranges) == [(11, 13), (21, 21)]


def test_seq_ranges_of_a_node_without_readings_are_empty(store: InfluxDB1Store) -> None:
    store.write(readings(range(1, 3), node="secador-02"))
    assert store.seq_ranges(SITE, NODE) == []


def test_seq_ranges_span_days_replays_and_a_clock_reset_to_1970(store: InfluxDB1Store) -> None:
    every_10_min = [reading(seq, T0 + timedelta(minutes=10 * seq))
                    for seq in range(1, 1001) if not 500 <= seq <= 520]  # ~7 days, one gap
    replayed_late = [reading(seq, T0 + timedelta(days=20, seconds=seq)) for seq in (505, 506)]
    clock_reset = [reading(seq, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seq))
                   for seq in range(1001, 1004)]
    store.write([*every_10_min, *replayed_late, *clock_reset])
    assert store.seq_ranges(SITE, NODE) == [(1, 499), (505, 506), (521, 1003)]


def test_a_seq_reused_at_another_time_does_not_hide_a_gap(store: InfluxDB1Store) -> None:
    """Seq 7 twice (a node bug) and seq 4 lost: as many points as numbers from 1 to 10."""
    store.write([*readings([1, 2, 3, 5, 6, 7, 8, 9, 10]),
                 reading(7, T0 + timedelta(hours=2))])
    assert store.seq_ranges(SITE, NODE) == [(1, 3), (5, 10)]


def test_node_ids_are_never_read_as_influxql(store: InfluxDB1Store) -> None:
    store.write(readings(range(1, 4)))
    assert store.seq_ranges(SITE, f"{NODE}' OR node =~ /.*/ OR node = '") == []
    assert store.latest(SITE, "x\\' OR '1'='1") is None


def test_tag_values_with_spaces_commas_and_equals_signs_round_trip(
        store: InfluxDB1Store, influxd: InfluxDaemon) -> None:
    site, node = "coop norte, valle=alto", "secador 1,a=b"
    store.write([reading(1, site=site, node=node)])
    assert store.latest(site, node) == reading(1, site=site, node=node)
    tags = influxd.query('SHOW TAG VALUES FROM dryer_reading WITH KEY IN ("site", "node")', DB)
    assert sorted(value for _, value in tags["results"][0]["series"][0]["values"]) == [
        site, node]


def test_latest_returns_the_whole_reading(store: InfluxDB1Store) -> None:
    full = StoredReading(
        site_id=SITE, node_id=NODE, seq=7, measured_at=T0 + timedelta(microseconds=123457),
        fields={"air_temp_c": 51.25, "bean_moisture_pct_wb": 31.5, "fan_speed_pct": 100.0,
                "config_version": 4.0},
        raining=True, mode="manual", alarms=("air_temp_alarm", "rain"), batch_id="lot-7")
    store.write([reading(6), full])
    assert store.latest(SITE, NODE) == full


def test_latest_keeps_unknown_rain_state_and_empty_alarms(store: InfluxDB1Store) -> None:
    plain = StoredReading(site_id=SITE, node_id=NODE, seq=1, measured_at=T0,
                          fields={"air_temp_c": 30.0}, raining=None, mode="auto")
    store.write([plain])
    assert store.latest(SITE, NODE) == plain


def test_latest_is_the_highest_seq_even_when_its_clock_is_behind(
        store: InfluxDB1Store) -> None:
    store.write([reading(1, T0), reading(2, T0 + timedelta(hours=1)),
                 reading(3, datetime(2000, 1, 1, tzinfo=UTC))])
    latest = store.latest(SITE, NODE)
    assert latest is not None and latest.seq == 3


def test_latest_of_an_unknown_node_is_none(store: InfluxDB1Store) -> None:
    assert store.latest(SITE, NODE) is None


def test_latest_many_answers_for_every_dryer_at_once(store: InfluxDB1Store) -> None:
    store.write([reading(1, T0, node="secador-01"), reading(2, T0, node="secador-01"),
                 reading(7, T0, node="secador-02")])
    found = store.latest_many([(SITE, "secador-01"), (SITE, "secador-02"),
                               (SITE, "secador-99")])
    assert {key: r.seq for key, r in found.items()} == {(SITE, "secador-01"): 2,
                                                         (SITE, "secador-02"): 7}
    assert found[(SITE, "secador-02")] == store.latest(SITE, "secador-02")
    assert store.latest_many([]) == {}


def test_latest_many_asks_in_a_few_requests_for_more_nodes_than_one_request_holds(
        store: InfluxDB1Store) -> None:
    nodes = [f"secador-{index:03d}" for index in range(150)]  # 300 statements for step 1
    now = datetime.now(UTC)
    store.write([reading(index + 1, now, node=node) for index, node in enumerate(nodes)])
    sent = record_statements(store)
    found = store.latest_many([(SITE, node) for node in nodes])
    assert {key[1]: found_reading.seq for key, found_reading in found.items()} == {
        node: index + 1 for index, node in enumerate(nodes)}
    assert len(sent) == 150 * 4  # newest + clock lost, the look-back, the reading


def test_latest_of_200k_readings_of_history_reads_only_the_newest_blocks(
        flushing_influxd: InfluxDaemon) -> None:
    """Months of history (200,000 readings, one a minute for 139 days) and three newer
    readings: latest and latest_many find the newest, and InfluxDB decodes a handful of
    blocks for it, not the ~200 blocks per field of the history."""
    influxd, now = flushing_influxd, datetime.now(UTC)
    history_end = now - timedelta(hours=2)
    with InfluxDB1Store(influxd.url, DB, count_duplicates=False) as writer:
        for first in range(1, 200_001, 50_000):
            writer.write([reading(seq, history_end - timedelta(minutes=200_000 - seq))
                          for seq in range(first, first + 50_000)])
        newer = [reading(200_000 + index, now - timedelta(minutes=40 - 10 * index))
                 for index in (1, 2, 3)]
        writer.write([*newer, reading(5, now - timedelta(days=1), node="secador-02")])
    full_scan = f"SELECT max(seq) FROM dryer_reading WHERE node = '{NODE}'"
    wait_for(lambda: blocks_decoded(influxd, full_scan) >= 200, 60,
             "the history to be in TSM files")
    with InfluxDB1Store(influxd.url, DB) as store:
        sent = record_statements(store)
        assert store.latest(SITE, NODE) == newer[-1]
        assert sum(blocks_decoded(influxd, statement) for statement in sent
                   if statement.startswith("SELECT")) <= 40
        found = store.latest_many([(SITE, NODE), (SITE, "secador-02"), (SITE, "secador-99")])
    assert found == {(SITE, NODE): newer[-1],
                     (SITE, "secador-02"): reading(5, now - timedelta(days=1),
                                                   node="secador-02")}


def test_latest_after_a_clock_that_ran_ahead_is_the_corrected_reading(
        store: InfluxDB1Store) -> None:
    """Readings stamped 8 h ahead stay the newest-stamped points for hours after the
    clock is corrected: the newer readings have the higher seq."""
    now = datetime.now(UTC)
    store.write([reading(seq, now + timedelta(hours=8, seconds=10 * seq)) for seq in (1, 2, 3)])
    store.write([reading(seq, now - timedelta(seconds=100 - seq)) for seq in (4, 5)])
    assert store.latest(SITE, NODE) == reading(5, now - timedelta(seconds=95))


def test_latest_of_a_clock_still_ahead_is_its_newest_future_reading(
        store: InfluxDB1Store) -> None:
    now = datetime.now(UTC)
    store.write([reading(seq, now - timedelta(minutes=10 - seq)) for seq in (1, 2)])
    store.write([reading(seq, now + timedelta(days=400, minutes=seq)) for seq in (3, 4)])
    store.write([reading(seq, now + timedelta(days=3, minutes=seq), node="secador-02")
                 for seq in (7, 8)])
    found = store.latest_many([(SITE, NODE), (SITE, "secador-02")])
    assert {key[1]: r.seq for key, r in found.items()} == {NODE: 4, "secador-02": 8}


def test_latest_after_a_restart_at_the_time_fake_hwclock_saved_is_the_new_reading(
        store: InfluxDB1Store) -> None:
    """A Pi without a real-time clock restarts at the time saved up to an hour earlier:
    its new readings are stamped before its last ones."""
    now = datetime.now(UTC)
    store.write([reading(seq, now - timedelta(minutes=60 - seq)) for seq in range(1, 51)])
    store.write([reading(seq, now - timedelta(minutes=55 - seq)) for seq in (51, 52)])
    assert store.latest(SITE, NODE) == reading(52, now - timedelta(minutes=3))


def test_latest_of_a_node_whose_clock_lost_the_time_is_its_newest_reading(
        store: InfluxDB1Store) -> None:
    now = datetime.now(UTC)
    store.write([reading(seq, now - timedelta(minutes=60 - seq)) for seq in range(1, 51)])
    store.write([reading(seq, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=2, seconds=seq))
                 for seq in (51, 52)])
    latest = store.latest(SITE, NODE)
    assert latest is not None and latest.seq == 52


def test_latest_of_a_node_silent_for_weeks_is_its_last_reading(store: InfluxDB1Store) -> None:
    weeks_ago = datetime.now(UTC) - timedelta(weeks=5)
    store.write([reading(seq, weeks_ago - timedelta(minutes=30 - seq)) for seq in (1, 2, 3)])
    assert store.latest(SITE, NODE) == reading(3, weeks_ago - timedelta(minutes=27))


def test_a_clock_stepped_back_more_than_the_look_back_shows_the_reading_before_the_step(
        store: InfluxDB1Store) -> None:
    """The documented limit of a bounded look-up: a node set to a time more than 6 h
    earlier (after 2020) is shown with its last reading from before the step until its
    clock passes that reading again. The SQLite store would answer seq 3."""
    now = datetime.now(UTC)
    newest_on_time = reading(2, now - timedelta(minutes=10))
    stepped_back = reading(3, newest_on_time.measured_at - timedelta(
        microseconds=LATEST_LOOKBACK_NS // 1000, minutes=1))
    store.write([reading(1, now - timedelta(minutes=20)), newest_on_time, stepped_back])
    assert store.latest(SITE, NODE) == newest_on_time


def test_raw_series_is_every_reading_in_the_half_open_range(store: InfluxDB1Store) -> None:
    store.write(readings(range(1, 11)))  # one reading every 30 s from T0 + 30 s
    points = store.series(SITE, NODE, T0 + timedelta(seconds=60), T0 + timedelta(seconds=150),
                          ["air_temp_c"])
    assert [(p.at, p.values) for p in points] == [
        (T0 + timedelta(seconds=30 * seq), {"air_temp_c": 40.0 + seq}) for seq in (2, 3, 4)]


def test_downsampled_series_averages_each_epoch_aligned_bucket(store: InfluxDB1Store) -> None:
    store.write([reading(seq, T0 + timedelta(seconds=20 * seq), air_temp_c=float(seq),
                         air_rh_pct=2.0 * seq) for seq in range(1, 31)])  # 20 s apart
    points = store.series(SITE, NODE, T0, T0 + timedelta(hours=1),
                          ["air_temp_c", "air_rh_pct"], every_s=120)
    expected = []
    for bucket in range(5):  # readings 20..600 s after T0: 6 per 120 s bucket
        seqs = [s for s in range(1, 31) if bucket * 120 <= 20 * s < (bucket + 1) * 120]
        mean = sum(seqs) / len(seqs)
        expected.append((T0 + timedelta(seconds=120 * bucket),
                         {"air_temp_c": mean, "air_rh_pct": 2 * mean}))
    expected.append((T0 + timedelta(seconds=600), {"air_temp_c": 30.0, "air_rh_pct": 60.0}))
    assert [(p.at, p.values) for p in points] == expected


def test_series_leaves_out_fields_a_reading_lacks(store: InfluxDB1Store) -> None:
    store.write([reading(1, T0, air_temp_c=30.0),
                 reading(2, T0 + timedelta(seconds=1), air_temp_c=31.0, tray_mass_kg=4.5)])
    points = store.series(SITE, NODE, T0, T0 + timedelta(minutes=1),
                          ["air_temp_c", "tray_mass_kg"])
    assert [p.values for p in points] == [{"air_temp_c": 30.0},
                                          {"air_temp_c": 31.0, "tray_mass_kg": 4.5}]


@pytest.mark.parametrize("fields", [['air_temp_c" FROM x; DROP DATABASE cacao; --'],
                                    ["seq"], [], "air_temp_c"])
def test_series_accepts_only_known_numeric_fields(store: InfluxDB1Store,
                                                  fields: list[str]) -> None:
    with pytest.raises(ValueError, match="field"):
        store.series(SITE, NODE, T0, T0 + timedelta(hours=1), fields)
