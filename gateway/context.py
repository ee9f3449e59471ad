"""What the gateway's parts share at run time: settings, stores, the MQTT publisher, the clock.

Built once by ``gateway.service`` (or by a test) and handed to the API and the background
services; nothing reaches these through module globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cacao_dryer.clock import Clock
from gateway.config import GatewaySettings
from gateway.ingest import IngestStats
from gateway.live import LiveHub
from gateway.metadata.database import MetadataDB
from gateway.timeseries import TimeSeriesStore


class Publisher(Protocol):
    """Outgoing MQTT (``gateway.mqtt_out.MqttPublisher``): True once the broker has it."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                timeout: float = 5.0) -> bool: ...


class BrokerLink(Protocol):
    """The MQTT connection that brings data in (``gateway.ingest.Ingest``; for a dashboard
    run alone, its live view's ``gateway.live_feed.LiveFeed``)."""

    @property
    def connected(self) -> bool: ...


@dataclass
class GatewayContext:
    settings: GatewaySettings
    store: TimeSeriesStore
    metadata: MetadataDB
    publisher: Publisher
    clock: Clock
    ingest_stats: IngestStats = field(default_factory=IngestStats)
    started_at: datetime | None = None
    live: LiveHub | None = None  # pushes ingest results to dashboards (None: no /api/live)
    alerts: Any = None  # gateway.alert_service.AlertService once the runtime has built it
    # Logins, sessions and the login throttle; None = ``clock``. The demo runs drying time
    # 600x fast but keeps logins on the wall clock, or a session would end in minutes.
    session_clock: Clock | None = None
    notifications: Any = None  # gateway.notify.service.NotificationService, if configured
    broker: BrokerLink | None = None  # None: no MQTT link to report on (tests of the API)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)
