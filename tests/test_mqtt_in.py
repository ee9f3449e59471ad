"""The ingest's MQTT v5 receiver against a real private Mosquitto: wire encoding, bulk
delivery, acknowledgement, redelivery of what was not acknowledged, and no stale PUBACK after
a reconnect."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from gateway.config import GatewayMqttConfig
from gateway.mqtt_in import MqttReceiver, Received, decode_varint, encode_varint

TOPIC = "cacao/v1/coop/+/telemetry"


@given(st.integers(min_value=0, max_value=268_435_455))
def test_variable_byte_integers_round_trip(value):
    encoded = encode_varint(value)
    assert len(encoded) <= 4
    assert decode_varint(b"\x30" + encoded + b"rest", 1) == (value, 1 + len(encoded))


def test_a_truncated_variable_byte_integer_waits_for_more_bytes():
    assert decode_varint(b"\x30\xff\xff", 1) is None


class Inbox:
    def __init__(self) -> None:
        self.lists: queue.Queue[list[Received]] = queue.Queue()

    def take(self, count: int, timeout: float = 10.0) -> list[Received]:
        messages: list[Received] = []
        while len(messages) < count:
            messages += self.lists.get(timeout=timeout)
        return messages


@pytest.fixture
def receiver(mosquitto: MosquittoBroker) -> Iterator[tuple[MqttReceiver, Inbox]]:
    inbox = Inbox()
    settings = GatewayMqttConfig(broker=mosquitto.url, receive_maximum=50)
    client = MqttReceiver(settings, "receiver-test", [TOPIC], inbox.lists.put,
                          reconnect_min_s=0.05, reconnect_max_s=0.2)
    client.start()
    wait_for(lambda: client.connected, 10, "the receiver to connect and subscribe")
    yield client, inbox
    client.stop()


def publish(broker: MosquittoBroker, count: int, first: int = 1) -> None:
    with Subscriber(broker, "unused/topic", "publisher", persistent=False) as client:
        for seq in range(first, first + count):
            client.publish("cacao/v1/coop/secador-01/telemetry", str(seq).encode())


def test_messages_arrive_in_order_and_acknowledged_ones_are_not_delivered_again(
        mosquitto, receiver):
    client, inbox = receiver
    publish(mosquitto, 30)
    messages = inbox.take(30)
    assert [int(m.payload) for m in messages] == list(range(1, 31))
    assert client.ack(messages) == 30
    client.stop()
    restarted = MqttReceiver(GatewayMqttConfig(broker=mosquitto.url), "receiver-test", [TOPIC],
                             inbox.lists.put)
    restarted.start()
    try:
        wait_for(lambda: restarted.connected, 10, "the receiver to connect again")
        publish(mosquitto, 1, first=31)
        assert [int(m.payload) for m in inbox.take(1)] == [31]  # nothing redelivered
    finally:
        restarted.stop()


def test_the_broker_sends_no_more_than_the_receive_maximum_until_acknowledged(
        mosquitto, receiver):
    client, inbox = receiver
    publish(mosquitto, 80)
    first = inbox.take(50)
    wait_for(lambda: client.window_full, 5, "the window to be full")
    assert inbox.lists.empty()  # Receive Maximum 50: the other 30 wait at the broker
    client.ack(first)
    assert [int(m.payload) for m in inbox.take(30)] == list(range(51, 81))


def test_unacknowledged_messages_come_again_after_a_reconnect_and_stale_acks_are_not_sent(
        mosquitto, receiver):
    client, inbox = receiver
    publish(mosquitto, 10)
    before = inbox.take(10)
    mosquitto.restart()  # the connection breaks before the batch is acknowledged
    again = inbox.take(10, timeout=20)
    assert [m.payload for m in again] == [m.payload for m in before]
    # A PUBACK for the old connection's packet ids could acknowledge other messages that
    # reuse them: it is not sent. The redelivered copies are acknowledged instead.
    assert client.ack(before) == 0
    assert client.ack(again) == 10
