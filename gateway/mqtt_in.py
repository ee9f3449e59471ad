"""The ingest's MQTT v5 receiving connection: a small subscriber built for throughput.

Why not paho here: paho reads every incoming packet with three or more ``recv`` calls (command
byte, each length byte, body) and wakes its network thread through a socket pair for every
acknowledgement; measured on a 2-core machine that caps one paho subscriber acknowledging by
hand at about 6,600 messages/s, far below the 20,000 readings/s a large site's gateway must
take (bench/GATEWAY_RESULTS.md). This client does only what the ingest needs and does it in
bulk:

- reads the socket in 256 KiB chunks and cuts every complete packet out of the buffer in one
  pass; the PUBLISH packets of a chunk go to ``on_messages`` as one list;
- acknowledges a whole list of messages with one write (``ack``), in the order given (MQTT
  requires QoS 1 acknowledgements in arrival order, which the ingest keeps);
- holds itself to the Receive Maximum it announced: with that many messages unacknowledged it
  stops reading the socket (what else arrives waits there, undecoded, and in the broker).
  Mosquitto 2.0.11 sends a resumed session's whole offline queue after the first
  acknowledgement; without this a 200,000-reading backlog took ~140 MB per process;
- a persistent session (clean start off, session expiry, Receive Maximum), subscriptions
  (re)made at every connect, keepalive pings, reconnect with backoff, TLS, user/password;
- acknowledgements of messages received on an earlier connection are never sent: after a
  reconnect the broker sends every unacknowledged message again under its old packet id, and
  a late PUBACK from before could acknowledge a different message that reused the id. The
  store drops the duplicate those redeliveries make.

Everything on the socket happens in one network thread (OpenSSL connections must not be read
and written from two threads at once); ``ack`` and ``stop`` hand their packets over through a
wake-up socket pair, once per call, not per message. The receiving side needs no more than
MQTT v5 defines for a subscriber at QoS 1: no publishing, no QoS 2 (the subscriptions ask for
QoS 1, so the broker never sends QoS 2), no topic aliases (not announced, so never sent), no
enhanced authentication.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firmware.config import parse_broker_url
from gateway.config import GatewayMqttConfig

log = logging.getLogger("cacao_dryer.gateway.mqtt")

READ_CHUNK = 256 * 1024
MAX_PACKET_BYTES = 1024 * 1024  # announced to the broker: larger messages never reach us
CONNECT_TIMEOUT_S = 10.0
TOPIC_CACHE_SIZE = 10_000  # distinct topic names remembered (a site has a few per node)
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0

# Control packet types (MQTT v5 §2.1.2).
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

# Property identifiers we read or write (§2.2.2.2) and the wire type of every property.
SESSION_EXPIRY, RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE = 0x11, 0x21, 0x27
SERVER_KEEP_ALIVE, REASON_STRING = 0x13, 0x1F
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _U32, 0x12: _UTF8, 0x13: _U16, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _U16, 0x22: _U16,
    0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE, 0x29: _BYTE,
    0x2A: _BYTE,
}
_DISCONNECT_PACKET = b"\xe0\x00"  # normal disconnection: the session stays on the broker
_PINGREQ_PACKET = b"\xc0\x00"


class ProtocolError(ConnectionError):
    """The broker sent something this client does not accept; the connection is dropped and
    made again."""


@dataclass(frozen=True, slots=True)
class Received:
    """One PUBLISH as received. ``connection`` numbers the connection it came on (acks for an
    older connection are not sent)."""

    topic: str
    payload: bytes
    packet_id: int  # 0 for QoS 0
    qos: int
    retain: bool = False
    connection: int = 0


# --- wire encoding (pure) ---------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """MQTT's Variable Byte Integer (1-4 bytes, 7 bits each, least significant first)."""
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if ``data`` ends before the integer does."""
    value, shift = 0, 0
    for index in range(pos, min(pos + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(data) - pos >= 4:
        raise ProtocolError("variable byte integer longer than 4 bytes")
    return None


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def connect_packet(client_id: str, *, keepalive_s: int, clean_start: bool,
                   session_expiry_s: int, receive_maximum: int,
                   username: str | None = None, password: str | None = None) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) \
        | (0x40 if password is not None else 0)
    properties = (struct.pack("!BI", SESSION_EXPIRY, session_expiry_s)
                  + struct.pack("!BH", RECEIVE_MAXIMUM, receive_maximum)
                  + struct.pack("!BI", MAXIMUM_PACKET_SIZE, MAX_PACKET_BYTES))
    body = (_utf8("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive_s)
            + encode_varint(len(properties)) + properties + _utf8(client_id))
    if username is not None:
        body += _utf8(username)
    if password is not None:
        raw = password.encode("utf-8")
        body += struct.pack("!H", len(raw)) + raw
    return _packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, filters: Sequence[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00" + b"".join(
        _utf8(name) + bytes((qos,)) for name in filters)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def puback_packets(packet_ids: Sequence[int]) -> bytes:
    """PUBACKs (success, so the 2-byte short form) for these packet ids, in order."""
    return b"".join(struct.pack("!BBH", 0x40, 2, packet_id) for packet_id in packet_ids)


def read_properties(data: bytes, pos: int) -> tuple[dict[int, object], int]:
    """The property block at ``pos``: ({identifier: value}, position after the block)."""
    decoded = decode_varint(data, pos)
    if decoded is None:
        raise ProtocolError("truncated properties")
    length, pos = decoded
    end = pos + length
    found: dict[int, object] = {}
    while pos < end:
        identifier = data[pos]
        kind = _PROPERTY_TYPES.get(identifier)
        pos += 1
        value: object
        if kind == _BYTE:
            value, pos = data[pos], pos + 1
        elif kind == _U16:
            value, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif kind == _U32:
            value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif kind == _VARINT:
            varint = decode_varint(data, pos)
            if varint is None:
                raise ProtocolError("truncated property")
            value, pos = varint
        elif kind in (_UTF8, _BINARY):
            size = struct.unpack_from("!H", data, pos)[0]
            raw = data[pos + 2:pos + 2 + size]
            value, pos = (raw.decode("utf-8", "replace") if kind == _UTF8 else raw), \
                pos + 2 + size
        elif kind == _PAIR:
            key_size = struct.unpack_from("!H", data, pos)[0]
            value_size = struct.unpack_from("!H", data, pos + 2 + key_size)[0]
            value, pos = None, pos + 4 + key_size + value_size
        else:
            raise ProtocolError(f"unknown property 0x{identifier:02x}")
        found[identifier] = value
    if pos != end:
        raise ProtocolError("property block length does not match its properties")
    return found, end


# --- the client -----------------------------------------------------------------------------

class MqttReceiver:
    """A persistent MQTT v5 subscription delivering messages in lists to ``on_messages``
    (called in the network thread: it must hand over, never block)."""

    def __init__(self, settings: GatewayMqttConfig, client_id: str, filters: Sequence[str],
                 on_messages: Callable[[list[Received]], object], *,
                 reconnect_min_s: float = RECONNECT_MIN_S,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        self.client_id = client_id
        self.filters = list(filters)
        self.receive_maximum = settings.receive_maximum
        self._settings = settings
        self._on_messages = on_messages
        self._host, self._port, self._tls = parse_broker_url(settings.broker)
        self._password = (settings.password_file.read_text().strip()
                          if settings.password_file else None)
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._stop = threading.Event()
        self._connected = threading.Event()   # CONNACK received
        self._subscribed = threading.Event()  # ... and SUBACK
        self._lock = threading.Lock()
        self._outgoing: list[bytes] = []
        self._connection = 0
        self._keepalive = settings.keepalive_s  # the broker may impose another (CONNACK)
        self._session_present = False
        self._finishing = False
        self._inflight = 0  # QoS 1 messages of this connection not acknowledged yet
        self._held_back = False  # complete PUBLISH packets wait in the buffer for room
        self._topics: dict[bytes, str] = {}  # topic names as received → the one str each
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"mqtt-in-{client_id}",
                                        daemon=True)

    # --- API (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def finish_session(self) -> None:
        """Keep the current connection (for the last acknowledgements) but do not connect
        again once it ends: a stopping gateway must not take its client id back from the one
        that replaces it."""
        self._finishing = True

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect normally (the session and its queued messages stay on the broker)."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    @property
    def connected(self) -> bool:
        """Connected and subscribed (the broker acknowledged the subscriptions)."""
        return self._subscribed.is_set()

    @property
    def window_full(self) -> bool:
        """True when the broker may not send more before something is acknowledged (MQTT v5
        Receive Maximum): a batch waiting for more messages may stop waiting."""
        return self._inflight >= self.receive_maximum

    def ack(self, messages: Sequence[Received]) -> int:
        """Acknowledge these messages (QoS 1 ones of the current connection) in one write;
        returns how many acknowledgements were queued."""
        with self._lock:
            current = self._connection
            ids = [m.packet_id for m in messages if m.qos == 1 and m.connection == current]
            if not ids or not self._connected.is_set():
                return 0
            self._outgoing.append(puback_packets(ids))
            self._inflight = max(0, self._inflight - len(ids))
        self._wake()
        return len(ids)

    # --- the network thread ---------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (buffer full) or stopping
            self._wake_w.send(b"\x00")

    def _run(self) -> None:
        delay = self._reconnect[0]
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except (OSError, ssl.SSLError) as exc:  # ProtocolError is a ConnectionError
                if not self._stop.is_set():
                    log.warning("MQTT %s: connection to %s:%d lost or refused (%s)",
                                self.client_id, self._host, self._port, exc)
            except Exception:  # a packet this parser trips over: drop the connection, go on
                log.exception("MQTT %s: cannot read the broker's packets; reconnecting",
                              self.client_id)
            finally:
                with self._lock:
                    self._connected.clear()
                    self._subscribed.clear()
                    self._connection += 1
                    self._inflight = 0
                    self._held_back = False
                    self._outgoing.clear()
            if self._finishing:
                return
            if time.monotonic() - started > 60:
                delay = self._reconnect[0]  # it was up for a while: a new outage
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._reconnect[1])

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            context = ssl.create_default_context(
                cafile=str(self._settings.tls_ca_file) if self._settings.tls_ca_file else None)
            sock = context.wrap_socket(sock, server_hostname=self._host)
        sock.settimeout(CONNECT_TIMEOUT_S)
        return sock

    def _session(self) -> None:
        """One connection: CONNECT, then read and dispatch until it ends or stop()."""
        settings = self._settings
        sock = self._open_socket()
        keepalive = settings.keepalive_s
        try:
            sock.sendall(connect_packet(
                self.client_id, keepalive_s=keepalive, clean_start=False,
                session_expiry_s=settings.session_expiry_s,
                receive_maximum=settings.receive_maximum, username=settings.username,
                password=self._password))
            sock.setblocking(False)
            selector = selectors.DefaultSelector()
            selector.register(sock, selectors.EVENT_READ, "broker")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            buffer = bytearray()
            chunk = bytearray(READ_CHUNK)
            view = memoryview(chunk)
            connack_by = time.monotonic() + CONNECT_TIMEOUT_S
            last_sent = last_heard = time.monotonic()
            reading = True  # the socket is read (not while the receive window is full)
            while True:
                now = time.monotonic()
                if not self._connected.is_set() and now > connack_by:
                    raise ProtocolError("no CONNACK in time")
                if self._stop.is_set():
                    self._send(sock, self._take_outgoing() + _DISCONNECT_PACKET)
                    return
                window_open = not self.window_full
                if window_open != reading:
                    # Back-pressure: with the window full, nothing more is read (the broker's
                    # further messages wait there and in the socket buffer) until the ingest
                    # acknowledges; not hearing the broker meanwhile is our choice.
                    reading = window_open
                    if reading:
                        selector.register(sock, selectors.EVENT_READ, "broker")
                    else:
                        selector.unregister(sock)
                    last_heard = now
                if self._connected.is_set():
                    keepalive = self._keepalive
                    if keepalive and reading and now - last_heard > 1.5 * keepalive:
                        raise ProtocolError(f"broker silent for {now - last_heard:.0f} s")
                    if keepalive and now - last_sent >= keepalive / 2:
                        self._send(sock, _PINGREQ_PACKET)  # answered by PINGRESP: heard
                        last_sent = now
                # Packets already read but held back by a full window, or decrypted TLS bytes
                # the selector cannot see: go on at once.
                ready = reading and (self._held_back or (
                    self._tls and sock.pending()))  # type: ignore[attr-defined]
                events = selector.select(timeout=0 if ready else 1.0)
                for key, _mask in events:
                    if key.data == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        ready = True
                if ready and reading:
                    while True:  # TLS may hold decrypted bytes the selector cannot see
                        try:
                            count = sock.recv_into(chunk)
                        except (BlockingIOError, ssl.SSLWantReadError):
                            break
                        if count == 0:
                            raise ConnectionError("the broker closed the connection")
                        buffer += view[:count]
                        last_heard = time.monotonic()
                        if not (self._tls and sock.pending()):  # type: ignore[attr-defined]
                            break
                    consumed = self._dispatch(sock, buffer)
                    del buffer[:consumed]
                outgoing = self._take_outgoing()
                if outgoing:
                    self._send(sock, outgoing)
                    last_sent = time.monotonic()
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _take_outgoing(self) -> bytes:
        with self._lock:
            data = b"".join(self._outgoing)
            self._outgoing.clear()
        return data

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        """Write everything (the socket is non-blocking: wait for room when it is full)."""
        view = memoryview(data)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                if time.monotonic() > deadline:
                    raise ConnectionError("the broker does not take our packets") from None
                select.select([], [sock], [], 0.5)
                continue
            view = view[sent:]

    def _dispatch(self, sock: socket.socket, buffer: bytearray) -> int:
        """Handle the complete packets at the start of ``buffer``, returns the bytes used.
        Stops before a QoS 1 PUBLISH the receive window has no room for (``_held_back``):
        it stays in ``buffer``, undecoded, until acknowledgements make room."""
        pos, end = 0, len(buffer)
        messages: list[Received] = []
        connection = self._connection
        room = self.receive_maximum - self._inflight
        topics = self._topics
        self._held_back = False
        while end - pos >= 2:
            first = buffer[pos]
            length = buffer[pos + 1]
            body = pos + 2
            if length & 0x80:  # telemetry is 128 B - 16 KiB: a 2-byte length, inlined
                if end - pos >= 3 and not buffer[pos + 2] & 0x80:
                    length = (length & 0x7F) | (buffer[pos + 2] << 7)
                    body = pos + 3
                else:
                    decoded = decode_varint(buffer, pos + 1)
                    if decoded is None:
                        break
                    length, body = decoded
            stop = body + length
            if stop > end:
                break
            if first >> 4 == PUBLISH:
                if not self._connected.is_set():
                    raise ProtocolError("PUBLISH before CONNACK")
                if first & 0x06:  # QoS 1 (2 is refused below)
                    if room <= 0:
                        self._held_back = True
                        break
                    room -= 1
                topic_end = body + 2 + ((buffer[body] << 8) | buffer[body + 1])
                raw_topic = bytes(buffer[body + 2:topic_end])
                topic = topics.get(raw_topic)
                if topic is None:  # one str per topic, not per message held in the window
                    if len(topics) >= TOPIC_CACHE_SIZE:
                        topics.clear()
                    topic = topics[raw_topic] = raw_topic.decode("utf-8", "replace")
                qos = (first >> 1) & 0x03
                cursor = topic_end
                packet_id = 0
                if qos:
                    if qos == 2:
                        raise ProtocolError("QoS 2 PUBLISH on a QoS 1 subscription")
                    packet_id = (buffer[cursor] << 8) | buffer[cursor + 1]
                    cursor += 2
                props = buffer[cursor]
                if props & 0x80:
                    decoded = decode_varint(buffer, cursor)
                    if decoded is None:
                        raise ProtocolError("truncated PUBLISH properties")
                    props, cursor = decoded
                else:
                    cursor += 1
                cursor += props
                messages.append(Received(topic, bytes(buffer[cursor:stop]), packet_id, qos,
                                         bool(first & 0x01), connection))
            else:
                self._control(sock, first >> 4, bytes(buffer[body:stop]))
            pos = stop
        if messages:
            with self._lock:
                self._inflight += sum(1 for m in messages if m.qos == 1)
            self._on_messages(messages)
        return pos

    def _control(self, sock: socket.socket, kind: int, body: bytes) -> None:
        if kind == CONNACK:
            if len(body) < 2:
                raise ProtocolError("short CONNACK")
            properties, _ = read_properties(body, 2) if len(body) > 2 else ({}, 2)
            if body[1] != 0:
                reason = properties.get(REASON_STRING) or ""
                raise ConnectionRefusedError(
                    f"broker refused the connection (reason 0x{body[1]:02x} {reason})".strip())
            self._keepalive = int(properties.get(  # type: ignore[call-overload]
                SERVER_KEEP_ALIVE, self._settings.keepalive_s))
            with self._lock:
                self._connected.set()
            self._send(sock, subscribe_packet(1, self.filters))
            self._session_present = bool(body[0] & 0x01)
        elif kind == SUBACK:
            properties, pos = read_properties(body, 2)
            refused = [(name, code) for name, code in zip(self.filters, body[pos:], strict=False)
                       if code >= 0x80]
            for name, code in refused:
                log.error("MQTT %s: broker refused the subscription %s (reason 0x%02x %s)",
                          self.client_id, name, code, properties.get(REASON_STRING) or "")
            self._subscribed.set()
            log.info("MQTT %s connected to %s:%d (session %s), subscribed to %d topics",
                     self.client_id, self._host, self._port,
                     "resumed" if self._session_present else "new",
                     len(self.filters) - len(refused))
        elif kind == DISCONNECT:
            code = body[0] if body else 0
            properties = read_properties(body, 1)[0] if len(body) > 1 else {}
            raise ConnectionError(f"broker disconnected us (reason 0x{code:02x} "
                                  f"{properties.get(REASON_STRING) or ''})".strip())
        elif kind == PINGRESP:
            return
        else:
            raise ProtocolError(f"unexpected packet type {kind}")
