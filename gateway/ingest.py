"""MQTT ingest: every node's telemetry into the time-series store exactly once.

- A persistent MQTT v5 session (stable client id, session expiry) so the broker queues what
  arrives while the gateway is stopped; optionally a shared subscription so several gateways
  split one site's messages.
- Manual acknowledgement: a message is acknowledged only after its reading is durable — in the
  store, or, while the store is down, in the local spool (fsynced). Acknowledgements go out in
  the order the messages arrived. SIGKILL at any moment loses nothing acknowledged; what was
  not acknowledged is delivered again by the broker, and the store drops the duplicates by
  (site, node, seq).
- Batches: readings are written together, at most ``batch_max_readings`` at a time and at most
  ``batch_max_latency_s`` after the first one arrived.
- Invalid payloads are counted per reason, logged at most once per node per minute, and never
  stored; nothing a node sends can stop the gateway.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cacao_dryer.contract import (
    TOPIC_PREFIX,
    Channel,
    NodeEvent,
    NodeStatus,
    Telemetry,
    decode_message,
)
from cacao_dryer.errors import CacaoDryerError, PayloadError, TopicError
from firmware.config import parse_broker_url
from gateway.config import GatewaySettings
from gateway.spool import Spool
from gateway.timeseries import (
    StoredReading,
    StoreRejected,
    StoreUnavailable,
    TimeSeriesStore,
    missing_ranges,
)

log = logging.getLogger("cacao_dryer.gateway")

INVALID_LOG_INTERVAL_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
SPOOL_RETRY_S = 5.0  # how often an idle gateway tries to write its spool out


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0          # new readings written to the store (directly or from the spool)
    duplicates: int = 0      # readings the store already had (node replays, redeliveries)
    spooled: int = 0         # readings written to the spool while the store was down
    invalid: Counter[str] = field(default_factory=Counter)  # reason → count
    store_errors: int = 0


@dataclass
class NodeView:
    """What the gateway knows of one node from status and events (kept in memory for now;
    the metadata database will keep it)."""

    status: NodeStatus | None = None
    last_event: NodeEvent | None = None
    invalid: int = 0


class IngestListener(Protocol):
    """Receives what each batch brought, in the writer thread, after the readings are durable
    and before any message of the batch is acknowledged. Raising makes the ingest retry the
    whole batch later (with backoff), so whatever the listener records (node status, events,
    alerts) is as durable as the readings; it must therefore be idempotent (events carry
    their own per-node ``seq``)."""

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None: ...


class Ingest:
    def __init__(self, settings: GatewaySettings, store: TimeSeriesStore,
                 listener: IngestListener | None = None) -> None:
        self.settings = settings
        self.store = store
        self.listener = listener
        self.stats = IngestStats()
        self.nodes: dict[tuple[str, str], NodeView] = {}
        self._spool = Spool(settings.data_dir / "spool.jsonl")
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._invalid_logged_at: dict[str, float] = {}
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        mqtt_settings = settings.mqtt
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=mqtt_settings.client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        if mqtt_settings.username:
            password = (mqtt_settings.password_file.read_text().strip()
                        if mqtt_settings.password_file else None)
            self._client.username_pw_set(mqtt_settings.username, password)
        self._host, self._port, tls = parse_broker_url(mqtt_settings.broker)
        if tls:
            self._client.tls_set(ca_certs=str(mqtt_settings.tls_ca_file)
                                 if mqtt_settings.tls_ca_file else None)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.mqtt.session_expiry_s
        properties.ReceiveMaximum = self.settings.mqtt.receive_maximum
        self._client.connect_async(self._host, self._port,
                                   keepalive=self.settings.mqtt.keepalive_s,
                                   clean_start=False, properties=properties)
        self._client.loop_start()
        self._writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what has arrived, then disconnect (the session stays)."""
        self._stop.set()
        self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscriptions(self) -> list[str]:
        group = self.settings.mqtt.shared_group
        prefix = f"$share/{group}/" if group else ""
        return [f"{prefix}{TOPIC_PREFIX}/{site}/+/{channel.value}"
                for site in self.settings.sites
                for channel in (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT)]

    def gaps(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Sequence numbers of a node missing from the store: lost data (or not yet sent)."""
        return missing_ranges(self.store.seq_ranges(site_id, node_id))

    # --- paho callbacks (network thread): hand over, never block ------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object,
                    reason: object, _properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        self._connected.set()
        client.subscribe([(name, 1) for name in self.subscriptions()])
        log.info("connected to %s:%d, subscribed to %d topics", self._host, self._port,
                 len(self.subscriptions()))

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        self._inbox.put(Received(message.topic, bytes(message.payload), message.mid,
                                 message.qos))

    # --- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        last_flush_try = time.monotonic()
        while not (self._stop.is_set() and self._inbox.empty()):
            batch = self._next_batch()
            if batch:
                self._process_until_durable(batch)
            elif len(self._spool) and time.monotonic() - last_flush_try > SPOOL_RETRY_S:
                last_flush_try = time.monotonic()
                self._persist([])  # quiet site: still bring the spool home when the store is back

    def _next_batch(self) -> list[Received]:
        try:
            first = self._inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_max_latency_s
        while len(batch) < self.settings.batch_max_readings:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._inbox.get(timeout=max(0.0, remaining))
                             if remaining > 0 else self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _process_until_durable(self, batch: list[Received]) -> None:
        readings, statuses, events = self._decode(batch)
        delay = RETRY_MIN_S
        persisted = False
        while True:
            try:
                if not persisted:
                    self._persist(readings)
                    persisted = True
                if self.listener is not None and (readings or statuses or events):
                    self.listener.batch_received(readings, statuses, events)
                break
            except Exception as exc:  # the spool (disk full) or the listener failed: retry
                self.stats.store_errors += 1
                log.error("cannot make a batch of %d messages durable (%s); retrying in %.1f s",
                          len(batch), exc, delay)
                if self._stop.wait(delay):
                    return  # stopping: unacknowledged, so the broker delivers them again
                delay = min(delay * 2, RETRY_MAX_S)
        for message in batch:  # in arrival order, as MQTT requires for QoS 1
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)

    def _decode(self, batch: list[Received]
                ) -> tuple[list[StoredReading], list[NodeStatus], list[NodeEvent]]:
        readings: list[StoredReading] = []
        statuses: list[NodeStatus] = []
        events: list[NodeEvent] = []
        for message in batch:
            self.stats.received += 1
            try:
                site_id, node_id, decoded = decode_message(message.topic, message.payload)
            except (PayloadError, TopicError) as exc:
                self._invalid(message.topic, exc)
                continue
            except Exception as exc:  # never let a payload stop the gateway
                self._invalid(message.topic, CacaoDryerError(f"{message.topic}: {exc!r}"))
                continue
            view = self.nodes.setdefault((site_id, node_id), NodeView())
            if isinstance(decoded, Telemetry):
                readings.append(StoredReading.from_telemetry(decoded))
            elif isinstance(decoded, NodeStatus):
                view.status = decoded
                statuses.append(decoded)
            elif isinstance(decoded, NodeEvent):
                view.last_event = decoded
                events.append(decoded)
                log.info("%s/%s event %s: %s", site_id, node_id, decoded.type.value,
                         decoded.message)
        return readings, statuses, events

    def _persist(self, readings: list[StoredReading]) -> None:
        """Make readings durable: store them, or spool them while the store is down. The
        spool is written out first, so readings reach the store in arrival order."""
        if not readings and not len(self._spool):
            return
        new = 0
        try:
            if len(self._spool):
                self.stats.stored += self._spool.flush_into(self.store)
                log.info("spool written to the store")
            if readings:
                new = self.store.write(readings)
        except (StoreUnavailable, StoreRejected) as exc:
            # Unavailable: retried when the store is back. Rejected (credentials, privileges,
            # a field type clash): kept until an administrator fixes the store — spooled
            # readings are never dropped, and every attempt is logged and counted.
            self.stats.store_errors += 1
            if readings:
                log.warning("store cannot take readings (%s): spooling %d", exc, len(readings))
                self._spool.append(readings)
                self.stats.spooled += len(readings)
            return
        self.stats.stored += new
        self.stats.duplicates += len(readings) - new

    def _invalid(self, topic_name: str, exc: Exception) -> None:
        reason = str(exc)
        parts = topic_name.split("/")
        key = "/".join(parts[2:4]) if len(parts) >= 4 else topic_name
        self.stats.invalid[_reason_kind(reason)] += 1
        now = time.monotonic()
        last = self._invalid_logged_at.get(key)
        if last is None or now - last >= INVALID_LOG_INTERVAL_S:
            self._invalid_logged_at[key] = now
            log.warning("invalid message from %s (not stored): %s", key, reason[:300])


def _reason_kind(reason: str) -> str:
    """A short, bounded label for counting invalid messages by kind."""
    for kind in ("not valid JSON", "exceeds", "schema_version", "payload names", "topic",
                 "nested too deeply", "expected a JSON object"):
        if kind in reason:
            return kind
    return "invalid field"
