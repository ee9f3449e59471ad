"""The shipped bridge config (gateway/examples/mosquitto-bridge.conf) between two real
Mosquitto brokers on loopback: a collection center's broker forwards its site's readings to
the central broker, also those published while the uplink was down, and receives the
central side's configs. Delivery over the bridge is QoS 1: at least once, never lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway" / "examples" / \
    "mosquitto-bridge.conf"
SITE = "coop-norte"
# Lines of the example that only make sense in the field (the central broker's name, its
# credentials and TLS) or that the private test broker already sets.
FIELD_ONLY = ("address ", "remote_username ", "remote_password ", "bridge_cafile ",
              "bridge_insecure ", "persistence ", "max_queued_messages ", "max_queued_bytes ")


def bridge_lines(central_port: int) -> tuple[str, ...]:
    """The example bridge config, pointed at the private central broker."""
    kept = [line for line in EXAMPLE.read_text().splitlines()
            if line.strip() and not line.startswith("#") and not line.startswith(FIELD_ONLY)]
    assert any(line.startswith("topic ") for line in kept)
    index = kept.index(next(line for line in kept if line.startswith("connection ")))
    return (*kept[:index + 1], f"address 127.0.0.1:{central_port}", *kept[index + 1:])


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    central = MosquittoBroker(tmp_path / "central")
    central.start()
    center = MosquittoBroker(tmp_path / "center", extra=bridge_lines(central.port))
    center.start()
    yield center, central
    center.kill()
    central.kill()


def test_readings_reach_the_central_broker_also_those_sent_while_the_uplink_was_down(
        brokers):
    center, central = brokers
    with Subscriber(central, f"cacao/v1/{SITE}/+/telemetry", "central-gateway") as gateway, \
            Subscriber(center, f"cacao/v1/{SITE}/+/config", "node") as node:
        wait_for(lambda: "bridge-coop-norte" in central.log_tail(200), 20,
                 "the bridge to connect to the central broker")
        for seq in range(1, 51):
            node.publish(f"cacao/v1/{SITE}/secador-01/telemetry", f"{seq}".encode())
        wait_for(lambda: len(gateway.payloads()) == 50, 20, "50 readings at the center")

        central.stop()  # the uplink goes down; the node goes on publishing
        for seq in range(51, 101):
            node.publish(f"cacao/v1/{SITE}/secador-01/telemetry", f"{seq}".encode())
        central.start()
        gateway.wait_connected(20)
        # QoS 1 end to end: nothing lost; a message in flight when the link broke may come
        # twice (the gateway stores it once, by node and seq)
        wait_for(lambda: {int(p) for p in gateway.payloads()} == set(range(1, 101)), 60,
                 "the readings queued at the collection center")

        gateway.publish(f"cacao/v1/{SITE}/secador-01/config", b"thresholds v2", retain=True)
        wait_for(lambda: b"thresholds v2" in node.payloads(), 20,
                 "the central config at the collection center")
