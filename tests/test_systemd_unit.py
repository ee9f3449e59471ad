"""The shipped systemd unit fits the node: watchdog, restart, and a stop timeout long enough
for the fail-safe vent opening of every example setup."""

import configparser
from pathlib import Path

from firmware.config import RelayVentConfig, load_node_config

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "firmware" / "systemd" / "cacao-dryer-node.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_uses_the_watchdog_and_always_restarts():
    service = unit()["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) >= 30
    assert service["Restart"] == "always"


def test_stop_timeout_covers_opening_every_relay_vent():
    timeout_s = int(unit()["Service"]["TimeoutStopSec"])
    for path in (ROOT / "firmware" / "examples").glob("pi-*.toml"):
        settings = load_node_config(path)
        for vent in settings.vents:
            if isinstance(vent, RelayVentConfig):
                assert timeout_s > vent.travel_time_s * 1.2 + 10, path.name


def test_state_directory_matches_the_example_data_dir():
    assert unit()["Service"]["StateDirectory"] == "cacao-dryer"
    for path in (ROOT / "firmware" / "examples").glob("pi-*.toml"):
        assert str(load_node_config(path).data_dir) == "/var/lib/cacao-dryer", path.name
