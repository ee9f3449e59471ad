"""Every example config shipped in firmware/examples validates and builds its hardware."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from chip_fakes import SteadyChips
from gpiozero.pins.mock import MockFactory, MockPWMPin

from cacao_dryer.clock import ManualClock
from firmware.config import load_node_config
from firmware.hardware import build_hardware

EXAMPLES = sorted((Path(__file__).parent.parent / "firmware" / "examples").glob("*.toml"))
REAL_SETUPS = ("pi-dht22-probe-pwm.toml", "pi-loadcell-relay.toml", "pi-dht11-servo.toml")


def test_examples_are_shipped() -> None:
    names = {path.name for path in EXAMPLES}
    assert names.issuperset(REAL_SETUPS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_validates(path: Path) -> None:
    settings = load_node_config(path)
    assert settings.node_id and settings.site_id


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_builds_its_hardware(path: Path) -> None:
    settings = load_node_config(path)
    factory = MockFactory(pin_class=MockPWMPin)
    clock = ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    try:
        hardware = build_hardware(settings, SteadyChips(), factory, clock)
        assert len(hardware.fans) == len(settings.fans)
        assert len(hardware.vents) == len(settings.vents)
        hardware.close()
    finally:
        factory.reset()


@pytest.mark.parametrize("name", REAL_SETUPS)
def test_real_setup_avoids_the_serial_console_pins(name: str) -> None:
    settings = load_node_config(Path(__file__).parent.parent / "firmware" / "examples" / name)
    pins = {getattr(device, key) for device in [*settings.sensors, *settings.fans,
                                                *settings.vents]
            for key in ("pin", "data_pin", "clock_pin", "open_pin", "close_pin")
            if hasattr(device, key)}
    assert not settings.simulated
    assert pins and not pins & {14, 15}
