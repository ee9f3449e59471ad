"""Assemble the whole gateway from its settings: stores, metadata database, MQTT in and out,
the node registry, the HTTP API and the periodic jobs; start and stop them in order.

``run_gateway`` (gateway/service.py) runs one until SIGTERM; tests and the demo start one in
a process of their own with a chosen clock.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from cacao_dryer.clock import Clock, SystemClock
from cacao_dryer.errors import ConfigError
from gateway.api.app import LOCAL_ADMIN, create_app
from gateway.api.deps import Actor
from gateway.config import GatewaySettings
from gateway.context import GatewayContext
from gateway.http_server import ApiServer
from gateway.ingest import Ingest
from gateway.jobs import Jobs
from gateway.metadata.database import open_metadata
from gateway.mqtt_out import MqttPublisher
from gateway.registry import NodeRegistry

log = logging.getLogger("cacao_dryer.gateway")


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


def local_actor_for(host: str) -> Actor | None:
    """Until logins exist (dashboard issue), the API acts as a local administrator only when
    it listens on loopback; on the LAN every protected route answers 401."""
    try:
        return LOCAL_ADMIN if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return LOCAL_ADMIN if host == "localhost" else None


class GatewayRuntime:
    def __init__(self, settings: GatewaySettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.context: GatewayContext | None = None
        self.ingest: Ingest | None = None
        self.api: ApiServer | None = None
        self.jobs = Jobs()
        self._publisher: MqttPublisher | None = None

    def start(self) -> GatewayContext:
        from gateway.service import open_store

        settings = self.settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        store = open_store(settings)
        metadata = open_metadata(metadata_url(settings))
        self._publisher = MqttPublisher(settings.mqtt)
        self._publisher.start()
        registry = NodeRegistry(metadata, self.clock, settings.timezone)
        self.ingest = Ingest(settings, store, registry)
        context = GatewayContext(settings=settings, store=store, metadata=metadata,
                                 publisher=self._publisher, clock=self.clock,
                                 ingest_stats=self.ingest.stats, started_at=self.clock.now())
        self.context = context
        self._add_jobs(context)
        self.ingest.start()
        self.api = ApiServer(create_app(context, local_actor=local_actor_for(settings.api.host)),
                             settings.api.host, settings.api.port)
        self.api.start()
        self.jobs.start()
        log.info("gateway API on http://%s:%d", settings.api.host, self.api.port)
        return context

    def _add_jobs(self, context: GatewayContext) -> None:
        """Periodic work; each part registers its own job here."""

    def stop(self) -> None:
        self.jobs.stop()
        if self.api is not None:
            self.api.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self._publisher is not None:
            self._publisher.stop()
        if self.context is not None:
            self.context.metadata.close()
            self.context.store.close()
