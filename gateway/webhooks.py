"""Alert delivery: retained MQTT notices, and HTTP webhooks through a durable retry queue.

**MQTT** (``AlertPublisher``): each alert's current state is published retained, QoS 1, on
``cacao/v1/<site>/<node>/alert/<kind>``, so a dashboard that connects late receives what is
open (and the last closed one of each kind) without asking the API.

**Webhooks** (``WebhookSender``): each notice is POSTed as JSON (the ``AlertNotice``, exactly
the MQTT payload) to every ``WebhookTarget`` that wants it (kinds, minimum severity), signed
like GitHub's webhooks: ``X-Cacao-Signature: sha256=<HMAC-SHA256(secret, body) hex>``.
``X-Cacao-Delivery`` is a unique id per delivery, the same on every retry: receivers use it
to drop duplicates (delivery is at least once: a crash between the receiver's 2xx and our
commit sends it again).

Why a queue in SQLite: a cooperative's internet uplink is often down for hours, and the
gateway may restart meanwhile; a notice accepted by ``enqueue`` is on disk (fsynced) before
it returns and is retried until delivered, given up (permanent 4xx), or too old/too often
tried. One worker thread sends; deliveries to one target go out in the order they were
queued (an "opened" never arrives after its "closed"). Retry policy: exponential backoff with
jitter (``retry_delay_s``, a pure function), at least the server's ``Retry-After`` on
429/503; 2xx = delivered; 408, 429, 5xx, timeouts and connection errors = retry; any other
status = permanent failure, logged. Details: docs/alerts.md.

**The queue itself** (``DeliveryQueue``) knows nothing about HTTP: it stores opaque bodies per
target and calls a ``deliver`` function returning an ``Attempt``; e-mail, Telegram and SMS
notifications (``gateway.notify``) use the same queue, retry policy and worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import random as random_module
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt

from cacao_dryer import __version__
from cacao_dryer.clock import Clock, SystemClock
from cacao_dryer.contract import (
    SEVERITY_RANK,
    AlertKind,
    AlertNotice,
    AlertSeverity,
    AlertState,
    alert_topic,
    encode,
)
from cacao_dryer.errors import CacaoDryerError, ConfigError

log = logging.getLogger("cacao_dryer.gateway")

SIGNATURE_HEADER = "X-Cacao-Signature"
DELIVERY_HEADER = "X-Cacao-Delivery"
EVENT_HEADER = "X-Cacao-Event"
MAX_ERROR_CHARS = 300
PRUNE_EVERY_S = 3600.0


class WebhookQueueError(CacaoDryerError, OSError):
    """A delivery queue file (webhooks, notifications) cannot be opened or written (names
    the file)."""


# --- MQTT ---------------------------------------------------------------------------------

class MqttPublish(Protocol):
    """What ``AlertPublisher`` needs: ``gateway.mqtt_out.MqttPublisher`` has it."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                timeout: float = 5.0) -> bool: ...


class AlertPublisher:
    """Publishes alert notices retained at QoS 1, through the gateway's outgoing MQTT client
    (an ``MqttPublisher``) or a bare connected paho client. ``publish`` says whether the
    broker acknowledged within ``timeout_s``; the caller publishes again what it did not."""

    def __init__(self, client: MqttPublish | mqtt.Client, timeout_s: float = 5.0) -> None:
        self._client = client
        self._timeout_s = timeout_s

    def publish(self, notice: AlertNotice) -> bool:
        return self._send(alert_topic(notice.site_id, notice.node_id, notice.kind.value),
                          encode(notice))

    def clear(self, site_id: str, node_id: str, kind: AlertKind) -> bool:
        """Remove the retained notice (an empty retained payload), e.g. for a removed node."""
        return self._send(alert_topic(site_id, node_id, kind.value), b"")

    def _send(self, topic: str, payload: bytes) -> bool:
        if not isinstance(self._client, mqtt.Client):
            return self._client.publish(topic, payload, retain=True, timeout=self._timeout_s)
        try:
            info = self._client.publish(topic, payload, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError):  # not connected / queue full
            return False
        return info.is_published()


