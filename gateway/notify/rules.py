"""Who gets which alert, and when: pure, deterministic rules (no I/O, no clock).

Given a recipient's rules, the notices waiting for one of their channels, what was already
sent on it and the time, ``release`` decides what goes out now (single alerts, a flapping
summary per dryer and kind, or a digest), what keeps waiting, and what is dropped as already
sent. The service (``gateway.notify.service``) stores the inputs in SQLite and calls it when
a notice arrives and every few seconds after.

Guarantees (property-tested in tests/test_notify_rules.py):

- at most ``max_messages_per_hour`` messages per recipient and channel in any hour;
- the same alert in the same state and severity (``NoticeKey``) is sent at most once — an
  acknowledgement or a new peak value is not news for a phone, an escalation to critical is;
- nothing is dropped except as a duplicate of what was sent: a notice waits (quiet hours,
  rate limit, flapping) and goes out later, alone or in a summary; ``critical`` ones ignore
  quiet hours and go first when the hourly limit is short.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from cacao_dryer.contract import (
    SEVERITY_RANK,
    AlertKind,
    AlertNotice,
    AlertSeverity,
    AlertState,
)
from cacao_dryer.errors import ConfigError

HOUR = timedelta(hours=1)
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

NoticeKey = tuple[int, AlertState, AlertSeverity]   # alert id, state, severity
Subject = tuple[str, str, AlertKind]                # site, node, kind


def notice_key(notice: AlertNotice) -> NoticeKey:
    return (notice.alert_id, notice.state, notice.severity)


def subject_of(notice: AlertNotice) -> Subject:
    return (notice.site_id, notice.node_id, notice.kind)


def urgent(notice: AlertNotice) -> bool:
    """Critical notices (open or closed) wake people up: quiet hours do not hold them."""
    return notice.severity is AlertSeverity.CRITICAL


# --- quiet hours ----------------------------------------------------------------------------

@dataclass(frozen=True)
class QuietHours:
    """A daily local-time window (``start`` inclusive, ``end`` exclusive); it crosses
    midnight when ``start > end`` ("21:00-06:00")."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ConfigError(f"quiet_hours {self}: start and end are the same time")

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """``"21:00-06:00"`` → QuietHours(21:00, 06:00); one-line ConfigError otherwise."""
        parts = [part.strip() for part in text.split("-")]
        matches = [_HHMM.match(part) for part in parts]
        if len(parts) != 2 or not all(matches):
            raise ConfigError(f"quiet_hours {text!r}: expected HH:MM-HH:MM, e.g. 21:00-06:00")
        start, end = (time(int(m.group(1)), int(m.group(2))) for m in matches if m)
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


# --- a recipient ----------------------------------------------------------------------------

class Language(StrEnum):
    ES = "es"
    EN = "en"


@dataclass(frozen=True)
class DeliveryRules:
    """How much one recipient wants on one channel. ``flap_after`` openings of the same
    alert kind on the same dryer within ``flap_window`` make it "flapping": its notices are
    then summarised, at most one summary per window (sooner only when it turns critical)."""

    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("America/Lima"))
    quiet_hours: QuietHours | None = None
    max_messages_per_hour: int = 6
    flap_after: int = 3
    flap_window: timedelta = HOUR

    def __post_init__(self) -> None:
        if self.max_messages_per_hour < 1:
            raise ConfigError(f"max_messages_per_hour must be at least 1, got "
                              f"{self.max_messages_per_hour}")
        if self.flap_after < 2:
            raise ConfigError(f"flap_after must be at least 2, got {self.flap_after}")
        if self.flap_window <= timedelta(0):
            raise ConfigError("flap_window must be positive")

    def quiet_at(self, moment: datetime) -> bool:
        return (self.quiet_hours is not None
                and self.quiet_hours.contains(moment.astimezone(self.timezone).time()))


@dataclass(frozen=True)
class Interest:
    """Which notices a recipient wants: ``kinds`` None = every kind; severity at least
    ``min_severity``; ``sites``/``nodes`` None = all; ``closed`` False = only openings and
    escalations, never "resolved"."""

    kinds: frozenset[AlertKind] | None = None
    min_severity: AlertSeverity = AlertSeverity.WARNING
    sites: frozenset[str] | None = None
    nodes: frozenset[str] | None = None
    closed: bool = True

    def wants(self, notice: AlertNotice) -> bool:
        return ((self.kinds is None or notice.kind in self.kinds)
                and SEVERITY_RANK[notice.severity] >= SEVERITY_RANK[self.min_severity]
                and (self.sites is None or notice.site_id in self.sites)
                and (self.nodes is None or notice.node_id in self.nodes
                     or f"{notice.site_id}/{notice.node_id}" in self.nodes)
                and (self.closed or notice.state is AlertState.OPEN))


# --- inputs and outputs of release ----------------------------------------------------------

@dataclass(frozen=True)
class Pending:
    """A notice waiting for one recipient's channel; ``seq`` orders them (queue order)."""

    seq: int
    notice: AlertNotice
    queued_at: datetime


class MessageKind(StrEnum):
    ALERT = "alert"          # one notice
    FLAPPING = "flapping"    # one dryer and kind that keeps opening and closing
    DIGEST = "digest"        # several alerts at once (after quiet hours, at the hourly limit)


@dataclass(frozen=True)
class NoticeRef:
    """What history keeps of a sent notice."""

    key: NoticeKey
    subject: Subject
    opened_at: datetime


