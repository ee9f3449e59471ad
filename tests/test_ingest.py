"""Gateway ingest against a real private Mosquitto and a real SQLite store: exactly once,
invalid input counted and never stored, gaps visible, SIGKILL loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic
from cacao_dryer.errors import CacaoDryerError
from gateway.config import GatewaySettings, parse_gateway_config
from gateway.ingest import Ingest
from gateway.stores.sqlite import SqliteStore

pytestmark = pytest.mark.integration

SITE = "coop-test"
T0 = datetime(2026, 1, 10, 15, 0, tzinfo=UTC)


def reading(node: str, seq: int, site: str = SITE) -> bytes:
    return encode(Telemetry(site_id=site, node_id=node, seq=seq,
                            measured_at=T0 + timedelta(seconds=10 * seq),
                            readings={"air_temp_c": 40.0 + seq % 7, "air_rh_pct": 55.0},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


class Publisher:
    """A node-like QoS 1 publisher (no outbox: the test decides what is sent)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-node",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, name: str, payload: bytes) -> None:
        self.client.publish(name, payload, qos=1).wait_for_publish(10)

    def send_many(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(name, payload, qos=1) for name, payload in items]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settings_for(tmp_path: Path, broker: MosquittoBroker, **changes: object) -> GatewaySettings:
    data = {"sites": [SITE], "data_dir": str(tmp_path / "gw"),
            "mqtt": {"broker": broker.url, "client_id": "gateway-test"},
            "storage": {"kind": "sqlite", "path": str(tmp_path / "gw" / "readings.sqlite3")},
            "batch_max_latency_s": 0.05} | changes
    return parse_gateway_config(data)


@pytest.fixture
def publisher(mosquitto: MosquittoBroker) -> Iterator[Publisher]:
    client = Publisher(mosquitto)
    yield client
    client.close()


@pytest.fixture
def ingest(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Ingest]:
    settings = settings_for(tmp_path, mosquitto)
    settings.data_dir.mkdir(parents=True)
    service = Ingest(settings, SqliteStore(settings.storage.path))
    service.start()
    wait_for(lambda: service.connected, 10, "the gateway to connect")
    yield service
    service.stop()
    service.store.close()


def telemetry_topic(node: str) -> str:
    return topic(SITE, node, Channel.TELEMETRY)


def test_a_replayed_reading_is_stored_once(ingest, publisher):
    batch = [(telemetry_topic("secador-01"), reading("secador-01", seq)) for seq in range(1, 101)]
    publisher.send_many(batch)
    publisher.send_many(batch)  # the node's replay after an outage
    wait_for(lambda: ingest.stats.received == 200, 20, "200 messages")
    wait_for(lambda: ingest.stats.stored + ingest.stats.duplicates == 200, 10, "all written")
    assert (ingest.stats.stored, ingest.stats.duplicates) == (100, 100)
    assert ingest.store.seq_ranges(SITE, "secador-01") == [(1, 100)]


def test_gaps_in_sequence_numbers_are_visible(ingest, publisher):
    publisher.send_many([(telemetry_topic("secador-02"), reading("secador-02", seq))
                         for seq in [*range(1, 11), *range(15, 21)]])
    wait_for(lambda: ingest.stats.stored == 16, 20, "16 readings stored")
    assert ingest.gaps(SITE, "secador-02") == [(11, 14)]


