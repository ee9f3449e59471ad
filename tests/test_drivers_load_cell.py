"""Load-cell tray through an HX711: mass, median against vibration, tare, faults."""

from __future__ import annotations

import pytest
from chip_fakes import ScriptedHx711

from cacao_dryer.errors import SensorError, SensorFault
from firmware.config import LoadCellTrayConfig
from firmware.drivers.load_cell import LoadCellTray

TIMEOUT = TimeoutError("HX711 not ready")


def tray(*counts: int | BaseException, then: object = None, **changes: object) -> LoadCellTray:
    values: dict[str, object] = {"type": "load_cell_tray", "name": "tray", "data_pin": 5,
                                 "clock_pin": 6, "counts_per_kg": 2000.0,
                                 "tare_offset_counts": 1000.0, "samples": 5, "fault_after": 3}
    values.update(changes)
    chip = ScriptedHx711(*counts, then=then) if then is not None else ScriptedHx711(*counts)
    return LoadCellTray(chip, LoadCellTrayConfig.model_validate(values))


def test_mass_is_counts_minus_tare_over_calibration() -> None:
    assert tray(then=5000).read() == pytest.approx(2.0)


def test_negative_calibration_factor_is_honoured() -> None:
    # cells mounted upside down count down with load
    assert tray(then=-3000, counts_per_kg=-2000.0).read() == pytest.approx(2.0)


def test_median_rejects_a_vibration_spike() -> None:
    assert tray(5000, 5000, 90000, 5000, 5002).read() == pytest.approx(2.0)


def test_tare_takes_the_empty_tray_as_zero() -> None:
    sensor = tray(8000, 8000, 8000, 8000, 8000, then=10000)
    sensor.tare()
    assert sensor.tare_offset_counts == 8000
    assert sensor.read() == pytest.approx(1.0)


def test_tare_that_cannot_read_fails_and_keeps_the_old_offset() -> None:
    sensor = tray(then=TIMEOUT)
    with pytest.raises(SensorError, match="cannot tare"):
        sensor.tare()
    assert sensor.tare_offset_counts == 1000.0


def test_slightly_negative_empty_tray_reads_zero() -> None:
    assert tray(then=950).read() == 0.0  # -0.025 kg: drift, within tolerance


def test_clearly_negative_mass_is_an_error() -> None:
    with pytest.raises(SensorError, match=r"negative mass -1\.000 kg"):
        tray(then=-1000).read()


def test_implausible_mass_is_an_error() -> None:
    with pytest.raises(SensorError, match="implausible mass"):
        tray(then=2_000_000).read()


def test_a_few_timeouts_in_a_burst_are_tolerated() -> None:
    assert tray(TIMEOUT, 5000, 5000, TIMEOUT, 5000).read() == pytest.approx(2.0)


def test_fault_after_repeated_chip_timeouts() -> None:
    sensor = tray(then=TIMEOUT, fault_after=2)
    with pytest.raises(SensorError) as first:
        sensor.read()
    assert not isinstance(first.value, SensorFault)
    with pytest.raises(SensorFault, match=r"load-cell tray 'tray' \(HX711 on GPIO5/GPIO6\)"):
        sensor.read()


def test_good_read_after_a_fault_clears_it() -> None:
    sensor = tray(*[TIMEOUT] * 5, then=5000, fault_after=1)
    with pytest.raises(SensorFault):
        sensor.read()
    assert sensor.read() == pytest.approx(2.0)
    assert not sensor.faulty
