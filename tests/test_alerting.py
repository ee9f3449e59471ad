"""Alert rules (gateway/alerting.py): each kind opens, updates and closes as documented in
docs/alerts.md, with hysteresis in value and time; no storms (hypothesis)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    AlertState,
    NodeState,
    Thresholds,
    alert_topic,
    decode_message,
    encode,
)
from cacao_dryer.errors import ConfigError
from gateway.alerting import (
    AlertAction,
    AlertChange,
    AlertKind,
    AlertRules,
    AlertSeverity,
    NodeSnapshot,
    OpenAlert,
    PendingConditions,
    SnapshotError,
    apply_changes,
    evaluate,
    make_notice,
    on_gateway_clock,
)

SITE, NODE = "demo", "secador-01"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OPEN, UPDATE, CLOSE = AlertAction.OPEN, AlertAction.UPDATE, AlertAction.CLOSE
K = AlertKind


def snapshot(now: datetime, **state: Any) -> NodeSnapshot:
    """A healthy, online node drying a batch at ``now``; ``state`` changes what the test
    is about. ``reading_at`` and ``last_seen_at`` default to ``now`` (a fresh reading)."""
    fields: dict[str, Any] = dict(
        site_id=SITE, node_id=NODE, now=now, reading_at=now, air_temp_c=45.0, air_rh_pct=55.0,
        bean_moisture_pct_wb=30.0, last_seen_at=now, state=NodeState.ONLINE,
        state_since=T0 - timedelta(days=3), batch_id="lote-1",
        batch_started_at=T0 - timedelta(days=2))
    return NodeSnapshot(**(fields | state))


class Dryer:
    """Evaluates one node round after round as the gateway's alert job would, on a hand-driven
    clock, keeping the open alerts and pending state between rounds."""

    def __init__(self, clock: ManualClock, rules: AlertRules | None = None) -> None:
        self.clock = clock
        self.rules = rules or AlertRules()
        self.open: dict[AlertKind, OpenAlert] = {}
        self.pending = PendingConditions()
        self.log: list[AlertChange] = []

    def check(self, **state: Any) -> tuple[AlertChange, ...]:
        result = evaluate(snapshot(self.clock.now(), **state), self.open, self.rules,
                          self.pending)
        self.open = apply_changes(self.open, result.changes)
        self.pending = result.pending
        self.log.extend(result.changes)
        return result.changes

    def run(self, seconds: float, every_s: float = 10.0, **state: Any) -> list[AlertChange]:
        """The node is in ``state`` from now for ``seconds``: check now, then every
        ``every_s`` until the end (inclusive). A callable in ``state`` is called with the
        clock's time (e.g. a moisture history that follows time)."""
        def check() -> tuple[AlertChange, ...]:
            now = self.clock.now()
            return self.check(**{k: v(now) if callable(v) else v for k, v in state.items()})

        changes = list(check())
        elapsed = 0.0
        while elapsed < seconds:
            step = min(every_s, seconds - elapsed)
            self.clock.advance(step)
            elapsed += step
            changes += check()
        return changes

    def acknowledge(self, kind: AlertKind, who: str = "operador-luis") -> None:
        alert = self.open[kind]
        self.open[kind] = OpenAlert(alert.kind, alert.severity, alert.opened_at,
                                    alert.updated_at, alert.message, alert.value,
                                    alert.batch_id, who, self.clock.now())


def actions(changes: list[AlertChange] | tuple[AlertChange, ...], kind: AlertKind
            ) -> list[AlertAction]:
    return [c.action for c in changes if c.kind is kind]


@pytest.fixture
def dryer() -> Dryer:
    return Dryer(ManualClock(T0))


def test_healthy_node_raises_nothing(dryer: Dryer) -> None:
    assert dryer.run(3600) == []


# --- over_temperature --------------------------------------------------------------------

def test_over_temperature_opens_after_holding_a_minute_at_the_alarm(dryer: Dryer) -> None:
    assert dryer.run(50, air_temp_c=60.0) == []
    opened = dryer.run(10, air_temp_c=60.0)
    assert actions(opened, K.OVER_TEMPERATURE) == [OPEN]
    assert opened[0].severity is AlertSeverity.WARNING and opened[0].value == 60.0


def test_over_temperature_spike_shorter_than_the_open_delay_opens_nothing(dryer: Dryer) -> None:
    dryer.run(40, air_temp_c=63.0)
    dryer.run(10, air_temp_c=50.0)
    assert dryer.run(40, air_temp_c=63.0) == []


