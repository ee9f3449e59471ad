"""Assemble and run the gateway from its settings."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from cacao_dryer.errors import ConfigError
from firmware.watchdog import SystemdNotifier
from gateway.config import GatewaySettings, InfluxDB1Storage, InfluxDB2Storage, SqliteStorage
from gateway.gc_pacing import GarbagePacer
from gateway.timeseries import TimeSeriesStore

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime

log = logging.getLogger("cacao_dryer.gateway")


def open_store(settings: GatewaySettings) -> TimeSeriesStore:
    storage = settings.storage
    if isinstance(storage, SqliteStorage):
        from gateway.stores.sqlite import SqliteStore

        return SqliteStore(storage.path)
    if isinstance(storage, InfluxDB1Storage):
        from gateway.stores.influxdb1 import InfluxDB1Store

        password = storage.password_file.read_text().strip() if storage.password_file else None
        return InfluxDB1Store(storage.url, storage.database, username=storage.username,
                              password=password, count_duplicates=storage.count_duplicates)
    if isinstance(storage, InfluxDB2Storage):
        from gateway.stores.influxdb2 import InfluxDB2Store

        try:
            token = storage.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"storage.token_file {storage.token_file}: cannot read "
                              f"({exc.strerror})") from None
        return InfluxDB2Store(storage.url, storage.org, storage.bucket, token,
                              count_duplicates=storage.count_duplicates)
    raise ConfigError(f"storage kind {storage.kind!r} is not available")


def run_gateway(settings: GatewaySettings) -> None:
    """Run the whole gateway (ingest, metadata, alerts, thresholds, API) until SIGTERM/SIGINT."""
    from gateway.runtime import GatewayRuntime

    _run_until_stopped(GatewayRuntime(settings), "gateway ingesting %s from %s into %s",
                       ", ".join(settings.sites), settings.mqtt.broker, settings.storage.kind)


def run_dashboard(settings: GatewaySettings) -> None:
    """Run the HTTP API and dashboard alone (no ingest, no jobs) on the gateway's stores, with
    a live view of its own, until SIGTERM/SIGINT (``cacao-dryer dashboard run``)."""
    from gateway.runtime import GatewayRuntime

    _run_until_stopped(GatewayRuntime(settings, dashboard_only=True),
                       "dashboard on http://%s:%d reading %s and %s (live view from %s)",
                       settings.api.host, settings.api.port, settings.metadata.url.split(":")[0],
                       settings.storage.kind, settings.mqtt.broker)


def _run_until_stopped(runtime: GatewayRuntime, message: str, *args: object) -> None:
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # systemd (Type=notify, WatchdogSec): ready once started, then a ping while every part
    # runs; a dead part stops the pings and systemd restarts the service. No-op elsewhere.
    notifier = SystemdNotifier()
    pacer = GarbagePacer()
    try:
        runtime.start()
        # What start-up made is frozen and garbage is collected on the gateway's rhythm, not
        # every few hundred allocations (gateway/gc_pacing.py; docs/scaling.md, "Memory").
        pacer.start()
        log.info(message, *args)
        notifier.notify("READY=1")
        said = False
        while not stop.wait(1.0):
            pacer.tick()
            if runtime.alive():
                notifier.ping()
            elif not said:
                said = True
                log.error("a part of the gateway stopped running: no more watchdog pings")
    finally:
        notifier.notify("STOPPING=1")
        pacer.stop()
        runtime.stop()
