"""The simulated dryer: inside air against [Kallari, Hohenheim], drying against [CET2017],
equilibrium against GAB [Sandoval2020]."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cacao_dryer.science import gab_equilibrium_moisture_pct_wb, moisture_from_tray_mass_pct_wb
from firmware.config import SimulationConfig
from firmware.simulation.dryer import DryerModel
from firmware.simulation.weather import ConstantWeather, Weather

JANUARY_DAWN = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)   # 06:00 in Peru, rainy season
JULY_DAWN = datetime(2026, 7, 6, 11, 0, tzinfo=UTC)      # 06:00 in Peru, dry season
SUNNY_MIDDAY = ConstantWeather(temp_c=31.0, rh_pct=62.0, solar_w_m2=950.0)
MINUTE = timedelta(minutes=1)


def daylight(moment: datetime) -> bool:
    return 6 <= (moment - timedelta(hours=5)).hour < 18


def day_ventilation(model: DryerModel, until: datetime) -> None:
    """The reference policy: fans on and vents open 06–18 local, everything closed at night."""
    moment = model.time
    while moment < until:
        moment += MINUTE
        on = 100.0 if daylight(moment) else 0.0
        model.step(moment, fan_speed_pct=on, vent_open_pct=on)


def days_to_reach(model: DryerModel, moisture_pct_wb: float, max_days: float = 10) -> float:
    start = model.time
    while model.bean_moisture_pct_wb > moisture_pct_wb:
        assert model.time - start < timedelta(days=max_days), "beans never got dry"
        day_ventilation(model, model.time + timedelta(minutes=10))
    return (model.time - start) / timedelta(days=1)


def settled(weather: ConstantWeather, moisture_pct_wb: float, fan: float, vent: float,
            hours: float = 3) -> DryerModel:
    model = DryerModel(weather, "greenhouse", 400, moisture_pct_wb, start=JANUARY_DAWN)
    model.step(JANUARY_DAWN + timedelta(hours=hours), fan_speed_pct=fan, vent_open_pct=vent)
    return model


# --- inside air ------------------------------------------------------------------------------

@pytest.mark.parametrize("moisture_pct_wb", [56.0, 7.0])
def test_closed_greenhouse_at_a_sunny_midday_reaches_50_to_60_c(moisture_pct_wb: float) -> None:
    # Greenhouse dryers: 40–60 °C inside at midday [Kallari, Hohenheim].
    model = settled(SUNNY_MIDDAY, moisture_pct_wb, fan=0, vent=0)
    assert 50.0 <= model.air_temp_c <= 60.0


@pytest.mark.parametrize("moisture_pct_wb", [56.0, 7.0])
def test_fans_and_open_vents_keep_the_greenhouse_about_10_k_above_ambient(
        moisture_pct_wb: float) -> None:
    # ~10 °C above ambient [Kallari, Hohenheim].
    model = settled(SUNNY_MIDDAY, moisture_pct_wb, fan=100, vent=100)
    assert 6.0 <= model.air_temp_c - SUNNY_MIDDAY.at(model.time).temp_c <= 14.0


def test_ventilation_lowers_inside_temperature_and_humidity() -> None:
    closed = settled(SUNNY_MIDDAY, 56.0, fan=0, vent=0)
    vents = settled(SUNNY_MIDDAY, 56.0, fan=0, vent=100)
    vents_and_fans = settled(SUNNY_MIDDAY, 56.0, fan=100, vent=100)
    assert closed.air_temp_c > vents.air_temp_c > vents_and_fans.air_temp_c
    assert closed.air_rh_pct > vents.air_rh_pct + 20
    assert closed.air_rh_pct > vents_and_fans.air_rh_pct + 20


def test_closed_greenhouse_with_wet_beans_stays_humid_at_midday() -> None:
    # Inside RH often stays above 50 % without fans [Kallari, Hohenheim].
    assert settled(SUNNY_MIDDAY, 56.0, fan=0, vent=0).air_rh_pct > 50.0


def test_closed_dryer_with_wet_beans_nears_saturation_at_night() -> None:
    night = ConstantWeather(temp_c=24.0, rh_pct=85.0)
    wet = settled(night, 56.0, fan=0, vent=0, hours=4)
    dry = settled(night, 7.0, fan=0, vent=0, hours=4)
    assert wet.air_rh_pct >= 95.0
    assert dry.air_rh_pct < 90.0


def test_inside_air_follows_ambient_at_night() -> None:
    model = DryerModel(Weather(2, "rainy"), "greenhouse", 400, 56.0, start=JANUARY_DAWN)
    day_ventilation(model, JANUARY_DAWN + timedelta(hours=22))   # 04:00 local
    assert abs(model.air_temp_c - model.ambient.temp_c) < 2.0
    assert model.ambient.solar_w_m2 == 0.0


def test_open_drying_air_is_the_outside_air_warmed_a_little_by_the_sun() -> None:
    model = DryerModel(SUNNY_MIDDAY, "open", 400, 56.0, start=JANUARY_DAWN)
    model.step(JANUARY_DAWN + timedelta(hours=1), fan_speed_pct=0, vent_open_pct=0)
    assert 0.0 < model.air_temp_c - 31.0 < 6.0


def test_fans_and_vents_change_nothing_in_open_sun_drying() -> None:
    still = DryerModel(SUNNY_MIDDAY, "open", 400, 56.0, start=JANUARY_DAWN)
    fanned = DryerModel(SUNNY_MIDDAY, "open", 400, 56.0, start=JANUARY_DAWN)
    still.step(JANUARY_DAWN + timedelta(hours=3), fan_speed_pct=0, vent_open_pct=0)
    fanned.step(JANUARY_DAWN + timedelta(hours=3), fan_speed_pct=100, vent_open_pct=100)
    assert still.bean_moisture_pct_wb < 56.0
    assert (still.air_temp_c, still.air_rh_pct, still.bean_moisture_pct_wb) == (
        fanned.air_temp_c, fanned.air_rh_pct, fanned.bean_moisture_pct_wb)


# --- beans -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("weather", "start"), [(Weather(1, "rainy"), JANUARY_DAWN),
                                                (Weather(1, "dry"), JULY_DAWN)])
def test_greenhouse_dries_56_to_8_pct_in_3_to_7_days(weather: Weather, start: datetime) -> None:
    # Greenhouse 58 → 7 % in 4 days [CET2017].
    model = DryerModel(weather, "greenhouse", 400, 56.0, start=start, seed=1)
    assert 3.0 <= days_to_reach(model, 8.0) <= 7.0


@pytest.mark.parametrize(("weather", "start"), [(Weather(1, "rainy"), JANUARY_DAWN),
                                                (Weather(1, "dry"), JULY_DAWN)])
def test_open_sun_drying_is_slower_than_the_greenhouse(weather: Weather,
                                                       start: datetime) -> None:
    # Open sun 6 days, greenhouse 4 days [CET2017].
    greenhouse = DryerModel(weather, "greenhouse", 400, 56.0, start=start, seed=1)
    open_sun = DryerModel(weather, "open", 400, 56.0, start=start, seed=1)
    greenhouse_days = days_to_reach(greenhouse, 7.5)
    open_days = days_to_reach(open_sun, 7.5)
    assert open_days > greenhouse_days + 0.5
    assert 4.0 <= open_days <= 9.0


def test_drying_slows_down_at_night() -> None:
    model = DryerModel(Weather(1, "rainy"), "greenhouse", 400, 56.0, start=JANUARY_DAWN)
    day_ventilation(model, JANUARY_DAWN + timedelta(hours=12))
    dusk = model.bean_moisture_pct_wb
    day_ventilation(model, JANUARY_DAWN + timedelta(hours=24))
    lost_by_day = 56.0 - dusk
    lost_by_night = dusk - model.bean_moisture_pct_wb
    assert 0 <= lost_by_night < 0.3 * lost_by_day


def test_open_sun_beans_are_covered_at_night() -> None:
    model = DryerModel(Weather(1, "rainy"), "open", 400, 56.0, start=JANUARY_DAWN)
    day_ventilation(model, JANUARY_DAWN + timedelta(hours=13))   # 19:00 local
    dusk = model.bean_moisture_pct_wb
    day_ventilation(model, JANUARY_DAWN + timedelta(hours=23))   # 05:00 local
    assert model.beans_covered
    assert model.bean_moisture_pct_wb == dusk


def test_beans_never_dry_below_the_equilibrium_of_the_air() -> None:
    model = DryerModel(ConstantWeather(30.0, 60.0), "greenhouse", 400, 20.0,
                       start=JANUARY_DAWN)
    for hour in range(1, 24 * 20):
        model.step(JANUARY_DAWN + timedelta(hours=hour), fan_speed_pct=100, vent_open_pct=100)
        assert model.bean_moisture_pct_wb >= model.equilibrium_moisture_pct_wb - 1e-9
    assert model.bean_moisture_pct_wb == pytest.approx(
        gab_equilibrium_moisture_pct_wb(model.air_rh_pct), abs=0.2)


def test_dry_beans_take_up_water_in_humid_air() -> None:
    # Above ~80 % RH air re-wets dry beans [Sandoval2020 via GAB].
    model = DryerModel(ConstantWeather(25.0, 90.0), "greenhouse", 400, 7.0,
                       start=JANUARY_DAWN)
    model.step(JANUARY_DAWN + timedelta(days=2), fan_speed_pct=100, vent_open_pct=100)
    assert 7.5 < model.bean_moisture_pct_wb < gab_equilibrium_moisture_pct_wb(90.0)


def test_one_big_step_matches_many_small_ones() -> None:
    weather = Weather(3, "rainy")
    jumped = DryerModel(weather, "greenhouse", 400, 56.0, start=JANUARY_DAWN)
    walked = DryerModel(weather, "greenhouse", 400, 56.0, start=JANUARY_DAWN)
    end = JANUARY_DAWN + timedelta(hours=9)
    jumped.step(end, fan_speed_pct=50, vent_open_pct=50)
    moment = JANUARY_DAWN
    while moment < end:
        moment += timedelta(seconds=10)
        walked.step(moment, fan_speed_pct=50, vent_open_pct=50)
    assert jumped.bean_moisture_pct_wb == pytest.approx(walked.bean_moisture_pct_wb, abs=0.05)
    assert jumped.air_temp_c == pytest.approx(walked.air_temp_c, abs=0.2)
    assert jumped.air_rh_pct == pytest.approx(walked.air_rh_pct, abs=1.0)


def test_tray_mass_tells_the_moisture_by_mass_balance() -> None:
    # Mt = 1 − m0·(1 − M0)/mt [IIETA2025]
    model = DryerModel(Weather(1, "dry"), "greenhouse", 400, 56.0, start=JULY_DAWN,
                       tray_sample_kg=5.0)
    assert model.tray_mass_kg == pytest.approx(5.0)
    day_ventilation(model, JULY_DAWN + timedelta(days=2))
    assert moisture_from_tray_mass_pct_wb(5.0, 56.0, model.tray_mass_kg) == pytest.approx(
        model.bean_moisture_pct_wb)
    assert model.bean_mass_kg == pytest.approx(400 * model.tray_mass_kg / 5.0)


def test_a_new_batch_replaces_the_beans() -> None:
    model = DryerModel(Weather(1, "dry"), "greenhouse", 400, 56.0, start=JULY_DAWN)
    day_ventilation(model, JULY_DAWN + timedelta(days=1))
    later = JULY_DAWN + timedelta(days=1, hours=1)
    model.load_new_batch(58.0, 700.0, later)
    assert model.time == later
    assert model.bean_moisture_pct_wb == pytest.approx(58.0)
    assert model.bean_mass_kg == pytest.approx(700.0)
    assert model.tray_mass_kg == pytest.approx(5.0)


def test_rain_reaches_the_model_from_the_weather() -> None:
    model = DryerModel(ConstantWeather(24.0, 97.0, raining=True), "greenhouse", 400, 56.0,
                       start=JANUARY_DAWN)
    assert model.raining


# --- refusals and faults ---------------------------------------------------------------------

def test_time_cannot_go_backwards() -> None:
    model = DryerModel(Weather(1), start=JANUARY_DAWN)
    with pytest.raises(ValueError, match="backwards"):
        model.step(JANUARY_DAWN - MINUTE, fan_speed_pct=0, vent_open_pct=0)


@pytest.mark.parametrize(("fan", "vent"), [(101.0, 0.0), (0.0, -1.0), (float("nan"), 0.0)])
def test_actuator_settings_outside_0_to_100_are_refused(fan: float, vent: float) -> None:
    model = DryerModel(Weather(1), start=JANUARY_DAWN)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        model.step(JANUARY_DAWN + MINUTE, fan_speed_pct=fan, vent_open_pct=vent)


def test_unknown_dryer_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        DryerModel(Weather(1), "tunnel", start=JANUARY_DAWN)  # type: ignore[arg-type]


def test_a_fault_lasts_until_its_end_time() -> None:
    model = DryerModel(Weather(1), start=JANUARY_DAWN)
    model.inject_fault("air-inside", "dead", until=JANUARY_DAWN + timedelta(hours=1))
    assert model.fault("air-inside", JANUARY_DAWN + timedelta(minutes=59)) == "dead"
    assert model.fault("air-inside", JANUARY_DAWN + timedelta(hours=1)) is None
    assert model.fault("air-ambient", JANUARY_DAWN) is None


def test_a_cleared_fault_is_gone() -> None:
    model = DryerModel(Weather(1), start=JANUARY_DAWN)
    model.inject_fault("tray", "stuck")
    assert model.fault("tray", JANUARY_DAWN + timedelta(days=30)) == "stuck"
    model.clear_fault("tray")
    assert model.fault("tray", JANUARY_DAWN) is None


def test_unknown_fault_kind_is_refused() -> None:
    model = DryerModel(Weather(1), start=JANUARY_DAWN)
    with pytest.raises(ValueError, match="fault kind"):
        model.inject_fault("tray", "melted")  # type: ignore[arg-type]


def test_a_node_simulation_section_builds_its_dryer() -> None:
    config = SimulationConfig(seed=5, dryer="open", load_kg=250.0, initial_moisture_pct_wb=58.0)
    model = DryerModel.from_config(config, start=JANUARY_DAWN)
    assert model.kind == "open"
    assert model.bean_mass_kg == pytest.approx(250.0)
    assert model.bean_moisture_pct_wb == pytest.approx(58.0)
    assert model.ambient == Weather(5, "rainy").at(JANUARY_DAWN)