def test_over_temperature_stays_open_inside_the_deadband(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    assert actions(dryer.run(3600, air_temp_c=58.5), K.OVER_TEMPERATURE) == []
    assert K.OVER_TEMPERATURE in dryer.open


def test_over_temperature_closes_ten_minutes_below_the_deadband(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    assert dryer.run(590, air_temp_c=57.5) == []
    closed = dryer.run(10, air_temp_c=57.5)
    assert actions(closed, K.OVER_TEMPERATURE) == [CLOSE]
    assert closed[0].value == 61.0 and "57.5 °C" in closed[0].message


def test_over_temperature_brief_dip_below_the_deadband_does_not_close(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    dryer.run(300, air_temp_c=57.0)
    dryer.run(10, air_temp_c=59.0)
    assert dryer.run(590, air_temp_c=57.0) == []
    assert K.OVER_TEMPERATURE in dryer.open


def test_over_temperature_becomes_critical_at_the_hard_limit(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=60.5)
    updated = dryer.run(10, air_temp_c=65.2)
    assert [(c.action, c.severity) for c in updated] == [(UPDATE, AlertSeverity.CRITICAL)]
    assert "65.2 °C" in updated[0].message


def test_over_temperature_updates_only_for_a_peak_a_kelvin_higher(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=60.0)
    assert dryer.run(600, air_temp_c=lambda now: 60.0 + (now - T0).seconds // 10 % 2 * 0.9
                     ) == []
    assert actions(dryer.run(10, air_temp_c=61.0), K.OVER_TEMPERATURE) == [UPDATE]
    assert dryer.open[K.OVER_TEMPERATURE].value == 61.0


def test_over_temperature_follows_the_nodes_alarm_threshold(dryer: Dryer) -> None:
    cautious = Thresholds(air_temp_warn_c=45, air_temp_alarm_c=50, air_temp_limit_c=60)
    opened = dryer.run(60, air_temp_c=51.0, thresholds=cautious)
    assert actions(opened, K.OVER_TEMPERATURE) == [OPEN]
    assert "50.0 °C alarm" in opened[0].message


def test_stale_reading_holds_an_open_over_temperature_alert(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=62.0)
    changes = dryer.run(7200, air_temp_c=40.0,
                        reading_at=lambda now: now - timedelta(seconds=700))
    assert actions(changes, K.OVER_TEMPERATURE) == []
    assert K.OVER_TEMPERATURE in dryer.open


def test_stale_hot_reading_opens_no_over_temperature_alert(dryer: Dryer) -> None:
    changes = dryer.run(3600, air_temp_c=63.0,
                        reading_at=lambda now: now - timedelta(seconds=700))
    assert actions(changes, K.OVER_TEMPERATURE) == []


def test_alert_messages_are_one_line_with_numbers(dryer: Dryer) -> None:
    opened = dryer.run(60, air_temp_c=62.4)
    message = opened[0].message
    assert "\n" not in message and "62.4 °C" in message and "60.0 °C" in message


# --- high_humidity -----------------------------------------------------------------------

def test_humid_air_over_dry_beans_opens_high_humidity_after_15_minutes(dryer: Dryer) -> None:
    assert dryer.run(890, air_rh_pct=84.0, bean_moisture_pct_wb=12.0) == []
    opened = dryer.run(10, air_rh_pct=84.0, bean_moisture_pct_wb=12.0)
    assert actions(opened, K.HIGH_HUMIDITY) == [OPEN]
    assert "84 % RH" in opened[0].message and "12.0 %" in opened[0].message


def test_humid_air_over_wet_beans_is_not_a_rewetting_alert(dryer: Dryer) -> None:
    assert dryer.run(3600, air_rh_pct=90.0, bean_moisture_pct_wb=35.0) == []


def test_humid_air_in_an_empty_dryer_is_not_an_alert(dryer: Dryer) -> None:
    assert dryer.run(3600, air_rh_pct=90.0, bean_moisture_pct_wb=8.0, batch_id=None) == []


def test_high_humidity_closes_15_minutes_after_rh_falls_3_points_below(dryer: Dryer) -> None:
    dryer.run(900, air_rh_pct=84.0, bean_moisture_pct_wb=12.0)
    assert dryer.run(3600, air_rh_pct=78.0, bean_moisture_pct_wb=12.0) == []
    assert dryer.run(890, air_rh_pct=76.5, bean_moisture_pct_wb=12.0) == []
    closed = dryer.run(10, air_rh_pct=76.5, bean_moisture_pct_wb=12.0)
    assert actions(closed, K.HIGH_HUMIDITY) == [CLOSE]


def test_high_humidity_closes_when_the_batch_ends(dryer: Dryer) -> None:
    dryer.run(900, air_rh_pct=84.0, bean_moisture_pct_wb=12.0)
    closed = dryer.check(air_rh_pct=84.0, bean_moisture_pct_wb=12.0, batch_id=None)
    assert actions(closed, K.HIGH_HUMIDITY) == [CLOSE]


# --- sensor_fault ------------------------------------------------------------------------

def test_faulty_sensor_opens_a_warning_naming_it(dryer: Dryer) -> None:
    opened = dryer.run(60, sensor_faults={"ambient": "DHT22 checksum error x5"})
    assert actions(opened, K.SENSOR_FAULT) == [OPEN]
    assert opened[0].severity is AlertSeverity.WARNING
    assert opened[0].message == "faulty sensors: ambient — ambient: DHT22 checksum error x5"


def test_lost_inside_air_temperature_is_a_critical_sensor_fault(dryer: Dryer) -> None:
    opened = dryer.run(60, sensor_faults={"inside": "no answer"}, air_temp_c=None)
    assert [(c.kind, c.severity) for c in opened] == [(K.SENSOR_FAULT, AlertSeverity.CRITICAL)]


def test_sensor_fault_updates_when_another_sensor_fails_not_when_the_reason_changes(
        dryer: Dryer) -> None:
    dryer.run(60, sensor_faults={"ambient": "timeout 1"})
    assert dryer.run(60, sensor_faults={"ambient": "timeout 2"}) == []
    updated = dryer.run(10, sensor_faults={"ambient": "timeout", "tray": "HX711 not ready"})
    assert actions(updated, K.SENSOR_FAULT) == [UPDATE]
    assert updated[0].message.startswith("faulty sensors: ambient, tray")


def test_no_readings_from_an_online_node_is_a_critical_sensor_fault(dryer: Dryer) -> None:
    last_reading = dryer.clock.now()
    opened = dryer.run(670, reading_at=last_reading)
    assert [(c.kind, c.severity) for c in opened] == [(K.SENSOR_FAULT, AlertSeverity.CRITICAL)]
    assert "no reading since 2026-03-01 12:00 UTC" in opened[0].message


def test_sensor_fault_closes_five_minutes_after_recovery(dryer: Dryer) -> None:
    dryer.run(60, sensor_faults={"ambient": "timeout"})
    assert dryer.run(290) == []
    assert actions(dryer.run(10), K.SENSOR_FAULT) == [CLOSE]


def test_sensor_fault_of_an_offline_node_stays_open(dryer: Dryer) -> None:
    dryer.run(60, sensor_faults={"ambient": "timeout"})
    gone = dryer.clock.now()
    changes = dryer.run(7200, last_seen_at=gone, reading_at=gone, state=NodeState.OFFLINE,
                        state_since=gone)
    assert actions(changes, K.SENSOR_FAULT) == []
    assert K.SENSOR_FAULT in dryer.open


# --- node_offline ------------------------------------------------------------------------

def test_ten_minutes_of_silence_opens_node_offline(dryer: Dryer) -> None:
    last = dryer.clock.now()
    assert actions(dryer.run(600, last_seen_at=last, reading_at=last), K.NODE_OFFLINE) == []
    opened = dryer.run(10, last_seen_at=last, reading_at=last)
    assert actions(opened, K.NODE_OFFLINE) == [OPEN]
    assert "nothing heard since 2026-03-01 12:00 UTC" in opened[0].message


def test_last_will_opens_node_offline_after_two_minutes(dryer: Dryer) -> None:
    will = dryer.clock.now()
    offline = dict(state=NodeState.OFFLINE, state_since=will, last_seen_at=will, reading_at=will)
    assert dryer.run(110, **offline) == []
    assert actions(dryer.run(10, **offline), K.NODE_OFFLINE) == [OPEN]


def test_node_rebooting_within_two_minutes_opens_nothing(dryer: Dryer) -> None:
    will = dryer.clock.now()
    dryer.run(90, state=NodeState.OFFLINE, state_since=will, last_seen_at=will, reading_at=will)
    assert dryer.run(3600, state_since=dryer.clock.now()) == []


def test_node_offline_becomes_critical_after_an_hour(dryer: Dryer) -> None:
    last = dryer.clock.now()
    dryer.run(610, last_seen_at=last, reading_at=last)
    updated = dryer.run(3000, last_seen_at=last, reading_at=last)
    assert [(c.kind, c.action, c.severity) for c in updated] == [
        (K.NODE_OFFLINE, UPDATE, AlertSeverity.CRITICAL)]


def test_node_offline_closes_after_five_minutes_back_online(dryer: Dryer) -> None:
    last = dryer.clock.now()
    dryer.run(610, last_seen_at=last, reading_at=last)
    assert dryer.run(290) == []
    closed = dryer.run(10)
    assert actions(closed, K.NODE_OFFLINE) == [CLOSE] and "back online" in closed[0].message


# --- sequence_gap ------------------------------------------------------------------------

def test_missing_readings_open_sequence_gap_after_ten_minutes(dryer: Dryer) -> None:
    assert dryer.run(590, missing_seq_ranges=((100, 111),)) == []
    opened = dryer.run(10, missing_seq_ranges=((100, 111),))
    assert actions(opened, K.SEQUENCE_GAP) == [OPEN]
    assert opened[0].value == 12 and "seq 100–111" in opened[0].message


def test_gap_filled_by_a_late_replay_opens_nothing(dryer: Dryer) -> None:
    dryer.run(300, missing_seq_ranges=((100, 111),))
    assert dryer.run(3600) == []


def test_sequence_gap_closes_when_a_late_replay_fills_it(dryer: Dryer) -> None:
    dryer.run(600, missing_seq_ranges=((100, 111),))
    assert actions(dryer.run(10), K.SEQUENCE_GAP) == [CLOSE]


def test_sequence_gap_updates_when_more_readings_go_missing(dryer: Dryer) -> None:
    dryer.run(600, missing_seq_ranges=((100, 111),))
    updated = dryer.run(10, missing_seq_ranges=((100, 111), (200, 200)))
    assert actions(updated, K.SEQUENCE_GAP) == [UPDATE] and updated[0].value == 13


def test_gap_unchanged_for_six_hours_closes_as_lost_and_does_not_reopen(dryer: Dryer) -> None:
    gap = ((100, 111),)
    dryer.run(600, missing_seq_ranges=gap)
    closed = dryer.run(6 * 3600, every_s=60, missing_seq_ranges=gap)
    assert actions(closed, K.SEQUENCE_GAP) == [CLOSE] and "counted as lost" in closed[0].message
    assert dryer.run(24 * 3600, every_s=60, missing_seq_ranges=gap) == []


def test_a_new_gap_after_an_accepted_one_opens_a_new_alert(dryer: Dryer) -> None:
    dryer.run(600 + 6 * 3600, every_s=60, missing_seq_ranges=((100, 111),))
    opened = dryer.run(600, every_s=60, missing_seq_ranges=((100, 111), (500, 501)))
    assert actions(opened, K.SEQUENCE_GAP) == [OPEN] and opened[0].message.startswith("2 ")


def test_pending_conditions_survive_a_json_round_trip(dryer: Dryer) -> None:
    dryer.run(600 + 6 * 3600, every_s=60, missing_seq_ranges=((100, 111),))
    dryer.run(30, air_temp_c=62.0, missing_seq_ranges=((100, 111),))
    restored = PendingConditions.from_json(dryer.pending.to_json())
    assert restored == dryer.pending and restored.accepted_missing_seqs == 12
    assert K.OVER_TEMPERATURE in restored.since


def test_unreadable_pending_conditions_are_a_one_line_error() -> None:
    with pytest.raises(SnapshotError, match="pending alert conditions: unreadable"):
        PendingConditions.from_json({"since": {"boiling": "yesterday"}})


# --- drying_stalled ----------------------------------------------------------------------

def hourly(now: datetime, start_pct: float, drop_per_day: float, hours: int = 30
           ) -> tuple[tuple[datetime, float], ...]:
    """Hourly means of bean moisture ending at ``now``, falling ``drop_per_day`` a day."""
    top = now.replace(minute=0, second=0, microsecond=0)
    return tuple((top - timedelta(hours=h), start_pct - drop_per_day * (hours - h) / 24)
                 for h in range(hours, -1, -1))


def test_moisture_not_falling_for_a_day_opens_drying_stalled_after_an_hour(
        dryer: Dryer) -> None:
    stalled = {"moisture_history": lambda now: hourly(now, 14.0, 0.3),
               "bean_moisture_pct_wb": 13.7}
    assert dryer.run(3590, every_s=60, **stalled) == []
    opened = dryer.run(10, **stalled)
    assert actions(opened, K.DRYING_STALLED) == [OPEN]
    assert opened[0].severity is AlertSeverity.WARNING and opened[0].value == pytest.approx(0.3)
    assert "fell only 0.3 points in 24 h" in opened[0].message


def test_steady_drying_is_not_a_stall(dryer: Dryer) -> None:
    assert dryer.run(6 * 3600, every_s=60, moisture_history=lambda now: hourly(now, 14.0, 2.8),
                     bean_moisture_pct_wb=12.0) == []


def test_slow_drying_near_the_target_is_not_a_stall(dryer: Dryer) -> None:
    assert dryer.run(6 * 3600, every_s=60, moisture_history=lambda now: hourly(now, 7.9, 0.2),
                     bean_moisture_pct_wb=7.7) == []


def test_batch_younger_than_the_window_is_not_judged(dryer: Dryer) -> None:
    young = dryer.clock.now() - timedelta(hours=20)
    assert dryer.run(3 * 3600, every_s=60, moisture_history=lambda now: hourly(now, 40.0, 0.0),
                     batch_started_at=young) == []


def test_drying_stalled_closes_an_hour_after_drying_resumes(dryer: Dryer) -> None:
    dryer.run(3600, every_s=60, moisture_history=lambda now: hourly(now, 14.0, 0.3))
    assert dryer.run(3590, every_s=60, moisture_history=lambda now: hourly(now, 14.0, 0.8)) \
        == []
    closed = dryer.run(10, moisture_history=lambda now: hourly(now, 14.0, 0.8))
    assert actions(closed, K.DRYING_STALLED) == [CLOSE]


def test_stall_after_a_week_above_8_percent_is_critical_mould_risk(dryer: Dryer) -> None:
    week_old = dryer.clock.now() - timedelta(days=7, hours=1)
    opened = dryer.run(3600, every_s=60, moisture_history=lambda now: hourly(now, 9.5, 0.2),
                       batch_started_at=week_old)
    assert [(c.kind, c.severity) for c in opened] == [
        (K.DRYING_STALLED, AlertSeverity.CRITICAL)]
    assert "mould risk" in opened[0].message


def test_drying_stalled_closes_when_the_batch_ends(dryer: Dryer) -> None:
    dryer.run(3600, every_s=60, moisture_history=lambda now: hourly(now, 14.0, 0.3))
    assert actions(dryer.run(10, batch_id=None), K.DRYING_STALLED) == [CLOSE]


# --- target_reached ----------------------------------------------------------------------

def test_beans_at_target_for_half_an_hour_open_target_reached_as_info(dryer: Dryer) -> None:
    assert dryer.run(1790, bean_moisture_pct_wb=6.9) == []
    opened = dryer.run(10, bean_moisture_pct_wb=6.9)
    assert [(c.kind, c.action, c.severity) for c in opened] == [
        (K.TARGET_REACHED, OPEN, AlertSeverity.INFO)]
    assert opened[0].batch_id == "lote-1" and "ready to unload" in opened[0].message


def test_target_reached_stays_open_until_the_batch_ends(dryer: Dryer) -> None:
    dryer.run(1800, bean_moisture_pct_wb=6.9)
    assert dryer.run(6 * 3600, every_s=60, bean_moisture_pct_wb=7.8) == []
    assert actions(dryer.run(10, batch_id=None), K.TARGET_REACHED) == [CLOSE]


def test_a_new_batch_closes_the_previous_batchs_target_reached(dryer: Dryer) -> None:
    dryer.run(1800, bean_moisture_pct_wb=6.9)
    closed = dryer.run(10, batch_id="lote-2", bean_moisture_pct_wb=55.0)
    assert actions(closed, K.TARGET_REACHED) == [CLOSE] and closed[0].batch_id == "lote-1"


# --- config_not_applied ------------------------------------------------------------------

def test_config_not_applied_opens_five_minutes_after_the_push(dryer: Dryer) -> None:
    pushed = dict(desired_config_version=5, desired_config_since=dryer.clock.now(),
                  applied_config_version=4)
    assert dryer.run(290, **pushed) == []
    opened = dryer.run(10, **pushed)
    assert actions(opened, K.CONFIG_NOT_APPLIED) == [OPEN]
    assert opened[0].message == "config version 5 not applied (node runs version 4)"


def test_config_waits_for_an_offline_node_and_then_five_more_minutes(dryer: Dryer) -> None:
    gone = dryer.clock.now()
    pushed = dict(desired_config_version=5, desired_config_since=gone, applied_config_version=4)
    dryer.run(3600, every_s=60, state=NodeState.OFFLINE, state_since=gone, last_seen_at=gone,
              reading_at=gone, **pushed)
    back = dryer.clock.now()
    assert actions(dryer.run(290, state_since=back, **pushed), K.CONFIG_NOT_APPLIED) == []
    assert actions(dryer.run(10, state_since=back, **pushed), K.CONFIG_NOT_APPLIED) == [OPEN]


def test_rejected_config_opens_at_once_with_the_nodes_reason(dryer: Dryer) -> None:
    opened = dryer.run(10, desired_config_version=5, desired_config_since=dryer.clock.now(),
                       applied_config_version=4,
                       config_rejected_message="air_temp_warn_c <= air_temp_alarm_c must hold")
    assert actions(opened, K.CONFIG_NOT_APPLIED) == [OPEN]
    assert opened[0].message == ("node rejected config version 5: air_temp_warn_c <= "
                                 "air_temp_alarm_c must hold")


def test_config_not_applied_closes_when_the_node_applies_it(dryer: Dryer) -> None:
    since = dryer.clock.now()
    dryer.run(300, desired_config_version=5, desired_config_since=since,
              applied_config_version=4)
    closed = dryer.run(10, desired_config_version=5, desired_config_since=since,
                       applied_config_version=5)
    assert actions(closed, K.CONFIG_NOT_APPLIED) == [CLOSE]


# --- clock_wrong and readings from a node with a wrong clock ------------------------------

def clock_off(offset_s: float) -> dict[str, Any]:
    """The node's clock is ``offset_s`` behind the gateway (negative: ahead), measured from a
    status just received."""
    return {"clock_offset_s": offset_s, "clock_offset_at": lambda now: now}


NTP_ADVICE = "readings carry wrong times; set the time (NTP from the gateway, docs/deploy.md)"


def test_clock_ten_minutes_behind_opens_clock_wrong_after_five_minutes(dryer: Dryer) -> None:
    assert dryer.run(290, **clock_off(600)) == []
    opened = dryer.run(10, **clock_off(600))
    assert actions(opened, K.CLOCK_WRONG) == [OPEN]
    assert opened[0].severity is AlertSeverity.WARNING and opened[0].value == 10.0
    assert opened[0].message == f"node clock is 10 min behind the gateway: {NTP_ADVICE}"


def test_clock_hours_behind_opens_clock_wrong_after_two_minutes(dryer: Dryer) -> None:
    """No status of an online node is hours old: two minutes (two statuses) are enough."""
    assert dryer.run(110, **clock_off(7560)) == []
    opened = dryer.run(10, **clock_off(7560))
    assert actions(opened, K.CLOCK_WRONG) == [OPEN]
    assert opened[0].value == 126.0
    assert opened[0].message == f"node clock is 2.1 h behind the gateway: {NTP_ADVICE}"


def test_clock_days_ahead_says_so(dryer: Dryer) -> None:
    opened = dryer.run(300, **clock_off(-3 * 86400))
    assert opened[0].message == f"node clock is 3.0 days ahead of the gateway: {NTP_ADVICE}"


def test_clock_four_minutes_off_is_no_alert(dryer: Dryer) -> None:
    assert dryer.run(3600, **clock_off(240)) == []


def test_a_stale_retained_status_does_not_open_clock_wrong(dryer: Dryer) -> None:
    """The gateway (re)subscribes and gets the retained status an hour after it was sent
    (received − sent = 1 h though the clock is right); the node's next status, a minute
    later, measures 0.3 s. Rounds every 30 s, as the gateway's job."""
    assert dryer.run(60, every_s=30, **clock_off(3600)) == []
    assert dryer.run(3600, every_s=30, **clock_off(0.3)) == []
    assert dryer.pending.since == {}


def test_clock_wrong_closes_under_one_minute_for_five_minutes(dryer: Dryer) -> None:
    dryer.run(300, **clock_off(7200))
    nearly = dryer.run(3600, **clock_off(120))  # 2 min: better (news), still off
    assert actions(nearly, K.CLOCK_WRONG) == [UPDATE]
    assert nearly[0].message.startswith("node clock is 2 min behind the gateway")
    assert dryer.run(290, **clock_off(2)) == []
    closed = dryer.run(10, **clock_off(2))
    assert actions(closed, K.CLOCK_WRONG) == [CLOSE]
    assert closed[0].message == "node clock right again (2 s off the gateway)"


def test_clock_wrong_updates_when_the_offset_moves_five_minutes_or_changes_side(
        dryer: Dryer) -> None:
    dryer.run(300, **clock_off(7200))
    assert dryer.run(600, **clock_off(7400)) == []  # 3 min more: not news
    moved = dryer.run(10, **clock_off(7560))
    assert actions(moved, K.CLOCK_WRONG) == [UPDATE] and moved[0].value == 126.0
    other_side = dryer.run(10, **clock_off(-7560))
    assert actions(other_side, K.CLOCK_WRONG) == [UPDATE]
    assert "2.1 h ahead of the gateway" in other_side[0].message


def test_clock_wrong_holds_while_the_node_is_offline_or_unmeasured(dryer: Dryer) -> None:
    dryer.run(300, **clock_off(7200))
    gone = dryer.clock.now()
    offline = dryer.run(3600, every_s=60, state=NodeState.OFFLINE, state_since=gone,
                        last_seen_at=gone, reading_at=gone, clock_offset_s=0.0,
                        clock_offset_at=gone)
    assert actions(offline, K.CLOCK_WRONG) == []
    # online again but no status for 20 min: the last measurement is too old to judge by
    old = dryer.clock.now() - timedelta(minutes=20)
    assert actions(dryer.run(900, clock_offset_s=0.0, clock_offset_at=old), K.CLOCK_WRONG) == []
    assert K.CLOCK_WRONG in dryer.open


def test_node_times_are_moved_to_the_gateways_clock_once_an_offset_is_known() -> None:
    measured = T0 - timedelta(hours=2)
    assert on_gateway_clock(measured, 7200.0) == T0
    assert on_gateway_clock(measured, None) == measured          # never measured
    assert on_gateway_clock(measured, 45.0) == measured          # network delay, status age
    assert on_gateway_clock(T0, -86400.0) == T0 - timedelta(days=1)


def test_over_temperature_opens_for_a_node_two_hours_behind(dryer: Dryer) -> None:
    """The node stamps its readings two hours late. Judged by its own time every reading is
    2 h old (stale: no over-temperature); on the gateway's clock it is fresh."""
    def hot(corrected: bool) -> dict[str, Any]:
        def reading_at(now: datetime) -> datetime:
            measured = now - timedelta(hours=2)
            return on_gateway_clock(measured, 7200.0) if corrected else measured
        return {"air_temp_c": 63.0, "reading_at": reading_at, **clock_off(7200)}

    assert actions(dryer.run(600, **hot(corrected=False)), K.OVER_TEMPERATURE) == []
    dryer.clock.advance(3600)
    assert actions(dryer.run(60, **hot(corrected=True)), K.OVER_TEMPERATURE) == [OPEN]


def test_clock_thresholds_must_keep_their_order() -> None:
    with pytest.raises(ConfigError, match=re.escape("clock_right_below_s (600) must not "
                                                    "exceed clock_wrong_after_s (300)")):
        AlertRules(clock_right_below_s=600)


def test_clock_offset_without_its_time_is_refused() -> None:
    with pytest.raises(SnapshotError, match="clock_offset_s must be a finite number with "
                                            "clock_offset_at"):
        snapshot(T0, clock_offset_s=7200.0)


# --- acknowledgement ---------------------------------------------------------------------

def test_acknowledged_open_alert_is_never_reopened(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    dryer.acknowledge(K.OVER_TEMPERATURE)
    assert actions(dryer.run(4 * 3600, air_temp_c=61.0), K.OVER_TEMPERATURE) == []
    assert dryer.open[K.OVER_TEMPERATURE].acknowledged_by == "operador-luis"


def test_acknowledgement_survives_an_update(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    dryer.acknowledge(K.OVER_TEMPERATURE)
    dryer.run(10, air_temp_c=65.5)
    alert = dryer.open[K.OVER_TEMPERATURE]
    assert alert.severity is AlertSeverity.CRITICAL and alert.acknowledged


def test_alert_that_closed_and_recurs_opens_a_new_one(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    dryer.acknowledge(K.OVER_TEMPERATURE)
    dryer.run(600, air_temp_c=50.0)
    reopened = dryer.run(60, air_temp_c=61.0)
    assert actions(reopened, K.OVER_TEMPERATURE) == [OPEN]
    assert not dryer.open[K.OVER_TEMPERATURE].acknowledged


# --- purity, inputs, notices -------------------------------------------------------------

def test_evaluate_is_deterministic_and_mutates_nothing() -> None:
    now = T0 + timedelta(hours=1)
    opened = {K.OVER_TEMPERATURE: OpenAlert(K.OVER_TEMPERATURE, AlertSeverity.WARNING, T0, T0,
                                            "hot", 61.0)}
    pending = PendingConditions({K.HIGH_HUMIDITY: T0})
    before = (dict(opened), pending.to_json())
    state = snapshot(now, air_temp_c=66.0, air_rh_pct=85.0, bean_moisture_pct_wb=10.0)
    first = evaluate(state, opened, AlertRules(), pending)
    assert first == evaluate(state, opened, AlertRules(), pending)
    assert (dict(opened), pending.to_json()) == before
    assert [(c.kind, c.action) for c in first.changes] == [(K.OVER_TEMPERATURE, UPDATE),
                                                           (K.HIGH_HUMIDITY, OPEN)]


def test_naive_time_in_a_snapshot_is_refused_naming_the_field() -> None:
    with pytest.raises(SnapshotError, match="snapshot demo/secador-01: reading_at must be "
                                            "timezone-aware"):
        snapshot(T0, reading_at=datetime(2026, 3, 1, 12, 0))


def test_negative_rule_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="temp_close_delay_s must be a finite number >= 0"):
        AlertRules(temp_close_delay_s=-1)


def test_notice_of_a_closed_alert_carries_why_and_when_and_round_trips(dryer: Dryer) -> None:
    dryer.run(60, air_temp_c=61.0)
    dryer.acknowledge(K.OVER_TEMPERATURE)
    alert = dryer.open[K.OVER_TEMPERATURE]
    closed = dryer.run(600 + 10, air_temp_c=50.0)[0]
    notice = make_notice(SITE, NODE, 17, alert, closed)
    assert notice.state is AlertState.CLOSED and notice.closed_at == closed.at
    assert notice.acknowledged_by == "operador-luis" and notice.message == closed.message
    name = alert_topic(SITE, NODE, notice.kind)
    assert decode_message(name, encode(notice)) == (SITE, NODE, notice)


# --- no storms (property) ----------------------------------------------------------------

# (seconds until the next check, change of the value in units of its deadband)
walks = st.lists(st.tuples(st.integers(10, 120), st.floats(-1.5, 1.5)), min_size=50,
                 max_size=600)


@settings(max_examples=100, deadline=None)
@given(walks, walks)
def test_values_wandering_around_thresholds_never_storm(temp_walk, rh_walk) -> None:
    """Air temperature and humidity random-walk around their thresholds (within ±3
    deadbands) for hours: each alert opens at most once per open delay + close delay, and
    every change is one the alert's state allows (apply_changes raises otherwise)."""
    rules = AlertRules()
    dryer = Dryer(ManualClock(T0), rules)
    t = Thresholds()
    temp_bands = rh_bands = 0.0  # distance from the threshold, in deadbands
    for (step_s, d_temp), (_, d_rh) in zip(temp_walk, rh_walk, strict=False):
        temp_bands = min(3.0, max(-3.0, temp_bands + d_temp))
        rh_bands = min(3.0, max(-3.0, rh_bands + d_rh))
        dryer.clock.advance(step_s)
        dryer.check(air_temp_c=t.air_temp_alarm_c + temp_bands * rules.temp_deadband_k,
                    air_rh_pct=t.rewet_rh_pct + rh_bands * rules.humidity_deadband_pct,
                    bean_moisture_pct_wb=10.0)
    elapsed_s = (dryer.clock.now() - T0).total_seconds()
    for kind, gap_s in ((K.OVER_TEMPERATURE, rules.temp_open_delay_s + rules.temp_close_delay_s),
                        (K.HIGH_HUMIDITY,
                         rules.humidity_open_delay_s + rules.humidity_close_delay_s)):
        opens = [c.at for c in dryer.log if c.kind is kind and c.action is OPEN]
        assert all((b - a).total_seconds() > gap_s for a, b in pairwise(opens))
        assert len(opens) <= elapsed_s / gap_s + 1
    assert {c.kind for c in dryer.log} <= {K.OVER_TEMPERATURE, K.HIGH_HUMIDITY}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(10, 120), st.floats(-400, 400)), min_size=50,
                max_size=600))
def test_a_clock_offset_wandering_around_its_thresholds_never_storms(walk) -> None:
    """The measured offset random-walks across both thresholds (1 and 5 min, either side of
    the gateway) with stale samples in between: clock_wrong opens at most once per open delay
    + close delay."""
    rules = AlertRules()
    dryer = Dryer(ManualClock(T0), rules)
    offset_s = 0.0
    for step_s, change_s in walk:
        offset_s = min(600.0, max(-600.0, offset_s + change_s))
        dryer.clock.advance(step_s)
        dryer.check(**{"clock_offset_s": offset_s, "clock_offset_at": dryer.clock.now()})
    opens = [c.at for c in dryer.log if c.kind is K.CLOCK_WRONG and c.action is OPEN]
    gap_s = rules.clock_open_delay_s + rules.clock_close_delay_s
    assert all((b - a).total_seconds() > gap_s for a, b in pairwise(opens))
    assert {c.kind for c in dryer.log} <= {K.CLOCK_WRONG}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(10, 900), st.booleans()), min_size=20, max_size=300))
