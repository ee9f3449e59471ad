"""MQTT ingest: every node's telemetry into the time-series store exactly once.

- A persistent MQTT v5 session (stable client id, session expiry) so the broker queues what
  arrives while the gateway is stopped; optionally a shared subscription so several gateways
  split one site's messages (``docs/scaling.md``).
- Manual acknowledgement: a message is acknowledged only after its reading is durable — in the
  store, or, while the store is down, in the local spool (fsynced). Acknowledgements go out in
  the order the messages arrived, a whole batch in one write. SIGKILL at any moment loses
  nothing acknowledged; what was not acknowledged is delivered again by the broker, and the
  store drops the duplicates by (site, node, seq).
- Batches: readings are written together, at most ``batch_max_readings`` at a time and at most
  ``batch_max_latency_s`` after the first one arrived (sooner when the broker may send no more
  before an acknowledgement: the session's Receive Maximum is reached).
- Invalid payloads are counted per reason, logged at most once per node per minute, and never
  stored; nothing a node sends can stop the gateway. That includes telemetry the contract
  accepts but no store can keep (``storable_reading``: a time outside InfluxDB's years
  1677-2262): such a reading is refused as invalid ("cannot be stored") instead of being
  retried or spooled for ever and holding up every reading behind it; likewise a status or
  event the metadata database would refuse (``storable_record``: NUL characters, NaN or
  Infinity in an event's free-form ``data``). Found by bench/fault_suite.py and
  tests/test_ingest_fuzz.py (docs/faults.md); the contract itself now bounds sequence numbers
  and config versions and refuses NaN, Infinity and lone surrogates.
- Throughput: the MQTT connection is ``gateway.mqtt_in.MqttReceiver`` (bulk reads, one write
  per batch of acknowledgements); telemetry is validated straight from the JSON bytes. With
  ``ingest_workers`` > 0, telemetry is taken by that many worker processes on a shared
  subscription (``gateway.ingest_workers``) while this process keeps status and events; the
  workers hand the newest reading of each node of every durable batch back here, to the
  listener, before they acknowledge.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from cacao_dryer.contract import (
    MAX_PAYLOAD_BYTES,
    TOPIC_PREFIX,
    Channel,
    NodeEvent,
    NodeStatus,
    Telemetry,
    decode_message,
    parse_topic,
)
from cacao_dryer.errors import CacaoDryerError, PayloadError, TopicError
from gateway.config import GatewaySettings
from gateway.gc_pacing import collect_young
from gateway.mqtt_in import MqttReceiver, Received
from gateway.spool import Spool
from gateway.timeseries import (
    StoredReading,
    StoreRejected,
    StoreUnavailable,
    TimeSeriesStore,
    missing_ranges,
)

if TYPE_CHECKING:
    from gateway.ingest_workers import WorkerBatch, WorkerPool

__all__ = ["Ingest", "IngestListener", "IngestStats", "NodeView", "Received",
           "decode_payload", "newest_per_node", "share_name", "storable_reading",
           "storable_record"]

log = logging.getLogger("cacao_dryer.gateway")

INVALID_LOG_INTERVAL_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
SPOOL_RETRY_S = 5.0  # how often an idle gateway tries to write its spool out
ALL_CHANNELS = (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT)
# InfluxDB's timestamps (measured_at in ns) span 1677-09-21 to 2262-04-11 (whole days inside).
# (Sequence numbers and config versions are bounded by the contract: MAX_SEQ, 2**53 - 1.)
STORABLE_FROM = datetime(1677, 9, 22, tzinfo=UTC)
STORABLE_UNTIL = datetime(2262, 4, 11, tzinfo=UTC)


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0          # new readings written to the store (directly or from the spool)
    duplicates: int = 0      # readings the store already had (node replays, redeliveries)
    spooled: int = 0         # readings written to the spool while the store was down
    spool_waiting: int = 0   # readings in the spool now, waiting for the store (all processes)
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
    their own per-node ``seq``).

    With ``ingest_workers`` > 0 the listener lives in the main process and is called for the
    main process's own batches (status, events) and, for every durable batch of a worker, with
    the NEWEST reading of each node in that batch (the worker waits for the call before it
    acknowledges, so the same guarantee holds); readings in between are in the store."""

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None: ...