@dataclass(frozen=True)
class Sent:
    """One message sent (queued for delivery) on a channel: when, what it covered, and which
    flapping subjects it summarised."""

    at: datetime
    kind: MessageKind
    refs: tuple[NoticeRef, ...]
    summarised: frozenset[Subject] = frozenset()


@dataclass(frozen=True)
class Outgoing:
    """A message to send now. ``openings`` (FLAPPING) counts the alerts opened on that dryer
    and kind within the window."""

    kind: MessageKind
    items: tuple[Pending, ...]
    subject: Subject | None = None
    openings: int = 0
    summarised: frozenset[Subject] = frozenset()

    @property
    def notices(self) -> tuple[AlertNotice, ...]:
        return tuple(item.notice for item in self.items)

    @property
    def urgent(self) -> bool:
        return any(urgent(item.notice) for item in self.items)

    def sent(self, at: datetime) -> Sent:
        return Sent(at, self.kind, tuple(
            NoticeRef(notice_key(n), subject_of(n), n.opened_at) for n in self.notices),
            self.summarised)


class HoldReason(StrEnum):
    QUIET_HOURS = "quiet hours"
    RATE_LIMIT = "hourly limit reached"
    FLAPPING = "flapping: summarised once per window"


@dataclass(frozen=True)
class Release:
    send: tuple[Outgoing, ...] = ()
    hold: tuple[tuple[Pending, HoldReason], ...] = ()
    drop: tuple[Pending, ...] = ()       # copies of what was sent or still waits


# --- the decision ---------------------------------------------------------------------------

def _digest(candidates: Iterable[Outgoing]) -> Outgoing:
    parts = list(candidates)
    items = tuple(sorted((item for part in parts for item in part.items),
                         key=lambda item: item.seq))
    summarised = frozenset().union(*(part.summarised for part in parts))
    return Outgoing(MessageKind.DIGEST, items, summarised=summarised)


def openings(subject: Subject, history: Sequence[Sent], pending: Iterable[Pending],
             since: datetime) -> int:
    """Distinct alerts of ``subject`` opened after ``since`` (sent or waiting)."""
    ids = {ref.key[0] for sent in history for ref in sent.refs
           if ref.subject == subject and ref.opened_at > since}
    ids |= {item.notice.alert_id for item in pending
            if subject_of(item.notice) == subject and item.notice.opened_at > since}
    return len(ids)


def release(rules: DeliveryRules, pending: Sequence[Pending], history: Sequence[Sent],
            now: datetime) -> Release:
    """What to send on one channel of one recipient now (see the module docstring).

    ``pending`` in queue order; ``history`` at least the last ``flap_window`` and hour of
    sent messages (older entries only serve de-duplication)."""
    sent_keys = {ref.key for sent in history for ref in sent.refs}
    fresh: list[Pending] = []
    drop: list[Pending] = []
    for item in sorted(pending, key=lambda item: item.seq):
        key = notice_key(item.notice)
        if key in sent_keys:
            drop.append(item)
        else:
            sent_keys.add(key)
            fresh.append(item)

    # flapping subjects become one summary each (or wait for the next window)
    hold: list[tuple[Pending, HoldReason]] = []
    candidates: list[Outgoing] = []
    groups: dict[Subject, list[Pending]] = {}
    for item in fresh:
        groups.setdefault(subject_of(item.notice), []).append(item)
    window_start = now - rules.flap_window
    for subject, items in groups.items():
        # after a summary, the next word on that dryer and kind waits for the next window
        # (unless it turns critical); then it is a summary again if it still flaps
        last = max((sent for sent in history if subject in sent.summarised
                    and sent.at > window_start), key=lambda sent: sent.at, default=None)
        escalates = last is not None and any(urgent(item.notice) for item in items) and not any(
            ref.subject == subject and ref.key[2] is AlertSeverity.CRITICAL
            for ref in last.refs)
        count = openings(subject, history, items, window_start)
        if last is not None and not escalates:
            hold += [(item, HoldReason.FLAPPING) for item in items]
        elif count >= rules.flap_after:
            candidates.append(Outgoing(MessageKind.FLAPPING, tuple(items), subject, count,
                                       frozenset({subject})))
        else:
            candidates += [Outgoing(MessageKind.ALERT, (item,)) for item in items]

    # quiet hours hold all but critical; what they held goes out as one digest afterwards
    if rules.quiet_at(now):
        for candidate in [c for c in candidates if not c.urgent]:
            candidates.remove(candidate)
            hold += [(item, HoldReason.QUIET_HOURS) for item in candidate.items]
    else:
        overnight = [c for c in candidates
                     if any(rules.quiet_at(item.queued_at) for item in c.items)]
        if len(overnight) > 1:
            candidates = [c for c in candidates if c not in overnight]
            candidates.append(_digest(overnight))

    # the hourly limit: critical first; the last free slot carries a digest of the rest
    candidates.sort(key=lambda c: (not c.urgent, min(item.seq for item in c.items)))
    used = sum(1 for sent in history if sent.at > now - HOUR)
    slots = rules.max_messages_per_hour - used
    if slots <= 0:
        hold += [(item, HoldReason.RATE_LIMIT) for c in candidates for item in c.items]
        candidates = []
    elif len(candidates) > slots:
        candidates = [*candidates[:slots - 1], _digest(candidates[slots - 1:])]
    hold.sort(key=lambda entry: entry[0].seq)
    return Release(tuple(candidates), tuple(hold), tuple(drop))