def test_a_flapping_connection_never_storms(steps) -> None:
    """A node whose connection comes and goes at random (Last Will, then back): node_offline
    opens at most once per offline open delay + close delay."""
    rules = AlertRules()
    dryer = Dryer(ManualClock(T0), rules)
    last_heard = state_since = T0
    online = True
    for step_s, connected in steps:
        dryer.clock.advance(step_s)
        now = dryer.clock.now()
        if connected != online:
            online, state_since = connected, now
        if online:
            last_heard = now
        dryer.check(state=NodeState.ONLINE if online else NodeState.OFFLINE,
                    state_since=state_since, last_seen_at=last_heard, reading_at=last_heard)
    opens = [c.at for c in dryer.log if c.kind is K.NODE_OFFLINE and c.action is OPEN]
    gap_s = rules.offline_open_delay_s + rules.offline_close_delay_s
    assert all((b - a).total_seconds() > gap_s for a, b in pairwise(opens))
    updates = [c for c in dryer.log if c.kind is K.NODE_OFFLINE and c.action is UPDATE]
    assert len(updates) <= len(opens)  # only the escalation to critical, once per alert


node_states = st.fixed_dictionaries({
    "step_s": st.integers(1, 3600),
    "air_temp_c": st.none() | st.floats(20, 70),
    "air_rh_pct": st.none() | st.floats(30, 100),
    "bean_moisture_pct_wb": st.none() | st.floats(5, 60),
    "heard": st.booleans(),
    "said_offline": st.booleans(),
    "sensor_faults": st.sampled_from([{}, {"ambient": "timeout"}, {"inside": "x", "tray": "y"}]),
    "missing_seq_ranges": st.sampled_from([(), ((5, 9),), ((5, 9), (20, 20))]),
    "batch_id": st.sampled_from([None, "lote-1", "lote-2"]),
    "stalled": st.booleans(),
    "applied_config_version": st.integers(0, 3),
    "rejected": st.booleans(),
    "clock_offset_s": st.none() | st.floats(-3 * 86400, 3 * 86400),
})


