"""DHT22/DHT11 air sensor driver: retries, range and jump rejection, median, fault, recovery."""

from __future__ import annotations

import math

import pytest
from chip_fakes import ScriptedDht

from cacao_dryer.errors import SensorError, SensorFault
from firmware.config import DhtSensorConfig
from firmware.drivers.base import AirReading
from firmware.drivers.dht import CONFIRM_READS, DhtAirSensor

CHECKSUM = RuntimeError("Checksum did not validate. Try again.")


def config(**changes: object) -> DhtSensorConfig:
    values: dict[str, object] = {"type": "dht22", "name": "dryer-air", "location": "inside",
                                 "pin": 4, "retries": 3, "median_window": 5, "fault_after": 3}
    values.update(changes)
    return DhtSensorConfig.model_validate(values)


def test_good_read_is_returned() -> None:
    sensor = DhtAirSensor(ScriptedDht((31.5, 62.0)), config())
    assert sensor.read() == AirReading(31.5, 62.0)


def test_checksum_failure_is_retried_within_one_sample() -> None:
    chip = ScriptedDht(CHECKSUM, CHECKSUM, (31.5, 62.0))
    sensor = DhtAirSensor(chip, config(retries=3))
    assert sensor.read() == AirReading(31.5, 62.0)
    assert chip.measurements == 3


def test_sample_fails_after_all_retries_without_fault_yet() -> None:
    chip = ScriptedDht(CHECKSUM, CHECKSUM, CHECKSUM)
    sensor = DhtAirSensor(chip, config(retries=2))
    with pytest.raises(SensorError) as caught:
        sensor.read()
    assert not isinstance(caught.value, SensorFault)
    assert chip.measurements == 3
    message = str(caught.value)
    assert "'dryer-air'" in message and "GPIO4" in message and "Checksum" in message
    assert "\n" not in message


def test_physically_impossible_temperature_is_rejected() -> None:
    sensor = DhtAirSensor(ScriptedDht((150.0, 50.0), (31.0, 60.0)), config())
    assert sensor.read() == AirReading(31.0, 60.0)


def test_not_a_number_is_rejected() -> None:
    sensor = DhtAirSensor(ScriptedDht((math.nan, 50.0), (31.0, math.inf), (31.0, 60.0)),
                          config())
    assert sensor.read() == AirReading(31.0, 60.0)


def test_missing_value_is_a_failed_read() -> None:
    sensor = DhtAirSensor(ScriptedDht((None, None), (31.0, 60.0)), config())
    assert sensor.read() == AirReading(31.0, 60.0)


def test_ambient_sensor_uses_the_ambient_range() -> None:
    # 70 °C is possible inside a solar dryer, never in the shade outside (measurements.py)
    inside = DhtAirSensor(ScriptedDht((70.0, 20.0)), config(retries=0))
    ambient = DhtAirSensor(ScriptedDht((70.0, 20.0)), config(location="ambient", retries=0))
    assert inside.read().temp_c == 70.0
    with pytest.raises(SensorError, match=r"outside -10\.\.60 °C"):
        ambient.read()


def test_reading_is_the_median_of_recent_good_reads() -> None:
    sensor = DhtAirSensor(ScriptedDht((30.0, 60.0), (34.0, 50.0), (31.0, 70.0)), config())
    readings = [sensor.read() for _ in range(3)]
    assert readings[-1] == AirReading(31.0, 60.0)


def test_median_window_bounds_the_history() -> None:
    chip = ScriptedDht((30.0, 60.0), (30.0, 60.0), (35.0, 65.0), (35.0, 65.0), (35.0, 65.0))
    sensor = DhtAirSensor(chip, config(median_window=3))
    readings = [sensor.read() for _ in range(5)]
    assert readings[-1] == AirReading(35.0, 65.0)


def test_implausible_jump_from_the_median_is_rejected() -> None:
    chip = ScriptedDht((30.0, 60.0), (30.2, 60.0), (55.6, 60.0), (30.1, 61.0))
    sensor = DhtAirSensor(chip, config())
    sensor.read()
    sensor.read()
    assert sensor.read() == AirReading(30.1, 60.0)  # the 55.6 (+25.6 bit error) never counts
    assert chip.measurements == 4


def test_humidity_jump_is_rejected() -> None:
    chip = ScriptedDht((30.0, 40.0), (30.0, 65.6), (30.0, 41.0))
    sensor = DhtAirSensor(chip, config())
    sensor.read()
    assert sensor.read() == AirReading(30.0, 40.5)


def test_consistent_new_level_is_accepted_after_confirmation() -> None:
    # the dryer door opens at midday: a real 15 °C step, seen in consecutive samples
    chip = ScriptedDht((50.0, 30.0), (35.0, 45.0), (35.2, 45.0), (35.1, 45.0))
    sensor = DhtAirSensor(chip, config(retries=0, fault_after=CONFIRM_READS + 1))
    sensor.read()
    for _ in range(CONFIRM_READS - 1):
        with pytest.raises(SensorError, match="jumps too far"):
            sensor.read()
    assert sensor.read() == AirReading(35.1, 45.0)


def test_inconsistent_jumps_are_not_confirmed() -> None:
    chip = ScriptedDht((30.0, 60.0), (60.0, 60.0), (5.0, 60.0), (60.0, 60.0), (30.1, 60.0))
    sensor = DhtAirSensor(chip, config(retries=4))
    sensor.read()
    assert sensor.read() == AirReading(30.05, 60.0)


def test_fault_is_reported_after_consecutive_failed_samples() -> None:
    sensor = DhtAirSensor(ScriptedDht(then=CHECKSUM), config(retries=1, fault_after=3))
    for _ in range(2):
        with pytest.raises(SensorError) as caught:
            sensor.read()
        assert not isinstance(caught.value, SensorFault)
    with pytest.raises(SensorFault) as fault:
        sensor.read()
    message = str(fault.value)
    assert "FAULT" in message and "3 failed samples" in message and "'dryer-air'" in message
    assert "\n" not in message
    assert sensor.faulty


def test_fault_persists_while_failures_continue() -> None:
    sensor = DhtAirSensor(ScriptedDht(then=CHECKSUM), config(retries=0, fault_after=1))
    for _ in range(3):
        with pytest.raises(SensorFault):
            sensor.read()


def test_good_read_after_a_fault_clears_it() -> None:
    chip = ScriptedDht(CHECKSUM, CHECKSUM, (30.0, 60.0), CHECKSUM)
    sensor = DhtAirSensor(chip, config(retries=0, fault_after=2))
    for _ in range(2):
        with pytest.raises(SensorError):
            sensor.read()
    assert sensor.faulty
    assert sensor.read() == AirReading(30.0, 60.0)
    assert not sensor.faulty
    with pytest.raises(SensorError) as caught:  # counting starts again
        sensor.read()
    assert not isinstance(caught.value, SensorFault)


def test_first_read_after_a_fault_is_not_judged_against_stale_history() -> None:
    chip = ScriptedDht((25.0, 80.0), CHECKSUM, (45.0, 40.0))
    sensor = DhtAirSensor(chip, config(retries=0, fault_after=1))
    sensor.read()
    with pytest.raises(SensorFault):
        sensor.read()
    assert sensor.read() == AirReading(45.0, 40.0)


def test_dht11_is_named_in_errors() -> None:
    sensor = DhtAirSensor(ScriptedDht(CHECKSUM), config(type="dht11", location="ambient",
                                                        pin=17, retries=0))
    with pytest.raises(SensorError, match=r"ambient air sensor 'dryer-air' \(DHT11 on GPIO17\)"):
        sensor.read()
