"""Several gateways share one site through an MQTT v5 shared subscription and one InfluxDB 1.x:
100 nodes, two gateway processes (one with two ingest worker processes, one without), one
gateway SIGKILLed mid-run and started again as systemd would: every reading is stored exactly
once — no sequence number missing, none stored twice."""

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
from sqlalchemy import create_engine, text
from support import wait_for
from support.influxd import InfluxDaemon
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic

pytestmark = pytest.mark.integration

SITE = "coop-norte"
NODES = [f"secador-{i:03d}" for i in range(1, 101)]
PER_NODE = 60
GROUP = "coop-norte-gateways"
T0 = datetime(2026, 1, 10, 15, 0, tzinfo=UTC)


def telemetry(node: str, seq: int) -> bytes:
    return encode(Telemetry(site_id=SITE, node_id=node, seq=seq,
                            measured_at=T0 + timedelta(seconds=10 * seq),
                            readings={"air_temp_c": 40.0 + seq % 7, "air_rh_pct": 55.0},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


class GatewayProcess:
    """``cacao-dryer gateway run`` in its own process group (its workers included), as a
    systemd service runs it."""

    def __init__(self, folder: Path, broker: MosquittoBroker, influxd: InfluxDaemon,
                 client_id: str, workers: int, metadata_url: str) -> None:
        folder.mkdir(parents=True)
        self.config = folder / "gateway.toml"
        self.config.write_text(tomli_w.dumps({
            "sites": [SITE], "data_dir": str(folder / "data"),
            "mqtt": {"broker": broker.url, "client_id": client_id, "shared_group": GROUP},
            "storage": {"kind": "influxdb1", "url": influxd.url, "database": "cacao"},
            "metadata": {"url": metadata_url},  # one PostgreSQL shared by both gateways
            "ingest_workers": workers, "batch_max_latency_s": 0.05,
            "api": {"port": free_port()}}))  # never the machine's 8080
        self.log = folder / "gateway.log"
        self.client_id = client_id
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def telemetry_clients(self) -> list[str]:
        if not self.workers:
            return [self.client_id]
        return [f"{self.client_id}-w{i}" for i in range(1, self.workers + 1)]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the whole group: main process and workers die at once."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def subscribed(broker: MosquittoBroker, client_ids: list[str], since: int = 0) -> bool:
    """Mosquitto logged (``log_type subscribe``) each client's telemetry subscription."""
    lines = broker.log_file.read_text(errors="replace").splitlines()[since:]
    return all(any(f" {client_id} 1 $share/{GROUP}/" in line and line.endswith("/telemetry")
                   for line in lines) for client_id in client_ids)


def stored_per_node(influxd: InfluxDaemon) -> dict[str, tuple[int, int, int, int]]:
    """Per node: (points, distinct seqs, lowest seq, highest seq), straight from InfluxQL."""
    answer = influxd.query("SELECT count(seq), count(distinct(seq)), min(seq), max(seq) "
                           "FROM dryer_reading GROUP BY node", database="cacao")
    series = answer["results"][0].get("series", [])
    return {s["tags"]["node"]: tuple(int(v) for v in s["values"][0][1:]) for s in series}


def stored_total(influxd: InfluxDaemon) -> int:
    answer = influxd.query("SELECT count(seq) FROM dryer_reading", database="cacao")
    series = answer["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "mosquitto", extra=("log_type subscribe",))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def nodes(broker: MosquittoBroker) -> Iterator[mqtt.Client]:
    """100 nodes' QoS 1 traffic through one connection (the test decides what is sent)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="nodes", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, seqs: range) -> None:
    infos = [client.publish(topic(SITE, node, Channel.TELEMETRY), telemetry(node, seq),
                            qos=1) for seq in seqs for node in NODES]
    for info in infos:
        info.wait_for_publish(60)


def test_two_gateways_share_a_site_and_a_sigkill_stores_every_reading_exactly_once(
        tmp_path, broker, influxd, nodes, postgres_server):
    metadata_url = postgres_server.create_database()
    with_workers = GatewayProcess(tmp_path / "gw-a", broker, influxd, "gw-a", workers=2,
                                  metadata_url=metadata_url)
    in_process = GatewayProcess(tmp_path / "gw-b", broker, influxd, "gw-b", workers=0,
                                metadata_url=metadata_url)
    try:
        with_workers.start()
        in_process.start()
        members = [*with_workers.telemetry_clients, *in_process.telemetry_clients]
        wait_for(lambda: subscribed(broker, members), 30, "3 members in the shared group")

        publish(nodes, range(1, PER_NODE // 2 + 1))
        wait_for(lambda: stored_total(influxd) >= 1000, 30, "readings being stored")
        with_workers.kill()  # mid-run: its sessions hold unacknowledged and queued readings
        at_kill = stored_total(influxd)
        log_lines = len(broker.log_file.read_text(errors="replace").splitlines())

        publish(nodes, range(PER_NODE // 2 + 1, PER_NODE + 1))
        wait_for(lambda: stored_total(influxd) > at_kill + 500, 30,
                 "the surviving gateway to go on storing its share")
        # The killed gateway's share waits for it in its persistent sessions (Mosquitto
        # queues a shared subscription's messages for an offline member; it does not hand
        # them to the others): the site is not complete without it.
        assert stored_total(influxd) < len(NODES) * PER_NODE

        with_workers.start()  # systemd's Restart=always
        wait_for(lambda: subscribed(broker, with_workers.telemetry_clients, log_lines), 30,
                 "the restarted gateway's workers to resume their sessions")
        wait_for(lambda: stored_total(influxd) >= len(NODES) * PER_NODE, 60,
                 "every reading stored")
    finally:
        with_workers.stop()
        in_process.stop()
    stored = stored_per_node(influxd)
    # PER_NODE points, PER_NODE distinct seqs, all within 1..PER_NODE: each exactly once
    assert stored == {node: (PER_NODE, PER_NODE, 1, PER_NODE) for node in NODES}
    assert stored_total(influxd) == len(NODES) * PER_NODE
    # Both gateways registered the nodes they heard of in the one PostgreSQL, each once.
    engine = create_engine(metadata_url)
    try:
        with engine.connect() as connection:
            registered = connection.execute(text("SELECT node_id FROM nodes")).scalars().all()
    finally:
        engine.dispose()
    assert sorted(registered) == sorted(NODES)