# --- webhook targets, signature, retry policy (pure) --------------------------------------

@dataclass(frozen=True)
class WebhookTarget:
    """Where to POST alerts. ``kinds`` None = every kind; ``min_severity`` drops the less
    severe ones (an ``info`` target_reached to a 'critical only' phone bridge). ``name``
    (default: the URL) keys queued deliveries, so a target can change URL or secret
    without losing what is queued for it."""

    url: str
    secret: str
    kinds: frozenset[AlertKind] | None = None
    min_severity: AlertSeverity = AlertSeverity.INFO
    name: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook {self.url!r}: url must be http(s)://host/...")
        if len(self.secret) < 16:
            raise ConfigError(f"webhook {self.key}: secret must have at least 16 characters "
                              f"(receivers check signatures with it)")
        if self.kinds is not None:
            object.__setattr__(self, "kinds", frozenset(AlertKind(k) for k in self.kinds))
        object.__setattr__(self, "min_severity", AlertSeverity(self.min_severity))

    @property
    def key(self) -> str:
        return self.name or self.url

    def wants(self, notice: AlertNotice) -> bool:
        return ((self.kinds is None or notice.kind in self.kinds)
                and SEVERITY_RANK[notice.severity] >= SEVERITY_RANK[self.min_severity])


def sign(secret: str, body: bytes) -> str:
    """The ``X-Cacao-Signature`` value: ``sha256=`` + HMAC-SHA256 of the body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def event_of(notice: AlertNotice) -> str:
    """``X-Cacao-Event``: alert.opened, alert.updated (severity, value, message or an
    acknowledgement changed) or alert.closed."""
    if notice.state is AlertState.CLOSED:
        return "alert.closed"
    if notice.updated_at == notice.opened_at and notice.acknowledged_by is None:
        return "alert.opened"
    return "alert.updated"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Defaults: 10 s, 20 s, 40 s ... doubling up to 1 h,
    at most 20 attempts (≈ 11 h of trying) and never after a day: an alert older than that
    is history, not news."""

    first_delay_s: float = 10.0
    factor: float = 2.0
    max_delay_s: float = 3600.0
    jitter_fraction: float = 0.2   # each delay shortened by up to 20 %: no synchronized herd
    max_attempts: int = 20
    max_age_s: float = 24 * 3600.0
    timeout_s: float = 10.0        # per request (connect, read, write each)

    def __post_init__(self) -> None:
        checks = {
            "first_delay_s": self.first_delay_s > 0, "factor": self.factor >= 1,
            "max_delay_s": self.max_delay_s >= self.first_delay_s,
            "jitter_fraction": 0 <= self.jitter_fraction < 1,
            "max_attempts": self.max_attempts >= 1, "max_age_s": self.max_age_s > 0,
            "timeout_s": self.timeout_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"webhook retry policy: {name} = {getattr(self, name)!r} "
                                  f"is out of range")


def retry_delay_s(policy: RetryPolicy, failed_attempts: int, random_fraction: float,
                  retry_after_s: float | None = None) -> float:
    """Seconds to wait after the ``failed_attempts``-th failure (1 = the first).

    ``first_delay_s · factor^(n-1)``, capped at ``max_delay_s``, shortened by up to
    ``jitter_fraction`` (``random_fraction`` in [0, 1)), and never shorter than the server's
    ``Retry-After`` (itself capped at ``max_delay_s``).

    >>> retry_delay_s(RetryPolicy(), 3, 0.0)
    40.0
    >>> retry_delay_s(RetryPolicy(), 3, 0.5, retry_after_s=120)
    120.0
    """
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts must be >= 1, got {failed_attempts}")
    exponent = min(failed_attempts - 1, 64)  # beyond that the cap applies anyway
    base = min(policy.first_delay_s * policy.factor ** exponent, policy.max_delay_s)
    delay = base * (1.0 - policy.jitter_fraction * min(max(random_fraction, 0.0), 1.0))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.max_delay_s))
    return float(delay)


