"""Who gets which alert and when (gateway/notify/rules.py): pure rules, one behaviour per
test, and hypothesis properties over random alert storms — never more than N messages per
hour, never the same alert state twice, nothing lost (critical ones never held by quiet
hours)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.contract import AlertKind, AlertNotice, AlertSeverity, AlertState
from cacao_dryer.errors import ConfigError
from gateway.notify.rules import (
    HOUR,
    DeliveryRules,
    HoldReason,
    Interest,
    MessageKind,
    NoticeKey,
    Pending,
    QuietHours,
    Sent,
    notice_key,
    release,
)

LIMA = ZoneInfo("America/Lima")  # UTC-5, no daylight saving
T0 = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 10:00 in Lima
NIGHT = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 22:00 in Lima
SITE = "coop-tarapoto"


def notice(alert_id: int = 1, *, node: str = "secador-01",
           kind: AlertKind = AlertKind.OVER_TEMPERATURE,
           severity: AlertSeverity = AlertSeverity.WARNING, opened_at: datetime = T0,
           closed_at: datetime | None = None, value: float | None = 61.0,
           acknowledged: bool = False) -> AlertNotice:
    return AlertNotice(
        site_id=SITE, node_id=node, alert_id=alert_id, kind=kind, severity=severity,
        state=AlertState.CLOSED if closed_at else AlertState.OPEN, opened_at=opened_at,
        updated_at=closed_at or opened_at, closed_at=closed_at, message="inside air hot",
        value=value, acknowledged_by="ana" if acknowledged else None,
        acknowledged_at=opened_at if acknowledged else None)


@dataclass
class Channel:
    """One recipient's channel, driven like the service drives it."""

    rules: DeliveryRules
    pending: list[Pending] = field(default_factory=list)
    history: list[Sent] = field(default_factory=list)
    seq: int = 0

    def add(self, item: AlertNotice, at: datetime) -> None:
        self.seq += 1
        self.pending.append(Pending(self.seq, item, at))

    def step(self, now: datetime) -> list[Sent]:
        decision = release(self.rules, self.pending, self.history, now)
        sent = [outgoing.sent(now) for outgoing in decision.send]
        self.history += sent
        self.pending = [item for item, _ in decision.hold]
        self.last_hold = decision.hold
        self.last_drop = decision.drop
        self.last_send = decision.send
        return sent


def rules(**changes: object) -> DeliveryRules:
    return DeliveryRules(**{"timezone": LIMA, **changes})  # type: ignore[arg-type]


# --- quiet hours and interest ----------------------------------------------------------------

def test_quiet_hours_cross_midnight_in_local_time() -> None:
    quiet = QuietHours.parse("21:00-06:00")
    assert [quiet.contains(time(h, m)) for h, m in ((20, 59), (21, 0), (2, 0), (5, 59), (6, 0))] \
        == [False, True, True, True, False]
    assert rules(quiet_hours=quiet).quiet_at(NIGHT)            # 22:00 in Lima
    assert not rules(quiet_hours=quiet).quiet_at(T0)           # 10:00 in Lima
    assert QuietHours.parse("12:00-14:00").contains(time(13)) and str(quiet) == "21:00-06:00"


@pytest.mark.parametrize("text", ["21-06", "25:00-06:00", "06:00-06:00", "21:00", ""])
def test_bad_quiet_hours_are_a_one_line_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="quiet_hours"):
        QuietHours.parse(text)


def test_interest_filters_kind_severity_site_node_and_resolved() -> None:
    assert not Interest().wants(notice(kind=AlertKind.TARGET_REACHED,
                                       severity=AlertSeverity.INFO))  # default: warning up
    assert Interest(min_severity=AlertSeverity.INFO).wants(
        notice(kind=AlertKind.TARGET_REACHED, severity=AlertSeverity.INFO))
    assert not Interest(kinds=frozenset({AlertKind.NODE_OFFLINE})).wants(notice())
    assert not Interest(sites=frozenset({"coop-otra"})).wants(notice())
    assert Interest(nodes=frozenset({f"{SITE}/secador-01"})).wants(notice())
    assert not Interest(nodes=frozenset({"secador-02"})).wants(notice())
    assert not Interest(closed=False).wants(notice(closed_at=T0 + HOUR))
    assert Interest(closed=False).wants(notice(severity=AlertSeverity.CRITICAL))


