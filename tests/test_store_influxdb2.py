"""The InfluxDB 2.x store, at the HTTP level, against our stand-in InfluxDB 2.x server.

No InfluxDB 2.x can be installed on our machines, so ``tests/support/influx2_server.py``
plays it: it checks the token, org, bucket, precision and content type of every request,
parses the line protocol strictly, keeps points with InfluxDB's overwrite rule and answers
the store's few Flux statement shapes with annotated CSV. These tests verify what the store
sends and how it reads the answers; they cannot verify a real server's Flux.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support.influx2_server import STATEMENT, Influx2TestServer, LineProtocolError, parse_line
from support.mosquitto import free_port
from support.readings import NODE, SITE, T0, reading, readings

from gateway.config import parse_gateway_config
from gateway.service import open_store
from gateway.stores.influx_common import LATEST_LOOKBACK_NS
from gateway.stores.influxdb2 import InfluxDB2Store, flux_string, parse_annotated_csv
from gateway.stores.line_protocol import point_time_ns
from gateway.timeseries import StoredReading, StoreRejected, StoreUnavailable, missing_ranges

ORG, BUCKET, TOKEN = "coop-norte", "cacao", "s3cret-token"



@pytest.fixture
def server() -> Iterator[Influx2TestServer]:
    with Influx2TestServer(org=ORG, bucket=BUCKET, token=TOKEN) as running:
        yield running


@pytest.fixture
def store(server: Influx2TestServer) -> Iterator[InfluxDB2Store]:
    with InfluxDB2Store(server.url, ORG, BUCKET, TOKEN, timeout_s=5) as opened:
        yield opened


# --- what the client sends ----------------------------------------------------------------

def test_writes_carry_the_token_org_bucket_and_nanosecond_precision(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    store.write(readings(range(1, 3)))
    (write,) = server.writes()
    assert write.headers["authorization"] == f"Token {TOKEN}"
    assert write.params == {"org": ORG, "bucket": BUCKET, "precision": "ns"}
    assert write.headers["content-type"].startswith("text/plain")
    assert [parse_line(line)[3] for line in write.body.decode().split("\n")] == [
        int((T0 + timedelta(seconds=30 * seq)).timestamp()) * 10**9 + seq for seq in (1, 2)]


def test_queries_carry_the_token_org_and_ask_for_annotated_csv(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    store.latest(SITE, NODE)
    query = server.queries()[0]
    body = json.loads(query.body)
    assert query.headers["authorization"] == f"Token {TOKEN}"
    assert query.params == {"org": ORG}
    assert body["type"] == "flux"
    assert sorted(body["dialect"]["annotations"]) == ["datatype", "default", "group"]


def test_a_wrong_org_is_rejected(server: Influx2TestServer) -> None:
    with InfluxDB2Store(server.url, "other-org", BUCKET, TOKEN) as store, \
            pytest.raises(StoreRejected, match=r"404.*organization"):
        store.write(readings(range(1, 2)))


def test_a_missing_bucket_is_rejected_not_retried(server: Influx2TestServer) -> None:
    with InfluxDB2Store(server.url, ORG, "no-such-bucket", TOKEN) as store, \
            pytest.raises(StoreRejected, match=r"404.*bucket"):
        store.write(readings(range(1, 2)))


# --- writing exactly once -----------------------------------------------------------------

def test_a_new_batch_is_stored_and_counted_as_new(store: InfluxDB2Store,
                                                  server: Influx2TestServer) -> None:
    assert store.write(readings(range(1, 101))) == 100
    assert server.seqs(NODE) == list(range(1, 101))


def test_writing_the_same_readings_again_stores_each_once(store: InfluxDB2Store,
                                                          server: Influx2TestServer) -> None:
    batch = readings(range(1, 51))
    assert store.write(batch) == 50
    assert store.write(batch) == 0
    assert server.seqs(NODE) == list(range(1, 51))


def test_a_replay_overlapping_stored_readings_counts_only_the_new_ones(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    store.write(readings(range(1, 21)))
    assert store.write(readings(range(11, 31))) == 10
    assert server.seqs(NODE) == list(range(1, 31))


def test_readings_with_the_same_microsecond_are_two_points(store: InfluxDB2Store,
                                                          server: Influx2TestServer) -> None:
    same_moment = T0 + timedelta(hours=1, microseconds=7)
    assert store.write([reading(41, same_moment), reading(42, same_moment)]) == 2
    assert server.seqs(NODE) == [41, 42]
    assert store.seq_ranges(SITE, NODE) == [(41, 42)]


def test_a_replay_spanning_weeks_counts_its_new_readings(store: InfluxDB2Store,
                                                         server: Influx2TestServer) -> None:
    old = [reading(seq, T0 - timedelta(days=30) + timedelta(seconds=seq)) for seq in (1, 2, 3)]
    new = [reading(seq, T0 + timedelta(seconds=seq)) for seq in (4, 5)]
    store.write([old[0], *new])
    assert store.write([*old, *new]) == 2
    assert server.seqs(NODE) == [1, 2, 3, 4, 5]


def test_unknown_fields_are_refused_before_anything_is_sent(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    with pytest.raises(ValueError, match="unknown field"):
        store.write([reading(1), reading(2, wind_speed_m_s=3.0)])
    assert server.requests == []


# --- failures -----------------------------------------------------------------------------

def test_a_wrong_token_is_rejected_not_retried(server: Influx2TestServer) -> None:
    with InfluxDB2Store(server.url, ORG, BUCKET, "wrong-token") as store, \
            pytest.raises(StoreRejected, match="401"):
        store.write(readings(range(1, 3)))
    assert server.seqs(NODE) == []


def test_a_403_is_rejected(store: InfluxDB2Store, server: Influx2TestServer) -> None:
    server.fail(403, endpoint="write")
    with pytest.raises(StoreRejected, match="403"):
        store.write(readings(range(1, 3)))


def test_a_503_is_unavailable_and_the_store_recovers(store: InfluxDB2Store,
                                                     server: Influx2TestServer) -> None:
    store.write(readings(range(1, 11)))
    server.fail(503, endpoint="write")
    with pytest.raises(StoreUnavailable, match="503"):
        store.write(readings(range(11, 21)))
    assert server.seqs(NODE) == list(range(1, 11))
    assert store.write(readings(range(11, 21))) == 10
    assert store.seq_ranges(SITE, NODE) == [(1, 20)]


def test_a_query_answering_500_is_unavailable(store: InfluxDB2Store,
                                              server: Influx2TestServer) -> None:
    server.fail(500, endpoint="query")
    with pytest.raises(StoreUnavailable, match="500"):
        store.seq_ranges(SITE, NODE)


def test_a_500_after_storing_is_unavailable_and_the_retry_counts_the_batch_as_new(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    store.write(readings(range(1, 6)))
    server.fail(500, endpoint="write", after_storing=True)
    with pytest.raises(StoreUnavailable, match="500"):
        store.write(readings(range(6, 11)))
    assert server.seqs(NODE) == list(range(1, 11))  # stored despite the 500
    assert store.write(readings(range(6, 11))) == 5
    assert store.write(readings(range(6, 11))) == 0


def test_a_hung_server_times_out_as_unavailable(server: Influx2TestServer) -> None:
    with InfluxDB2Store(server.url, ORG, BUCKET, TOKEN, timeout_s=0.3) as store:
        server.hang()
        try:
            with pytest.raises(StoreUnavailable, match="timed out"):
                store.write(readings(range(1, 3)))
        finally:
            server.release()
        assert store.write(readings(range(1, 3))) == 2


def test_nothing_listening_is_unavailable() -> None:
    with InfluxDB2Store(f"http://127.0.0.1:{free_port()}", ORG, BUCKET, TOKEN) as store, \
            pytest.raises(StoreUnavailable, match="cannot"):
        store.write(readings(range(1, 2)))


def test_a_field_stored_with_another_type_is_rejected(store: InfluxDB2Store,
                                                      server: Influx2TestServer) -> None:
    at_ns = int(T0.timestamp()) * 10**9
    httpx.post(f"{server.url}/api/v2/write",
               params={"org": ORG, "bucket": BUCKET, "precision": "ns"},
               headers={"Authorization": f"Token {TOKEN}", "Content-Type": "text/plain"},
               content=f'dryer_reading,node={NODE},site={SITE} air_temp_c="hot" {at_ns}')
    with pytest.raises(StoreRejected, match=r"422.*type conflict"):
        store.write(readings(range(1, 3)))


def test_a_closed_store_is_unavailable(store: InfluxDB2Store) -> None:
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.write(readings(range(1, 2)))


# --- reading back -------------------------------------------------------------------------

def test_seq_ranges_show_the_gaps(store: InfluxDB2Store) -> None:
    store.write(readings([*range(1, 11), *range(14, 21), 22]))
    ranges = store.seq_ranges(SITE, NODE)
    assert ranges == [(1, 10), (14, 20), (22, 22)]
    assert missing_ranges(ranges) == [(11, 13), (21, 21)]


def test_seq_ranges_span_days_replays_and_a_clock_reset_to_1970(store: InfluxDB2Store) -> None:
    every_10_min = [reading(seq, T0 + timedelta(minutes=10 * seq))
                    for seq in range(1, 1001) if not 500 <= seq <= 520]
    replayed_late = [reading(seq, T0 + timedelta(days=20, seconds=seq)) for seq in (505, 506)]
    clock_reset = [reading(seq, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seq))
                   for seq in range(1001, 1004)]
    store.write([*every_10_min, *replayed_late, *clock_reset])
    assert store.seq_ranges(SITE, NODE) == [(1, 499), (505, 506), (521, 1003)]


def test_seq_ranges_of_a_node_without_readings_are_empty(store: InfluxDB2Store) -> None:
    store.write(readings(range(1, 3), node="secador-02"))
    assert store.seq_ranges(SITE, NODE) == []


def test_node_ids_are_never_read_as_flux(store: InfluxDB2Store) -> None:
    store.write(readings(range(1, 4)))
    assert store.seq_ranges(SITE, f'{NODE}" or r.node != "') == []
    assert store.latest(SITE, 'x\\" or true or "${r.node}') is None


def test_tag_values_with_spaces_commas_and_equals_signs_round_trip(
        store: InfluxDB2Store) -> None:
    site, node = "coop norte, valle=alto", "secador 1,a=b"
    store.write([reading(1, site=site, node=node)])
    assert store.latest(site, node) == reading(1, site=site, node=node)


def test_latest_returns_the_whole_reading(store: InfluxDB2Store) -> None:
    full = StoredReading(
        site_id=SITE, node_id=NODE, seq=7, measured_at=T0 + timedelta(microseconds=123457),
        fields={"air_temp_c": 51.25, "bean_moisture_pct_wb": 31.5, "fan_speed_pct": 100.0,
                "config_version": 4.0},
        raining=True, mode="manual", alarms=("air_temp_alarm", "rain"), batch_id='lot "7", a')
    store.write([reading(6), full])
    assert store.latest(SITE, NODE) == full


def test_latest_is_the_highest_seq_even_when_its_clock_is_behind(
        store: InfluxDB2Store) -> None:
    store.write([reading(1, T0), reading(2, T0 + timedelta(hours=1)),
                 reading(3, datetime(2000, 1, 1, tzinfo=UTC))])
    latest = store.latest(SITE, NODE)
    assert latest is not None and latest.seq == 3


# The server's now() is pinned to NOW: a reading "in the future" is after it.
NOW = T0 + timedelta(days=40)


@pytest.fixture
def pinned(server: Influx2TestServer) -> Influx2TestServer:
    server.now_ns = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    return server


def ranges_sent(server: Influx2TestServer) -> list[tuple[str, str]]:
    """(start, stop) of the range of every Flux statement sent so far, as written."""
    return [(found["start"] or f"-{found['start_ago_s']}s", found["stop"] or "now()")
            for query in server.queries()
            for line in json.loads(query.body)["query"].splitlines()
            if (found := STATEMENT.fullmatch(line.strip()))]


def test_latest_many_answers_for_every_dryer_at_once(store: InfluxDB2Store,
                                                     pinned: Influx2TestServer) -> None:
    store.write([reading(1, NOW - timedelta(minutes=5), node="secador-01"),
                 reading(2, NOW - timedelta(minutes=4), node="secador-01"),
                 reading(7, NOW - timedelta(days=9), node="secador-02")])
    found = store.latest_many([(SITE, "secador-01"), (SITE, "secador-02"),
                               (SITE, "secador-99")])
    assert {key: r.seq for key, r in found.items()} == {(SITE, "secador-01"): 2,
                                                         (SITE, "secador-02"): 7}
    assert found[(SITE, "secador-02")] == store.latest(SITE, "secador-02")
    assert store.latest_many([]) == {}


def test_latest_reads_no_statement_over_the_history_of_a_reporting_node(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    history = [reading(seq, NOW - timedelta(minutes=10 * (3000 - seq))) for seq in range(1, 3001)]
    store.write(history)  # ~21 days, the newest at NOW
    already = len(ranges_sent(pinned))
    assert store.latest(SITE, NODE) == history[-1]
    oldest_ns = point_time_ns(history[0].measured_at, history[0].seq)
    sent = ranges_sent(pinned)[already:]
    assert len(sent) == 4  # the newest, clock lost, the look-back, the reading
    for start, stop in sent:
        start_ns = pinned.now_ns - int(start[1:-1]) * 10**9 if start.endswith("s") else int(start)
        stop_ns = pinned.now_ns if stop == "now()" else int(stop)
        assert not start_ns <= oldest_ns < stop_ns, f"range({start}, {stop}) reads the history"


def test_latest_after_a_clock_that_ran_ahead_is_the_corrected_reading(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    store.write([reading(seq, NOW + timedelta(hours=8, seconds=10 * seq)) for seq in (1, 2, 3)])
    store.write([reading(seq, NOW - timedelta(seconds=100 - seq)) for seq in (4, 5)])
    assert store.latest(SITE, NODE) == reading(5, NOW - timedelta(seconds=95))


def test_latest_of_a_clock_still_ahead_is_its_newest_future_reading(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    store.write([reading(seq, NOW - timedelta(minutes=10 - seq)) for seq in (1, 2)])
    store.write([reading(seq, NOW + timedelta(days=400, minutes=seq)) for seq in (3, 4)])
    store.write([reading(seq, NOW + timedelta(days=3, minutes=seq), node="secador-02")
                 for seq in (7, 8)])
    found = store.latest_many([(SITE, NODE), (SITE, "secador-02")])
    assert {key[1]: r.seq for key, r in found.items()} == {NODE: 4, "secador-02": 8}


def test_latest_after_a_restart_at_the_time_fake_hwclock_saved_is_the_new_reading(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    store.write([reading(seq, NOW - timedelta(minutes=60 - seq)) for seq in range(1, 51)])
    store.write([reading(seq, NOW - timedelta(minutes=55 - seq)) for seq in (51, 52)])
    assert store.latest(SITE, NODE) == reading(52, NOW - timedelta(minutes=3))


def test_latest_of_a_node_silent_for_weeks_is_its_last_reading(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    weeks_ago = NOW - timedelta(weeks=5)
    store.write([reading(seq, weeks_ago - timedelta(minutes=30 - seq)) for seq in (1, 2, 3)])
    assert store.latest(SITE, NODE) == reading(3, weeks_ago - timedelta(minutes=27))


def test_a_clock_stepped_back_more_than_the_look_back_shows_the_reading_before_the_step(
        store: InfluxDB2Store, pinned: Influx2TestServer) -> None:
    """As on 1.x: the documented limit of the bounded look-up (SQLite would answer 3)."""
    newest_on_time = reading(2, NOW - timedelta(minutes=10))
    stepped_back = reading(3, newest_on_time.measured_at - timedelta(
        microseconds=LATEST_LOOKBACK_NS // 1000, minutes=1))
    store.write([reading(1, NOW - timedelta(minutes=20)), newest_on_time, stepped_back])
    assert store.latest(SITE, NODE) == newest_on_time


def test_raw_series_is_every_reading_in_the_half_open_range(store: InfluxDB2Store) -> None:
    store.write(readings(range(1, 11)))
    points = store.series(SITE, NODE, T0 + timedelta(seconds=60), T0 + timedelta(seconds=150),
                          ["air_temp_c"])
    assert [(p.at, p.values) for p in points] == [
        (T0 + timedelta(seconds=30 * seq), {"air_temp_c": 40.0 + seq}) for seq in (2, 3, 4)]


def test_downsampled_series_averages_each_epoch_aligned_bucket(store: InfluxDB2Store) -> None:
    store.write([reading(seq, T0 + timedelta(seconds=20 * seq), air_temp_c=float(seq),
                         air_rh_pct=2.0 * seq) for seq in range(1, 31)])
    points = store.series(SITE, NODE, T0 + timedelta(seconds=10), T0 + timedelta(hours=1),
                          ["air_temp_c", "air_rh_pct"], every_s=120)
    expected = []
    for bucket in range(5):
        seqs = [s for s in range(1, 31) if bucket * 120 <= 20 * s < (bucket + 1) * 120]
        mean = sum(seqs) / len(seqs)
        expected.append((T0 + timedelta(seconds=120 * bucket),
                         {"air_temp_c": mean, "air_rh_pct": 2 * mean}))
    expected.append((T0 + timedelta(seconds=600), {"air_temp_c": 30.0, "air_rh_pct": 60.0}))
    assert [(p.at, p.values) for p in points] == expected  # first bucket starts before start


def test_series_leaves_out_fields_a_reading_lacks(store: InfluxDB2Store) -> None:
    store.write([reading(1, T0, air_temp_c=30.0),
                 reading(2, T0 + timedelta(seconds=1), air_temp_c=31.0, tray_mass_kg=4.5)])
    points = store.series(SITE, NODE, T0, T0 + timedelta(minutes=1),
                          ["air_temp_c", "tray_mass_kg"])
    assert [p.values for p in points] == [{"air_temp_c": 30.0},
                                          {"air_temp_c": 31.0, "tray_mass_kg": 4.5}]


@pytest.mark.parametrize("fields", [['air_temp_c") |> drop(columns: ["x'],
                                    ["seq"], [], "air_temp_c"])
def test_series_accepts_only_known_numeric_fields(store: InfluxDB2Store,
                                                  fields: list[str]) -> None:
    with pytest.raises(ValueError, match="field"):
        store.series(SITE, NODE, T0, T0 + timedelta(hours=1), fields)


# --- pieces -------------------------------------------------------------------------------

def test_flux_strings_escape_quotes_backslashes_and_interpolation() -> None:
    assert flux_string('a"b\\c${d}\n') == '"a\\"b\\\\c\\${d}\\n"'


def test_annotated_csv_with_several_blocks_and_defaults_is_typed() -> None:
    text = ("#datatype,string,long,dateTime:RFC3339,long,string\r\n"
            "#group,false,false,false,false,true\r\n#default,q0,,,,\r\n"
            ",result,table,_time,_value,_field\r\n,,0,1970-01-01T00:00:01.000000002Z,7,seq\r\n"
            "\r\n#datatype,string,long,dateTime:RFC3339,double,string\r\n"
            "#group,false,false,false,false,true\r\n#default,q1,,,,\r\n"
            ",result,table,_time,_value,_field\r\n,,1,1969-12-31T23:59:59Z,0.5,air_temp_c\r\n")
    assert parse_annotated_csv(text) == [
        {"result": "q0", "table": 0, "_time": 1_000_000_002, "_value": 7, "_field": "seq"},
        {"result": "q1", "table": 1, "_time": -1_000_000_000, "_value": 0.5,
         "_field": "air_temp_c"}]


def test_an_error_table_in_a_query_answer_is_raised() -> None:
    text = "#datatype,string,string\r\n#group,true,true\r\n#default,,\r\n,error,reference\r\n" \
           ",query timeout,\r\n"
    with pytest.raises(Exception, match="query timeout"):
        parse_annotated_csv(text)


def test_the_test_server_rejects_malformed_line_protocol(server: Influx2TestServer) -> None:
    headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "text/plain",
               "Content-Encoding": "gzip"}
    params = {"org": ORG, "bucket": BUCKET, "precision": "ns"}
    good = f"dryer_reading,node={NODE},site={SITE} seq=1i 1000"
    bad = f"dryer_reading,node={NODE},site={SITE} seq=1x 2000"
    answer = httpx.post(f"{server.url}/api/v2/write", params=params, headers=headers,
                        content=gzip.compress(f"{good}\n{bad}".encode()))
    assert answer.status_code == 400 and "unable to parse" in answer.json()["message"]
    assert server.seqs(NODE) == []  # nothing of a rejected request is stored
    with pytest.raises(LineProtocolError):
        parse_line("dryer_reading,node= seq=1i 1")


def test_the_test_server_reports_health(server: Influx2TestServer) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "pass"


def test_the_gateway_opens_an_influxdb2_store_with_the_token_from_its_file(
        server: Influx2TestServer, tmp_path: Path) -> None:
    token_file = tmp_path / "influxdb-token"
    token_file.write_text(f"{TOKEN}\n")
    settings = parse_gateway_config({"storage": {
        "kind": "influxdb2", "url": server.url, "org": ORG, "bucket": BUCKET,
        "token_file": str(token_file)}})
    store = open_store(settings)
    try:
        assert isinstance(store, InfluxDB2Store)
        assert store.write(readings(range(1, 3))) == 2
    finally:
        store.close()
    assert server.writes()[0].headers["authorization"] == f"Token {TOKEN}"


def test_ping_answers_while_the_server_runs_and_says_why_not_after(
        store: InfluxDB2Store, server: Influx2TestServer) -> None:
    store.ping()  # GET /health: what /api/health asks every few seconds
    server.stop()  # (a kept-alive connection may outlive it: ask with a fresh store)
    with InfluxDB2Store(server.url, ORG, BUCKET, TOKEN, timeout_s=5) as fresh, \
            pytest.raises(StoreUnavailable, match="cannot reach InfluxDB"):
        fresh.ping(timeout_s=1.0)