def backoff_schedule(policy: RetryPolicy, random_fractions: Sequence[float] = ()
                     ) -> list[float]:
    """Every wait between the attempts of one delivery that keeps failing (without
    Retry-After), until ``max_attempts`` or ``max_age_s`` ends it; ``random_fractions``
    supplies the jitter draws (missing ones count as 0)."""
    delays: list[float] = []
    waited = 0.0
    for failed in range(1, policy.max_attempts):
        draw = random_fractions[failed - 1] if failed - 1 < len(random_fractions) else 0.0
        delay = retry_delay_s(policy, failed, draw)
        if waited + delay > policy.max_age_s:
            break
        delays.append(delay)
        waited += delay
    return delays


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"


def classify_status(status_code: int) -> Outcome:
    """2xx delivered; 408 (timeout), 429 (slow down) and 5xx retried; anything else (a 3xx
    we do not follow, 400, 401, 403, 404, 410, 422 ...) will fail again: give up."""
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in (408, 429) or 500 <= status_code < 600:
        return Outcome.RETRY
    return Outcome.GIVE_UP


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable.

    >>> parse_retry_after("120", datetime(2026, 3, 1, tzinfo=UTC))
    120.0
    >>> parse_retry_after("Sun, 01 Mar 2026 00:01:00 GMT", datetime(2026, 3, 1, tzinfo=UTC))
    60.0
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


# --- the durable queue and its worker -----------------------------------------------------

class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    target: str
    event: str
    body: bytes
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    state: DeliveryState
    last_status: int | None
    last_error: str | None
    finished_at: datetime | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    alert TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_status INTEGER,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS ix_deliveries_pending ON deliveries (state, target, seq);
