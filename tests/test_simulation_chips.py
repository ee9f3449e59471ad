"""Simulated chips: datasheet noise, checksum failures, faults on demand, calibration round trips.
GPIO through gpiozero's own MockFactory."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from gpiozero import DigitalInputDevice
from gpiozero.pins.mock import MockFactory

from cacao_dryer.clock import ManualClock
from firmware.config import (
    DhtSensorConfig,
    LoadCellTrayConfig,
    MoistureProbeConfig,
    RainSensorConfig,
)
from firmware.simulation.chips import SimulatedChips, probe_volts_for_moisture
from firmware.simulation.dryer import DryerModel
from firmware.simulation.weather import ConstantWeather, Weather

NOON = datetime(2026, 1, 5, 17, 0, tzinfo=UTC)   # 12:00 in Peru
INSIDE = DhtSensorConfig(type="dht22", name="air-inside", location="inside", pin=4)
AMBIENT = DhtSensorConfig(type="dht22", name="air-ambient", location="ambient", pin=17)
# A capacitive probe: the voltage falls as the beans dry (fit per lot against a meter).
PROBE = MoistureProbeConfig(type="moisture_probe", name="probe",
                            calibration=[(0.8, 5.0), (1.4, 12.0), (2.2, 35.0), (2.9, 60.0)])
TRAY = LoadCellTrayConfig(type="load_cell_tray", name="tray", data_pin=5, clock_pin=6,
                          counts_per_kg=-21_000.0, tare_offset_counts=84_000.0)
RAIN = RainSensorConfig(type="rain", pin=27, wet_when_low=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


@pytest.fixture
def model(clock: ManualClock) -> DryerModel:
    dryer = DryerModel(Weather(1, "dry"), "greenhouse", 400, 56.0, start=NOON - timedelta(hours=3))
    dryer.step(NOON, fan_speed_pct=0, vent_open_pct=0)
    return dryer


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pin_factory = MockFactory()
    yield pin_factory
    pin_factory.reset()


def dht_reads(chip: object, clock: ManualClock, count: int) -> Iterator[tuple[float, float]]:
    """Successful (temperature, humidity) reads, one measurement every 2.5 s."""
    for _ in range(count):
        clock.advance(2.5)
        try:
            yield chip.temperature, chip.humidity  # type: ignore[attr-defined]
        except RuntimeError:
            continue


def checksum_failures(chips: SimulatedChips, clock: ManualClock, count: int) -> int:
    chip = chips.dht(INSIDE)
    failures = 0
    for _ in range(count):
        clock.advance(2.5)
        try:
            _ = chip.temperature
        except RuntimeError as exc:
            assert "Checksum did not validate" in str(exc)
            failures += 1
    return failures


def piecewise(volts: float, curve: list[tuple[float, float]]) -> float:
    """The calibration curve as a driver applies it (volts → moisture), end segments extended."""
    pairs = list(itertools.pairwise(curve))
    for (v1, m1), (v2, m2) in pairs:
        if volts <= v2 or (v2, m2) == curve[-1]:
            return m1 + (volts - v1) * (m2 - m1) / (v2 - v1)
    raise AssertionError("unreachable")


# --- DHT22 -----------------------------------------------------------------------------------

def test_dht_readings_stay_within_datasheet_accuracy(model: DryerModel,
                                                     clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1).dht(INSIDE)
    reads = list(dht_reads(chip, clock, 1000))
    assert len(reads) > 900
    for temp_c, rh_pct in reads:
        # ±0.5 °C, ±2 % RH (AM2302 datasheet), plus the 0.1 display step.
        assert abs(temp_c - model.air_temp_c) <= 0.55
        assert abs(rh_pct - model.air_rh_pct) <= 2.05
    assert statistics.stdev(t for t, _ in reads) > 0.1, "readings are noisy, not exact"


def test_ambient_dht_reads_the_outside_air(model: DryerModel, clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1).dht(AMBIENT)
    reads = list(dht_reads(chip, clock, 50))
    assert model.air_temp_c - model.ambient.temp_c > 5, "inside differs from outside at noon"
    for temp_c, rh_pct in reads:
        assert abs(temp_c - model.ambient.temp_c) <= 0.55
        assert abs(rh_pct - model.ambient.rh_pct) <= 2.05


def test_dht_checksum_errors_come_at_about_the_configured_rate(model: DryerModel,
                                                               clock: ManualClock) -> None:
    failures = checksum_failures(SimulatedChips(model, clock, seed=3), clock, 4000)
    assert 0.04 * 4000 <= failures <= 0.06 * 4000


def test_dht_checksum_errors_repeat_exactly_with_the_same_seed(model: DryerModel) -> None:
    def failed_reads(seed: int) -> list[int]:
        clock = ManualClock(NOON)
        chip = SimulatedChips(model, clock, seed=seed).dht(INSIDE)
        failed = []
        for i in range(500):
            clock.advance(2.5)
            try:
                _ = chip.temperature
            except RuntimeError:
                failed.append(i)
        return failed

    assert len(failed_reads(9)) > 10
    assert failed_reads(9) == failed_reads(9)
    assert failed_reads(9) != failed_reads(10)


def test_dht_checksum_rate_can_be_set(model: DryerModel, clock: ManualClock) -> None:
    chips = SimulatedChips(model, clock, seed=3, dht_checksum_error_rate=0.0)
    assert checksum_failures(chips, clock, 300) == 0


def test_dht_reads_within_2_s_return_the_cached_measurement(model: DryerModel,
                                                           clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1, dht_checksum_error_rate=0.0).dht(INSIDE)
    first = (chip.temperature, chip.humidity)
    clock.advance(1.0)
    assert (chip.temperature, chip.humidity) == first
    changed = [(t, h) for t, h in dht_reads(chip, clock, 20) if (t, h) != first]
    assert changed, "a new measurement after 2 s"


def test_dead_dht_raises_on_every_read(model: DryerModel, clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1).dht(INSIDE)
    model.inject_fault("air-inside", "dead")
    for _ in range(20):
        clock.advance(0.5)
        with pytest.raises(RuntimeError, match="not found"):
            _ = chip.temperature


def test_dht_checksum_fault_fails_every_measurement(model: DryerModel,
                                                   clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1).dht(INSIDE)
    model.inject_fault("air-inside", "checksum")
    assert list(dht_reads(chip, clock, 20)) == []


def test_stuck_dht_repeats_its_last_values(model: DryerModel, clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1, dht_checksum_error_rate=0.0).dht(INSIDE)
    before = (chip.temperature, chip.humidity)
    model.inject_fault("air-inside", "stuck")
    for _ in range(11):   # the air changes a lot from noon to night
        clock.advance(3600)
        model.step(clock.now(), fan_speed_pct=0, vent_open_pct=0)
        assert (chip.temperature, chip.humidity) == before


def test_noisy_dht_scatters_far_more(model: DryerModel, clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1, dht_checksum_error_rate=0.0).dht(INSIDE)
    model.inject_fault("air-inside", "noisy")
    temps = [t for t, _ in dht_reads(chip, clock, 200)]
    assert max(abs(t - model.air_temp_c) for t in temps) > 2.0


def test_dht_fault_ends_at_its_end_time(model: DryerModel, clock: ManualClock) -> None:
    chip = SimulatedChips(model, clock, seed=1, dht_checksum_error_rate=0.0).dht(INSIDE)
    model.inject_fault("air-inside", "dead", until=NOON + timedelta(minutes=5))
    with pytest.raises(RuntimeError):
        _ = chip.temperature
    clock.advance(300)
    assert chip.temperature is not None


def test_other_sensors_are_unaffected_by_a_fault(model: DryerModel, clock: ManualClock) -> None:
    chips = SimulatedChips(model, clock, seed=1, dht_checksum_error_rate=0.0)
    model.inject_fault("air-inside", "dead")
    assert chips.dht(AMBIENT).temperature is not None


# --- moisture probe on an ADS1115 ------------------------------------------------------------

def test_probe_voltage_round_trips_through_the_calibration(clock: ManualClock) -> None:
    model = DryerModel(ConstantWeather(30.0, 60.0), "greenhouse", 400, 56.0, start=NOON)
    adc = SimulatedChips(model, clock, seed=2).adc(PROBE)
    for moisture in (58.0, 40.0, 20.0, 12.0, 7.5, 6.0):
        model.load_new_batch(moisture, 400.0, model.time)
        volts = statistics.median(adc.voltage for _ in range(15))
        # noise 5 mV → well under 0.3 % moisture on the steepest segment
        assert piecewise(volts, PROBE.calibration) == pytest.approx(moisture, abs=0.3)


def test_probe_voltage_follows_drying(model: DryerModel, clock: ManualClock) -> None:
    adc = SimulatedChips(model, clock, seed=2).adc(PROBE)
    wet_v = adc.voltage
    model.step(NOON + timedelta(days=2), fan_speed_pct=100, vent_open_pct=100)
    assert adc.voltage < wet_v - 0.3


def test_inverting_the_calibration_extends_its_end_segments() -> None:
    curve = [(1.0, 60.0), (2.0, 30.0), (3.0, 5.0)]
    assert probe_volts_for_moisture(60.0, curve) == pytest.approx(1.0)
    assert probe_volts_for_moisture(75.0, curve) == pytest.approx(0.5)
    assert probe_volts_for_moisture(0.0, curve) == pytest.approx(3.2)


def test_dead_probe_raises_an_i2c_error(model: DryerModel, clock: ManualClock) -> None:
    adc = SimulatedChips(model, clock, seed=2).adc(PROBE)
    model.inject_fault("probe", "dead")
    with pytest.raises(OSError, match="Remote I/O"):
        _ = adc.voltage


def test_garbled_probe_reads_rail_voltages(model: DryerModel, clock: ManualClock) -> None:
    adc = SimulatedChips(model, clock, seed=2).adc(PROBE)
    model.inject_fault("probe", "checksum")
    assert {adc.voltage for _ in range(30)} == {0.0, 4.096}


def test_stuck_probe_repeats_its_voltage(model: DryerModel, clock: ManualClock) -> None:
    adc = SimulatedChips(model, clock, seed=2).adc(PROBE)
    before = adc.voltage
    model.inject_fault("probe", "stuck")
    model.step(NOON + timedelta(days=1), fan_speed_pct=100, vent_open_pct=100)
    assert adc.voltage == before


# --- load-cell tray on an HX711 --------------------------------------------------------------

def test_hx711_counts_convert_back_to_the_tray_mass(model: DryerModel,
                                                    clock: ManualClock) -> None:
    hx711 = SimulatedChips(model, clock, seed=4).hx711(TRAY)
    counts = statistics.median(hx711.read_counts() for _ in range(25))
    mass_kg = (counts - TRAY.tare_offset_counts) / TRAY.counts_per_kg
    assert mass_kg == pytest.approx(model.tray_mass_kg, abs=0.01)


def test_hx711_counts_fall_as_the_beans_dry(clock: ManualClock) -> None:
    model = DryerModel(Weather(1, "dry"), "greenhouse", 400, 56.0, start=NOON)
    positive = TRAY.model_copy(update={"counts_per_kg": 21_000.0})
    hx711 = SimulatedChips(model, clock, seed=4).hx711(positive)
    wet = statistics.median(hx711.read_counts() for _ in range(25))
    model.step(NOON + timedelta(days=3), fan_speed_pct=100, vent_open_pct=100)
    dry = statistics.median(hx711.read_counts() for _ in range(25))
    assert dry < wet - 21_000   # more than 1 kg of water gone from a 5 kg sample


def test_hx711_has_occasional_vibration_spikes(model: DryerModel, clock: ManualClock) -> None:
    hx711 = SimulatedChips(model, clock, seed=4).hx711(TRAY)
    masses = [(hx711.read_counts() - TRAY.tare_offset_counts) / TRAY.counts_per_kg
              for _ in range(2000)]
    spikes = [m for m in masses if abs(m - model.tray_mass_kg) > 0.08]
    assert 0.005 * 2000 <= len(spikes) <= 0.05 * 2000


def test_dead_hx711_times_out(model: DryerModel, clock: ManualClock) -> None:
    hx711 = SimulatedChips(model, clock, seed=4).hx711(TRAY)
    model.inject_fault("tray", "dead")
    with pytest.raises(TimeoutError):
        hx711.read_counts()


def test_garbled_hx711_reads_rail_values(model: DryerModel, clock: ManualClock) -> None:
    hx711 = SimulatedChips(model, clock, seed=4).hx711(TRAY)
    model.inject_fault("tray", "checksum")
    assert {hx711.read_counts() for _ in range(50)} <= {-1, 2**23 - 1, -(2**23)}


def test_hx711_counts_stay_in_24_bits(clock: ManualClock) -> None:
    model = DryerModel(ConstantWeather(30.0, 60.0), "greenhouse", 400, 56.0, start=NOON)
    huge = TRAY.model_copy(update={"counts_per_kg": 5_000_000.0})
    assert SimulatedChips(model, clock, seed=4).hx711(huge).read_counts() == 2**23 - 1


# --- rain input on a gpiozero MockFactory pin ------------------------------------------------

def test_rain_pin_reads_wet_while_it_rains(clock: ManualClock, factory: MockFactory) -> None:
    model = DryerModel(ConstantWeather(24.0, 97.0, raining=True), start=NOON)
    sensor = DigitalInputDevice(RAIN.pin, pull_up=True, pin_factory=factory)  # active low
    SimulatedChips(model, clock).sync_rain_pin(factory, RAIN)
    assert sensor.is_active
    sensor.close()


def test_rain_pin_reads_dry_without_rain(clock: ManualClock, factory: MockFactory) -> None:
    model = DryerModel(ConstantWeather(30.0, 60.0), start=NOON)
    sensor = DigitalInputDevice(RAIN.pin, pull_up=True, pin_factory=factory)
    chips = SimulatedChips(model, clock)
    factory.pin(RAIN.pin).drive_low()
    chips.sync_rain_pin(factory, RAIN)
    assert not sensor.is_active
    sensor.close()


def test_rain_pin_for_an_active_high_board(clock: ManualClock, factory: MockFactory) -> None:
    model = DryerModel(ConstantWeather(24.0, 97.0, raining=True), start=NOON)
    board = RAIN.model_copy(update={"wet_when_low": False})
    sensor = DigitalInputDevice(board.pin, pull_up=False, pin_factory=factory)
    SimulatedChips(model, clock).sync_rain_pin(factory, board)
    assert sensor.is_active
    sensor.close()


def test_dead_rain_board_leaves_the_pull_up_high(clock: ManualClock,
                                                 factory: MockFactory) -> None:
    model = DryerModel(ConstantWeather(24.0, 97.0, raining=True), start=NOON)
    sensor = DigitalInputDevice(RAIN.pin, pull_up=True, pin_factory=factory)
    model.inject_fault("rain", "dead")
    assert SimulatedChips(model, clock).sync_rain_pin(factory, RAIN) is True
    assert not sensor.is_active
    sensor.close()
