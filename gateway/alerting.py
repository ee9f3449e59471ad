"""The gateway's alert rules: what is wrong with a dryer, decided from a snapshot of it.

Pure and deterministic: ``evaluate`` looks only at what it is given (a ``NodeSnapshot``, the
node's open alerts, the ``AlertRules`` settings and the pending-condition state it returned
last time) and answers which alerts to open, update or close, plus the new pending state. It
reads no clock, database or broker, so the caller (a periodic job) does the I/O: it builds the
snapshot from the stores, applies the changes to the alerts table, publishes them
(``gateway.webhooks``) and keeps the returned ``PendingConditions`` for the next round.

Why the hysteresis: a value hovering around a threshold must not open and close an alert
every minute (an "alert storm" teaches operators to ignore alerts). Every rule therefore has
hysteresis in value (opens at the threshold, closes only a deadband below it) AND in time (the
condition must hold ``open_delay`` before opening, the clear condition ``close_delay`` before
closing). Consequence, proved by a property test: two openings of the same kind on a node are
always more than ``open_delay + close_delay`` apart. An open alert is updated only when
something an operator cares about changes (severity, a new peak a step above the last one, a
different set of faulty sensors), never on every reading.

Acknowledgement (who, when) is stored with an open alert by the caller; the rules carry it
through updates and never open a kind that is already open, acknowledged or not. An alert
that closed and occurs again later is a new alert.

Rules, numbers and sources: docs/alerts.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cacao_dryer.contract import (
    SEVERITY_RANK,
    AlertKind,
    AlertNotice,
    AlertSeverity,
    AlertState,
    NodeState,
    Thresholds,
)
from cacao_dryer.errors import CacaoDryerError, ConfigError
from cacao_dryer.science import gab_equilibrium_moisture_pct_wb

__all__ = [
    "AlertAction",
    "AlertChange",
    "AlertKind",
    "AlertRules",
    "AlertSeverity",
    "Evaluation",
    "NodeSnapshot",
    "OpenAlert",
    "PendingConditions",
    "SnapshotError",
    "apply_changes",
    "evaluate",
    "make_notice",
    "on_gateway_clock",
]

MAX_MESSAGE_CHARS = 300


class SnapshotError(CacaoDryerError, ValueError):
    """A node snapshot handed to the rules is inconsistent (names the field)."""


class AlertAction(StrEnum):
    OPEN = "open"
    UPDATE = "update"
    CLOSE = "close"


@dataclass(frozen=True)
class AlertRules:
    """When alerts open and close. Defaults are the project's choices (docs/alerts.md says
    why); drying numbers come from the node's ``Thresholds`` in the snapshot, so a site that
    tunes its thresholds tunes its alerts too."""

    # --- node_offline: nodes publish status every 60 s (firmware status_interval_s) and a
    # reading every 10 s; 10 min of silence is the API's "stale" too (docs/api.md).
    offline_after_s: float = 600.0
    offline_open_delay_s: float = 120.0     # a retained offline (Last Will) — a reboot is back
    offline_close_delay_s: float = 300.0    # online this long before closing: flapping Wi-Fi
    offline_critical_after_s: float = 3600.0  # nobody has seen the beans for an hour
    # --- readings older than this are not judged (value rules hold their state)
    reading_stale_after_s: float = 600.0
    # --- over_temperature: opens at Thresholds.air_temp_alarm_c (60 °C), critical at
    # air_temp_limit_c (65 °C) [ICCO]; closes 2 K below the alarm, the node's own hysteresis.
    temp_deadband_k: float = 2.0
    temp_open_delay_s: float = 60.0         # six 10-s readings: not a single spike
    temp_close_delay_s: float = 600.0
    temp_update_step_k: float = 1.0         # a new peak 1 K above the last one is news
    # --- high_humidity: inside RH ≥ Thresholds.rewet_rh_pct (80 %) while beans are drier than
    # close_vents_below_moisture_pct_wb (20 %) [Sandoval2020, Beckett]; closes 3 % RH below
    # (the node's REWET_HYSTERESIS_RH_PCT) or once beans are 0.5 points wetter than that.
    humidity_deadband_pct: float = 3.0
    humidity_moisture_deadband_pct: float = 0.5
    humidity_open_delay_s: float = 900.0    # a rain shower or an open door is not re-wetting
    humidity_close_delay_s: float = 900.0
    humidity_update_step_pct: float = 5.0
    # --- sensor_fault
    sensor_open_delay_s: float = 60.0
    sensor_close_delay_s: float = 300.0
    # --- sequence_gap: a replaying node fills its gaps within minutes; after 6 h without
    # change the missing readings are counted as lost and the alert closes.
    gap_open_delay_s: float = 600.0
    gap_accept_after_s: float = 6 * 3600.0
    # --- drying_stalled: over a whole day and night (24 h, so nights — vents shut, no drying
    # [Beckett] — never look like a stall) moisture fell less than 0.5 points while beans are
    # more than 1 point above target. Estimate from the open-sun reference curve, whose
    # slowest day above 8 % still loses 2.8 points (11.1 → 8.3 %, day 4 → 5) [CET2017].
    stall_window_h: float = 24.0
    stall_min_drop_pct: float = 0.5
    stall_drop_deadband_pct: float = 0.25   # closes once it falls 0.75 points a day again
    stall_moisture_deadband_pct: float = 0.5  # ...or once beans are 0.5 points below the floor
    stall_above_target_pct: float = 1.0
    stall_open_delay_s: float = 3600.0
    stall_close_delay_s: float = 3600.0
    # critical: still above 8 % after 7 days — mould grows above 8 % [CRC, UWI]
    mould_risk_after_h: float = 7 * 24.0
    mould_risk_moisture_pct_wb: float = 8.0
    # --- target_reached (info): moisture at or below target for 30 min (probe noise, ±1.92 %
    # for a load-cell tray [IIETA2025]); closes when the batch ends.
    target_open_delay_s: float = 1800.0
    # --- config_not_applied: the node acknowledges a config within seconds when online.
    config_timeout_s: float = 300.0
    # --- clock_wrong: a Pi has no real-time clock; without NTP it can be hours or days off
    # after a power cut. The offset (gateway receive time − the status's sent_at) also
    # carries the network delay (< 1 s on a LAN) and, for a retained status delivered on
    # (re)subscribe, that status's age (≤ one status interval, 60 s): hence the open delay.
    clock_wrong_after_s: float = 300.0      # |offset| above 5 min opens...
    clock_open_delay_s: float = 300.0       # ...for 5 min: one stale status does not
    clock_right_below_s: float = 60.0       # closes under 1 min; smaller offsets are not
    clock_close_delay_s: float = 300.0      # corrected (network delay, status age)
    clock_update_step_s: float = 300.0      # the offset moved 5 min: news
    # Hours off cannot come from a status's age while the node is online (it sends one a
    # minute): such an offset opens after two minutes, time for the next status to confirm.
    clock_far_off_s: float = 1800.0
    clock_far_open_delay_s: float = 120.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int | float) or not value >= 0 or value == float("inf"):
                raise ConfigError(f"alert rules: {item.name} must be a finite number >= 0, "
                                  f"got {value!r}")
        for name in ("offline_after_s", "reading_stale_after_s", "stall_window_h",
                     "stall_min_drop_pct", "temp_update_step_k", "humidity_update_step_pct",
                     "clock_right_below_s", "clock_update_step_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"alert rules: {name} must be > 0")
        if self.clock_far_off_s < self.clock_wrong_after_s:
            raise ConfigError(f"alert rules: clock_far_off_s ({self.clock_far_off_s:g}) must "
                              f"not be below clock_wrong_after_s "
                              f"({self.clock_wrong_after_s:g})")
        if self.clock_right_below_s > self.clock_wrong_after_s:
            raise ConfigError(f"alert rules: clock_right_below_s ({self.clock_right_below_s:g})"
                              f" must not exceed clock_wrong_after_s "
                              f"({self.clock_wrong_after_s:g})")


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything the rules need to know about one node at ``now`` (all times aware UTC).

    Built by the caller from what the gateway already keeps; each field says where from.
    Unknown things are ``None``: a rule that lacks its inputs holds its alert as it is.
    """

    site_id: str
    node_id: str
    now: datetime
    # Latest reading (time-series store ``latest()``). ``reading_at``: when it was measured
    # on the gateway's clock — its measured_at corrected by the node's clock offset
    # (``on_gateway_clock``): a Pi without a real-time clock may be hours off.
    reading_at: datetime | None = None
    air_temp_c: float | None = None
    air_rh_pct: float | None = None
    bean_moisture_pct_wb: float | None = None
    # Sensor name → one-line reason (latest telemetry or status ``sensor_faults``) and the
    # node's own alarms (``Alarm`` values) in the latest reading.
    sensor_faults: Mapping[str, str] = field(default_factory=dict)
    alarms: frozenset[str] = frozenset()
    # Liveness (node registry): any message at all, and the retained status / Last Will.
    last_seen_at: datetime | None = None
    state: NodeState | None = None
    state_since: datetime | None = None
    # Readings missing from the store: ``missing_ranges(store.seq_ranges(...))``. Include
    # the ones a node declared dropped (queue_overflow): they are lost data too.
    missing_seq_ranges: tuple[tuple[int, int], ...] = ()
    # The running batch (None = dryer empty) and hourly means of bean moisture, oldest
    # first, up to now and covering at least the last ``stall_window_h`` + 1 h
    # (``store.series(..., ["bean_moisture_pct_wb"], every_s=3600)``: (at, value) pairs).
    batch_id: str | None = None
    batch_started_at: datetime | None = None
    moisture_history: tuple[tuple[datetime, float], ...] = ()
    # Thresholds in force for this node (the pushed profile, else contract defaults).
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Threshold config: the latest version pushed to the node and since when, the version the
    # node applied (config_applied event / telemetry config_version), and the node's reason
    # if it rejected the latest one (config_rejected event).
    desired_config_version: int | None = None
    desired_config_since: datetime | None = None
    applied_config_version: int | None = None
    config_rejected_message: str | None = None
    # The node's clock offset (node registry, from its latest status with ``sent_at``):
    # seconds to add to the node's times to get the gateway's — positive when the node's
    # clock is behind — and when the gateway measured it.
    clock_offset_s: float | None = None
    clock_offset_at: datetime | None = None

    def __post_init__(self) -> None:
        where = f"snapshot {self.site_id}/{self.node_id}"
        for name in ("now", "reading_at", "last_seen_at", "state_since", "batch_started_at",
                     "desired_config_since", "clock_offset_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise SnapshotError(f"{where}: {name} must be timezone-aware, got {value}")
        for first, last in self.missing_seq_ranges:
            if not 1 <= first <= last:
                raise SnapshotError(f"{where}: missing_seq_ranges has invalid ({first}, {last})")
        if self.desired_config_version is not None and self.desired_config_since is None:
            raise SnapshotError(f"{where}: desired_config_since is needed with "
                                f"desired_config_version")
        for at, _ in self.moisture_history:
            if at.tzinfo is None:
                raise SnapshotError(f"{where}: moisture_history times must be timezone-aware")
        if self.clock_offset_s is not None and (self.clock_offset_at is None
                                                or not math.isfinite(self.clock_offset_s)):
            raise SnapshotError(f"{where}: clock_offset_s must be a finite number with "
                                f"clock_offset_at, got {self.clock_offset_s!r}")

    @property
    def batch_running(self) -> bool:
        return self.batch_id is not None

    @property
    def missing_seq_count(self) -> int:
        return sum(last - first + 1 for first, last in self.missing_seq_ranges)


@dataclass(frozen=True)
class OpenAlert:
    """An alert that is open now, as the caller stores it (one per node and kind)."""

    kind: AlertKind
    severity: AlertSeverity
    opened_at: datetime
    updated_at: datetime
    message: str
    value: float | None = None
    batch_id: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_by is not None


@dataclass(frozen=True)
class AlertChange:
    """Open a new alert, update the open one, or close it."""

    action: AlertAction
    kind: AlertKind
    severity: AlertSeverity
    message: str
    value: float | None
    at: datetime
    batch_id: str | None = None


@dataclass(frozen=True)
class PendingConditions:
    """What the rules remember between evaluations of one node (return it next time).

    ``since``: per kind, when the condition asking for a change (to open a closed alert or to
    close an open one) started holding without interruption — the time half of the
    hysteresis. ``accepted_missing_seqs``: missing readings already reported and counted as
    lost, so they do not reopen ``sequence_gap``. Keep it across restarts (``to_json``);
    losing it only delays openings by their delay and re-reports old gaps once.
    """

    since: Mapping[AlertKind, datetime] = field(default_factory=dict)
    accepted_missing_seqs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"since": {kind.value: at.isoformat() for kind, at in sorted(self.since.items())},
                "accepted_missing_seqs": self.accepted_missing_seqs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingConditions:
        """Read what ``to_json`` wrote; SnapshotError naming the field if it is not that."""
        try:
            since = {AlertKind(kind): datetime.fromisoformat(at)
                     for kind, at in dict(data.get("since", {})).items()}
            accepted = int(data.get("accepted_missing_seqs", 0))
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"pending alert conditions: unreadable ({exc})") from None
        if any(at.tzinfo is None for at in since.values()) or accepted < 0:
            raise SnapshotError("pending alert conditions: naive time or negative count")
        return cls(since=since, accepted_missing_seqs=accepted)


