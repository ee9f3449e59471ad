"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from support.gateway_context import gateway_context
from support.influxd import InfluxDaemon
from support.mosquitto import MosquittoBroker
from support.postgres import PostgresServer

from cacao_dryer.clock import ManualClock
from gateway.context import GatewayContext


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private, running Mosquitto on a free loopback port with its config and persistence in
    this test's tmp dir (never the shared broker on 1883); killed at teardown."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    """gpiozero's own mock pins (PWM-capable), reset after the test."""
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when the test says so."""
    return ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[InfluxDaemon]:
    """A private, running influxd (Debian's InfluxDB 1.x) on free loopback ports with its data,
    WAL and meta folders in this test's tmp dir (never the machine's own on 8086); killed at
    teardown. It starts in a few hundredths of a second, so each test gets a fresh one."""
    server = InfluxDaemon(tmp_path / "influxd")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the test session (initdb in a temporary folder, a
    free loopback port; never the machine's own server); each test takes its own database."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty metadata database URL: the test runs once on SQLite (the default) and
    once on a new database of the private PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoBroker, clock: ManualClock
            ) -> Iterator[GatewayContext]:
    """A real gateway context: SQLite readings and metadata in tmp_path, an MQTT publisher on
    the private Mosquitto, the hand-driven clock. For PostgreSQL use support.gateway_context
    with the ``metadata_url`` fixture."""
    with gateway_context(tmp_path / "gateway", mosquitto,
                         f"sqlite:///{tmp_path / 'gateway' / 'metadata.sqlite3'}",
                         clock) as context:
        yield context