def test_bad_delivery_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_messages_per_hour"):
        rules(max_messages_per_hour=0)
    with pytest.raises(ConfigError, match="flap_after"):
        rules(flap_after=1)


# --- single alerts and de-duplication -------------------------------------------------------

def test_an_alert_goes_out_at_once_as_one_message() -> None:
    channel = Channel(rules())
    channel.add(notice(), T0)
    [sent] = channel.step(T0)
    assert sent.kind is MessageKind.ALERT and [r.key for r in sent.refs] == [
        (1, AlertState.OPEN, AlertSeverity.WARNING)]
    assert channel.pending == []


def test_acknowledgement_and_new_peak_are_not_sent_again_but_escalation_is() -> None:
    channel = Channel(rules())
    channel.add(notice(), T0)
    channel.step(T0)
    channel.add(notice(acknowledged=True), T0 + timedelta(minutes=1))
    channel.add(notice(value=62.5), T0 + timedelta(minutes=2))
    assert channel.step(T0 + timedelta(minutes=2)) == []
    assert len(channel.last_drop) == 2
    channel.add(notice(severity=AlertSeverity.CRITICAL, value=65.5), T0 + timedelta(minutes=3))
    [sent] = channel.step(T0 + timedelta(minutes=3))
    assert sent.refs[0].key[2] is AlertSeverity.CRITICAL


def test_the_same_notice_delivered_twice_at_once_goes_out_once() -> None:
    channel = Channel(rules())
    channel.add(notice(), T0)
    channel.add(notice(), T0)
    assert len(channel.step(T0)) == 1 and len(channel.last_drop) == 1


# --- quiet hours ----------------------------------------------------------------------------

def test_quiet_hours_hold_a_warning_but_not_a_critical_alert() -> None:
    channel = Channel(rules(quiet_hours=QuietHours.parse("21:00-06:00")))
    channel.add(notice(1), NIGHT)
    channel.add(notice(2, node="secador-02", severity=AlertSeverity.CRITICAL), NIGHT)
    [sent] = channel.step(NIGHT)
    assert sent.refs[0].key[0] == 2
    assert [(item.notice.alert_id, reason) for item, reason in channel.last_hold] == [
        (1, HoldReason.QUIET_HOURS)]


def test_what_quiet_hours_held_comes_as_one_digest_when_they_end() -> None:
    channel = Channel(rules(quiet_hours=QuietHours.parse("21:00-06:00")))
    for alert_id, node in ((1, "secador-01"), (2, "secador-02"), (3, "secador-03")):
        channel.add(notice(alert_id, node=node, opened_at=NIGHT), NIGHT)
    channel.add(notice(1, opened_at=NIGHT, closed_at=NIGHT + HOUR), NIGHT + HOUR)
    assert channel.step(NIGHT + HOUR) == []
    assert channel.step(datetime(2026, 3, 2, 10, 59, tzinfo=UTC)) == []  # 05:59 in Lima
    [digest] = channel.step(datetime(2026, 3, 2, 11, 0, tzinfo=UTC))      # 06:00
    assert digest.kind is MessageKind.DIGEST and len(digest.refs) == 4


# --- the hourly limit -----------------------------------------------------------------------

def test_hourly_limit_holds_and_the_last_slot_carries_a_digest() -> None:
    channel = Channel(rules(max_messages_per_hour=3))
    for alert_id in range(1, 3):
        channel.add(notice(alert_id, node=f"secador-0{alert_id}"), T0)
        channel.step(T0)
    for alert_id in range(3, 7):
        channel.add(notice(alert_id, node=f"secador-0{alert_id}"), T0 + timedelta(minutes=1))
    [digest] = channel.step(T0 + timedelta(minutes=1))
    assert digest.kind is MessageKind.DIGEST and len(digest.refs) == 4
    channel.add(notice(7, node="secador-07"), T0 + timedelta(minutes=2))
    assert channel.step(T0 + timedelta(minutes=59, seconds=59)) == []
    assert channel.last_hold[0][1] is HoldReason.RATE_LIMIT
    [late] = channel.step(T0 + HOUR)   # the first slot frees exactly one hour later
    assert late.refs[0].key[0] == 7


