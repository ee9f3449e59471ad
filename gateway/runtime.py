"""Assemble the whole gateway from its settings: stores, metadata database, MQTT in and out,
the node registry, the HTTP API and the periodic jobs; start and stop them in order.

``run_gateway`` (gateway/service.py) runs one until SIGTERM; tests and the demo start one in
a process of their own with a chosen clock.

``dashboard_only=True`` is ``cacao-dryer dashboard run``: the HTTP API and dashboard on the
same stores, without ingest, registry or jobs (those stay with ``gateway run``); its live view
gets its own read-only MQTT subscription (``gateway.live_feed``), and the commands it sends
(batches, overrides, threshold pushes) go out on a publisher of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from pathlib import Path

from sqlalchemy.engine import make_url

from cacao_dryer.clock import Clock, SystemClock
from cacao_dryer.errors import ConfigError
from gateway.api.app import create_app
from gateway.config import ApiConfig, GatewaySettings
from gateway.context import GatewayContext
from gateway.http_server import ApiServer
from gateway.ingest import Ingest, IngestStats
from gateway.jobs import Jobs
from gateway.live import FanOutListener, LiveHub
from gateway.live_feed import LiveFeed
from gateway.metadata.database import open_metadata
from gateway.mqtt_out import MqttPublisher
from gateway.notify.service import NotificationService, notification_service
from gateway.registry import NodeRegistry
from gateway.webhooks import WebhookSender, WebhookTarget

log = logging.getLogger("cacao_dryer.gateway")

ALERT_EVERY_S = 30.0
RECONCILE_EVERY_S = 60.0


def metadata_url(settings: GatewaySettings) -> str:
    """The configured URL with the password from ``password_file`` (never in the config)."""
    config = settings.metadata
    if config.password_file is None:
        return config.url
    try:
        password = config.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"metadata.password_file {config.password_file}: cannot read "
                          f"({exc.strerror})") from None
    return make_url(config.url).set(password=password).render_as_string(hide_password=False)


def cleartext_warning(api: ApiConfig) -> str | None:
    """Every API call needs a login (docs/security.md); on the LAN without TLS in front,
    passwords and session cookies cross the network readable: say so at start."""
    try:
        loopback = ipaddress.ip_address(api.host).is_loopback
    except ValueError:
        loopback = api.host == "localhost"
    if loopback or api.secure_cookies:
        return None
    return (f"API on {api.host}:{api.port} over plain HTTP: logins cross the LAN unencrypted; "
            "put a TLS proxy in front and set api.secure_cookies = true (docs/security.md)")


def webhook_targets(settings: GatewaySettings) -> list[WebhookTarget]:
    """The configured webhooks with their secrets read from their files."""
    targets = []
    for index, hook in enumerate(settings.webhooks):
        try:
            secret = hook.secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"webhooks[{index}].secret_file {hook.secret_file}: cannot read "
                              f"({exc.strerror})") from None
        targets.append(WebhookTarget(
            url=hook.url, secret=secret, name=hook.name, min_severity=hook.min_severity,
            kinds=frozenset(hook.kinds) if hook.kinds is not None else None))
    return targets


class GatewayRuntime:
    def __init__(self, settings: GatewaySettings, clock: Clock | None = None, *,
                 dashboard_only: bool = False, session_clock: Clock | None = None) -> None:
        """``clock``: drying time (readings, batches, alerts); ``session_clock``: logins and
        sessions, if they must not follow an accelerated ``clock`` (the demo)."""
        self.settings = settings
        self.clock = clock or SystemClock()
        self.session_clock = session_clock
        self.dashboard_only = dashboard_only
        self.context: GatewayContext | None = None
        self.ingest: Ingest | None = None
        self.live_feed: LiveFeed | None = None  # dashboard_only: the live view's subscription
        self.api: ApiServer | None = None
        self.jobs = Jobs()
        self.live = LiveHub()
        self._publisher: MqttPublisher | None = None
        self._webhooks: WebhookSender | None = None
        self._notifications: NotificationService | None = None

    def start(self) -> GatewayContext:
        if self.dashboard_only:
            return self._start_dashboard()
        from gateway.service import open_store

        settings = self.settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        store = open_store(settings)
        metadata = open_metadata(metadata_url(settings), migrate_in_subprocess=True)
        self._publisher = MqttPublisher(settings.mqtt)
        self._publisher.start()
        registry = NodeRegistry(metadata, self.clock, settings.timezone)
        # The registry records durably (its failure retries the batch); the live hub then
        # pushes the batch to open dashboards, best effort.
        self.ingest = Ingest(settings, store, FanOutListener(registry, self.live))
        context = GatewayContext(settings=settings, store=store, metadata=metadata,
                                 publisher=self._publisher, clock=self.clock,
                                 ingest_stats=self.ingest.stats, started_at=self.clock.now(),
                                 live=self.live, session_clock=self.session_clock,
                                 broker=self.ingest)
        self.context = context
        self._add_jobs(context)
        self.ingest.start()
        self._start_api(context)
        self.jobs.start()
        return context

    def _start_dashboard(self) -> GatewayContext:
        """The API and dashboard alone, on the gateway's stores (``dashboard_only``)."""
        from gateway.service import open_store

        settings = self.settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        store = open_store(settings)
        metadata = open_metadata(metadata_url(settings), migrate_in_subprocess=True)
        # Never the gateway's client ids: the broker would drop one of the two connections.
        self._publisher = MqttPublisher(
            settings.mqtt, client_id=f"{settings.mqtt.client_id[:40]}-dashboard-out-"
            f"{secrets.token_hex(4)}")
        self._publisher.start()
        self.live_feed = LiveFeed(settings.mqtt, list(settings.sites), self.live)
        self.live_feed.start()
        context = GatewayContext(settings=settings, store=store, metadata=metadata,
                                 publisher=self._publisher, clock=self.clock,
                                 ingest_stats=IngestStats(), started_at=self.clock.now(),
                                 live=self.live, session_clock=self.session_clock,
                                 broker=self.live_feed)
        self.context = context
        self._start_api(context)
        return context

    def _start_api(self, context: GatewayContext) -> None:
        settings = self.settings
        warning = cleartext_warning(settings.api)
        if warning is not None:
            log.warning("%s", warning)
        self.api = ApiServer(create_app(context),
                             settings.api.host, settings.api.port)
        self.api.start()
        log.info("%s on http://%s:%d", "dashboard" if self.dashboard_only else "gateway API",
                 settings.api.host, self.api.port)

    def _add_jobs(self, context: GatewayContext) -> None:
        """Periodic work: alert rules every 30 s (announced on MQTT and to webhooks),
        threshold configs reconciled every minute (batch stage changes, pushes the broker
        did not take during an outage)."""
        from gateway import thresholds
        from gateway.alert_service import AlertService
        from gateway.webhooks import WebhookSender

        notifiers = []
        targets = webhook_targets(self.settings)
        if targets:
            self._webhooks = WebhookSender(Path(self.settings.data_dir) / "webhooks.sqlite3",
                                           targets, clock=self.clock)
            self._webhooks.start()
            notifiers.append(self._webhooks.enqueue)
        # E-mail, Telegram, SMS to the people in [notify] (None without recipients).
        self._notifications = notification_service(self.settings, self.clock)
        if self._notifications is not None:
            self._notifications.start()
            notifiers.append(self._notifications.enqueue)
        context.notifications = self._notifications
        context.alerts = AlertService(context, notifiers=notifiers)
        self.jobs.add("alerts", ALERT_EVERY_S, context.alerts.run_round)
        self.jobs.add("thresholds", RECONCILE_EVERY_S, lambda: thresholds.reconcile(context))

    def alive(self) -> bool:
        """Ingest, jobs and the web server all run: what the systemd watchdog is fed on
        (a hung or dead part stops the pings, and systemd restarts the gateway)."""
        parts = [self.jobs.alive()]
        if self.ingest is not None:
            parts.append(self.ingest.alive())
        if self.api is not None:
            parts.append(self.api.alive())
        return all(parts)

    def stop(self) -> None:
        self.jobs.stop()
        if self._webhooks is not None:
            self._webhooks.stop()
        if self._notifications is not None:
            self._notifications.close()
        self.live.close()  # ends open live streams, or the web server waits for them forever
        if self.api is not None:
            self.api.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.live_feed is not None:
            self.live_feed.stop()
        if self._publisher is not None:
            self._publisher.stop()
        if self.context is not None:
            self.context.metadata.close()
            self.context.store.close()
