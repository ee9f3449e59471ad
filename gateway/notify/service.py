"""The notification service: alert notices in, e-mails, Telegram messages and SMS out.

``enqueue(notice)`` (an ``AlertService`` notifier) stores the notice, on disk, for every
recipient and channel that wants it (``Interest``); the pure ``release`` rules then decide
what goes out now — in one transaction the released messages are rendered in the
recipient's language and queued for delivery (the webhooks' ``DeliveryQueue``: durable,
retried with backoff, in order per recipient and channel), recorded in the history (rate
limits, de-duplication, flapping) and taken off the waiting list. What waits (quiet hours,
hourly limit, a flapping dryer) is looked at again every second by the worker thread.

One SQLite file (``<data_dir>/notifications.sqlite3``) holds the waiting notices, the history
and the delivery queue, so a restart loses nothing and sends nothing twice.
"""

from __future__ import annotations

import json
import logging
import random as random_module
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from cacao_dryer.clock import Clock, SystemClock
from cacao_dryer.contract import AlertKind, AlertNotice, AlertSeverity, AlertState
from cacao_dryer.errors import ConfigError
from gateway.config import GatewaySettings
from gateway.notify.channels import (
    Channel,
    ChannelName,
    EmailChannel,
    SmsSpoolChannel,
    TelegramChannel,
)
from gateway.notify.messages import Message, Renderer
from gateway.notify.rules import (
    DeliveryRules,
    Interest,
    Language,
    MessageKind,
    NoticeRef,
    Pending,
    QuietHours,
    Sent,
    release,
)
from gateway.webhooks import (
    Attempt,
    Delivery,
    DeliveryQueue,
    DeliveryState,
    Outcome,
    RetryPolicy,
)

log = logging.getLogger("cacao_dryer.gateway")