@settings(max_examples=60, deadline=None)
@given(st.lists(node_states, min_size=5, max_size=80))
def test_any_sequence_of_node_states_gives_consistent_changes(steps) -> None:
    """Whatever a node does, the rules only open what is closed and update or close what is
    open (apply_changes raises otherwise), change each kind at most once per round, and
    every change makes a valid notice with a one-line message."""
    dryer = Dryer(ManualClock(T0))
    last_heard = state_since = T0
    for step in steps:
        dryer.clock.advance(step["step_s"])
        now = dryer.clock.now()
        if step["heard"]:
            last_heard = now
        if step["said_offline"]:
            state_since = now
        changes = dryer.check(
            air_temp_c=step["air_temp_c"], air_rh_pct=step["air_rh_pct"],
            bean_moisture_pct_wb=step["bean_moisture_pct_wb"], last_seen_at=last_heard,
            reading_at=last_heard, state_since=state_since,
            state=NodeState.OFFLINE if step["said_offline"] else NodeState.ONLINE,
            sensor_faults=step["sensor_faults"], missing_seq_ranges=step["missing_seq_ranges"],
            batch_id=step["batch_id"],
            moisture_history=hourly(now, 20.0, 0.2) if step["stalled"] else (),
            desired_config_version=3, desired_config_since=T0,
            applied_config_version=step["applied_config_version"],
            config_rejected_message="bad thresholds" if step["rejected"] else None,
            clock_offset_s=step["clock_offset_s"],
            clock_offset_at=now if step["clock_offset_s"] is not None else None)
        assert len({c.kind for c in changes}) == len(changes)
        for change in changes:
            assert change.message and "\n" not in change.message
            assert len(change.message) <= 300
        for alert in dryer.open.values():
            make_notice(SITE, NODE, 1, alert)