@pytest.mark.parametrize(("payload", "kind"), [
    (b"not json", "not valid JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"schema_version": 7}', "schema_version"),
    (b"[" * 20000, "nested too deeply"),
])
def test_invalid_payloads_are_counted_and_never_stored(ingest, publisher, payload, kind):
    publisher.send(telemetry_topic("secador-03"), payload)
    publisher.send(telemetry_topic("secador-03"), reading("secador-03", 1))
    wait_for(lambda: ingest.stats.stored == 1, 20, "the valid reading stored")
    assert ingest.stats.invalid[kind] == 1
    assert ingest.store.seq_ranges(SITE, "secador-03") == [(1, 1)]


def test_a_node_cannot_write_another_nodes_readings(ingest, publisher):
    publisher.send(telemetry_topic("secador-04"), reading("secador-05", 1))
    publisher.send(telemetry_topic("secador-04"), reading("secador-04", 1))
    wait_for(lambda: ingest.stats.stored == 1, 20, "the honest reading stored")
    assert ingest.stats.invalid["payload names"] == 1
    assert ingest.store.seq_ranges(SITE, "secador-05") == []


def test_readings_sent_while_the_gateway_was_stopped_arrive_after_it_restarts(
        tmp_path, mosquitto, publisher):
    settings = settings_for(tmp_path, mosquitto)
    settings.data_dir.mkdir(parents=True)
    first = Ingest(settings, SqliteStore(settings.storage.path))
    first.start()
    wait_for(lambda: first.connected, 10, "the gateway to connect")
    first.stop()
    first.store.close()
    publisher.send_many([(telemetry_topic("secador-06"), reading("secador-06", seq))
                         for seq in range(1, 51)])  # the broker queues them for the session
    second = Ingest(settings, SqliteStore(settings.storage.path))
    second.start()
    try:
        wait_for(lambda: second.stats.stored == 50, 20, "the queued readings")
        assert second.store.seq_ranges(SITE, "secador-06") == [(1, 50)]
    finally:
        second.stop()
        second.store.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkilled_gateway_loses_nothing_and_stores_everything_once(tmp_path, mosquitto,
                                                                    publisher, workers):
    """SIGKILL of the gateway's main process; with workers, they notice and stop without
    acknowledging more, so the restarted gateway's workers can take their sessions over."""
    config = tmp_path / "gateway.toml"
    config.write_text(tomli_w.dumps({
        "sites": [SITE], "data_dir": str(tmp_path / "gw"),
        "mqtt": {"broker": mosquitto.url, "client_id": "gateway-kill"},
        "storage": {"kind": "sqlite", "path": "readings.sqlite3"},
        "ingest_workers": workers, "api": {"port": free_port()}}))
    command = [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
               str(config)]
    log = (tmp_path / "gateway.log").open("ab")
    gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    database = tmp_path / "gw" / "readings.sqlite3"

    def stored() -> int:
        if not database.exists():
            return 0
        store = SqliteStore(database)
        try:
            return sum(last - first + 1 for first, last in store.seq_ranges(SITE, "secador-07"))
        finally:
            store.close()

    telemetry_clients = [f"gateway-kill-w{i}" for i in range(1, workers + 1)] or \
        ["gateway-kill"]

    def subscribed() -> bool:
        text = (tmp_path / "gateway.log").read_text(errors="replace")
        return all(f"MQTT {client} connected" in text for client in telemetry_clients)

    try:
        wait_for(subscribed, 60, "the gateway's telemetry subscriptions")
        items = [(telemetry_topic("secador-07"), reading("secador-07", seq))
                 for seq in range(1, 5001)]
        publisher.send_many(items[:2500])
        wait_for(lambda: stored() >= 500, 30, "some readings stored")
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait()
        publisher.send_many(items[2500:])
        gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: stored() == 5000, 60, "all 5,000 readings stored")
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    store = SqliteStore(database)
    assert store.seq_ranges(SITE, "secador-07") == [(1, 5000)]
    store.close()


