"""Fuzzing the MQTT ingest with malformed, oversized, wrong-typed and hostile payloads.

1. Bulk (hypothesis, no broker): payloads built from the contract — valid telemetry, status
   and events — then mutated: wrong types, missing and extra fields, huge strings, NaN and
   Infinity, nested depth bombs, invalid UTF-8, non-JSON bytes, payloads over the 64 KiB limit,
   a payload naming another node than its topic, times from year 1 to 9999, seq from -2**80 to
   2**80, config versions of 400 digits. Each goes through the gateway's own decode path
   (``decode_payload`` then ``storable_reading``, what ``Ingest`` does per message) and, when
   accepted, into a real SQLite store. Properties: nothing but a one-line PayloadError or
   TopicError ever comes out; an accepted reading is stored, and exactly once when written
   again; a refused one stores nothing; every mutation that breaks the contract is refused.
2. Real path: a private Mosquitto, the real ``Ingest`` (its MQTT session, decoder and writer
   threads) with the node registry on a real metadata database (SQLite and PostgreSQL) and
   readings in SQLite or a private influxd. Every hostile payload of the fault suite's list,
   the payloads that broke ingest before (a seq beyond 64 bits, a time in year 3000, a
   400-digit config version), interleaved with valid readings sent twice: the gateway keeps
   going, counts each hostile message as invalid, stores none of them and every valid reading
   exactly once.

The number of payloads tried is printed at the end of the run ("ingest fuzz: ...") and kept in
docs/faults.md.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from support import wait_for
from support.influxd import InfluxDaemon
from support.mosquitto import MosquittoBroker

from cacao_dryer.clock import SystemClock
from cacao_dryer.contract import (
    ID_PATTERN,
    MAX_CONFIG_VERSION,
    MAX_SEQ,
    Alarm,
    Channel,
    EventType,
    Mode,
    NodeEvent,
    NodeState,
    NodeStatus,
    Telemetry,
    encode,
    topic,
)
from cacao_dryer.errors import PayloadError, TopicError
from cacao_dryer.measurements import MEASUREMENTS
from gateway.config import parse_gateway_config
from gateway.ingest import Ingest, decode_payload, storable_reading, storable_record
from gateway.metadata.database import open_metadata
from gateway.metadata.models import NodeEventRecord
from gateway.registry import NodeRegistry
from gateway.stores.influxdb1 import InfluxDB1Store
from gateway.stores.sqlite import SqliteStore
from gateway.timeseries import StoredReading, TimeSeriesStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fault_suite import garbage_messages, reaches_gateway

SITE = "coop-fuzz"
TRIED: Counter[str] = Counter()   # payloads tried, by part
EXAMPLES = 600                    # per bulk property: ~1,800 payloads in ~15 s


@pytest.fixture(scope="module", autouse=True)
def report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = ("ingest fuzz: " + ", ".join(f"{count} {part}" for part, count in
                                        sorted(TRIED.items()))
            + f"; {sum(TRIED.values())} payloads tried in all")
    if reporter is not None:
        reporter.write_line(line)
    else:  # pragma: no cover - pytest always has one when run from the command line
        print(line)


# --- strategies: valid messages from the contract ------------------------------------------------

identifiers = st.from_regex(ID_PATTERN, fullmatch=True)
# Text a node may send that every database keeps (a NUL character is refused: below).
texts = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40)
aware_times = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31),
                           timezones=st.just(UTC))


@st.composite
def readings(draw: st.DrawFn) -> dict[str, float]:
    chosen = draw(st.lists(st.sampled_from(MEASUREMENTS), unique_by=lambda m: m.key,
                           max_size=len(MEASUREMENTS)))
    return {m.key: draw(st.floats(m.minimum, m.maximum, allow_nan=False)) for m in chosen}


telemetries = st.builds(
    Telemetry, site_id=st.just(SITE), node_id=st.just("placeholder"),
    seq=st.integers(1, MAX_SEQ), measured_at=aware_times, readings=readings(),
    sensor_faults=st.dictionaries(texts, texts, max_size=3),
    raining=st.none() | st.booleans(), fan_speed_pct=st.floats(0, 100),
    vent_open_pct=st.floats(0, 100), mode=st.sampled_from(Mode),
    alarms=st.lists(st.sampled_from(Alarm), max_size=4),
    config_version=st.integers(0, MAX_CONFIG_VERSION),
    batch_id=st.none() | identifiers)
statuses = st.builds(
    NodeStatus, site_id=st.just(SITE), node_id=st.just("placeholder"),
    state=st.sampled_from(NodeState), sent_at=st.none() | aware_times,
    last_seq=st.none() | st.integers(0, MAX_SEQ), queue_depth=st.none() | st.integers(0, 10**6),
    errors_total=st.none() | st.integers(0, 10**6), last_error=st.none() | texts)
events = st.builds(
    NodeEvent, site_id=st.just(SITE), node_id=st.just("placeholder"),
    seq=st.integers(1, MAX_SEQ), occurred_at=aware_times, type=st.sampled_from(EventType),
    message=texts, data=st.dictionaries(texts, st.integers() | texts, max_size=4))


# --- mutations ---------------------------------------------------------------------------------

WRONG_TYPES = [None, [], {}, "secador", [1, 2], {"a": 1}, "NaN-text"]
REQUIRED = {Channel.TELEMETRY: ("site_id", "node_id", "seq", "measured_at", "readings",
                                "fan_speed_pct", "vent_open_pct", "mode", "config_version"),
            Channel.STATUS: ("site_id", "node_id", "state"),
            Channel.EVENT: ("site_id", "node_id", "seq", "occurred_at", "type", "message")}


def _depth_bomb(depth: int) -> bytes:
    return b'{"schema_version": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"


@st.composite
def mutated(draw: st.DrawFn, channel: Channel, message: Any) -> tuple[bytes, str, bool]:
    """(payload, mutation, must be refused) from a valid ``message`` of ``channel``."""
    data = json.loads(encode(message))
    mutation = draw(st.sampled_from([
        "none", "wrong_type", "missing", "extra", "huge_string", "nan", "depth_bomb",
        "bad_utf8", "random_bytes", "oversized", "other_node", "time", "seq", "config_version",
        "schema_version", "truncated"]))
    refuse = True
    if mutation == "none":
        refuse = False
    elif mutation == "wrong_type":
        key = draw(st.sampled_from(REQUIRED[channel]))
        # Truly another JSON type: `"readings": {}` is still a valid (empty) reading set.
        data[key] = draw(st.sampled_from(
            [value for value in WRONG_TYPES if type(value) is not type(data[key])]))
    elif mutation == "missing":
        del data[draw(st.sampled_from(REQUIRED[channel]))]
    elif mutation == "extra":
        data[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in data))] = 1
    elif mutation == "huge_string":
        data["batch_id" if channel is Channel.TELEMETRY else "message"] = "x" * draw(
            st.integers(600, 70_000))
    elif mutation == "nan":
        key = {"telemetry": "fan_speed_pct", "status": "uptime_s", "event": "seq"}[channel]
        data.pop(key, None)
        number = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        payload = json.dumps(data).replace("{", f'{{"{key}": {number}, ', 1).encode()
        return payload, mutation, True  # not JSON, and refused by the contract anyway
    elif mutation == "depth_bomb":
        return _depth_bomb(draw(st.integers(1000, 40_000))), mutation, True
    elif mutation == "bad_utf8":
        raw = json.dumps(data).encode()
        cut = draw(st.integers(1, len(raw) - 1))
        # (b"\xed\xa0\x80" is a UTF-8-encoded surrogate: json.loads(bytes) used to let it
        # into a text, which no database can store; the contract decodes strictly now)
        return raw[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) \
            + raw[cut:], mutation, True
    elif mutation == "random_bytes":
        return draw(st.binary(max_size=300)), mutation, False  # (valid by chance: allowed)
    elif mutation == "oversized":
        return json.dumps(data | {"padding": "x" * 70_000}).encode(), mutation, True
    elif mutation == "other_node":
        data["node_id"] = "otro-nodo"
    elif mutation == "time":
        moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                                   timezones=st.just(UTC)))
        field_name = {"telemetry": "measured_at", "status": "sent_at",
                      "event": "occurred_at"}[channel]
        data[field_name] = moment.isoformat()
        refuse = channel is Channel.TELEMETRY and not (
            datetime(1677, 9, 22, tzinfo=UTC) <= moment < datetime(2262, 4, 11, tzinfo=UTC))
    elif mutation == "seq":
        seq = draw(st.integers(-(2**80), 2**80))
        data["seq" if channel is not Channel.STATUS else "last_seq"] = seq
        lowest = 0 if channel is Channel.STATUS else 1
        refuse = not lowest <= seq <= MAX_SEQ
    elif mutation == "config_version":
        data["config_version"] = draw(st.integers(MAX_CONFIG_VERSION + 1, 10**400))
    elif mutation == "schema_version":
        data["schema_version"] = draw(st.sampled_from([0, 2, "1", None, 1.5]))
    elif mutation == "truncated":
        raw = json.dumps(data).encode()
        return raw[: draw(st.integers(0, len(raw) - 1))], mutation, True
    return json.dumps(data).encode(), mutation, refuse


@st.composite
def cases(draw: st.DrawFn, channel: Channel) -> tuple[str, bytes, str, bool]:
    node = f"n{draw(st.integers(0, 10**12))}"
    strategy = {Channel.TELEMETRY: telemetries, Channel.STATUS: statuses,
                Channel.EVENT: events}[channel]
    message = draw(strategy).model_copy(update={"node_id": node})
    payload, mutation, refuse = draw(mutated(channel, message))
    return topic(SITE, node, channel), payload, mutation, refuse


def decode_as_ingest(topic_name: str, payload: bytes) -> object:
    """What ``Ingest`` does with one message before writing (its ``_decode``)."""
    _site, _node, decoded = decode_payload(topic_name, payload)
    if isinstance(decoded, Telemetry):
        return storable_reading(topic_name, decoded)
    if isinstance(decoded, NodeStatus | NodeEvent):
        storable_record(topic_name, decoded)
    return decoded


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path_factory.mktemp("fuzz") / "readings.sqlite3")
    yield store
    store.close()


# --- 1. bulk --------------------------------------------------------------------------------------

@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases(Channel.TELEMETRY))
def test_telemetry_is_refused_or_stored_exactly_once(sqlite_store, case):
    topic_name, payload, mutation, refuse = case
    TRIED["telemetry"] += 1
    node = topic_name.split("/")[3]
    before = sqlite_store.seq_ranges(SITE, node)  # an earlier example may share the node id
    try:
        reading = decode_as_ingest(topic_name, payload)
    except (PayloadError, TopicError) as exc:
        assert str(exc).startswith(topic_name)  # (one line once the ingest logs it: below)
        assert sqlite_store.seq_ranges(SITE, node) == before  # nothing stored
        return
    assert not refuse, f"{mutation}: accepted {payload[:200]!r}"
    assert isinstance(reading, StoredReading)
    known = any(first <= reading.seq <= last for first, last in before)
    assert sqlite_store.write([reading]) == (0 if known else 1)
    assert sqlite_store.write([reading]) == 0  # the node's replay: stored once
    assert any(first <= reading.seq <= last
               for first, last in sqlite_store.seq_ranges(SITE, node))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases(Channel.STATUS) | cases(Channel.EVENT))
def test_status_and_events_are_refused_with_one_line_or_decoded(case):
    topic_name, payload, mutation, refuse = case
    TRIED["status and event"] += 1
    try:
        decoded = decode_as_ingest(topic_name, payload)
    except (PayloadError, TopicError) as exc:
        assert str(exc).startswith(topic_name)
        return
    assert not refuse, f"{mutation}: accepted {payload[:200]!r}"
    assert isinstance(decoded, NodeStatus | NodeEvent)


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True)
@given(name=st.text(max_size=80) | st.lists(st.sampled_from(
    ["cacao", "v1", SITE, "secador-01", "telemetry", "+", "#", "", "alert", "x" * 50]),
    max_size=7).map("/".join), payload=st.binary(max_size=200))
def test_any_topic_and_bytes_give_a_one_line_refusal_at_worst(name, payload):
    TRIED["topic and bytes"] += 1
    try:
        decode_as_ingest(name, payload)
    except (PayloadError, TopicError) as exc:
        assert str(exc)


# --- 2. the real ingest -----------------------------------------------------------------------

T0 = datetime(2026, 1, 10, 15, 0, tzinfo=UTC)


def valid_reading(node: str, seq: int) -> bytes:
    return encode(Telemetry(site_id=SITE, node_id=node, seq=seq,
                            measured_at=T0 + timedelta(seconds=10 * seq),
                            readings={"air_temp_c": 40.0, "air_rh_pct": 55.0},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


def unstorable(node: str) -> list[bytes]:
    """Telemetry no store can keep: each stopped ingest before. The contract refuses the
    first three now; the times it accepts, and the gateway refuses them ("cannot be
    stored")."""
    good = json.loads(valid_reading(node, 1))
    return [json.dumps(good | {"seq": 2**70}).encode(),               # InfluxDB: 400 for ever
            json.dumps(good | {"seq": 2**63}).encode(),               # SQLite: OverflowError
            json.dumps(good | {"config_version": 10**400}).encode(),  # float(): OverflowError
            json.dumps(good | {"measured_at": "3000-01-01T00:00:00Z"}).encode(),
            json.dumps(good | {"measured_at": "0001-01-02T00:00:00Z"}).encode()]


def lone_surrogates(node: str) -> list[bytes]:
    """Half a UTF-16 surrogate pair in a text, as a JSON escape and as (invalid) UTF-8 bytes:
    json.loads let both through, and neither SQLite nor PostgreSQL can store the text."""
    good = json.loads(valid_reading(node, 1))
    escaped = json.dumps(good | {"sensor_faults": {"dht22": "falla"}})
    return [escaped.replace("falla", "fa\\ud800lla").encode(),
            escaped.encode().replace(b"falla", b"fa\xed\xa0\x80lla")]


def hostile_events(node: str) -> list[bytes]:
    """Events the contract refuses (kept out of the metadata database)."""
    good = json.loads(encode(NodeEvent(site_id=SITE, node_id=node, seq=1, occurred_at=T0,
                                       type=EventType.BOOT, message="arranque")))
    return [json.dumps(good | {"seq": 0}).encode(),
            json.dumps(good | {"message": "x" * 501}).encode(),
            json.dumps(good | {"type": "explode"}).encode(),
            json.dumps(good | {"occurred_at": "2026-01-10T15:00:00"}).encode()]


def _event(node: str, seq: int, **changes: Any) -> bytes:
    base = json.loads(encode(NodeEvent(site_id=SITE, node_id=node, seq=seq, occurred_at=T0,
                                       type=EventType.ALARM_RAISED, message="alarma")))
    return json.dumps(base | changes).encode()


def unstorable_records(node: str) -> list[tuple[str, bytes]]:
    """Statuses and events the metadata database refuses (NUL in PostgreSQL text, NaN and
    Infinity in PostgreSQL JSON; the contract refuses the Infinity uptime now): each stopped
    ingest before, retried for ever."""
    status = json.loads(encode(NodeStatus(site_id=SITE, node_id=node, state=NodeState.ONLINE)))
    return [(topic(SITE, node, Channel.EVENT), _event(node, 101, message="nul \u0000 dentro")),
            (topic(SITE, node, Channel.EVENT), _event(node, 102, data={"valor": float("nan")})),
            (topic(SITE, node, Channel.STATUS),
             json.dumps(status | {"uptime_s": float("inf")}).encode()),
            (topic(SITE, node, Channel.STATUS),
             json.dumps(status | {"last_error": "nul \u0000"}).encode())]


def storable_edge_events(node: str) -> list[tuple[str, bytes]]:
    """Odd but storable events: seqs beyond 32 bits up to the highest (BIGINT since migration
    0006), a 400-digit number in ``data``."""
    return [(topic(SITE, node, Channel.EVENT), _event(node, MAX_SEQ)),
            (topic(SITE, node, Channel.EVENT), _event(node, 2**31)),
            (topic(SITE, node, Channel.EVENT), _event(node, 103, data={"n": 10**400}))]


class Sender:
    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-sender",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send_all(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(name, payload, qos=1) for name, payload in items]
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_hostile_mix(tmp_path: Path, broker: MosquittoBroker, store: TimeSeriesStore,
                    metadata_url: str, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    settings_ = parse_gateway_config({
        "sites": [SITE], "data_dir": str(tmp_path / "gw"),
        "mqtt": {"broker": broker.url, "client_id": f"fuzz-gateway-{seed}"},
        "batch_max_latency_s": 0.05})
    metadata = open_metadata(metadata_url)
    ingest = Ingest(settings_, store, NodeRegistry(metadata, SystemClock()))
    sender = Sender(broker)
    rng = random.Random(seed)
    nodes = [f"secador-{i:02d}" for i in range(1, 4)]
    try:
        ingest.start()
        wait_for(lambda: ingest.connected, 20, "the ingest to connect")
        # A key with a line break: the gateway's log line about it stays one line.
        forged = json.loads(valid_reading("secador-09", 1)) | {
            "x\n2026-01-10 WARNING cacao_dryer.gateway: forged line": 1}
        sender.send_all([(topic(SITE, "secador-09", Channel.TELEMETRY),
                          json.dumps(forged).encode())])
        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if "invalid message" in r.getMessage()]

        wait_for(lambda: bool(logged()), 20, "the forged key refused and logged")
        assert sum(ingest.stats.invalid.values()) == 1
        assert all("\n" not in line for line in logged())
        hostile: list[tuple[str, bytes]] = []
        for node in nodes:
            other = next(n for n in nodes if n != node)
            hostile += garbage_messages(node, other, rng, site=SITE)
            hostile += [(topic(SITE, node, Channel.TELEMETRY), p)
                        for p in unstorable(node) + lone_surrogates(node)]
            hostile += [(topic(SITE, node, Channel.EVENT), p) for p in hostile_events(node)]
        valid = [(topic(SITE, node, Channel.TELEMETRY), valid_reading(node, seq))
                 for node in nodes for seq in range(1, 41)]
        hostile += unstorable_records("secador-02")
        edge = storable_edge_events("secador-01")
        mix = [*hostile, *valid, *valid, *edge, *edge]  # valid ones twice: a replay
        rng.shuffle(mix)
        TRIED["through Mosquitto and Ingest"] += len(mix)
        sender.send_all(mix)
        last = [(topic(SITE, node, Channel.TELEMETRY), valid_reading(node, 41)) for node in nodes]
        sender.send_all(last)  # after all of it, the gateway still takes readings
        wait_for(lambda: all(store.seq_ranges(SITE, node) == [(1, 41)] for node in nodes), 60,
                 "every valid reading stored (the ingest kept going)")
        # (a message over the gateway's Maximum Packet Size is dropped by the broker)
        delivered = sum(reaches_gateway(name, payload) for name, payload in hostile)
        assert delivered < len(hostile)
        wait_for(lambda: sum(ingest.stats.invalid.values()) >= delivered + 1, 30,
                 "every hostile message counted")
        assert sum(ingest.stats.invalid.values()) == delivered + 1, ingest.stats.invalid
        assert ingest.stats.invalid["cannot be stored"] == 2 * len(nodes) + 3
        assert ingest.stats.stored == 41 * len(nodes)

        def recorded() -> list[int]:
            with metadata.session() as session:
                return sorted(session.scalars(select(NodeEventRecord.seq).where(
                    NodeEventRecord.site_id == SITE, NodeEventRecord.node_id == "secador-01")))

        wait_for(lambda: len(recorded()) >= 3, 30, "the odd but valid events recorded")
        assert recorded() == [103, 2**31, MAX_SEQ]  # sent twice, recorded once
    finally:
        sender.close()
        ingest.stop()
        metadata.close()


@pytest.mark.integration
def test_the_real_ingest_survives_hostile_messages_sqlite(tmp_path, mosquitto, metadata_url,
                                                          caplog):
    store = SqliteStore(tmp_path / "readings.sqlite3")
    try:
        run_hostile_mix(tmp_path, mosquitto, store, metadata_url, seed=1, caplog=caplog)
    finally:
        store.close()


@pytest.mark.integration
def test_the_real_ingest_survives_hostile_messages_influxdb(tmp_path, mosquitto,
                                                            influxd: InfluxDaemon, caplog):
    store = InfluxDB1Store(influxd.url, "cacao")
    try:
        run_hostile_mix(tmp_path, mosquitto, store,
                        f"sqlite:///{tmp_path / 'metadata.sqlite3'}", seed=2, caplog=caplog)
    finally:
        store.close()
