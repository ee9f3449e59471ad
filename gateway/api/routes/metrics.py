"""GET /metrics: Prometheus text format, computed at scrape time from the shared context.

Counters come from the ingest; node, alert and batch gauges from the metadata database; the
missing-readings gauge from the time-series store's sequence ranges (a gap is lost data).
No login, as Prometheus scrapes expect; it shows counts and ids, no readings or people.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from gateway.api.deps import ContextDep
from gateway.context import GatewayContext
from gateway.metadata.models import AlertRecord, Batch, Node
from gateway.timeseries import StoreUnavailable, missing_ranges

router = APIRouter(tags=["health"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector(Collector):
    def __init__(self, context: GatewayContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        stats = self.context.ingest_stats
        for name, value, help_text in (
                ("received", stats.received, "MQTT messages received from nodes"),
                ("stored", stats.stored, "New readings written to the time-series store"),
                ("duplicates", stats.duplicates, "Readings the store already had (replays)"),
                ("spooled", stats.spooled, "Readings spooled to disk while the store was down"),
                ("store_errors", stats.store_errors, "Failed attempts to make a batch durable"),
        ):
            yield CounterMetricFamily(f"cacao_gateway_{name}", help_text, value=value)
        invalid = CounterMetricFamily("cacao_gateway_invalid_messages",
                                      "Messages refused (never stored), by reason",
                                      labels=["reason"])
        for reason, count in sorted(stats.invalid.items()):
            invalid.add_metric([reason], count)
        yield invalid
        yield GaugeMetricFamily("cacao_gateway_spool_waiting", "Readings in the local spool "
                                "now, waiting for the time-series store",
                                value=stats.spool_waiting)
        if self.context.broker is not None:
            yield GaugeMetricFamily("cacao_gateway_broker_connected", "1 while the gateway is "
                                    "connected to its MQTT broker",
                                    value=1.0 if self.context.broker.connected else 0.0)
        now = self.context.clock.now()
        nodes = GaugeMetricFamily("cacao_node_up", "1 if the node's last status was online",
                                  labels=["site", "node"])
        silence = GaugeMetricFamily("cacao_node_seconds_since_heard",
                                    "Seconds since the gateway last heard from the node",
                                    labels=["site", "node"])
        missing = GaugeMetricFamily("cacao_node_missing_readings",
                                    "Readings missing from the store (sequence gaps)",
                                    labels=["site", "node"])
        alerts = GaugeMetricFamily("cacao_alerts_open", "Open alerts", labels=["kind", "severity"])
        store_up = True  # metrics must answer exactly when the store is down
        with self.context.metadata.session() as session:
            for node in session.scalars(select(Node).order_by(Node.site_id, Node.node_id)):
                labels = [node.site_id, node.node_id]
                nodes.add_metric(labels, 1.0 if node.state == "online" else 0.0)
                silence.add_metric(labels, (now - node.last_seen_at).total_seconds())
                if not store_up:
                    continue
                try:
                    stored = self.context.store.seq_ranges(node.site_id, node.node_id)
                except StoreUnavailable:
                    store_up = False
                    continue
                gaps = missing_ranges(stored)
                missing.add_metric(labels, sum(last - first + 1 for first, last in gaps))
            for kind, severity, count in session.execute(
                    select(AlertRecord.kind, AlertRecord.severity, func.count())
                    .where(AlertRecord.closed_at.is_(None))
                    .group_by(AlertRecord.kind, AlertRecord.severity)):
                alerts.add_metric([kind, severity], count)
            running = session.scalar(select(func.count()).select_from(Batch)
                                     .where(Batch.ended_at.is_(None))) or 0
        yield GaugeMetricFamily("cacao_gateway_store_up", "1 if the time-series store answered "
                                "(0: readings are being spooled; missing-readings gauges left "
                                "out)", value=1.0 if store_up else 0.0)
        yield from (nodes, silence, missing, alerts)
        yield GaugeMetricFamily("cacao_batches_running", "Batches drying now", value=running)
        yield from self._notifications()

    def _notifications(self) -> Iterator[Metric]:
        service = self.context.notifications
        if service is None:
            return
        sent = GaugeMetricFamily("cacao_notifications", "Notification messages (kept 7 days) "
                                 "by channel and delivery state", labels=["channel", "state"])
        for (channel, state), count in sorted(service.counts().items()):
            sent.add_metric([channel.value, state.value], count)
        yield sent
        waiting = GaugeMetricFamily("cacao_notifications_waiting", "Alert notices held for "
                                    "people, by reason (quiet hours, hourly limit, flapping)",
                                    labels=["reason"])
        for reason, count in sorted(service.waiting().items()):
            waiting.add_metric([reason], count)
        yield waiting


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(context: ContextDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(context))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