def share_name(settings: GatewaySettings) -> str:
    """The shared-subscription group of the telemetry workers: the configured
    ``shared_group`` (several gateways), else one private to this gateway (its client id)."""
    group = settings.mqtt.shared_group
    return group if group else re.sub(r"[^A-Za-z0-9_-]", "-", settings.mqtt.client_id)


def decode_payload(topic_name: str, payload: bytes) -> tuple[str, str, object]:
    """``decode_message`` with a fast path for valid telemetry: validated straight from the
    JSON bytes (one pass, ~3x faster than parsing then validating). Anything the fast path
    does not accept — invalid or not telemetry — goes through ``decode_message``, so what is
    accepted and the one-line reasons for what is not stay exactly the contract's."""
    if topic_name.endswith("/telemetry") and len(payload) <= MAX_PAYLOAD_BYTES:
        try:
            message = Telemetry.model_validate_json(payload)
        except (ValidationError, ValueError, RecursionError):
            message = None
        if message is not None and "schema_version" in message.model_fields_set:
            site_id, node_id, channel = parse_topic(topic_name)
            if (channel is Channel.TELEMETRY and message.site_id == site_id
                    and message.node_id == node_id):
                return site_id, node_id, message
    return decode_message(topic_name, payload)


def storable_reading(topic_name: str, message: Telemetry) -> StoredReading:
    """The reading as the stores keep it; PayloadError ("cannot be stored") for telemetry
    the contract accepts but no store can keep. Without this check such a reading would be
    refused by the store at every retry (or spooled for ever), holding up every reading
    behind it — one bad message would stop a site's ingest."""
    if not STORABLE_FROM <= message.measured_at < STORABLE_UNTIL:
        raise PayloadError(f"{topic_name}: measured_at {message.measured_at.isoformat()} "
                           f"cannot be stored (years 1677-2262 only)")
    return StoredReading.from_telemetry(message)


def storable_record(topic_name: str, message: NodeStatus | NodeEvent) -> None:
    """PayloadError ("cannot be stored") for a status or event the contract accepts but the
    metadata database refuses: a NUL character (PostgreSQL text), NaN or Infinity in an
    event's free-form ``data`` (PostgreSQL JSON). The node registry would otherwise fail on
    it at every retry and hold up the whole ingest."""
    problem = _unstorable_json(message.model_dump(exclude_none=True))
    if problem is not None:
        raise PayloadError(f"{topic_name}: {problem} cannot be stored")


def _unstorable_json(value: object, depth: int = 0) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value}"
    if isinstance(value, str):
        return "a NUL character" if "\x00" in value else None
    if depth > 100:  # decode_message refuses deeper JSON long before
        return "nesting"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable_json(key, depth + 1) or _unstorable_json(item, depth + 1)
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for item in value:
            problem = _unstorable_json(item, depth + 1)
            if problem is not None:
                return problem
    return None


def newest_per_node(readings: Sequence[StoredReading]) -> list[StoredReading]:
    """The reading with the highest seq of each node, in order of first appearance."""
    newest: dict[tuple[str, str], StoredReading] = {}
    for reading in readings:
        key = (reading.site_id, reading.node_id)
        known = newest.get(key)
        if known is None or reading.seq > known.seq:
            newest[key] = reading
    return list(newest.values())