def test_at_the_limit_critical_alerts_go_first() -> None:
    channel = Channel(rules(max_messages_per_hour=2))
    channel.add(notice(1, node="secador-01"), T0)
    channel.add(notice(2, node="secador-02"), T0)
    channel.add(notice(3, node="secador-03", severity=AlertSeverity.CRITICAL), T0)
    first, second = channel.step(T0)
    assert first.kind is MessageKind.ALERT and first.refs[0].key[0] == 3
    assert second.kind is MessageKind.DIGEST and {r.key[0] for r in second.refs} == {1, 2}


# --- flapping -------------------------------------------------------------------------------

def flap(channel: Channel, alert_id: int, at: datetime, *,
         severity: AlertSeverity = AlertSeverity.WARNING) -> tuple[list[Sent], list[Sent]]:
    """Open an alert at ``at`` and close it 10 minutes later."""
    channel.add(notice(alert_id, opened_at=at, severity=severity), at)
    opened = channel.step(at)
    closed_at = at + timedelta(minutes=10)
    channel.add(notice(alert_id, opened_at=at, closed_at=closed_at, severity=severity),
                closed_at)
    return opened, channel.step(closed_at)


def test_flapping_sensor_is_summarised_once_per_window() -> None:
    channel = Channel(rules(max_messages_per_hour=20))
    sent = [flap(channel, 1, T0), flap(channel, 2, T0 + timedelta(minutes=15))]
    assert [len(opened) + len(closed) for opened, closed in sent] == [2, 2]
    opened, closed = flap(channel, 3, T0 + timedelta(minutes=30))
    assert [s.kind for s in opened] == [MessageKind.FLAPPING] and closed == []
    assert channel.last_hold[0][1] is HoldReason.FLAPPING
    for alert_id, minute in ((4, 45), (5, 60), (6, 75)):
        assert flap(channel, alert_id, T0 + timedelta(minutes=minute)) == ([], [])
    [summary] = channel.step(T0 + timedelta(minutes=90))  # an hour after the first summary
    assert summary.kind is MessageKind.FLAPPING and {r.key[0] for r in summary.refs} == {
        3, 4, 5, 6}
    assert len(channel.history) == 6


def test_flapping_alert_turning_critical_is_not_held() -> None:
    channel = Channel(rules(max_messages_per_hour=20))
    for alert_id, minute in ((1, 0), (2, 15), (3, 30)):
        flap(channel, alert_id, T0 + timedelta(minutes=minute))
    at = T0 + timedelta(minutes=45)
    channel.add(notice(4, opened_at=at, severity=AlertSeverity.CRITICAL), at)
    [summary] = channel.step(at)
    assert summary.kind is MessageKind.FLAPPING and summary.refs[-1].key[2] is \
        AlertSeverity.CRITICAL


# --- properties -----------------------------------------------------------------------------

SUBJECTS = [("secador-01", AlertKind.OVER_TEMPERATURE), ("secador-01", AlertKind.NODE_OFFLINE),
            ("secador-02", AlertKind.SENSOR_FAULT)]
ACTIONS = st.sampled_from(["open", "close", "escalate", "ack", "repeat"])
EVENTS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2), ACTIONS), max_size=60)


