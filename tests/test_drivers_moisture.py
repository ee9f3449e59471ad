"""Moisture probe through an ADS1115: calibration curve, median, range, faults; fitting curves."""

from __future__ import annotations

import pytest
from chip_fakes import ScriptedAdc
from hypothesis import given
from hypothesis import strategies as st

from cacao_dryer.calibration import fit_calibration, volts_to_moisture_pct_wb
from cacao_dryer.errors import ConfigError, SensorError, SensorFault
from firmware.config import MoistureProbeConfig
from firmware.drivers.base import MoistureReading
from firmware.drivers.moisture_probe import READS_PER_SAMPLE, MoistureProbe

# A capacitive probe: the wetter the beans, the lower the voltage.
CURVE = [(1.0, 60.0), (2.0, 20.0), (3.0, 10.0)]
I2C_ERROR = OSError(121, "Remote I/O error")


def config(**changes: object) -> MoistureProbeConfig:
    values: dict[str, object] = {"type": "moisture_probe", "name": "probe-1",
                                 "calibration": CURVE, "fault_after": 3}
    values.update(changes)
    return MoistureProbeConfig.model_validate(values)


def probe(*volts: float | BaseException, then: object = None, **changes: object) -> MoistureProbe:
    chip = ScriptedAdc(*volts, then=then) if then is not None else ScriptedAdc(*volts)
    return MoistureProbe(chip, config(**changes))


@pytest.mark.parametrize(("volts", "moisture"), [
    (1.0, 60.0), (1.5, 40.0), (2.0, 20.0), (2.5, 15.0), (3.0, 10.0)])
def test_calibration_interpolates_between_points(volts: float, moisture: float) -> None:
    assert volts_to_moisture_pct_wb(CURVE, volts) == pytest.approx(moisture)


def test_reading_carries_moisture_and_probe_volts() -> None:
    assert probe(then=1.5).read() == MoistureReading(40.0, 1.5)


def test_median_of_a_burst_rejects_a_spike() -> None:
    reading = probe(1.5, 1.5, 2.9, 1.5, 1.5).read()
    assert reading == MoistureReading(40.0, 1.5)


def test_slightly_beyond_the_curve_is_clamped_to_its_end() -> None:
    # the margin is 5 % of the 2 V span: 0.1 V
    assert probe(then=3.08).read().moisture_pct_wb == 10.0
    assert probe(then=0.93).read().moisture_pct_wb == 60.0


def test_far_beyond_the_curve_is_an_error_not_an_extrapolation() -> None:
    with pytest.raises(SensorError, match=r"probe reads 4\.200 V, outside calibration 1\.\.3 V"):
        probe(then=4.2).read()


def test_a_few_i2c_errors_in_a_burst_are_tolerated() -> None:
    assert probe(I2C_ERROR, 2.0, I2C_ERROR, 2.0, 2.0).read() == MoistureReading(20.0, 2.0)


def test_mostly_failing_i2c_fails_the_sample() -> None:
    sensor = probe(I2C_ERROR, I2C_ERROR, 2.0, I2C_ERROR, 2.0)
    with pytest.raises(SensorError, match=r"2 of 5 reads succeeded.*Remote I/O error"):
        sensor.read()
    assert not sensor.faulty


def test_fault_after_repeated_i2c_errors() -> None:
    sensor = probe(then=I2C_ERROR, fault_after=2)
    with pytest.raises(SensorError) as first:
        sensor.read()
    assert not isinstance(first.value, SensorFault)
    with pytest.raises(SensorFault, match=r"moisture probe 'probe-1' \(ADS1115 0x48 channel 0\)"):
        sensor.read()


def test_good_sample_after_a_fault_clears_it() -> None:
    sensor = probe(*[I2C_ERROR] * READS_PER_SAMPLE, then=2.0, fault_after=1)
    with pytest.raises(SensorFault):
        sensor.read()
    assert sensor.read() == MoistureReading(20.0, 2.0)
    assert not sensor.faulty


def test_out_of_calibration_counts_towards_the_fault() -> None:
    sensor = probe(then=0.0, fault_after=2)  # unplugged probe reads 0 V
    with pytest.raises(SensorError):
        sensor.read()
    with pytest.raises(SensorFault, match="outside calibration"):
        sensor.read()


# --- fitting a curve from (probe volts, hand-meter %) pairs -----------------------------------

def test_fit_sorts_by_volts() -> None:
    assert fit_calibration([(2.0, 20.0), (1.0, 55.0), (3.0, 8.0)]) == [
        (1.0, 55.0), (2.0, 20.0), (3.0, 8.0)]


def test_fit_averages_readings_at_the_same_voltage() -> None:
    assert fit_calibration([(1.0, 50.0), (1.0, 54.0), (2.0, 20.0)]) == [
        (1.0, 52.0), (2.0, 20.0)]


def test_fit_pools_a_noisy_point_against_the_trend() -> None:
    # 1.5 V read 58 % on the hand meter, wetter than at 1.0 V: pooled with its neighbour
    assert fit_calibration([(1.0, 56.0), (1.5, 58.0), (2.0, 20.0), (3.0, 10.0)]) == [
        (1.25, 57.0), (2.0, 20.0), (3.0, 10.0)]


def test_fit_needs_two_different_voltages() -> None:
    with pytest.raises(ConfigError, match="two or more different probe voltages"):
        fit_calibration([(1.2, 40.0), (1.2, 42.0)])


def test_fit_rejects_readings_that_show_no_trend() -> None:
    with pytest.raises(ConfigError, match="no change of moisture"):
        fit_calibration([(1.0, 30.0), (2.0, 30.0)])


def test_fit_rejects_impossible_moisture() -> None:
    with pytest.raises(ConfigError, match=r"outside 0\.\.80"):
        fit_calibration([(1.0, 95.0), (2.0, 20.0)])


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 80.0)), min_size=2, max_size=30))
def test_fitted_curve_is_monotonic_and_a_valid_config(pairs: list[tuple[float, float]]) -> None:
    try:
        curve = fit_calibration(pairs)
    except ConfigError:
        return  # too few distinct voltages, or no trend: refused with a message
    config(calibration=curve)  # passes the node config validation
    moistures = [m for _, m in curve]
    rising = moistures == sorted(moistures)
    falling = moistures == sorted(moistures, reverse=True)
    assert rising or falling
    assert len(curve) >= 2
