"""Store-and-forward against a real Mosquitto: nothing is lost through broker restarts, node
SIGKILLs and outages; the backlog is replayed in order; a full outbox drops oldest, counted.

Every test waits on conditions (``wait_for``), never on fixed sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from firmware.config import MqttConfig
from firmware.link import MqttLink
from firmware.outbox import ROW_OVERHEAD_BYTES, DroppedRange, Outbox

TELEMETRY = "cacao/v1/site-a/node-1/telemetry"
STATUS = "cacao/v1/site-a/node-1/status"
PUBLISHER = Path(__file__).parent / "support" / "publisher_proc.py"

pytestmark = pytest.mark.integration


def reading(seq: int) -> bytes:
    return json.dumps({"seq": seq, "ts": time.time(), "air_temp_c": 41.5}).encode()


def seqs_received(subscriber: Subscriber) -> list[int]:
    return [json.loads(payload)["seq"] for payload in subscriber.payloads()]


def first_deliveries(seqs: list[int]) -> list[int]:
    """Sequence numbers in the order of their FIRST arrival (later duplicates ignored)."""
    seen: set[int] = set()
    order = []
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            order.append(seq)
    return order


def has_all(subscriber: Subscriber, count: int) -> bool:
    return set(seqs_received(subscriber)) >= set(range(1, count + 1))


@contextmanager
def running_link(broker: MosquittoBroker, outbox: Outbox, protocol: str = "5",
                 **options: object) -> Iterator[MqttLink]:
    settings = MqttConfig(broker=broker.url, protocol=protocol)  # type: ignore[arg-type]
    link = MqttLink(settings, "node-1", outbox, will=(STATUS, b'{"state": "offline"}'),
                    on_connect_publish=[(STATUS, b'{"state": "online"}', 1, True)],
                    reconnect_min_s=0.05, reconnect_max_s=0.5, **options)  # type: ignore[arg-type]
    link.start()
    try:
        yield link
    finally:
        link.stop(timeout=2)


class Adder(threading.Thread):
    """Adds readings to the outbox like the node loop does (store first, then wake)."""

    def __init__(self, outbox: Outbox, link: MqttLink, count: int) -> None:
        super().__init__(daemon=True)
        self.outbox, self.link, self.count = outbox, link, count
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.outbox.add(TELEMETRY, reading, "telemetry")
                self.link.wake()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(60)
        assert not self.is_alive() and self.error is None, self.error


def test_every_reading_arrives_when_the_broker_restarts_midway(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    with Subscriber(mosquitto, TELEMETRY, "gateway-test") as gateway, \
            Outbox(tmp_path / "outbox.sqlite", max_bytes=16_000_000) as outbox, \
            running_link(mosquitto, outbox) as link:
        adder = Adder(outbox, link, 1000)
        adder.start()
        wait_for(lambda: len(gateway.payloads()) >= 300, 20, "300 readings before the restart")
        mosquitto.stop()
        wait_for(lambda: not link.connected, 10, "the link to notice the broker is gone")
        mosquitto.start()
        adder.finish()
        wait_for(lambda: has_all(gateway, 1000), 30, "every seq 1..1000 at the subscriber")
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
        stats = link.stats()
    seqs = seqs_received(gateway)
    assert sorted(set(seqs)) == list(range(1, 1001))
    assert first_deliveries(seqs) == list(range(1, 1001))
    assert stats.connects_total >= 2
    assert stats.acked_total >= 1000


def test_every_reading_arrives_when_the_node_is_sigkilled_and_restarted(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    command = [sys.executable, str(PUBLISHER), "--broker", mosquitto.url,
               "--data-dir", str(tmp_path / "node"), "--count", "1000", "--topic", TELEMETRY,
               "--status-topic", STATUS, "--client-id", "node-1"]
    with Subscriber(mosquitto, TELEMETRY, "gateway-test") as gateway:
        first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert first.stdout is not None
        for line in first.stdout:
            if line.startswith("added") and int(line.split()[1]) >= 300:
                break
        first.kill()  # SIGKILL: no clean shutdown, no flush, mid-publish
        first.wait()
        first.stdout.close()
        assert first.returncode == -9
        with Subscriber(mosquitto, STATUS, "status-watch", persistent=False) as watch:
            wait_for(lambda: watch.payloads()[-1:] == [b"offline"], 10,
                     "the Last Will (retained offline status)")
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "drained" in second.stdout
        wait_for(lambda: has_all(gateway, 1000), 30, "every seq 1..1000 at the subscriber")
    payloads_by_seq: dict[int, set[bytes]] = defaultdict(set)
    for payload in gateway.payloads():
        payloads_by_seq[json.loads(payload)["seq"]].add(payload)
    assert sorted(payloads_by_seq) == list(range(1, 1001))
    reused = {seq: p for seq, p in payloads_by_seq.items() if len(p) > 1}
    assert reused == {}, f"sequence numbers reused for different payloads: {sorted(reused)}"
    pids = {json.loads(payload)["pid"] for payload in gateway.payloads()}
    assert len(pids) == 2  # both the killed and the restarted process delivered readings


def test_backlog_from_an_outage_is_replayed_in_order(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    with Subscriber(mosquitto, TELEMETRY, "gateway-test") as gateway:
        mosquitto.stop()  # the broker is down before the node starts
        with Outbox(tmp_path / "outbox.sqlite", max_bytes=16_000_000) as outbox, \
                running_link(mosquitto, outbox) as link:
            for _ in range(500):
                outbox.add(TELEMETRY, reading, "telemetry")
                link.wake()
            wait_for(lambda: link.stats().last_error is not None, 10, "a connection failure")
            assert not link.connected
            assert outbox.depth() == 500
            mosquitto.start()
            wait_for(lambda: has_all(gateway, 500), 30, "every seq 1..500 at the subscriber")
            wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
    assert first_deliveries(seqs_received(gateway)) == list(range(1, 501))


def test_full_outbox_drops_oldest_and_reports_what_was_dropped(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    row_bytes = len(TELEMETRY) + len(reading(100)) + ROW_OVERHEAD_BYTES
    with Subscriber(mosquitto, TELEMETRY, "gateway-test") as gateway:
        mosquitto.stop()
        with Outbox(tmp_path / "outbox.sqlite", max_bytes=50 * row_bytes) as outbox, \
                running_link(mosquitto, outbox) as link:
            for _ in range(200):
                outbox.add(TELEMETRY, reading, "telemetry")
                link.wake()
            dropped = outbox.take_dropped()
            assert len(dropped) == 1 and dropped[0].first_seq == 1
            last_dropped = dropped[0].last_seq
            assert dropped == [DroppedRange("telemetry", 1, last_dropped)]
            assert outbox.dropped_total() == last_dropped >= 140
            assert link.stats().dropped_total == last_dropped
            mosquitto.start()
            kept = range(last_dropped + 1, 201)
            wait_for(lambda: set(seqs_received(gateway)) >= set(kept), 30, "the kept readings")
            wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
    assert sorted(set(seqs_received(gateway))) == list(kept)


def test_mqtt_3_1_1_mode_loses_nothing_across_a_broker_restart(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    with Subscriber(mosquitto, TELEMETRY, "gateway-test", protocol="3.1.1") as gateway, \
            Outbox(tmp_path / "outbox.sqlite", max_bytes=16_000_000) as outbox, \
            running_link(mosquitto, outbox, protocol="3.1.1") as link:
        adder = Adder(outbox, link, 400)
        adder.start()
        wait_for(lambda: len(gateway.payloads()) >= 100, 20, "100 readings before the restart")
        mosquitto.stop()
        wait_for(lambda: not link.connected, 10, "the link to notice the broker is gone")
        mosquitto.start()
        adder.finish()
        wait_for(lambda: has_all(gateway, 400), 30, "every seq 1..400 at the subscriber")
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
    assert sorted(set(seqs_received(gateway))) == list(range(1, 401))