def storm(events: list[tuple[int, int, str]]) -> list[tuple[datetime, AlertNotice]]:
    """Notices of a random alert storm: gaps in minutes, subject index, what happens."""
    now = NIGHT - timedelta(hours=6)
    open_alerts: dict[int, AlertNotice] = {}
    last: list[AlertNotice] = []
    out: list[tuple[datetime, AlertNotice]] = []
    next_id = 1
    for gap_min, index, action in events:
        now += timedelta(minutes=gap_min, seconds=1)
        node, kind = SUBJECTS[index]
        current = open_alerts.get(index)
        item: AlertNotice | None = None
        if action == "open" and current is None:
            item = notice(next_id, node=node, kind=kind, opened_at=now)
            next_id += 1
        elif action == "close" and current is not None:
            item = notice(current.alert_id, node=node, kind=kind, opened_at=current.opened_at,
                          closed_at=now, severity=current.severity)
        elif action == "escalate" and current is not None:
            item = notice(current.alert_id, node=node, kind=kind, opened_at=current.opened_at,
                          severity=AlertSeverity.CRITICAL)
        elif action == "ack" and current is not None:
            item = notice(current.alert_id, node=node, kind=kind, opened_at=current.opened_at,
                          severity=current.severity, acknowledged=True)
        elif action == "repeat" and last:
            item = last[-1]
        if item is None:
            continue
        if item.state is AlertState.OPEN:
            open_alerts[index] = item
        else:
            open_alerts.pop(index, None)
        last.append(item)
        out.append((now, item))
    return out


def run_storm(channel: Channel, notices: list[tuple[datetime, AlertNotice]]
              ) -> tuple[set[NoticeKey], list[tuple[Pending, HoldReason]]]:
    """Feed the storm, releasing at each notice and every 5 minutes until 2 days after;
    returns every key that arrived and every hold decision made."""
    arrived: set[NoticeKey] = set()
    holds: list[tuple[Pending, HoldReason]] = []
    sent_keys: set[NoticeKey] = set()
    now = notices[0][0] if notices else NIGHT
    end = (notices[-1][0] if notices else NIGHT) + timedelta(days=2)
    queue = list(notices)
    while now <= end:
        while queue and queue[0][0] <= now:
            at, item = queue.pop(0)
            channel.add(item, at)
            arrived.add(notice_key(item))
            channel.step(at)
            holds += channel.last_hold
            waiting = {notice_key(item.notice) for item in channel.pending}
            for dropped in channel.last_drop:  # a copy of what was sent or still waits
                assert notice_key(dropped.notice) in sent_keys | waiting | {
                    ref.key for s in channel.history for ref in s.refs}
            sent_keys |= {ref.key for s in channel.history for ref in s.refs}
        channel.step(now)
        holds += channel.last_hold
        sent_keys |= {ref.key for s in channel.history for ref in s.refs}
        now = min(now + timedelta(minutes=5), queue[0][0]) if queue else now + timedelta(
            minutes=5)
    return arrived, holds


@settings(max_examples=120, deadline=None)
@given(events=EVENTS, limit=st.integers(1, 6), flap_after=st.integers(2, 4),
       quiet=st.sampled_from([None, "21:00-06:00", "12:00-13:00"]))
def test_storms_never_exceed_the_limit_never_repeat_and_lose_nothing(
        events: list[tuple[int, int, str]], limit: int, flap_after: int,
        quiet: str | None) -> None:
    channel = Channel(rules(max_messages_per_hour=limit, flap_after=flap_after,
                            quiet_hours=QuietHours.parse(quiet) if quiet else None))
    arrived, holds = run_storm(channel, storm(events))
    times = [sent.at for sent in channel.history]
    for at in times:  # every one-hour window ending at a send holds at most `limit`
        assert sum(1 for other in times if at - HOUR < other <= at) <= limit
    keys = [ref.key for sent in channel.history for ref in sent.refs]
    assert len(keys) == len(set(keys))                      # never the same state twice
    assert set(keys) == arrived and channel.pending == []   # nothing lost, nothing left
    assert not any(item.notice.severity is AlertSeverity.CRITICAL
                   and reason is HoldReason.QUIET_HOURS for item, reason in holds)


@settings(max_examples=60, deadline=None)
@given(events=EVENTS)
def test_a_critical_alert_waits_at_most_an_hour_without_quiet_hours_or_flapping(
        events: list[tuple[int, int, str]]) -> None:
    channel = Channel(rules(max_messages_per_hour=2, flap_after=1000))
    notices = storm(events)
    run_storm(channel, notices)
    sent_at = {ref.key: sent.at for sent in channel.history for ref in sent.refs}
    for at, item in notices:
        if item.severity is AlertSeverity.CRITICAL:
            assert sent_at[notice_key(item)] - at <= HOUR