KEEP_HISTORY = timedelta(days=7)   # de-duplication memory; also how long deliveries are kept
PRUNE_EVERY = timedelta(hours=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    channel TEXT NOT NULL,
    notice TEXT NOT NULL,
    queued_at REAL NOT NULL,
    held TEXT
);
CREATE INDEX IF NOT EXISTS ix_notify_pending ON notify_pending (recipient, channel, seq);
CREATE TABLE IF NOT EXISTS notify_sent (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    channel TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    refs TEXT NOT NULL,
    summarised TEXT NOT NULL,
    delivery_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_notify_sent ON notify_sent (recipient, channel, at);
"""


@dataclass(frozen=True)
class Recipient:
    """A person or group chat: their addresses per channel, what they want, their rules."""

    name: str
    language: Language
    addresses: Mapping[ChannelName, str]
    interest: Interest = field(default_factory=Interest)
    rules: DeliveryRules = field(default_factory=DeliveryRules)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"recipient {self.name!r}: a name without '/' is needed")
        if not self.addresses:
            raise ConfigError(f"recipient {self.name!r} has no address")


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _refs_json(refs: Sequence[NoticeRef]) -> str:
    return json.dumps([[ref.key[0], ref.key[1].value, ref.key[2].value, *ref.subject[:2],
                        ref.subject[2].value, _epoch(ref.opened_at)] for ref in refs])


def _refs(text: str) -> tuple[NoticeRef, ...]:
    return tuple(NoticeRef((int(alert_id), AlertState(state), AlertSeverity(severity)),
                           (site, node, AlertKind(kind)), _at(opened_at))
                 for alert_id, state, severity, site, node, kind, opened_at in json.loads(text))


class NotificationService:
    """Notifications for ``recipients`` through ``channels`` (at most one per name)."""

    def __init__(self, path: Path, recipients: Sequence[Recipient], channels: Sequence[Channel],
                 *, timezone: ZoneInfo | None = None, policy: RetryPolicy | None = None,
                 clock: Clock | None = None, random: Callable[[], float] = random_module.random,
                 idle_poll_s: float = 1.0) -> None:
        names = [recipient.name for recipient in recipients]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"notify: recipient {name!r} is configured twice")
        self.channels = {channel.name: channel for channel in channels}
        for recipient in recipients:
            for channel in recipient.addresses:
                if channel not in self.channels:
                    raise ConfigError(f"notify: recipient {recipient.name!r}: {channel.value} "
                                      f"address given but that channel is not set up")
        self.recipients = {recipient.name: recipient for recipient in recipients}
        self.timezone = timezone or ZoneInfo("America/Lima")
        self.clock: Clock = clock or SystemClock()
        self.path = path
        self._lock = threading.Lock()
        self._pruned_at: datetime | None = None
        self.queue = DeliveryQueue(
            path, self._deliver, has_target=self._has_target, label="notification",
            policy=policy or RetryPolicy(max_age_s=12 * 3600.0, timeout_s=20.0),
            clock=self.clock, random=random, keep_finished_s=KEEP_HISTORY.total_seconds(),
            idle_poll_s=idle_poll_s, before_round=self.release_due, extra_schema=_SCHEMA)

    # --- in -----------------------------------------------------------------------------------

    def enqueue(self, notice: AlertNotice) -> int:
        """Keep ``notice`` for every recipient and channel that wants it (durable when this
        returns) and send what may go out now. Returns how many channels it waits for."""
        now = self.clock.now()
        rows = [(recipient.name, channel.value, notice.model_dump_json(), _epoch(now))
                for recipient in self.recipients.values() if recipient.interest.wants(notice)
                for channel in recipient.addresses]
        if not rows:
            return 0
        with self.queue.transaction() as db:
            db.executemany("INSERT INTO notify_pending (recipient, channel, notice, queued_at) "
                           "VALUES (?, ?, ?, ?)", rows)
        self.release_due()
        self.queue.wake()
        return len(rows)

    # --- deciding -----------------------------------------------------------------------------

    def release_due(self) -> int:
        """Apply the rules to everything waiting; returns how many messages were queued."""
        with self._lock:
            now = self.clock.now()
            self._prune(now)
            waiting = self.queue_rows("SELECT DISTINCT recipient, channel FROM notify_pending")
            return sum(self._release(str(name), ChannelName(str(channel)), now)
                       for name, channel in waiting)

    def _release(self, name: str, channel: ChannelName, now: datetime) -> int:
        recipient = self.recipients.get(name)
        with self.queue.transaction() as db:
            if recipient is None or channel not in recipient.addresses:
                dropped = db.execute("DELETE FROM notify_pending WHERE recipient = ? AND "
                                     "channel = ?", (name, channel.value)).rowcount
                log.warning("notifications: %d waiting for %s/%s dropped: no longer "
                            "configured", dropped, name, channel.value)
                return 0
            pending = [Pending(int(seq), AlertNotice.model_validate_json(text), _at(queued_at))
                       for seq, text, queued_at in db.execute(
                           "SELECT seq, notice, queued_at FROM notify_pending WHERE "
                           "recipient = ? AND channel = ? ORDER BY seq", (name, channel.value))]
            history = [Sent(_at(at), MessageKind(kind), _refs(refs),
                            frozenset((site, node, AlertKind(kind_))
                                      for site, node, kind_ in json.loads(summarised)))
                       for at, kind, refs, summarised in db.execute(
                           "SELECT at, kind, refs, summarised FROM notify_sent WHERE "
                           "recipient = ? AND channel = ? AND at > ? ORDER BY at",
                           (name, channel.value, _epoch(now - KEEP_HISTORY)))]
            decision = release(recipient.rules, pending, history, now)
            renderer = Renderer(recipient.language, recipient.rules.timezone)
            target = f"{name}/{channel.value}"
            for outgoing in decision.send:
                message = renderer.render(outgoing, now)
                first = outgoing.notices[0]
                alert = (f"{first.site_id}/{first.node_id}/{first.kind.value}#{first.alert_id}"
                         + (f" +{len(outgoing.items) - 1}" if len(outgoing.items) > 1 else ""))
                delivery_id = self.queue.insert(db, target, outgoing.kind.value, alert,
                                                message.to_json())
                sent = outgoing.sent(now)
                db.execute("INSERT INTO notify_sent (recipient, channel, at, kind, refs, "
                           "summarised, delivery_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (name, channel.value, _epoch(now), outgoing.kind.value,
                            _refs_json(sent.refs),
                            json.dumps([[s, n, k.value] for s, n, k in sorted(sent.summarised)]),
                            delivery_id))
            done = [item.seq for outgoing in decision.send for item in outgoing.items]
            done += [item.seq for item in decision.drop]
            db.executemany("DELETE FROM notify_pending WHERE seq = ?", [(s,) for s in done])
            db.executemany("UPDATE notify_pending SET held = ? WHERE seq = ?",
                           [(reason.value, item.seq) for item, reason in decision.hold])
        for outgoing in decision.send:
            log.info("notification %s %s: %d alert notice(s)", target, outgoing.kind.value,
                     len(outgoing.items))
        return len(decision.send)

    def _prune(self, now: datetime) -> None:
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        with self.queue.transaction() as db:
            db.execute("DELETE FROM notify_sent WHERE at < ?", (_epoch(now - KEEP_HISTORY),))

    # --- out ----------------------------------------------------------------------------------

    def _split(self, target: str) -> tuple[Recipient, ChannelName] | None:
        name, _, channel = target.rpartition("/")
        recipient = self.recipients.get(name)
        if recipient is None or channel not in {c.value for c in ChannelName}:
            return None
        if ChannelName(channel) not in recipient.addresses:
            return None
        return recipient, ChannelName(channel)

    def _has_target(self, target: str) -> bool:
        return self._split(target) is not None

    def _deliver(self, delivery: Delivery) -> Attempt:
        found = self._split(delivery.target)
        if found is None:
            return Attempt(Outcome.GIVE_UP, None, "recipient no longer configured")
        recipient, channel = found
        message = Message.from_json(delivery.body)
        return self.channels[channel].send(recipient.addresses[channel], message)

    # --- running ------------------------------------------------------------------------------

    def run_due(self) -> int:
        """Release what may go out now and attempt every delivery due (tests, tools);
        returns how many delivery attempts were made."""
        self.release_due()
        return self.queue.run_due()

    def start(self) -> None:
        self.queue.start()

    def stop(self, timeout: float | None = None) -> None:
        self.queue.stop(timeout)

    def close(self) -> None:
        self.queue.close()
        for channel in self.channels.values():
            channel.close()

    def __enter__(self) -> NotificationService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection ---------------------------------------------------------------------------

    def queue_rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return self.queue.query(sql, params)

    def counts(self) -> dict[tuple[ChannelName, DeliveryState], int]:
        """Messages by channel and delivery state (kept 7 days), for /metrics."""
        found: dict[tuple[ChannelName, DeliveryState], int] = {
            (channel, state): 0 for channel in self.channels for state in DeliveryState}
        for target, state, count in self.queue_rows(
                "SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state"):
            channel = str(target).rpartition("/")[2]
            if channel in {c.value for c in ChannelName}:
                key = (ChannelName(channel), DeliveryState(str(state)))
                found[key] = found.get(key, 0) + int(count)  # type: ignore[call-overload]
        return found

    def waiting(self) -> dict[str, int]:
        """Notices waiting, by reason ("quiet hours", "hourly limit reached", ...)."""
        return {str(reason or "new"): int(count)  # type: ignore[call-overload]
                for reason, count in self.queue_rows(
                    "SELECT held, COUNT(*) FROM notify_pending GROUP BY held")}

    def history(self, recipient: str, channel: ChannelName) -> list[Sent]:
        return [Sent(_at(float(at)), MessageKind(str(kind)), _refs(str(refs)))  # type: ignore[arg-type]
                for at, kind, refs in self.queue_rows(
                    "SELECT at, kind, refs FROM notify_sent WHERE recipient = ? AND channel = ? "
                    "ORDER BY id", (recipient, channel.value))]


# --- from the gateway's settings ------------------------------------------------------------

def _secret(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"notify.{what} {path}: cannot read ({exc.strerror})") from None
    if not value:
        raise ConfigError(f"notify.{what} {path}: the file is empty")
    return value


def channels_from_settings(settings: object, clock: Clock) -> list[Channel]:
    """The channels ``[notify.email]``, ``[notify.telegram]``, ``[notify.sms]`` configure
    (secrets read from their files)."""
    from gateway.config import GatewaySettings

    assert isinstance(settings, GatewaySettings)
    notify = settings.notify
    channels: list[Channel] = []
    if notify.email is not None:
        mail = notify.email
        context = ssl.create_default_context(
            cafile=str(mail.tls_ca_file) if mail.tls_ca_file is not None else None)
        password = (_secret(mail.password_file, "email.password_file")
                    if mail.password_file is not None else None)
        channels.append(EmailChannel(mail.host, mail.port, mail.sender, security=mail.security,
                                     username=mail.username, password=password,
                                     timeout_s=mail.timeout_s, tls_context=context))
    if notify.telegram is not None:
        bot = notify.telegram
        channels.append(TelegramChannel(_secret(bot.token_file, "telegram.token_file"),
                                        api_url=bot.api_url, timeout_s=bot.timeout_s,
                                        now=clock.now))
    if notify.sms is not None:
        channels.append(SmsSpoolChannel(notify.sms.outbox, timezone=ZoneInfo(settings.timezone),
                                        now=clock.now, max_parts=notify.sms.max_parts))
    return channels


def recipients_from_settings(settings: object) -> list[Recipient]:
    from gateway.config import GatewaySettings

    assert isinstance(settings, GatewaySettings)
    notify = settings.notify
    zone = ZoneInfo(settings.timezone)
    recipients = []
    for entry in notify.recipients:
        addresses = {channel: address for channel, address in (
            (ChannelName.EMAIL, entry.email), (ChannelName.TELEGRAM, entry.telegram_chat_id),
            (ChannelName.SMS, entry.phone)) if address}
        interest = Interest(
            kinds=frozenset(entry.kinds) if entry.kinds is not None else None,
            min_severity=AlertSeverity(entry.min_severity),
            sites=frozenset(entry.sites) if entry.sites is not None else None,
            nodes=frozenset(entry.nodes) if entry.nodes is not None else None,
            closed=entry.notify_closed)
        rules = DeliveryRules(
            timezone=zone,
            quiet_hours=QuietHours.parse(entry.quiet_hours) if entry.quiet_hours else None,
            max_messages_per_hour=entry.max_messages_per_hour, flap_after=notify.flap_after,
            flap_window=timedelta(minutes=notify.flap_window_min))
        recipients.append(Recipient(entry.name, Language(entry.language), addresses, interest,
                                    rules))
    return recipients


def notification_service(settings: GatewaySettings, clock: Clock | None = None
                         ) -> NotificationService | None:
    """The service the settings describe (``<data_dir>/notifications.sqlite3``), or None
    when no recipient is configured. Raises ConfigError for an unreadable secret file."""
    if not settings.notify.recipients:
        return None
    clock = clock or SystemClock()
    policy = RetryPolicy(max_age_s=settings.notify.give_up_after_h * 3600.0, timeout_s=20.0)
    return NotificationService(Path(settings.data_dir) / "notifications.sqlite3",
                               recipients_from_settings(settings),
                               channels_from_settings(settings, clock),
                               timezone=ZoneInfo(settings.timezone), policy=policy, clock=clock)