@dataclass(frozen=True)
class Evaluation:
    changes: tuple[AlertChange, ...]
    pending: PendingConditions


@dataclass(frozen=True)
class _Finding:
    """One rule's view: ``holds`` True = the alert condition is present (with value
    hysteresis already applied), False = clear, None = cannot tell (hold as is)."""

    holds: bool | None
    severity: AlertSeverity = AlertSeverity.WARNING
    message: str = ""
    value: float | None = None
    open_delay_s: float = 0.0
    close_delay_s: float = 0.0
    update: bool = False          # a meaningful change of an open alert
    accept_missing: int | None = None  # sequence_gap: close now, counting these as lost


_UNKNOWN = _Finding(holds=None)


# --- the rules ---------------------------------------------------------------------------

def _hhmm(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def on_gateway_clock(node_time: datetime, clock_offset_s: float | None,
                     rules: AlertRules | None = None) -> datetime:
    """A time the node stamped (a reading's measured_at), on the gateway's clock: plus the
    node's clock offset once that is at least ``clock_right_below_s`` (1 min). Smaller offsets
    are network delay or a status's age more than a wrong clock, and are left alone."""
    rules = rules or AlertRules()
    if clock_offset_s is None or abs(clock_offset_s) < rules.clock_right_below_s:
        return node_time
    return node_time + timedelta(seconds=clock_offset_s)


def _silent(s: NodeSnapshot, r: AlertRules) -> bool | None:
    """True if nothing was heard for ``offline_after_s``; None if never heard."""
    if s.last_seen_at is None:
        return None
    return (s.now - s.last_seen_at).total_seconds() > r.offline_after_s


def _online(s: NodeSnapshot, r: AlertRules) -> bool:
    return s.state is not NodeState.OFFLINE and _silent(s, r) is False


def _fresh(s: NodeSnapshot, r: AlertRules) -> bool:
    return (s.reading_at is not None
            and (s.now - s.reading_at).total_seconds() <= r.reading_stale_after_s)


def _over_temperature(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    air_c = s.air_temp_c
    if air_c is None or not _fresh(s, r):
        return _UNKNOWN
    t = s.thresholds
    alarm_c, limit_c = t.air_temp_alarm_c, t.air_temp_limit_c
    clear_below_c = alarm_c - r.temp_deadband_k
    peak_c = max(air_c, alert.value if alert is not None and alert.value is not None else air_c)
    severity = AlertSeverity.CRITICAL if peak_c >= limit_c else AlertSeverity.WARNING
    delays = {"open_delay_s": r.temp_open_delay_s, "close_delay_s": r.temp_close_delay_s}
    # value hysteresis: opens at the alarm, stays open until the deadband below it
    holds = air_c >= (alarm_c if alert is None else clear_below_c)
    if not holds:
        return _Finding(False, severity, f"inside air back to {air_c:.1f} °C, below "
                        f"{clear_below_c:.1f} °C (highest {peak_c:.1f} °C)", peak_c, **delays)
    message = (f"inside air {air_c:.1f} °C, at or above the {alarm_c:.1f} °C alarm "
               f"(highest {peak_c:.1f} °C; beans must not exceed {limit_c:.1f} °C [ICCO])")
    update = alert is not None and (
        severity != alert.severity
        or alert.value is None or peak_c >= alert.value + r.temp_update_step_k)
    return _Finding(True, severity, message, peak_c, update=update, **delays)


def _high_humidity(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    delays = {"open_delay_s": r.humidity_open_delay_s,
              "close_delay_s": r.humidity_close_delay_s}
    if not s.batch_running:
        return _Finding(False, message="batch ended: no beans to re-wet",
                        value=alert.value if alert else None)
    rh, moisture = s.air_rh_pct, s.bean_moisture_pct_wb
    if rh is None or moisture is None or not _fresh(s, r):
        return _UNKNOWN
    t = s.thresholds
    dry_below = t.close_vents_below_moisture_pct_wb
    peak = max(rh, alert.value if alert is not None and alert.value is not None else rh)
    if alert is None:
        holds = rh >= t.rewet_rh_pct and moisture < dry_below
    else:
        holds = (rh >= t.rewet_rh_pct - r.humidity_deadband_pct
                 and moisture < dry_below + r.humidity_moisture_deadband_pct)
    if not holds:
        return _Finding(False, message=f"inside air {rh:.0f} % RH, beans {moisture:.1f} %: "
                        f"no longer re-wetting (highest {peak:.0f} % RH)", value=peak, **delays)
    # equilibrium moisture of the inside air, GAB nib isotherm at 25 °C [Sandoval2020]
    emc = gab_equilibrium_moisture_pct_wb(rh)
    message = (f"inside air {rh:.0f} % RH (equilibrium moisture {emc:.1f} %) with beans at "
               f"{moisture:.1f} %: dry beans regain water above {t.rewet_rh_pct:.0f} % RH "
               f"[Sandoval2020] (highest {peak:.0f} % RH)")
    update = alert is not None and (
        alert.value is None or peak >= alert.value + r.humidity_update_step_pct)
    return _Finding(True, AlertSeverity.WARNING, message, peak, update=update, **delays)


def _faults_headline(names: Sequence[str]) -> str:
    return f"faulty sensors: {', '.join(names)}"


def _sensor_fault(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    delays = {"open_delay_s": r.sensor_open_delay_s, "close_delay_s": r.sensor_close_delay_s}
    if not _online(s, r) or s.reading_at is None:
        return _UNKNOWN  # an offline node is node_offline's business
    names = sorted(s.sensor_faults)
    if not names and ("sensor_fault" in s.alarms or "stale_data" in s.alarms):
        names = ["(node alarm, sensor not named)"]
    if not _fresh(s, r):
        headline = f"no reading since {_hhmm(s.reading_at)} although the node is online"
        message, severity, value = headline, AlertSeverity.CRITICAL, None
    elif names:
        headline = _faults_headline(names)
        first = names[0]
        reason = s.sensor_faults.get(first, "")
        message = f"{headline}" + (f" — {first}: {reason}" if reason else "")
        # without inside air temperature the node is in its fail-safe (fans full, vents open)
        severity = (AlertSeverity.CRITICAL if s.air_temp_c is None
                    else AlertSeverity.WARNING)
        value = float(len(names))
    else:
        return _Finding(False, message="all sensors answering, readings fresh",
                        value=alert.value if alert else None, **delays)
    update = alert is not None and (severity != alert.severity
                                    or not alert.message.startswith(headline))
    return _Finding(True, severity, message[:MAX_MESSAGE_CHARS], value, update=update, **delays)


def _node_offline(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    silent = _silent(s, r)
    said_offline = s.state is NodeState.OFFLINE
    if silent is None and s.state is None:
        return _UNKNOWN
    if not said_offline and silent is False:
        back_s = (s.now - alert.opened_at).total_seconds() if alert else 0.0
        return _Finding(False, message=f"back online (alert open {_duration(back_s)})",
                        value=alert.value if alert else None,
                        close_delay_s=r.offline_close_delay_s)
    if said_offline:
        since = s.state_since or s.last_seen_at or s.now
        why = f"node said offline at {_hhmm(since)} (Last Will or clean stop)"
        open_delay = r.offline_open_delay_s
    else:
        since = s.last_seen_at if s.last_seen_at is not None else s.now
        why = f"nothing heard since {_hhmm(since)}"
        open_delay = 0.0  # the silence itself was already offline_after_s long
    offline_s = max(0.0, (s.now - since).total_seconds())
    severity = (AlertSeverity.CRITICAL if offline_s >= r.offline_critical_after_s
                else AlertSeverity.WARNING)
    message = f"{why}: offline for {_duration(offline_s)}"
    update = alert is not None and SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]
    return _Finding(True, severity, message, round(offline_s / 60, 1), open_delay_s=open_delay,
                    close_delay_s=r.offline_close_delay_s, update=update)


def _ranges_text(ranges: Sequence[tuple[int, int]], limit: int = 3) -> str:
    parts = [f"{a}" if a == b else f"{a}–{b}" for a, b in ranges[:limit]]
    more = len(ranges) - limit
    return ", ".join(parts) + (f" and {more} more range(s)" if more > 0 else "")


def _sequence_gap(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules,
                  accepted: int) -> _Finding:
    missing = s.missing_seq_count
    if missing <= accepted:
        return _Finding(False, message=f"missing readings filled in ({missing} still missing "
                        f"and counted as lost)" if missing else "missing readings filled in",
                        value=float(missing))
    new = missing - accepted
    message = (f"{new} reading(s) missing from the store (seq "
               f"{_ranges_text(s.missing_seq_ranges)}): lost unless the node replays them")
    if alert is not None and alert.value is not None and alert.value == missing and (
            (s.now - alert.updated_at).total_seconds() >= r.gap_accept_after_s):
        return _Finding(False, message=f"{new} reading(s) still missing after "
                        f"{_duration(r.gap_accept_after_s)}: counted as lost",
                        value=float(missing), accept_missing=missing)
    update = alert is not None and alert.value != missing
    return _Finding(True, AlertSeverity.WARNING, message[:MAX_MESSAGE_CHARS], float(missing),
                    open_delay_s=r.gap_open_delay_s, update=update)


def _moisture_at(history: Sequence[tuple[datetime, float]], at: datetime,
                 tolerance: timedelta) -> float | None:
    """The hourly mean closest to ``at``, if one lies within ``tolerance``."""
    best = min(history, key=lambda point: abs(point[0] - at), default=None)
    if best is None or abs(best[0] - at) > tolerance:
        return None
    return best[1]


def _batch_changed(s: NodeSnapshot, alert: OpenAlert | None) -> bool:
    return alert is not None and alert.batch_id is not None and alert.batch_id != s.batch_id


def _drying_stalled(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    delays = {"open_delay_s": r.stall_open_delay_s, "close_delay_s": r.stall_close_delay_s}
    if not s.batch_running or _batch_changed(s, alert):
        return _Finding(False, message="batch ended", value=alert.value if alert else None)
    window = timedelta(hours=r.stall_window_h)
    if s.batch_started_at is not None and s.now - s.batch_started_at < window:
        return _UNKNOWN
    tolerance = timedelta(hours=1.5)
    if not s.moisture_history or s.now - s.moisture_history[-1][0] > tolerance:
        return _UNKNOWN
    recent_at, recent = s.moisture_history[-1]
    earlier = _moisture_at(s.moisture_history, recent_at - window, tolerance)
    if earlier is None:
        return _UNKNOWN
    drop = earlier - recent
    floor = s.thresholds.target_moisture_pct_wb + r.stall_above_target_pct
    hours = f"{r.stall_window_h:g} h"
    if alert is None:
        holds = drop < r.stall_min_drop_pct and recent >= floor
    else:
        holds = (drop < r.stall_min_drop_pct + r.stall_drop_deadband_pct
                 and recent >= floor - r.stall_moisture_deadband_pct)
    if not holds:
        return _Finding(False, message=f"drying again: moisture fell {drop:.1f} points in "
                        f"{hours} ({earlier:.1f} → {recent:.1f} %)", value=round(drop, 2),
                        **delays)
    age_h = ((s.now - s.batch_started_at).total_seconds() / 3600
             if s.batch_started_at is not None else 0.0)
    mould = age_h >= r.mould_risk_after_h and recent > r.mould_risk_moisture_pct_wb
    severity = AlertSeverity.CRITICAL if mould else AlertSeverity.WARNING
    message = (f"bean moisture fell only {drop:.1f} points in {hours} ({earlier:.1f} → "
               f"{recent:.1f} %) while above {floor:.1f} %: check humidity, airflow, layer depth")
    if mould:
        message += (f"; batch {_duration(age_h * 3600)} old and above "
                    f"{r.mould_risk_moisture_pct_wb:.0f} %: mould risk [CRC, UWI]")
    update = alert is not None and severity != alert.severity
    return _Finding(True, severity, message[:MAX_MESSAGE_CHARS], round(drop, 2), update=update,
                    **delays)


def _target_reached(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    if not s.batch_running or _batch_changed(s, alert):
        return _Finding(False, AlertSeverity.INFO, "batch ended",
                        alert.value if alert else None)
    if alert is not None:
        return _Finding(True, AlertSeverity.INFO, alert.message, alert.value)
    moisture = s.bean_moisture_pct_wb
    if moisture is None or not _fresh(s, r):
        return _UNKNOWN
    target = s.thresholds.target_moisture_pct_wb
    if moisture > target:
        return _Finding(False, AlertSeverity.INFO)
    return _Finding(True, AlertSeverity.INFO,
                    f"beans at {moisture:.1f} %, at or below the {target:.1f} % target: ready "
                    f"to unload [ICCO, CAOBISCO2016]", moisture,
                    open_delay_s=r.target_open_delay_s)


def _config_not_applied(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    desired, applied = s.desired_config_version, s.applied_config_version or 0
    if desired is None or applied >= desired:
        return _Finding(False, message=f"config version {applied} applied",
                        value=float(applied))
    if not _online(s, r):
        return _UNKNOWN  # it will apply it when it is back (the config is retained)
    if s.config_rejected_message:
        headline = f"node rejected config version {desired}"
        message = f"{headline}: {s.config_rejected_message}"
    else:
        starts = [t for t in (s.desired_config_since, s.state_since) if t is not None]
        waited_s = (s.now - max(starts)).total_seconds() if starts else 0.0
        if waited_s < r.config_timeout_s and alert is None:
            return _Finding(False, message="config sent, waiting for the node")
        headline = f"config version {desired} not applied"
        message = f"{headline} (node runs version {applied})"
    update = alert is not None and not alert.message.startswith(headline)
    return _Finding(True, AlertSeverity.WARNING, message[:MAX_MESSAGE_CHARS], float(desired),
                    update=update)


def _clock_text(offset_s: float) -> str:
    if abs(offset_s) < 60:
        return f"{abs(offset_s):.0f} s off the gateway"
    side = "behind" if offset_s > 0 else "ahead of"
    return f"{_duration(abs(offset_s))} {side} the gateway"


def _clock_wrong(s: NodeSnapshot, alert: OpenAlert | None, r: AlertRules) -> _Finding:
    offset_s, measured_at = s.clock_offset_s, s.clock_offset_at
    if offset_s is None or measured_at is None or not _online(s, r):
        return _UNKNOWN  # never measured, or an offline node: node_offline's business
    if (s.now - measured_at).total_seconds() > r.offline_after_s:
        return _UNKNOWN  # no recent status to measure it by
    off_s, minutes = abs(offset_s), round(abs(offset_s) / 60, 1)
    delays = {"open_delay_s": (r.clock_far_open_delay_s if off_s >= r.clock_far_off_s
                               else r.clock_open_delay_s),
              "close_delay_s": r.clock_close_delay_s}
    # value hysteresis: opens above 5 min, stays open until under 1 min
    holds = off_s > r.clock_wrong_after_s if alert is None else off_s >= r.clock_right_below_s
    if not holds:
        return _Finding(False, message=f"node clock right again ({_clock_text(offset_s)})",
                        value=minutes, **delays)
    message = (f"node clock is {_clock_text(offset_s)}: readings carry wrong times; set the "
               f"time (NTP from the gateway, docs/deploy.md)")
    update = alert is not None and (
        alert.value is None or abs(minutes - alert.value) * 60 >= r.clock_update_step_s
        or (" behind " in alert.message) != (offset_s > 0))  # it went to the other side
    return _Finding(True, AlertSeverity.WARNING, message, minutes, update=update, **delays)


# --- evaluation --------------------------------------------------------------------------

def evaluate(snapshot: NodeSnapshot, open_alerts: Mapping[AlertKind, OpenAlert],
             rules: AlertRules | None = None,
             pending: PendingConditions | None = None) -> Evaluation:
    """Which alerts of this node to open, update or close now, and the pending state to pass
    next time. Deterministic: same inputs, same answer; mutates nothing."""
    rules = rules or AlertRules()
    pending = pending or PendingConditions()
    accepted = min(pending.accepted_missing_seqs, snapshot.missing_seq_count)
    findings: dict[AlertKind, _Finding] = {}
    for kind in AlertKind:
        alert = open_alerts.get(kind)
        if kind is AlertKind.SEQUENCE_GAP:
            findings[kind] = _sequence_gap(snapshot, alert, rules, accepted)
        else:
            findings[kind] = _RULES[kind](snapshot, alert, rules)
    changes: list[AlertChange] = []
    since: dict[AlertKind, datetime] = {}
    now = snapshot.now
    for kind, finding in findings.items():
        alert = open_alerts.get(kind)

        def change(action: AlertAction, finding: _Finding = finding,
                   alert: OpenAlert | None = alert, kind: AlertKind = kind) -> AlertChange:
            severity = finding.severity if action is not AlertAction.CLOSE or alert is None \
                else alert.severity
            batch_id = alert.batch_id if alert is not None else snapshot.batch_id
            return AlertChange(action, kind, severity, finding.message, finding.value, now,
                               batch_id)

        if finding.accept_missing is not None:
            accepted = finding.accept_missing
            if alert is not None:
                changes.append(change(AlertAction.CLOSE))
            continue
        wants_change = finding.holds is (alert is None)  # open a closed / close an open one
        if not wants_change:
            if alert is not None and finding.holds and finding.update:
                changes.append(change(AlertAction.UPDATE))
            continue
        started = pending.since.get(kind, now)
        delay_s = finding.open_delay_s if alert is None else finding.close_delay_s
        if (now - started).total_seconds() >= delay_s:
            changes.append(change(AlertAction.OPEN if alert is None else AlertAction.CLOSE))
        else:
            since[kind] = started
    return Evaluation(tuple(changes), PendingConditions(since, accepted))


_RULES = {
    AlertKind.OVER_TEMPERATURE: _over_temperature,
    AlertKind.HIGH_HUMIDITY: _high_humidity,
    AlertKind.SENSOR_FAULT: _sensor_fault,
    AlertKind.NODE_OFFLINE: _node_offline,
    AlertKind.DRYING_STALLED: _drying_stalled,
    AlertKind.TARGET_REACHED: _target_reached,
    AlertKind.CONFIG_NOT_APPLIED: _config_not_applied,
    AlertKind.CLOCK_WRONG: _clock_wrong,
}


def apply_changes(open_alerts: Mapping[AlertKind, OpenAlert],
                  changes: Sequence[AlertChange]) -> dict[AlertKind, OpenAlert]:
    """The open alerts after ``changes``, as the caller's database would hold them: an
    update keeps ``opened_at`` and the acknowledgement, a close removes the alert. For
    callers without a database, and for tests."""
    result = dict(open_alerts)
    for item in changes:
        current = result.get(item.kind)
        if item.action is AlertAction.OPEN:
            if current is not None:
                raise ValueError(f"{item.kind.value} is already open")
            result[item.kind] = OpenAlert(item.kind, item.severity, item.at, item.at,
                                          item.message, item.value, item.batch_id)
        elif current is None:
            raise ValueError(f"cannot {item.action.value} {item.kind.value}: not open")
        elif item.action is AlertAction.UPDATE:
            result[item.kind] = replace(current, severity=item.severity, updated_at=item.at,
                                        message=item.message, value=item.value)
        else:
            del result[item.kind]
    return result


def make_notice(site_id: str, node_id: str, alert_id: int, alert: OpenAlert,
                closed_by: AlertChange | None = None) -> AlertNotice:
    """The MQTT/webhook message for an open alert, or for the alert ``closed_by`` a close
    change (then ``message`` says why it closed and ``closed_at`` is the change's time)."""
    if closed_by is not None and (closed_by.action is not AlertAction.CLOSE
                                  or closed_by.kind is not alert.kind):
        raise ValueError(f"make_notice: {closed_by.action.value} {closed_by.kind.value} "
                         f"does not close a {alert.kind.value} alert")
    closed_at = closed_by.at if closed_by is not None else None
    value = alert.value
    if closed_by is not None and closed_by.value is not None:
        value = closed_by.value
    return AlertNotice(
        site_id=site_id, node_id=node_id, alert_id=alert_id, kind=alert.kind,
        severity=alert.severity,
        state=AlertState.CLOSED if closed_by is not None else AlertState.OPEN,
        opened_at=alert.opened_at, updated_at=closed_at or alert.updated_at,
        closed_at=closed_at,
        message=closed_by.message if closed_by is not None else alert.message,
        value=value, batch_id=alert.batch_id, acknowledged_by=alert.acknowledged_by,
        acknowledged_at=alert.acknowledged_at)
