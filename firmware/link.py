"""The node's MQTT link: paho-mqtt 2.x client + a forwarder that drains the durable outbox.

How nothing gets lost
---------------------
Readings are stored in the ``Outbox`` (on disk) before anything is sent. The forwarder thread
publishes outbox messages oldest-first at QoS 1 with at most ``max_inflight`` unacknowledged
(and never more than the broker's MQTT v5 Receive Maximum), and removes a message from the
outbox only when its PUBACK arrives with a success reason code.

On every (re)connect the link calls paho's ``drop_out_messages()`` inside ``on_connect``:
paho would otherwise re-send its own in-memory copies of unacknowledged messages after the
CONNACK, while the forwarder also restarts from the oldest unacknowledged outbox message -
two copies of each, and paho's copies could overtake older outbox messages. With paho's copies
dropped the outbox is the single source of truth: after a network outage, a broker restart or
a SIGKILL of the node, the backlog goes out once, in order, with its original payload bytes
(and so its original timestamps).

Messages without a PUBACK for ``ack_timeout_s`` while the connection stays up are published
again (duplicates are allowed: the gateway drops them by node + seq). An MQTT v5 PUBACK with a
reason code >= 0x80 (e.g. 0x87 Not authorized by the broker's ACL) is NOT an acknowledgement:
the message stays in the outbox and is retried with exponential backoff. MQTT 3.1.1 has no
reason codes: a broker that refuses a publish there (Mosquitto's ACL) still sends a plain
PUBACK and the message is gone - one more reason to use MQTT v5.

Thread model: paho's network thread only posts events (connected, disconnected, acked) to a
queue; the forwarder thread owns all in-flight bookkeeping. A small lock ("generation lock")
makes sure no publish of an old connection's plan slips in after ``on_connect`` has dropped
paho's copies.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cacao_dryer.errors import ConfigError
from firmware.config import MqttConfig, parse_broker_url
from firmware.outbox import Outbox, OutboxMessage

log = logging.getLogger(__name__)
_paho_log = logging.getLogger(f"{__name__}.paho")
# paho-mqtt 2.2 logs "Client is not connected..." at ERROR when its loop ends after a clean
# disconnect(); our own on_disconnect already says what happened.
_paho_log.addFilter(lambda record: not str(record.msg).startswith("Client is not connected"))

Publication = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
MessageHandler = Callable[[str, bytes], None]

REFUSED_RETRY_MIN_S = 5.0
REFUSED_RETRY_MAX_S = 300.0
REFUSED_LOG_EVERY_S = 60.0
IDLE_TICK_S = 1.0  # forwarder wakes at least this often to check ack timeouts and retries
MIN_TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class LinkStats:
    connected: bool
    connects_total: int  # successful CONNACKs since start
    sent_total: int  # outbox messages handed to the broker (incl. re-sends)
    acked_total: int  # outbox messages acknowledged and removed
    resent_total: int  # re-sends after a reconnect, an ack timeout or a refusal
    refused_total: int  # MQTT v5 PUBACKs with a failure reason code
    inflight: int
    depth: int  # messages waiting in the outbox (incl. in flight)
    dropped_total: int  # messages the outbox dropped because it was full (ever)
    last_error: str | None


@dataclass(slots=True)
class _InFlight:
    message: OutboxMessage
    mids: list[int]
    sent_at: float


@dataclass(slots=True)
class _Retry:
    due: float
    attempts: int


@dataclass(slots=True)
class _ForwarderState:
    """Owned by the forwarder thread only."""

    generation: int = -1
    window: int = 0
    cursor: int = 0  # highest outbox id planned in this connection
    inflight: dict[int, _InFlight] = field(default_factory=dict)  # outbox id → in flight
    mid_to_id: dict[int, int] = field(default_factory=dict)
    retry: dict[int, _Retry] = field(default_factory=dict)  # refused ids → next attempt


def read_password(settings: MqttConfig) -> str | None:
    """The broker password from ``settings.password_file`` (one line; None if not set)."""
    if settings.password_file is None:
        return None
    try:
        password = settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file {settings.password_file}: cannot read "
                          f"({exc.strerror})") from None
    if not password:
        raise ConfigError(f"mqtt.password_file {settings.password_file}: file is empty")
    return password


class MqttLink:
    """One MQTT connection of a node: durable outbox forwarding, direct publishes,
    subscriptions, Last Will and the retained online status sent on every connect."""

    def __init__(
        self,
        settings: MqttConfig,
        client_id: str,
        outbox: Outbox,
        will: tuple[str, bytes] | None = None,
        on_connect_publish: Sequence[Publication] | Callable[[], Sequence[Publication]] = (),
        *,
        session_expiry_s: int = 0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        ack_timeout_s: float | None = None,
        refused_retry_min_s: float = REFUSED_RETRY_MIN_S,
        refused_retry_max_s: float = REFUSED_RETRY_MAX_S,
    ) -> None:
        host, port, tls = parse_broker_url(settings.broker)
        if settings.tls_ca_file is not None and not tls:
            raise ConfigError(f"mqtt.tls_ca_file is set but broker {settings.broker!r} is not "
                              f"mqtts:// (TLS would not be used)")
        if settings.password_file is not None and settings.username is None:
            raise ConfigError("mqtt.password_file is set but mqtt.username is not")
        self.settings = settings
        self.client_id = client_id
        self._host, self._port, self._tls = host, port, tls
        self._outbox = outbox
        self._on_connect_publish = on_connect_publish
        self._session_expiry_s = session_expiry_s
        self._ack_timeout_s = ack_timeout_s or max(30.0, 2.0 * settings.keepalive_s)
        self._refused_retry_min_s = refused_retry_min_s
        self._refused_retry_max_s = refused_retry_max_s
        self._v5 = settings.protocol == "5"

        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._generation_lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._draining = False
        self._stopped = threading.Event()
        self._inflight_empty = threading.Event()
        self._inflight_empty.set()
        self._handlers: dict[str, MessageHandler] = {}
        self._handlers_lock = threading.Lock()
        self._state = _ForwarderState()
        self._counts = {"connects": 0, "sent": 0, "acked": 0, "resent": 0, "refused": 0}
        self._last_error: str | None = None
        self._last_refusal_log = -REFUSED_LOG_EVERY_S
        self._forwarder = threading.Thread(target=self._forward, name="mqtt-forwarder",
                                           daemon=True)

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else session_expiry_s == 0)
        self._client.suppress_exceptions = True  # a bug in a callback must not kill the link
        self._client.enable_logger(_paho_log)
        if settings.username is not None:
            self._client.username_pw_set(settings.username, read_password(settings))
        if tls:
            ca = str(settings.tls_ca_file) if settings.tls_ca_file is not None else None
            try:
                self._client.tls_set(ca_certs=ca)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.tls_ca_file {ca}: cannot load ({exc})") from None
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        # The forwarder is the flow control (max_inflight and the broker's Receive Maximum).
        # paho's own limit would queue a re-send behind the stuck copy it replaces.
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    # --- public API ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start forwarding."""
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(
            self._host, self._port, keepalive=self.settings.keepalive_s,
            clean_start=self._session_expiry_s == 0 if self._v5 else
            mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties)
        self._client.loop_start()
        self._forwarder.start()

    def stop(self, timeout: float = 5.0, final_publish: Publication | None = None) -> None:
        """Stop gracefully: send nothing new, wait (up to ``timeout``) for in-flight PUBACKs,
        publish ``final_publish`` (e.g. the retained offline status; a clean disconnect does
        not fire the Last Will), disconnect. Unsent messages stay in the outbox."""
        deadline = time.monotonic() + timeout
        self._draining = True
        self._events.put(("wake",))
        if self._connected:
            self._inflight_empty.wait(max(0.0, deadline - time.monotonic()))
        if final_publish is not None and self._connected:
            info = self.publish_direct(*final_publish)
            if info is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self._stopped.set()
        self._events.put(("stop",))
        if self._forwarder.is_alive():
            self._forwarder.join(max(0.1, deadline - time.monotonic()))
        self._outbox.flush()

    @property
    def connected(self) -> bool:
        return self._connected

    def wake(self) -> None:
        """Tell the forwarder that new messages are waiting in the outbox."""
        self._events.put(("wake",))

    def publish_direct(self, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Publish a message that is NOT kept in the outbox (e.g. the retained status).

        Sent only if connected right now (returns paho's message info), else dropped
        (returns None): a non-durable message must not pile up while offline.
        """
        if not self._connected:
            return None
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Call ``handler(topic, payload)`` for messages matching ``topic`` (QoS 1); the
        subscription is renewed on every reconnect. Handlers run on paho's network thread:
        keep them short; an exception is logged, not raised."""
        with self._handlers_lock:
            self._handlers[topic] = handler

        def deliver(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception as exc:
                self._last_error = f"handler for {message.topic} failed: {exc}"
                log.exception("handler for %s failed", message.topic)

        self._client.message_callback_add(topic, deliver)
        if self._connected:
            self._client.subscribe(topic, qos=1)

    def stats(self) -> LinkStats:
        return LinkStats(
            connected=self._connected,
            connects_total=self._counts["connects"],
            sent_total=self._counts["sent"],
            acked_total=self._counts["acked"],
            resent_total=self._counts["resent"],
            refused_total=self._counts["refused"],
            inflight=len(self._state.inflight),
            depth=self._outbox.depth(),
            dropped_total=self._outbox.dropped_total(),
            last_error=self._last_error,
        )

    # --- paho callbacks (network thread): post events, never block ----------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._last_error = f"broker {self.settings.broker} refused the connection: {reason}"
            log.warning("%s", self._last_error)
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if self._v5 else None
        with self._generation_lock:
            # paho would re-send its own copies of unacknowledged messages right after this
            # callback; the forwarder re-sends them from the outbox instead, in order.
            client.drop_out_messages()
            self._generation += 1
            self._connected = True
            self._events.put(("connected", self._generation, receive_maximum))
        self._counts["connects"] += 1
        log.info("connected to %s as %s", self.settings.broker, self.client_id)
        with self._handlers_lock:
            topics = list(self._handlers)
        for topic in topics:
            client.subscribe(topic, qos=1)
        publications = self._on_connect_publish
        if callable(publications):
            try:
                publications = publications()
            except Exception as exc:
                self._last_error = f"on_connect_publish failed: {exc}"
                log.exception("on_connect_publish failed")
                publications = ()
        for topic, payload, qos, retain in publications:
            client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._last_error = f"cannot connect to broker {self.settings.broker}"

    def _on_disconnect(self, client: mqtt.Client, userdata: object,
                       flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        was_connected, self._connected = self._connected, False
        self._events.put(("disconnected",))
        if was_connected and not self._stopped.is_set() and not self._draining:
            self._last_error = f"disconnected from {self.settings.broker}: {reason}"
            log.warning("%s", self._last_error)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason: ReasonCode, properties: Properties) -> None:
        self._events.put(("ack", mid, reason))

    # --- forwarder thread ----------------------------------------------------------------

    def _forward(self) -> None:
        state = self._state
        while not self._stopped.is_set():
            try:
                timeout = self._next_wakeup(state)
                try:
                    events = [self._events.get(timeout=timeout)]
                except queue.Empty:
                    events = []
                while True:  # take everything waiting: one fill per burst of acks
                    try:
                        events.append(self._events.get_nowait())
                    except queue.Empty:
                        break
                for event in events:
                    self._handle(state, event)
                now = time.monotonic()
                if not self._draining:
                    self._resend_overdue(state, now)
                    self._fill(state, now)
                if not state.inflight:
                    self._inflight_empty.set()
            except Exception as exc:  # keep forwarding whatever happens; say what went wrong
                self._last_error = f"forwarder: {exc}"
                log.exception("forwarder error")
                self._stopped.wait(IDLE_TICK_S)

    def _next_wakeup(self, state: _ForwarderState) -> float:
        if not (state.retry and self._connected):
            return IDLE_TICK_S
        first_due = min(r.due for r in state.retry.values())
        return min(IDLE_TICK_S, max(MIN_TICK_S, first_due - time.monotonic()))

    def _handle(self, state: _ForwarderState, event: tuple) -> None:
        kind = event[0]
        if kind == "connected":
            _, generation, receive_maximum = event
            # What was in flight on the old connection goes out again from the outbox.
            self._counts["resent"] += len(state.inflight)
            state.generation = generation
            state.window = min(self.settings.max_inflight, receive_maximum or 65_535)
            state.cursor = 0
            state.inflight.clear()
            state.mid_to_id.clear()
        elif kind == "ack":
            _, mid, reason = event
            self._acknowledge(state, mid, reason)

    def _acknowledge(self, state: _ForwarderState, mid: int, reason: ReasonCode) -> None:
        outbox_id = state.mid_to_id.pop(mid, None)
        if outbox_id is None:
            return  # a direct publish, or the other copy of a message already acknowledged
        entry = state.inflight.pop(outbox_id)
        for other in entry.mids:
            state.mid_to_id.pop(other, None)
        if reason.is_failure:
            self._refused(state, entry.message, reason)
            return
        state.retry.pop(outbox_id, None)
        self._outbox.remove([outbox_id])
        self._counts["acked"] += 1

    def _refused(self, state: _ForwarderState, message: OutboxMessage,
                 reason: ReasonCode) -> None:
        self._counts["refused"] += 1
        attempts = state.retry[message.id].attempts + 1 if message.id in state.retry else 0
        delay = min(self._refused_retry_max_s, self._refused_retry_min_s * 2 ** attempts)
        state.retry[message.id] = _Retry(time.monotonic() + delay, attempts)
        self._last_error = (f"broker refused {message.topic} {message.counter} seq "
                            f"{message.seq}: {reason} (0x{reason.value:02x})")
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSED_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning("%s; kept in the outbox, retrying in %.0f s (%d refused so far)",
                        self._last_error, delay, self._counts["refused"])

    def _resend_overdue(self, state: _ForwarderState, now: float) -> None:
        overdue = [entry for entry in state.inflight.values()
                   if now - entry.sent_at > self._ack_timeout_s]
        for entry in overdue:
            if not self._publish(state, entry.message, now, entry):
                return

    def _fill(self, state: _ForwarderState, now: float) -> None:
        room = state.window - len(state.inflight)
        if room <= 0 or not self._connected or state.generation != self._generation:
            return
        for outbox_id in sorted(i for i, r in state.retry.items() if r.due <= now):
            if room <= 0:
                return
            found = self._outbox.peek(1, after_id=outbox_id - 1)
            if not found or found[0].id != outbox_id:
                state.retry.pop(outbox_id)  # dropped from a full outbox meanwhile
                continue
            if outbox_id in state.inflight:
                continue
            if not self._publish(state, found[0], now):
                return
            room -= 1
        while room > 0:
            batch = self._outbox.peek(min(room, 256), after_id=state.cursor)
            if not batch:
                return
            for message in batch:
                if message.id in state.inflight or message.id in state.retry:
                    state.cursor = message.id
                    continue
                if not self._publish(state, message, now):
                    return
                state.cursor = message.id
                room -= 1
                if room <= 0:
                    return

    def _publish(self, state: _ForwarderState, message: OutboxMessage, now: float,
                 entry: _InFlight | None = None) -> bool:
        """Hand one outbox message to paho; False if the connection it was planned for is gone
        (the forwarder re-plans from the outbox when the next connection is up)."""
        with self._generation_lock:
            if not self._connected or self._generation != state.generation:
                return False
            info = self._client.publish(message.topic, message.payload, qos=message.qos,
                                        retain=message.retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._last_error = f"publish of {message.topic} seq {message.seq} failed: {info.rc}"
            return False
        resent = entry is not None or message.id in state.retry
        if entry is None:
            entry = _InFlight(message, [], now)
            state.inflight[message.id] = entry
        entry.mids.append(info.mid)
        entry.sent_at = now
        state.mid_to_id[info.mid] = message.id
        self._counts["sent"] += 1
        if resent:
            self._counts["resent"] += 1
        self._inflight_empty.clear()
        return True