"""
_COLUMNS = ("delivery_id, target, event, body, created_at, attempts, next_attempt_at, state, "
            "last_status, last_error, finished_at")


def _at(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to: delivered, retry later (no sooner than
    ``retry_after_s`` if the receiver said so) or give up; ``status`` is an HTTP (or SMTP)
    code when there was one, ``error`` one line for the log and the queue."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


class DeliveryQueue:
    """The durable queue behind webhooks and notifications: deliveries wait in SQLite
    (``synchronous=FULL``: queued = on disk), one worker thread attempts those due, oldest
    first per target, with ``RetryPolicy`` backoff; a target's next delivery waits until the
    one before it is delivered or given up.

    ``deliver(delivery) -> Attempt`` does the sending (an HTTP POST, an e-mail, a file);
    ``has_target(key)`` says whether a queued target is still configured (if not, its
    deliveries fail with a reason). ``before_round`` runs in the worker before each look at
    the queue (notifications release held messages there). ``label`` names the queue in logs
    ("webhook", "notification").
    """

    def __init__(self, path: Path, deliver: Callable[[Delivery], Attempt], *,
                 has_target: Callable[[str], bool], label: str = "webhook",
                 policy: RetryPolicy | None = None, clock: Clock | None = None,
                 random: Callable[[], float] = random_module.random,
                 keep_finished_s: float = 7 * 24 * 3600.0, idle_poll_s: float = 1.0,
                 before_round: Callable[[], object] | None = None,
                 extra_schema: str = "") -> None:
        self.path = path
        self.label = label
        self.policy = policy or RetryPolicy()
        self.clock: Clock = clock or SystemClock()
        self._deliver = deliver
        self._has_target = has_target
        self._random = random
        self._keep_finished_s = keep_finished_s
        self._idle_poll_s = idle_poll_s
        self._before_round = before_round
        self._db_lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = float("-inf")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # queued = on disk, power cut or not
            self._db.executescript(_SCHEMA + extra_schema)
        except (OSError, sqlite3.Error) as exc:
            raise WebhookQueueError(f"{label} queue {path}: cannot open ({exc})") from None

    # --- queueing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the queue's database (``BEGIN IMMEDIATE`` ... ``COMMIT``):
        callers add deliveries (``insert``) and their own rows atomically."""
        with self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise WebhookQueueError(f"{self.label} queue {self.path}: {exc}") from None
            except BaseException:
                self._rollback()
                raise

    def insert(self, db: sqlite3.Connection, target: str, event: str, alert: str,
               body: bytes) -> str:
        """Add one delivery inside ``transaction()``; returns its id."""
        delivery_id = uuid.uuid4().hex
        now = self.clock.now().timestamp()
        db.execute("INSERT INTO deliveries (delivery_id, target, event, alert, body, "
                   "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (delivery_id, target, event, alert, body, now, now))
        return delivery_id

    def enqueue(self, items: Sequence[tuple[str, str, str, bytes]]) -> list[str]:
        """Queue ``(target, event, alert, body)`` items in one transaction; durable when this
        returns. Returns the delivery ids."""
        if not items:
            return []
        with self.transaction() as db:
            ids = [self.insert(db, *item) for item in items]
        self._wake.set()
        return ids

    # --- delivering ---------------------------------------------------------------------------

    def run_due(self) -> int:
        """Attempt every delivery that is due now (the oldest pending one per target);
        returns how many attempts were made."""
        with self._send_lock:
            self._prune_now_and_then()
            attempts = 0
            for delivery in self._due():
                if self._stop.is_set() and self._thread is not None:
                    break
                self._attempt(delivery)
                attempts += 1
            return attempts

    def _due(self) -> list[Delivery]:
        now = self.clock.now().timestamp()
        rows = self._query(
            f"SELECT {_COLUMNS} FROM deliveries d WHERE state = 'pending' "
            f"AND seq = (SELECT MIN(seq) FROM deliveries WHERE state = 'pending' "
            f"AND target = d.target) AND next_attempt_at <= ? ORDER BY next_attempt_at",
            (now,))
        return [self._delivery(row) for row in rows]

    def _attempt(self, delivery: Delivery) -> None:
        if not self._has_target(delivery.target):
            self._finish(delivery, DeliveryState.FAILED, None,
                         f"target {delivery.target!r} is no longer configured",
                         delivery.attempts)
            return
        try:
            result = self._deliver(delivery)
        except Exception as exc:  # a bug in one channel must not stop the queue
            result = Attempt(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        label, target = self.label, delivery.target
        if result.outcome is Outcome.DELIVERED:
            self._finish(delivery, DeliveryState.DELIVERED, result.status, None)
            log.info("%s %s: %s %s delivered", label, target, delivery.event,
                     delivery.delivery_id)
            return
        attempts = delivery.attempts + 1
        error = result.error or f"status {result.status}"
        if result.outcome is Outcome.GIVE_UP:
            self._finish(delivery, DeliveryState.FAILED, result.status, error, attempts)
            log.error("%s %s: %s %s refused (%s): given up", label, target, delivery.event,
                      delivery.delivery_id, error)
            return
        now = self.clock.now()
        delay_s = retry_delay_s(self.policy, attempts, self._random(), result.retry_after_s)
        age_s = now.timestamp() + delay_s - delivery.created_at.timestamp()
        if attempts >= self.policy.max_attempts or age_s > self.policy.max_age_s:
            why = (f"{attempts} attempts" if attempts >= self.policy.max_attempts
                   else f"older than {self.policy.max_age_s:g} s")
            self._finish(delivery, DeliveryState.FAILED, result.status, f"{error}; {why}",
                         attempts)
            log.error("%s %s: %s %s given up after %s (last: %s)", label, target,
                      delivery.event, delivery.delivery_id, why, error)
            return
        self._execute("UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_status = ?, "
                      "last_error = ? WHERE delivery_id = ?",
                      (attempts, now.timestamp() + delay_s, result.status,
                       error[:MAX_ERROR_CHARS], delivery.delivery_id))
        log.warning("%s %s: %s %s failed (%s), attempt %d; next in %.0f s", label, target,
                    delivery.event, delivery.delivery_id, error, attempts, delay_s)

    def _finish(self, delivery: Delivery, state: DeliveryState, status: int | None,
                error: str | None, attempts: int | None = None) -> None:
        self._execute("UPDATE deliveries SET state = ?, attempts = ?, last_status = ?, "
                      "last_error = ?, finished_at = ? WHERE delivery_id = ?",
                      (state.value, attempts if attempts is not None else delivery.attempts + 1,
                       status, error[:MAX_ERROR_CHARS] if error else None,
                       self.clock.now().timestamp(), delivery.delivery_id))

    # --- the worker ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.label} sender already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.label}s", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker after the attempt in flight (at most one request timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.policy.timeout_s + 5 if timeout is None else timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        with self._db_lock:
            self._db.close()

    def wake(self) -> None:
        """Look at the queue now (e.g. after moving a ManualClock)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._before_round is not None:
                    self._before_round()
                if self.run_due():
                    continue
                wait_s = self._seconds_until_due()
            except Exception as exc:  # a full disk must not end deliveries for good
                log.error("%s queue %s: %s", self.label, self.path, exc)
                wait_s = self._idle_poll_s
            self._wake.wait(min(self._idle_poll_s, wait_s))
            self._wake.clear()

    def _seconds_until_due(self) -> float:
        rows = self._query("SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'",
                           ())
        if not rows or rows[0][0] is None:
            return self._idle_poll_s
        return max(0.0, float(rows[0][0]) - self.clock.now().timestamp())  # type: ignore[arg-type]

    def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()

    def prune(self) -> int:
        """Forget finished deliveries older than ``keep_finished_s``; returns how many."""
        cutoff = self.clock.now().timestamp() - self._keep_finished_s
        with self._db_lock:
            cursor = self._db.execute("DELETE FROM deliveries WHERE state != 'pending' AND "
                                      "finished_at < ?", (cutoff,))
            return cursor.rowcount

    # --- inspection ---------------------------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM deliveries WHERE delivery_id = ?",
                           (delivery_id,))
        return self._delivery(rows[0]) if rows else None

    def counts(self) -> dict[DeliveryState, int]:
        """Deliveries by state, for /metrics and the health page."""
        found = dict(self._query("SELECT state, COUNT(*) FROM deliveries GROUP BY state", ()))
        return {state: int(found.get(state.value, 0)) for state in DeliveryState}  # type: ignore[call-overload]

    def deliveries(self, target_prefix: str = "") -> list[Delivery]:
        """Every kept delivery (oldest first) whose target starts with ``target_prefix``."""
        rows = self._query(f"SELECT {_COLUMNS} FROM deliveries WHERE substr(target, 1, ?) = ? "
                           f"ORDER BY seq", (len(target_prefix), target_prefix))
        return [self._delivery(row) for row in rows]

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Read-only SQL on the queue's database (the notification tables live there too)."""
        return self._query(sql, params)

    # --- SQLite -------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._db_lock:
            return list(self._db.execute(sql, params))

    def _execute(self, sql: str, params: tuple[object, ...]) -> None:
        with self._db_lock:
            self._db.execute(sql, params)

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    @staticmethod
    def _delivery(row: tuple[object, ...]) -> Delivery:
        (delivery_id, target, event, body, created_at, attempts, next_attempt_at, state,
         last_status, last_error, finished_at) = row
        return Delivery(str(delivery_id), str(target), str(event), bytes(body),  # type: ignore[arg-type]
                        _at(created_at), int(attempts), _at(next_attempt_at),  # type: ignore[arg-type]
                        DeliveryState(state), last_status, last_error,  # type: ignore[arg-type]
                        _at(finished_at))  # type: ignore[arg-type]


class WebhookSender:
    """Queues alert notices for webhook targets (a ``DeliveryQueue``) and POSTs them from one
    worker thread (``start``/``stop``), or synchronously with ``run_due`` (tests, tools).

    ``clock`` and ``random`` are injected so tests drive time and jitter; ``idle_poll_s``
    bounds how long the worker sleeps (real seconds) before it looks at the clock again.
    """

    def __init__(self, path: Path, targets: Sequence[WebhookTarget], *,
                 policy: RetryPolicy | None = None, clock: Clock | None = None,
                 random: Callable[[], float] = random_module.random,
                 keep_finished_s: float = 7 * 24 * 3600.0, idle_poll_s: float = 1.0) -> None:
        keys = [target.key for target in targets]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ConfigError(f"webhooks: target {duplicates[0]!r} is configured twice "
                              f"(give each a distinct name)")
        self.path = path
        self.targets = {target.key: target for target in targets}
        self.queue = DeliveryQueue(path, self._post, has_target=self.targets.__contains__,
                                   label="webhook", policy=policy, clock=clock, random=random,
                                   keep_finished_s=keep_finished_s, idle_poll_s=idle_poll_s)
        self.policy = self.queue.policy
        self.clock = self.queue.clock
        self._http = httpx.Client(timeout=self.policy.timeout_s, follow_redirects=False,
                                  headers={"User-Agent": f"cacao-dryer-gateway/{__version__}"})

    def enqueue(self, notice: AlertNotice) -> list[str]:
        """Queue ``notice`` for every target that wants it; durable when this returns.
        Returns the delivery ids (one per target)."""
        body = encode(notice)
        event = event_of(notice)
        alert = f"{notice.site_id}/{notice.node_id}/{notice.kind.value}#{notice.alert_id}"
        return self.queue.enqueue([(target.key, event, alert, body)
                                   for target in self.targets.values() if target.wants(notice)])

    def _post(self, delivery: Delivery) -> Attempt:
        target = self.targets[delivery.target]
        headers = {"Content-Type": "application/json", EVENT_HEADER: delivery.event,
                   DELIVERY_HEADER: delivery.delivery_id,
                   SIGNATURE_HEADER: sign(target.secret, delivery.body)}
        return post_attempt(self._http, target.url, headers, self.clock.now,
                            self.policy.timeout_s, content=delivery.body)

    # --- the queue's interface ----------------------------------------------------------------

    def run_due(self) -> int:
        """Attempt every delivery that is due now; returns how many requests were made."""
        return self.queue.run_due()

    def start(self) -> None:
        self.queue.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker after the request in flight (at most one request timeout)."""
        self.queue.stop(timeout)

    def close(self) -> None:
        self.queue.close()
        self._http.close()

    def wake(self) -> None:
        self.queue.wake()

    def prune(self) -> int:
        return self.queue.prune()

    def get(self, delivery_id: str) -> Delivery | None:
        return self.queue.get(delivery_id)

    def counts(self) -> dict[DeliveryState, int]:
        return self.queue.counts()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_attempt(http: httpx.Client, url: str, headers: dict[str, str],
                 now: Callable[[], datetime], timeout_s: float, *,
                 content: bytes | None = None, json_body: object = None,
                 redact: str | None = None,
                 retry_after_in_body: Callable[[bytes], float | None] | None = None
                 ) -> Attempt:
    """One HTTP POST, its answer classified (``classify_status``); the response body is not
    read, except (at most 64 KiB) on 429/503 when ``retry_after_in_body`` finds the wait in it
    (Telegram puts it there). Timeouts and transport errors are retried, other client errors
    (an invalid URL) given up. ``redact`` (a token in the URL) never appears in the error."""
    status: int | None = None
    retry_after_s: float | None = None
    try:
        with http.stream("POST", url, headers=headers, content=content,
                         json=json_body) as response:
            status = response.status_code
            if status in (429, 503):
                retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now())
                if retry_after_s is None and retry_after_in_body is not None:
                    body = b""
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > 65536:
                            break
                    retry_after_s = retry_after_in_body(body[:65536])
        outcome = classify_status(status)
        error = None if outcome is Outcome.DELIVERED else f"HTTP {status}"
    except httpx.TimeoutException:
        outcome, error = Outcome.RETRY, f"no answer within {timeout_s:g} s"
    except httpx.TransportError as exc:  # refused, reset, DNS, TLS ...
        outcome, error = Outcome.RETRY, f"{type(exc).__name__}: {exc}"
    except httpx.HTTPError as exc:  # an invalid URL and the like: will not get better
        outcome, error = Outcome.GIVE_UP, f"{type(exc).__name__}: {exc}"
    if error is not None and redact:
        error = error.replace(redact, "<token>")
    return Attempt(outcome, status, error, retry_after_s)
