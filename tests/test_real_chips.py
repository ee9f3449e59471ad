"""The real-chip adapters. The Pi libraries are not installed in the development venv, so
opening a chip must fail with a one-line ConfigError telling how to install them."""

from __future__ import annotations

import pytest

from cacao_dryer.errors import ConfigError
from firmware.config import DhtSensorConfig, LoadCellTrayConfig, MoistureProbeConfig
from firmware.drivers.real_chips import INSTALL_HINT, RealChips, RealHx711


def test_dht_without_its_library_says_what_to_install() -> None:
    config = DhtSensorConfig(type="dht22", name="dryer-air", location="inside", pin=4)
    with pytest.raises(ConfigError) as caught:
        RealChips().dht(config)
    message = str(caught.value)
    assert "air sensor 'dryer-air'" in message and "'adafruit_dht'" in message
    assert INSTALL_HINT in message and "\n" not in message


def test_adc_without_its_library_says_what_to_install() -> None:
    config = MoistureProbeConfig(type="moisture_probe", name="probe",
                                 calibration=[(1.0, 50.0), (2.0, 10.0)])
    with pytest.raises(ConfigError, match=r"moisture probe 'probe' needs .*'board'.*\[pi\]"):
        RealChips().adc(config)


def test_hx711_without_its_library_says_what_to_install() -> None:
    config = LoadCellTrayConfig(type="load_cell_tray", name="tray", data_pin=5, clock_pin=6,
                                counts_per_kg=1000.0)
    with pytest.raises(ConfigError, match=r"load-cell tray 'tray' needs .*'hx711'.*\[pi\]"):
        RealChips().hx711(config)


class _UnansweringHx711:
    """The hx711 library's HX711 with no chip answering: ``_read`` gives up with False."""

    def _read(self) -> int | bool:
        return False


class _BrokenHx711:
    def _read(self) -> int | bool:
        raise ValueError("channel was not set properly")


def test_hx711_that_does_not_answer_times_out() -> None:
    with pytest.raises(TimeoutError, match="HX711 on GPIO5/GPIO6: no data"):
        RealHx711(_UnansweringHx711(), "on GPIO5/GPIO6").read_counts()


def test_hx711_library_errors_become_os_errors() -> None:
    with pytest.raises(OSError, match="channel was not set properly"):
        RealHx711(_BrokenHx711(), "on GPIO5/GPIO6").read_counts()