class Ingest:
    """``channels``, ``client_id``, ``shared_group`` and ``spool_path`` are for worker
    processes (``gateway.ingest_workers``); a gateway leaves them to the settings."""

    def __init__(self, settings: GatewaySettings, store: TimeSeriesStore,
                 listener: IngestListener | None = None, *,
                 channels: Sequence[Channel] | None = None, client_id: str | None = None,
                 shared_group: str | None = None, spool_path: Path | None = None) -> None:
        self.settings = settings
        self.store = store
        self.listener = listener
        self.stats = IngestStats()
        self.nodes: dict[tuple[str, str], NodeView] = {}
        self._workers: WorkerPool | None = None
        if channels is None:
            channels = ALL_CHANNELS
            if settings.ingest_workers:
                from gateway.ingest_workers import WorkerPool

                channels = (Channel.STATUS, Channel.EVENT)
                self._workers = WorkerPool(settings, self._worker_batch)
        self.channels = tuple(channels)
        self._shared_group = shared_group if shared_group is not None \
            else settings.mqtt.shared_group
        self._spool = Spool(spool_path or settings.data_dir / "spool.jsonl")
        self._worker_spools: dict[int, int] = {}  # worker → readings in its spool
        self.stats.spool_waiting = len(self._spool)
        self._inbox: queue.Queue[list[Received]] = queue.Queue()
        self._carry: list[Received] = []
        self._stop = threading.Event()
        self._listener_lock = threading.Lock()  # the writer thread and the workers' replies
        self._invalid_logged_at: dict[str, float] = {}
        # decoded batches waiting for the writer: one being written, one ready (bounded, so
        # the broker's window, not memory, holds the rest back)
        self._decoded: queue.Queue[tuple[list[Received], list[StoredReading],
                                         list[NodeStatus], list[NodeEvent]]] = \
            queue.Queue(maxsize=1)
        self._decoder = threading.Thread(target=self._decode_loop, name="ingest-decoder",
                                         daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        self._receiver = MqttReceiver(settings.mqtt, client_id or settings.mqtt.client_id,
                                      self.subscriptions(), self._deliver)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._workers is not None:
            self._workers.start()
        self._receiver.start()
        self._decoder.start()
        self._writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish and acknowledge the batch being written, then disconnect (the session
        stays). Messages received but not written yet stay unacknowledged: the broker delivers
        them again at the next start, so stopping takes one batch, not a backlog. Worker
        processes stop first, while this process still answers them."""
        self._receiver.finish_session()
        if self._workers is not None:
            self._workers.stop(timeout)
        self._stop.set()
        deadline = time.monotonic() + timeout
        self._decoder.join(timeout)
        self._writer.join(max(0.1, deadline - time.monotonic()))
        self._receiver.stop()

    def alive(self) -> bool:
        """Its threads run (for the service watchdog: a dead thread means a restart)."""
        return self._decoder.is_alive() and self._writer.is_alive()

    @property
    def connected(self) -> bool:
        """This process is connected (and, with workers, every worker is too)."""
        return self._receiver.connected and (
            self._workers is None or self._workers.all_connected())

    def subscriptions(self) -> list[str]:
        prefix = f"$share/{self._shared_group}/" if self._shared_group else ""
        return [f"{prefix}{TOPIC_PREFIX}/{site}/+/{channel.value}"
                for site in self.settings.sites for channel in self.channels]

    def gaps(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Sequence numbers of a node missing from the store: lost data (or not yet sent)."""
        return missing_ranges(self.store.seq_ranges(site_id, node_id))

    def _deliver(self, messages: list[Received]) -> None:
        """From the network thread. Once stopping, new messages are left unacknowledged (the
        broker delivers them again next time), so stopping under a backlog ends."""
        if not self._stop.is_set():
            self._inbox.put(messages)

    # --- the decoder and writer threads ------------------------------------------------------
    # The decoder cuts the arriving messages into batches and decodes them while the writer
    # waits for the store with the previous batch (CPU and I/O overlap even under the GIL);
    # batches pass between them in arrival order, so acknowledgements stay in order.

    def _decode_loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            item = (batch, *self._decode(batch))
            while not self._stop.is_set():  # wait for the writer, but not past a stop
                try:
                    self._decoded.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _write_loop(self) -> None:
        last_flush_try = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._decoded.get(timeout=0.1)
            except queue.Empty:
                if len(self._spool) and time.monotonic() - last_flush_try > SPOOL_RETRY_S:
                    last_flush_try = time.monotonic()
                    self._persist([])  # quiet site: bring the spool home when the store is back
                continue
            self._process_until_durable(*item)
            del item
            collect_young()  # the batch's garbage, when the process paces its GC

    def _next_batch(self) -> list[Received]:
        """Messages as they came, up to ``batch_max_readings``, waiting at most
        ``batch_max_latency_s`` after the first — and no longer once the broker's window of
        unacknowledged messages is full (nothing more can come until a batch is acked)."""
        limit = self.settings.batch_max_readings
        batch, self._carry = self._carry, []
        if not batch:
            try:
                batch = self._inbox.get(timeout=0.1)
            except queue.Empty:
                return []
        deadline = time.monotonic() + self.settings.batch_max_latency_s
        while len(batch) < limit:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    batch += self._inbox.get_nowait()
                elif self._receiver.window_full and self._inbox.empty():
                    break
                else:
                    batch += self._inbox.get(timeout=min(remaining, 0.01))
            except queue.Empty:
                if remaining <= 0:
                    break
        if len(batch) > limit:
            batch, self._carry = batch[:limit], batch[limit:]
        return batch

    def _process_until_durable(self, batch: list[Received], readings: list[StoredReading],
                               statuses: list[NodeStatus], events: list[NodeEvent]) -> None:
        delay = RETRY_MIN_S
        persisted = False
        while True:
            try:
                if not persisted:
                    self._persist(readings)
                    persisted = True
                if self.listener is not None and (readings or statuses or events):
                    with self._listener_lock:
                        self.listener.batch_received(readings, statuses, events)
                break
            except Exception as exc:  # the spool (disk full) or the listener failed: retry
                self.stats.store_errors += 1
                log.error("cannot make a batch of %d messages durable (%s); retrying in %.1f s",
                          len(batch), exc, delay)
                if self._stop.wait(delay):
                    return  # stopping: unacknowledged, so the broker delivers them again
                delay = min(delay * 2, RETRY_MAX_S)
        self._receiver.ack(batch)  # in arrival order, as MQTT requires for QoS 1

    def _decode(self, batch: list[Received]
                ) -> tuple[list[StoredReading], list[NodeStatus], list[NodeEvent]]:
        readings: list[StoredReading] = []
        statuses: list[NodeStatus] = []
        events: list[NodeEvent] = []
        for message in batch:
            self.stats.received += 1
            try:
                site_id, node_id, decoded = decode_payload(message.topic, message.payload)
            except (PayloadError, TopicError) as exc:
                self._invalid(message.topic, exc)
                continue
            except Exception as exc:  # never let a payload stop the gateway
                self._invalid(message.topic, CacaoDryerError(f"{message.topic}: {exc!r}"))
                continue
            try:
                if isinstance(decoded, Telemetry):
                    readings.append(storable_reading(message.topic, decoded))
                    continue
                if isinstance(decoded, NodeStatus | NodeEvent):
                    storable_record(message.topic, decoded)
            except PayloadError as exc:
                self._invalid(message.topic, exc)
                continue
            except Exception as exc:  # never let a payload stop the decoder thread
                self._invalid(message.topic, CacaoDryerError(f"{message.topic}: {exc!r}"))
                continue
            view = self.nodes.get((site_id, node_id))
            if view is None:
                view = self.nodes[(site_id, node_id)] = NodeView()
            if isinstance(decoded, NodeStatus):
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
        finally:
            self._count_spool_waiting()
        self.stats.stored += new
        self.stats.duplicates += len(readings) - new

    def _invalid(self, topic_name: str, exc: Exception) -> None:
        reason = " ".join(str(exc).split())  # one line: a key sent by a node may hold "\n"
        parts = topic_name.split("/")
        key = "/".join(parts[2:4]) if len(parts) >= 4 else topic_name
        self.stats.invalid[_reason_kind(reason)] += 1
        now = time.monotonic()
        last = self._invalid_logged_at.get(key)
        if last is None or now - last >= INVALID_LOG_INTERVAL_S:
            self._invalid_logged_at[key] = now
            log.warning("invalid message from %s (not stored): %s", key, reason[:300])

    # --- what the worker processes report (the pool's thread) -------------------------------

    def _worker_batch(self, batch: WorkerBatch) -> None:
        """Count a worker's work and hand its newest readings to the listener; raising tells
        the worker to retry (it has not acknowledged)."""
        stats = self.stats
        stats.received += batch.received
        stats.stored += batch.stored
        stats.duplicates += batch.duplicates
        stats.spooled += batch.spooled
        if batch.spool_waiting is not None:
            self._worker_spools[batch.worker] = batch.spool_waiting
            self._count_spool_waiting()
        stats.store_errors += batch.store_errors
        stats.invalid.update(batch.invalid)
        if self.listener is not None and batch.readings:
            with self._listener_lock:
                self.listener.batch_received(batch.readings, (), ())


    def _count_spool_waiting(self) -> None:
        self.stats.spool_waiting = len(self._spool) + sum(self._worker_spools.values())


def _reason_kind(reason: str) -> str:
    """A short, bounded label for counting invalid messages by kind."""
    for kind in ("not valid JSON", "not valid UTF-8", "lone UTF-16 surrogate", "exceeds",
                 "schema_version", "payload names", "topic", "nested too deeply",
                 "expected a JSON object", "cannot be stored"):
        if kind in reason:
            return kind
    return "invalid field"
