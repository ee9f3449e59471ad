"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from support.mosquitto import MosquittoBroker

from cacao_dryer.clock import ManualClock


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
