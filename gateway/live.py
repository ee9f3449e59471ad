"""The live hub: what the ingest just made durable, pushed to every open dashboard at once.

The ingest's writer thread hands each durable batch to ``FanOutListener``, which calls the node
registry first (durable: its failure makes the ingest retry) and then this hub (best effort:
its failure is logged and forgotten). The hub turns a batch into small messages — the newest
reading of each node, each status, each event — numbers them, keeps the last few hundred for
reconnecting clients, and appends them to every subscriber's bounded queue.

A subscriber is one Server-Sent-Events client (``GET /api/live``). A slow phone on a weak
network must never hold up the ingest, so a full queue drops its OLDEST message and marks the
subscriber for a *resync*: the client is told to fetch ``/api/nodes`` again, which is the
truth anyway. The publisher only ever takes one short lock and never waits for a reader.

Message ids are ``<epoch>-<n>``: ``epoch`` changes every time the gateway starts, so a browser
that reconnects with a ``Last-Event-ID`` from before a restart (or older than the replay
buffer) is told to resync instead of silently missing messages.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cacao_dryer.contract import AlertNotice, NodeEvent, NodeStatus
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from gateway.ingest import IngestListener
from gateway.timeseries import StoredReading

log = logging.getLogger("cacao_dryer.gateway")

QUEUE_SIZE = 256        # messages a subscriber may lag behind before it must resync
REPLAY_SIZE = 1024      # recent messages kept for clients reconnecting with Last-Event-ID
HEARTBEAT_S = 15.0      # a heartbeat event at least this often keeps proxies and phones awake
RETRY_MS = 3000         # the `retry:` hint: how long a browser waits before reconnecting
MAX_SUBSCRIBERS = 200   # open streams at once; more answer 503 (each holds a connection)


class ResyncReason(StrEnum):
    """Why a client must fetch the whole picture again (the ``resync`` event's ``reason``)."""

    NEW = "new"            # a fresh connection: nothing to catch up from
    GAP = "gap"            # Last-Event-ID older than the replay buffer
    RESTART = "restart"    # Last-Event-ID from before the gateway restarted (another epoch)
    OVERFLOW = "overflow"  # the client fell QUEUE_SIZE messages behind; the oldest were dropped


@dataclass(frozen=True)
class LiveMessage:
    """One pushed message. ``json_data`` is serialised once, whatever the subscriber count."""

    seq: int
    kind: str          # reading / status / event / alert (the SSE event name)
    site_id: str
    node_id: str
    json_data: str

    def event_id(self, epoch: str) -> str:
        return f"{epoch}-{self.seq}"

    def sse(self, epoch: str) -> str:
        return f"id: {self.event_id(epoch)}\nevent: {self.kind}\ndata: {self.json_data}\n\n"


@dataclass(eq=False)  # identity: each subscription is one client
class Subscription:
    """One client's queue. Only the hub touches ``_queue`` and ``_resync``, under its lock."""

    hub: LiveHub
    site_id: str | None
    node_id: str | None
    wake: Callable[[], None] | None
    _queue: deque[LiveMessage] = field(default_factory=deque)
    _resync: ResyncReason | None = None
    dropped: int = 0
    closed: bool = False  # the hub shut down: the stream should end (the browser reconnects)

    def wants(self, message: LiveMessage) -> bool:
        return ((self.site_id is None or self.site_id == message.site_id)
                and (self.node_id is None or self.node_id == message.node_id))

    def take(self) -> tuple[ResyncReason | None, list[LiveMessage]]:
        """Everything waiting: (resync reason or None, messages oldest first). Never blocks
        for longer than the hub's lock is held by a publisher (microseconds)."""
        return self.hub._take(self)

    def close(self) -> None:
        self.hub.unsubscribe(self)


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """``"<epoch>-<n>"`` → (epoch, n); None for anything else (treated as a fresh client).

    >>> parse_event_id("3fa2c1d0-42")
    ('3fa2c1d0', 42)
    >>> parse_event_id("junk") is None
    True
    """
    if not value:
        return None
    epoch, _, number = value.strip().rpartition("-")
    if not epoch or not number.isdigit():
        return None
    return epoch, int(number)


class LiveHub:
    """In-process broadcast of ingest results to SSE subscribers; thread-safe.

    ``publish`` is called from the ingest's writer thread, ``take`` from the web server's event
    loop; ``wake`` (given at subscribe) is how a subscriber gets nudged — the SSE route passes
    ``loop.call_soon_threadsafe(event.set)``, which never blocks.
    """

    def __init__(self, *, queue_size: int = QUEUE_SIZE, replay_size: int = REPLAY_SIZE,
                 heartbeat_s: float = HEARTBEAT_S, retry_ms: int = RETRY_MS,
                 max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        if queue_size < 1 or replay_size < 1:
            raise ValueError("queue_size and replay_size must be at least 1")
        self.queue_size = queue_size
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.max_subscribers = max_subscribers
        self.epoch = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._last_seq = 0
        self._recent: deque[LiveMessage] = deque(maxlen=replay_size)
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.published = 0
        self.dropped = 0  # messages dropped from slow subscribers' queues, all subscribers

    # --- subscribers --------------------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    @property
    def last_event_id(self) -> str:
        with self._lock:
            return f"{self.epoch}-{self._last_seq}"

    def subscribe(self, *, site_id: str | None = None, node_id: str | None = None,
                  last_event_id: str | None = None,
                  wake: Callable[[], None] | None = None) -> Subscription | None:
        """A new subscriber (None when ``max_subscribers`` are already connected).

        With a ``last_event_id`` of this epoch still in the replay buffer, the messages after
        it are queued at once; otherwise the first thing the subscriber takes is a resync.
        """
        subscription = Subscription(self, site_id, node_id, wake)
        previous = parse_event_id(last_event_id)
        with self._lock:
            if self._closed or len(self._subscribers) >= self.max_subscribers:
                return None
            self._subscribers.add(subscription)
            if previous is None:
                subscription._resync = ResyncReason.NEW
            elif previous[0] != self.epoch or previous[1] > self._last_seq:
                subscription._resync = ResyncReason.RESTART
            elif previous[1] < self._last_seq and (
                    not self._recent or self._recent[0].seq > previous[1] + 1):
                subscription._resync = ResyncReason.GAP
            else:
                missed = [m for m in self._recent if m.seq > previous[1] and subscription.wants(m)]
                if len(missed) > self.queue_size:
                    subscription._resync = ResyncReason.OVERFLOW
                    missed = missed[-self.queue_size:]
                subscription._queue.extend(missed)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every stream (the gateway is stopping): subscribers are marked closed and woken,
        so a web server's graceful shutdown does not wait forever for never-ending streams."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
            self._subscribers.clear()
        for subscription in subscribers:
            subscription.closed = True
            _call(subscription.wake)

    def _take(self, subscription: Subscription
              ) -> tuple[ResyncReason | None, list[LiveMessage]]:
        with self._lock:
            reason, subscription._resync = subscription._resync, None
            messages = list(subscription._queue)
            subscription._queue.clear()
        return reason, messages

    # --- publishing ---------------------------------------------------------------------------

    def publish_alert(self, notice: AlertNotice) -> LiveMessage:
        """An alert's new state as the ``alert`` kind, in the shape of ``GET /api/alerts``
        (from the gateway's alert job, or a dashboard's own MQTT feed of the alert topics)."""
        return self.publish("alert", notice.site_id, notice.node_id, notice.model_dump(
            mode="json", exclude={"site_id", "node_id", "schema_version"}))

    def publish(self, kind: str, site_id: str, node_id: str, data: dict[str, Any]) -> LiveMessage:
        """Number ``data`` and queue it for every interested subscriber; never blocks on one.

        Other gateway parts (alerts, batches) may publish their own kinds the same way."""
        text = json.dumps({"site_id": site_id, "node_id": node_id, **data},
                          separators=(",", ":"), ensure_ascii=False, default=_json_default)
        to_wake: list[Callable[[], None]] = []
        with self._lock:
            self._last_seq += 1
            message = LiveMessage(self._last_seq, kind, site_id, node_id, text)
            self._recent.append(message)
            self.published += 1
            for subscription in self._subscribers:
                if not subscription.wants(message):
                    continue
                queue = subscription._queue
                if len(queue) >= self.queue_size:
                    queue.popleft()  # drop the oldest; the client refetches the truth
                    subscription._resync = ResyncReason.OVERFLOW
                    subscription.dropped += 1
                    self.dropped += 1
                queue.append(message)
                if subscription.wake is not None:
                    to_wake.append(subscription.wake)
        for wake in to_wake:
            _call(wake)
        return message

    # --- IngestListener -----------------------------------------------------------------------

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None:
        """The newest reading of each node in the batch, then statuses, then events."""
        newest: dict[tuple[str, str], StoredReading] = {}
        for reading in readings:
            key = (reading.site_id, reading.node_id)
            if key not in newest or reading.seq > newest[key].seq:
                newest[key] = reading
        for (site_id, node_id), reading in newest.items():
            self.publish("reading", site_id, node_id, reading_data(reading))
        for status in statuses:
            self.publish("status", status.site_id, status.node_id, status_data(status))
        for event in events:
            self.publish("event", event.site_id, event.node_id, event_data(event))


def reading_data(reading: StoredReading) -> dict[str, Any]:
    """The same shape as the API's ``LatestReading`` plus the actuators, so a page applies a
    live reading exactly like one it fetched."""
    fields = reading.fields
    return {"seq": reading.seq, "measured_at": reading.measured_at,
            "readings": {k: v for k, v in fields.items() if k in MEASUREMENTS_BY_KEY},
            "fan_speed_pct": fields.get("fan_speed_pct"),
            "vent_open_pct": fields.get("vent_open_pct"),
            "config_version": fields.get("config_version"),
            "raining": reading.raining, "mode": reading.mode, "alarms": list(reading.alarms),
            "batch_id": reading.batch_id}


def status_data(status: NodeStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True,
                             exclude={"site_id", "node_id", "schema_version"})


def event_data(event: NodeEvent) -> dict[str, Any]:
    return {"seq": event.seq, "occurred_at": event.occurred_at, "type": event.type.value,
            "message": event.message, "data": event.data}


def _call(wake: Callable[[], None] | None) -> None:
    if wake is None:
        return
    try:
        wake()
    except Exception as exc:  # a closed event loop, a gone client: never the publisher's problem
        log.debug("live subscriber wake-up failed: %r", exc)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot send {type(value).__name__} live")


class FanOutListener:
    """Hands each durable ingest batch to one durable listener (the registry: its failure
    propagates so the ingest retries) and then to best-effort ones (the live hub: a failure is
    logged and never stops or delays acknowledgement)."""

    def __init__(self, durable: IngestListener, *best_effort: IngestListener) -> None:
        self.durable = durable
        self.best_effort = best_effort
        self.failures = 0

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None:
        self.durable.batch_received(readings, statuses, events)
        for listener in self.best_effort:
            try:
                listener.batch_received(readings, statuses, events)
            except Exception as exc:
                self.failures += 1
                log.warning("live update of a batch failed (%r); dashboards will resync", exc)
