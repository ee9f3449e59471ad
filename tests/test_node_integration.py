"""A real `cacao-dryer node run` process (simulated dryer) against a real private Mosquitto:
every reading arrives through a broker restart and a SIGKILL of the node; thresholds pushed as
retained config are applied and acknowledged; the Last Will announces a dead node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomli_w
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.contract import (
    Channel,
    EventType,
    NodeConfig,
    NodeState,
    Thresholds,
    decode,
    encode,
    topic,
)

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parent.parent / "firmware" / "examples" / "simulated.toml"
SITE, NODE = "demo", "secador-it"


def write_config(folder: Path, broker: MosquittoBroker) -> Path:
    data = tomllib.loads(EXAMPLE.read_text())
    data |= {"node_id": NODE, "site_id": SITE, "data_dir": str(folder / "data"),
             "sample_interval_s": 1.0, "status_interval_s": 30.0}
    data["mqtt"] = {"broker": "mqtt://127.0.0.1:1", "protocol": "5"}  # overridden by --broker
    data["simulation"] |= {"speed": 100.0, "start": "2026-01-10T15:00:00+00:00"}
    path = folder / "node.toml"
    path.write_text(tomli_w.dumps(data))
    return path


class NodeProcess:
    def __init__(self, config: Path, broker: MosquittoBroker) -> None:
        self.config, self.broker = config, broker
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "node.log"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config",
             str(self.config), "--broker", self.broker.url],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=30)


@pytest.fixture
def node(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[NodeProcess]:
    process = NodeProcess(write_config(tmp_path, mosquitto), mosquitto)
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()
        process.process.wait()


def telemetry_seqs(subscriber: Subscriber) -> list[int]:
    return [json.loads(p)["seq"] for t, p, _ in subscriber.messages()
            if t.endswith("/telemetry")]


def status_states(subscriber: Subscriber) -> list[str]:
    return [json.loads(p)["state"] for t, p, _ in subscriber.messages() if t.endswith("/status")]


def node_events(subscriber: Subscriber) -> list:
    return [decode(Channel.EVENT, p) for t, p, _ in subscriber.messages()
            if t.endswith("/event")]


def test_every_reading_arrives_through_broker_restart_and_node_sigkill(node, mosquitto):
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/#", "gateway-test") as subscriber:
        node.start()
        wait_for(lambda: len(set(telemetry_seqs(subscriber))) >= 200, 60, "200 readings")
        mosquitto.stop()          # broker down: the node keeps measuring into its outbox
        mosquitto.start()
        subscriber.wait_connected(20)
        wait_for(lambda: max(telemetry_seqs(subscriber), default=0) >= 500, 60, "500 readings")
        node.kill()               # SIGKILL mid-stream: no goodbye, no flush
        wait_for(lambda: "offline" in status_states(subscriber), 30, "Last Will")
        node.start()
        wait_for(lambda: max(telemetry_seqs(subscriber), default=0) >= 1000, 90,
                 "1,000 readings")
        assert node.terminate() == 0
        seqs = telemetry_seqs(subscriber)
        top = max(seqs)
        missing = sorted(set(range(1, top + 1)) - set(seqs))
        assert missing == [], f"lost readings: {missing[:20]}"
        assert status_states(subscriber)[-1] == NodeState.OFFLINE.value
        boots = [e for e in node_events(subscriber) if e.type is EventType.BOOT]
        assert len(boots) == 2


def test_pushed_thresholds_are_applied_and_acknowledged(node, mosquitto):
    config = NodeConfig(version=7, issued_at="2026-01-10T15:00:00Z", issued_by="tecnico",
                        thresholds=Thresholds(air_temp_warn_c=50.0))
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/#", "gateway-test") as subscriber:
        subscriber.publish(topic(SITE, NODE, Channel.CONFIG), encode(config), retain=True)
        node.start()

        def applied() -> bool:
            return any(e.type is EventType.CONFIG_APPLIED and e.data["version"] == 7
                       for e in node_events(subscriber))

        wait_for(applied, 30, "config_applied for version 7")
        wait_for(lambda: any(json.loads(p).get("config_version") == 7
                             for t, p, _ in subscriber.messages() if t.endswith("/telemetry")),
                 30, "telemetry under config version 7")
        node.terminate()
    stored = json.loads((node.config.parent / "data" / "config.json").read_text())
    assert stored["version"] == 7 and stored["thresholds"]["air_temp_warn_c"] == 50.0


def test_an_invalid_pushed_config_is_rejected_in_one_line(node, mosquitto):
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/event", "gateway-test") as subscriber:
        subscriber.publish(topic(SITE, NODE, Channel.CONFIG), b'{"schema_version":1,'
                           b'"version":2,"issued_at":"2026-01-10T15:00:00Z",'
                           b'"thresholds":{"air_temp_limit_c":"hot"}}', retain=True)
        node.start()

        def rejected() -> list:
            return [e for e in node_events(subscriber) if e.type is EventType.CONFIG_REJECTED]

        wait_for(lambda: bool(rejected()), 30, "config_rejected")
        node.terminate()
    assert "thresholds.air_temp_limit_c" in rejected()[0].message
    assert "\n" not in rejected()[0].message


def test_a_full_outbox_reports_exactly_which_readings_it_dropped(tmp_path, mosquitto):
    """Broker down, a 20 KB outbox overflows; when the broker is back the node reports the
    dropped ranges once, and dropped ∪ delivered is every sequence number."""
    from cacao_dryer.clock import ManualClock
    from firmware.config import load_node_config
    from firmware.node import build_node

    settings = load_node_config(EXAMPLE)
    settings = settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "mqtt": settings.mqtt.model_copy(update={"broker": mosquitto.url}),
        "outbox": settings.outbox.model_copy(update={"max_mb": 0.02})})
    clock = ManualClock(datetime(2026, 1, 10, 15, tzinfo=UTC))
    node = build_node(settings, clock=clock)
    mosquitto.stop()
    for second in range(1200):  # 120 readings of ~450 bytes: far more than 20 KB
        node.agent.step(clock.now())
        if second % 10 == 0:
            node.agent.cycle(clock.now())
        clock.advance(1)
    node.agent.report_overflow()  # offline: nothing reported, ranges stay on disk
    mosquitto.start()
    with Subscriber(mosquitto, "cacao/v1/demo/+/#", "gateway-test") as subscriber:
        node.link.start()
        wait_for(lambda: node.link.connected, 20, "the node to reconnect")
        node.agent.report_overflow()
        wait_for(lambda: node.outbox.depth() == 0, 20, "the outbox to drain")
        overflow = [e for e in node_events(subscriber) if e.type is EventType.QUEUE_OVERFLOW]
        node.link.stop(timeout=5)
    node.outbox.close()
    assert len(overflow) == 1
    ranges = [r for r in overflow[0].data["ranges"] if r["counter"] == "telemetry"]
    dropped = {seq for r in ranges for seq in range(r["first_seq"], r["last_seq"] + 1)}
    delivered = set(telemetry_seqs(subscriber))
    assert dropped and dropped.isdisjoint(delivered)
    assert dropped | delivered == set(range(1, 121))


def test_a_restarted_simulated_node_continues_its_time(node, mosquitto):
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/telemetry", "gateway-test") as subscriber:
        node.start()
        wait_for(lambda: len(subscriber.payloads()) >= 50, 30, "50 readings")
        node.kill()
        node.start()
        wait_for(lambda: len({json.loads(p)["seq"] for p in subscriber.payloads()}) >= 120, 30,
                 "120 readings")
        node.terminate()
    first_seen: dict[int, str] = {}
    for payload in subscriber.payloads():
        message = json.loads(payload)
        first_seen.setdefault(message["seq"], message["measured_at"])
    times = [datetime.fromisoformat(first_seen[seq]) for seq in sorted(first_seen)]
    assert times == sorted(times), "simulated time went backwards after the restart"