def test_readings_are_spooled_while_influxdb_is_down_and_written_when_it_is_back(
        tmp_path, mosquitto, publisher, influxd):
    from gateway.stores.influxdb1 import InfluxDB1Store

    settings = settings_for(tmp_path, mosquitto,
                            storage={"kind": "influxdb1", "url": influxd.url,
                                     "database": "cacao"})
    settings.data_dir.mkdir(parents=True)
    store = InfluxDB1Store(influxd.url, "cacao")
    service = Ingest(settings, store)
    service.start()
    try:
        wait_for(lambda: service.connected, 10, "the gateway to connect")
        publisher.send_many([(telemetry_topic("secador-08"), reading("secador-08", seq))
                             for seq in range(1, 51)])
        wait_for(lambda: service.stats.stored == 50, 20, "50 readings in InfluxDB")
        influxd.stop()  # the database goes down
        publisher.send_many([(telemetry_topic("secador-08"), reading("secador-08", seq))
                             for seq in range(51, 151)])
        # acknowledged to the broker only once spooled (fsynced) on the gateway's disk
        wait_for(lambda: service.stats.spooled == 100, 20, "100 readings spooled")
        assert (settings.data_dir / "spool.jsonl").exists()
        influxd.start()
        wait_for(lambda: store.seq_ranges(SITE, "secador-08") == [(1, 150)], 30,
                 "the spool written to InfluxDB")
        # emptied once written out (the file goes right after its last write)
        wait_for(lambda: not (settings.data_dir / "spool.jsonl").exists(), 10,
                 "the spool emptied")
    finally:
        service.stop()
        store.close()


def test_fast_telemetry_decoding_accepts_and_refuses_exactly_what_the_contract_does():
    from cacao_dryer.contract import decode_message
    from gateway.ingest import decode_payload

    valid = reading("secador-09", 3)
    name = telemetry_topic("secador-09")
    cases = [
        valid,
        valid.replace(b'"schema_version":1,', b""),          # no schema_version
        valid.replace(b'"seq":3', b'"seq":0'),                # out of range
        valid.replace(b'"mode":"auto"', b'"mode":"turbo"'),   # unknown mode
        valid.replace(b"}", b',"extra":1}', 1),                # unknown field
        valid.replace(b'"secador-09"', b'"secador-10"'),      # names another node
        b"not json", b"[1]",
    ]
    for payload in cases:
        try:
            expected = decode_message(name, payload)
        except CacaoDryerError as exc:
            with pytest.raises(type(exc)) as caught:
                decode_payload(name, payload)
            assert str(caught.value) == str(exc)
        else:
            assert decode_payload(name, payload) == expected


class RecordingListener:
    def __init__(self) -> None:
        self.readings: list = []
        self.statuses: list = []

    def batch_received(self, readings, statuses, events) -> None:
        self.readings.extend(readings)
        self.statuses.extend(statuses)


def test_ingest_workers_store_telemetry_and_hand_the_newest_readings_to_the_listener(
        tmp_path, mosquitto, publisher):
    from cacao_dryer.contract import NodeState, NodeStatus

    settings = settings_for(tmp_path, mosquitto, ingest_workers=2)
    settings.data_dir.mkdir(parents=True)
    listener = RecordingListener()
    service = Ingest(settings, SqliteStore(settings.storage.path), listener)
    service.start()
    try:
        wait_for(lambda: service.connected, 60, "the gateway and its 2 workers to connect")
        assert service.subscriptions() == [  # telemetry is the workers'
            f"cacao/v1/{SITE}/+/status", f"cacao/v1/{SITE}/+/event"]
        nodes = ["secador-11", "secador-12"]
        publisher.send_many([(telemetry_topic(node), reading(node, seq))
                             for seq in range(1, 201) for node in nodes])
        publisher.send(topic(SITE, "secador-11", Channel.STATUS), encode(NodeStatus(
            site_id=SITE, node_id="secador-11", state=NodeState.ONLINE)))
        wait_for(lambda: service.stats.stored == 400, 30, "400 readings counted")
        wait_for(lambda: {(r.node_id, r.seq) for r in listener.readings} >= {
            ("secador-11", 200), ("secador-12", 200)}, 10, "the newest readings listened to")
        wait_for(lambda: [s.node_id for s in listener.statuses] == ["secador-11"], 10,
                 "the status listened to by the main process")
        # one reading per node and worker batch, not every reading
        assert len(listener.readings) < 400
        for node in nodes:
            assert service.store.seq_ranges(SITE, node) == [(1, 200)]
    finally:
        service.stop()
        service.store.close()
