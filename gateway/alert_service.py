"""The alert job: build each node's snapshot from the stores, let the pure rules
(``gateway.alerting``) decide, record the changes in the alerts table, and announce them
(retained MQTT notice per node and kind; webhooks through a ``Notifier``; open dashboards
through the live hub).

Runs every ``every_s`` seconds as a gateway job. Several gateways sharing one PostgreSQL may
run it at once: the alerts table allows one open alert per node and kind (partial unique
index), so the second to open the same alert loses its transaction and takes the first one's
alert at the next round instead of opening a duplicate.

The rules' pending conditions (the time half of the hysteresis) are kept in
``<data_dir>/alerts-pending.json`` so a restart does not re-arm every delay.

Sequence gaps are the one expensive input: the store reads a node's whole history for them
(InfluxDB: about 1 s per 100 days of readings per node). So each node's gaps are looked up
again only every ``GAPS_EVERY_S``, the nodes spread evenly over that time; a gap opens its
alert after ``gap_open_delay_s`` (10 min) anyway.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from cacao_dryer.contract import (
    AlertKind,
    AlertNotice,
    AlertSeverity,
    NodeState,
    Thresholds,
    alert_topic,
    encode,
)
from cacao_dryer.errors import ConflictError, NotFoundError
from gateway.alerting import (
    AlertAction,
    AlertChange,
    AlertRules,
    NodeSnapshot,
    OpenAlert,
    PendingConditions,
    SnapshotError,
    evaluate,
    make_notice,
    on_gateway_clock,
)
from gateway.context import GatewayContext
from gateway.metadata.models import AlertRecord, AuditEntry, Batch, Node
from gateway.timeseries import StoredReading, StoreUnavailable, missing_ranges

log = logging.getLogger("cacao_dryer.gateway")

Notifier = Callable[[AlertNotice], None]


def open_alert_of(record: AlertRecord) -> OpenAlert:
    return OpenAlert(kind=AlertKind(record.kind), severity=AlertSeverity(record.severity),
                     opened_at=record.opened_at, updated_at=record.updated_at,
                     message=record.message, value=record.value, batch_id=record.batch_id,
                     acknowledged_by=record.acknowledged_by,
                     acknowledged_at=record.acknowledged_at)


def notice_of(record: AlertRecord) -> AlertNotice:
    """The retained/webhook message for an alert as it is stored now (open or closed)."""
    alert = open_alert_of(record)
    closing = None
    if record.closed_at is not None:
        closing = AlertChange(AlertAction.CLOSE, alert.kind, alert.severity, record.message,
                              record.value, record.closed_at, record.batch_id)
    return make_notice(record.site_id, record.node_id, record.alert_id, alert, closing)


@dataclass
class RoundReport:
    nodes: int = 0
    opened: int = 0
    updated: int = 0
    closed: int = 0
    skipped: int = 0       # nodes whose snapshot could not be built this round


GAPS_EVERY_S = 300.0  # each node's sequence gaps are read from the store this often


class AlertService:
    def __init__(self, context: GatewayContext, rules: AlertRules | None = None,
                 notifiers: Sequence[Notifier] = ()) -> None:
        self.context = context
        self.rules = rules or AlertRules()
        self.notifiers = list(notifiers)
        self._pending_file = Path(context.settings.data_dir) / "alerts-pending.json"
        self._pending: dict[tuple[str, str], PendingConditions] = self._load_pending()
        self._unannounced: dict[int, AlertNotice] = {}  # not yet taken by the broker
        # node → (when its gaps were read, or as if, to spread the nodes; the missing ranges)
        self._gaps: dict[tuple[str, str], tuple[datetime, tuple[tuple[int, int], ...]]] = {}

    # --- the job ------------------------------------------------------------------------------

    def run_round(self) -> RoundReport:
        now = self.context.clock.now()
        report = RoundReport()
        notices: list[AlertNotice] = []
        with self.context.metadata.session() as session:
            nodes = list(session.scalars(select(Node).order_by(Node.site_id, Node.node_id)))
            try:  # every node's newest reading in one go (InfluxDB: three requests)
                newest = self.context.store.latest_many([(n.site_id, n.node_id)
                                                          for n in nodes])
            except StoreUnavailable:
                newest = None  # each node's snapshot tries, fails and is skipped
            for node in nodes:
                report.nodes += 1
                try:
                    snapshot = self.snapshot(session, node, now, newest)
                except (StoreUnavailable, SnapshotError) as exc:
                    report.skipped += 1
                    log.warning("alerts for %s/%s skipped this round: %s", node.site_id,
                                node.node_id, exc)
                    continue
                notices += self._apply(session, node, snapshot, report)
        self._save_pending()
        self.announce(notices)
        return report

    def _apply(self, session: Session, node: Node, snapshot: NodeSnapshot,
               report: RoundReport) -> list[AlertNotice]:
        key = (node.site_id, node.node_id)
        records = {AlertKind(r.kind): r for r in session.scalars(select(AlertRecord).where(
            AlertRecord.site_id == node.site_id, AlertRecord.node_id == node.node_id,
            AlertRecord.closed_at.is_(None)))}
        evaluation = evaluate(snapshot, {k: open_alert_of(r) for k, r in records.items()},
                              self.rules, self._pending.get(key))
        self._pending[key] = evaluation.pending
        notices: list[AlertNotice] = []
        for change in evaluation.changes:
            record = records.get(change.kind)
            if change.action is AlertAction.OPEN:
                record = AlertRecord(site_id=node.site_id, node_id=node.node_id,
                                     kind=change.kind.value, severity=change.severity.value,
                                     message=change.message, value=change.value,
                                     batch_id=change.batch_id, opened_at=change.at,
                                     updated_at=change.at)
                session.add(record)
                report.opened += 1
                log.warning("alert opened %s/%s %s: %s", node.site_id, node.node_id,
                            change.kind.value, change.message)
            elif record is None:
                continue
            elif change.action is AlertAction.UPDATE:
                record.severity = change.severity.value
                record.message, record.value, record.updated_at = (change.message, change.value,
                                                                   change.at)
                report.updated += 1
            else:
                record.closed_at = record.updated_at = change.at
                if change.message:
                    record.message = change.message
                if change.value is not None:
                    record.value = change.value
                report.closed += 1
                log.info("alert closed %s/%s %s: %s", node.site_id, node.node_id,
                         change.kind.value, change.message)
            session.flush()
            notices.append(notice_of(record))
        return notices

    # --- snapshot -----------------------------------------------------------------------------

    def snapshot(self, session: Session, node: Node, now: datetime,
                 newest: Mapping[tuple[str, str], StoredReading] | None = None
                 ) -> NodeSnapshot:
        """What the rules need about ``node``, from the metadata DB and the readings store
        (its newest reading from ``newest``, every node's ``latest_many``, when given)."""
        from gateway.thresholds import latest_push, pushed_thresholds

        store = self.context.store
        key = (node.site_id, node.node_id)
        latest = newest.get(key) if newest is not None else store.latest(*key)
        # Readings carry the node's clock; judge them on the gateway's (a Pi without a
        # real-time clock may be hours off): shift by the node's offset once it is known.
        offset_s = node.clock_offset_s
        shift = on_gateway_clock(now, offset_s, self.rules) - now
        reading_at = (min(latest.measured_at + shift, now) if latest is not None else None)
        status = node.status or {}
        faults = dict(status.get("sensor_faults") or {}) if node.state == "online" else {}
        batch = session.scalar(select(Batch).where(
            Batch.site_id == node.site_id, Batch.node_id == node.node_id,
            Batch.ended_at.is_(None)))
        history: tuple[tuple[datetime, float], ...] = ()
        if batch is not None:
            start = max(batch.started_at, now - timedelta(hours=self.rules.stall_window_h + 2))
            if start < now:
                points = store.series(node.site_id, node.node_id, start - shift, now - shift,
                                      ["bean_moisture_pct_wb"], every_s=3600)
                history = tuple((p.at + shift, p.values["bean_moisture_pct_wb"])
                                for p in points
                                if p.values.get("bean_moisture_pct_wb") is not None)
        push = latest_push(session, node.site_id, node.node_id)
        thresholds = (pushed_thresholds(push) if push is not None else None) or Thresholds()
        fields = latest.fields if latest is not None else {}
        return NodeSnapshot(
            site_id=node.site_id, node_id=node.node_id, now=now,
            reading_at=reading_at,
            air_temp_c=fields.get("air_temp_c"), air_rh_pct=fields.get("air_rh_pct"),
            bean_moisture_pct_wb=fields.get("bean_moisture_pct_wb"),
            sensor_faults=faults, alarms=frozenset(latest.alarms) if latest else frozenset(),
            last_seen_at=node.last_seen_at,
            state=NodeState(node.state) if node.state in ("online", "offline") else None,
            state_since=node.state_since,
            missing_seq_ranges=self._missing(node.site_id, node.node_id, now),
            batch_id=batch.batch_id if batch is not None else None,
            batch_started_at=batch.started_at if batch is not None else None,
            moisture_history=history, thresholds=thresholds,
            desired_config_version=push.version if push is not None else None,
            desired_config_since=push.issued_at if push is not None else None,
            applied_config_version=node.applied_config_version,
            config_rejected_message=(push.node_message if push is not None
                                     and push.rejected_at is not None else None),
            clock_offset_s=offset_s,
            clock_offset_at=node.clock_offset_at if offset_s is not None else None)

    def _missing(self, site_id: str, node_id: str, now: datetime
                 ) -> tuple[tuple[int, int], ...]:
        """The node's missing seq ranges, read from the store every ``GAPS_EVERY_S``. The
        first time, the reading is dated back by a share of that period fixed by the node's
        name, so the nodes' next look-ups spread over it instead of all in one round."""
        key = (site_id, node_id)
        cached = self._gaps.get(key)
        if cached is not None and timedelta(0) <= now - cached[0] < \
                timedelta(seconds=GAPS_EVERY_S):
            return cached[1]
        missing = tuple(missing_ranges(self.context.store.seq_ranges(site_id, node_id)))
        read_at = now
        if cached is None:
            share = zlib.crc32(f"{site_id}/{node_id}".encode()) % 1000 / 1000
            read_at = now - timedelta(seconds=GAPS_EVERY_S * share)
        self._gaps[key] = (read_at, missing)
        return missing

    # --- acknowledgement ----------------------------------------------------------------------

    def acknowledge(self, alert_id: int, username: str, note: str = "") -> AlertNotice:
        now = self.context.clock.now()
        with self.context.metadata.session() as session:
            record = session.get(AlertRecord, alert_id)
            if record is None:
                raise NotFoundError(f"alert {alert_id} does not exist")
            if record.closed_at is not None:
                raise ConflictError(f"alert {alert_id} is already closed")
            if record.acknowledged_by is not None:
                raise ConflictError(f"alert {alert_id} was already acknowledged by "
                                    f"{record.acknowledged_by}")
            record.acknowledged_by, record.acknowledged_at = username, now
            session.add(AuditEntry(at=now, actor=username, action="alert.acknowledge",
                                   target=f"{record.site_id}/{record.node_id}/{record.kind}",
                                   old=None, new={"alert_id": alert_id}, detail=note[:500]))
            session.flush()
            notice = notice_of(record)
        self.announce([notice])
        return notice

    # --- announcing ---------------------------------------------------------------------------

    def announce(self, notices: Sequence[AlertNotice]) -> None:
        """Retained MQTT notice per node and kind, then every notifier (webhooks...). A notice
        the broker did not take is tried again next round (newest state per alert wins)."""
        for notice in (*self._unannounced.values(), *notices):
            self._unannounced[notice.alert_id] = notice
        for alert_id, notice in list(self._unannounced.items()):
            if self.context.publisher.publish(
                    alert_topic(notice.site_id, notice.node_id, notice.kind.value),
                    encode(notice), retain=True, timeout=2.0):
                del self._unannounced[alert_id]
        for notice in notices:
            self._to_dashboards(notice)
            for notify in self.notifiers:
                try:
                    notify(notice)
                except Exception as exc:  # a notifier must never stop alerting
                    log.error("alert notifier failed for alert %d: %s", notice.alert_id, exc)

    def _to_dashboards(self, notice: AlertNotice) -> None:
        """Push the alert's new state to open dashboards (the live stream's ``alert`` event,
        the shape of ``GET /api/alerts``); best effort, like every live message."""
        if self.context.live is None:
            return
        try:
            self.context.live.publish_alert(notice)
        except Exception as exc:  # dashboards refetch on their next resync
            log.warning("live update of alert %d failed: %r", notice.alert_id, exc)

    # --- pending conditions on disk -----------------------------------------------------------

    def _load_pending(self) -> dict[tuple[str, str], PendingConditions]:
        try:
            data = json.loads(self._pending_file.read_text(encoding="utf-8"))
            return {tuple(key.split("/", 1)): PendingConditions.from_json(value)  # type: ignore[misc]
                    for key, value in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, SnapshotError) as exc:
            log.warning("%s unreadable (%s): alert delays start again", self._pending_file, exc)
            return {}

    def _save_pending(self) -> None:
        data = {f"{site}/{node}": pending.to_json()
                for (site, node), pending in sorted(self._pending.items())}
        temporary = self._pending_file.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temporary, self._pending_file)
        except OSError as exc:
            log.warning("cannot save %s: %s", self._pending_file, exc)
