"""A real gateway context for API and service tests: SQLite readings store, a metadata
database (SQLite or PostgreSQL URL), a real MQTT publisher on the test's private Mosquitto, and
a hand-driven clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cacao_dryer.clock import ManualClock
from gateway.config import parse_gateway_config
from gateway.context import GatewayContext
from gateway.ingest import Ingest
from gateway.metadata.database import open_metadata
from gateway.mqtt_out import MqttPublisher
from gateway.registry import NodeRegistry
from gateway.stores.sqlite import SqliteStore
from support import wait_for
from support.mosquitto import MosquittoBroker


@contextmanager
def gateway_context(folder: Path, broker: MosquittoBroker, metadata_url: str,
                    clock: ManualClock) -> Iterator[GatewayContext]:
    settings = parse_gateway_config({
        "data_dir": str(folder), "sites": ["demo"],
        "mqtt": {"broker": f"mqtt://127.0.0.1:{broker.port}", "client_id": "test-gateway"},
        "metadata": {"url": metadata_url},
    })
    store = SqliteStore(folder / "readings.sqlite3")
    metadata = open_metadata(metadata_url)
    publisher = MqttPublisher(settings.mqtt)
    publisher.start()
    wait_for(lambda: publisher.connected, timeout=10, what="gateway publisher connected")
    try:
        yield GatewayContext(settings=settings, store=store, metadata=metadata,
                             publisher=publisher, clock=clock, started_at=clock.now())
    finally:
        publisher.stop()
        metadata.close()
        store.close()


@contextmanager
def registry_ingest(context: GatewayContext) -> Iterator[Ingest]:
    """The gateway's real MQTT ingest with the real node registry as its listener (which
    hands config, batch and command events to thresholds, batches and calibrations)."""
    service = Ingest(context.settings, context.store,
                     NodeRegistry(context.metadata, context.clock))
    service.start()
    wait_for(lambda: service.connected, 10, "the ingest to connect")
    try:
        yield service
    finally:
        service.stop()
