"""Load tools for the gateway benchmarks (not part of the gateway).

- ``RawPublisher``: a QoS 1 publisher that pipelines pre-encoded PUBLISH packets up to the
  broker's Receive Maximum and counts PUBACKs — as fast as the broker takes messages, with
  almost no Python per message, so the publisher side is not what a benchmark measures.
- ``telemetry_payloads``: realistic telemetry of 100 simulated nodes (the contract's JSON).
- ``create_session``: make the persistent session (and its subscription) a consumer will
  have, so the broker queues a backlog for it before it starts.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic
from gateway.mqtt_in import connect_packet, decode_varint, encode_varint, read_properties

SITE = "bench"
NODES = [f"secador-{i:03d}" for i in range(1, 101)]
T0 = datetime(2026, 1, 10, tzinfo=UTC)


def reading(node: str, seq: int, site: str = SITE) -> bytes:
    """One node's telemetry as it sends it (5 measurements, the state, no alarms)."""
    return encode(Telemetry(site_id=site, node_id=node, seq=seq,
                            measured_at=T0 + timedelta(seconds=10 * seq),
                            readings={"air_temp_c": 41.2, "air_rh_pct": 55.0,
                                      "ambient_temp_c": 29.0, "ambient_rh_pct": 70.0,
                                      "bean_moisture_pct_wb": 33.3},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


def telemetry_payloads(per_node: int, first_seq: int = 1, nodes: Sequence[str] = NODES
                       ) -> list[tuple[str, bytes]]:
    """(topic, payload) of ``per_node`` readings of every node, interleaved as they come."""
    return [(topic(SITE, node, Channel.TELEMETRY), reading(node, seq))
            for seq in range(first_seq, first_seq + per_node) for node in nodes]


def create_session(port: int, client_id: str, filters: Sequence[str],
                   timeout: float = 10.0) -> None:
    """Connect once with a persistent session, subscribe at QoS 1, disconnect."""
    import threading

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe([(name, 1) for name in filters])
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError(f"{client_id} could not subscribe")
    finally:
        client.disconnect()
        client.loop_stop()


class RawPublisher:
    """Pipelined QoS 1 publishing of pre-encoded packets (benchmarks only)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id, keepalive_s=60, clean_start=True,
                                         session_expiry_s=0, receive_maximum=100))
        self._buffer = bytearray()
        kind, body = self._read_packet()
        if kind != 2 or body[1] != 0:
            raise ConnectionError(f"broker refused the publisher: {bytes(body)!r}")
        properties, _ = read_properties(bytes(body), 2)
        self.window = int(properties.get(0x21, 65535))  # type: ignore[call-overload]

    def _read_packet(self) -> tuple[int, bytearray]:
        while True:
            if len(self._buffer) >= 2:
                decoded = decode_varint(self._buffer, 1)
                if decoded is not None and decoded[1] + decoded[0] <= len(self._buffer):
                    length, start = decoded
                    kind = self._buffer[0] >> 4
                    body = self._buffer[start:start + length]
                    del self._buffer[:start + length]
                    return kind, body
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("broker closed the connection")
            self._buffer += data

    def publish_all(self, messages: Sequence[tuple[str, bytes]]) -> float:
        """Publish every message at QoS 1 and wait for all PUBACKs; returns messages/s."""
        started = time.perf_counter()
        sent = acked = 0
        total = len(messages)
        while acked < total:
            chunk = []
            while sent < total and sent - acked < self.window and len(chunk) < 2000:
                name, payload = messages[sent]
                packet_id = sent % 65535 + 1
                raw_topic = name.encode()
                body = (struct.pack("!H", len(raw_topic)) + raw_topic
                        + struct.pack("!H", packet_id) + b"\x00" + payload)
                chunk.append(b"\x32" + encode_varint(len(body)) + body)
                sent += 1
            if chunk:
                self.sock.sendall(b"".join(chunk))
            acked += self._count_acks(block=sent - acked >= self.window or sent == total)
        return total / (time.perf_counter() - started)

    def _count_acks(self, block: bool) -> int:
        self.sock.setblocking(block)
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return 0
        finally:
            self.sock.setblocking(True)
        if not data:
            raise ConnectionError("broker closed the connection")
        self._buffer += data
        count, pos = 0, 0
        while len(self._buffer) - pos >= 2:
            decoded = decode_varint(self._buffer, pos + 1)
            if decoded is None or decoded[1] + decoded[0] > len(self._buffer):
                break
            if self._buffer[pos] >> 4 == 4:
                count += 1
            pos = decoded[1] + decoded[0]
        del self._buffer[:pos]
        return count

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()
