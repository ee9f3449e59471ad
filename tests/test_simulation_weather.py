"""The simulated weather of Tarapoto: deterministic, within the climate's bounds [SENAMHI]."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from firmware.simulation.weather import AmbientConditions, Weather, clear_sky_w_m2

PERU = timedelta(hours=-5)
JANUARY = datetime(2026, 1, 5, 5, 0, tzinfo=UTC)   # 00:00 local, rainy season
JULY = datetime(2026, 7, 6, 5, 0, tzinfo=UTC)      # 00:00 local, dry season


def samples(weather: Weather, start: datetime, days: float,
            every: timedelta = timedelta(minutes=10)) -> Iterator[tuple[float, AmbientConditions]]:
    """(local hour, conditions) over ``days`` from ``start``."""
    moment = start
    while moment < start + timedelta(days=days):
        local = moment + PERU
        yield local.hour + local.minute / 60, weather.at(moment)
        moment += every


def test_same_seed_and_moment_give_the_same_conditions_in_any_order() -> None:
    moments = [JANUARY + timedelta(minutes=37 * i) for i in range(500)]
    forward = [Weather(seed=7, season="rainy").at(m) for m in moments]
    backward = [Weather(seed=7, season="rainy").at(m) for m in reversed(moments)]
    assert forward == backward[::-1]


def test_different_seeds_give_different_weather() -> None:
    moments = [JANUARY + timedelta(hours=h) for h in range(0, 24 * 7, 3)]
    assert ([Weather(1, "rainy").at(m) for m in moments]
            != [Weather(2, "rainy").at(m) for m in moments])


@pytest.mark.parametrize(("season", "start"), [("rainy", JANUARY), ("dry", JULY)])
def test_a_week_of_temperatures_stays_within_the_tarapoto_range(season: str,
                                                                start: datetime) -> None:
    # 24–33 °C, nights rarely below 21 °C [SENAMHI].
    for seed in (1, 2, 3):
        weather = Weather(seed, season)  # type: ignore[arg-type]
        for day in range(7):
            temps = [c.temp_c for _, c in samples(weather, start + timedelta(days=day), 1)]
            assert min(temps) >= 21.0
            assert max(temps) <= 33.0
            assert max(temps) - min(temps) >= 6.0, "a clear diurnal cycle every day"


def test_coolest_near_dawn_and_warmest_in_the_afternoon() -> None:
    by_hour: dict[int, list[float]] = {h: [] for h in range(24)}
    for hour, conditions in samples(Weather(4, "dry"), JULY, 14):
        by_hour[int(hour)].append(conditions.temp_c)
    mean = {h: sum(v) / len(v) for h, v in by_hour.items()}
    assert 4 <= min(mean, key=mean.__getitem__) <= 6
    assert 13 <= max(mean, key=mean.__getitem__) <= 15


def test_nights_are_more_humid_than_afternoons() -> None:
    night: list[float] = []
    afternoon: list[float] = []
    for hour, conditions in samples(Weather(5, "rainy"), JANUARY, 7):
        if hour < 5:
            night.append(conditions.rh_pct)
        elif 12 <= hour < 16:
            afternoon.append(conditions.rh_pct)
    assert sum(night) / len(night) > sum(afternoon) / len(afternoon) + 15
    assert 85 <= sum(night) / len(night) <= 99   # estimate 75–90 %, higher at night [SENAMHI]


def test_humidity_stays_within_40_and_99_pct() -> None:
    for season, start in (("rainy", JANUARY), ("dry", JULY)):
        rh = [c.rh_pct for _, c in samples(Weather(6, season), start, 14)]  # type: ignore[arg-type]
        assert min(rh) >= 40.0
        assert max(rh) <= 99.0


def test_no_sunshine_at_night_and_sunshine_at_noon() -> None:
    for hour, conditions in samples(Weather(8, "dry"), JULY, 7):
        if hour <= 6 or hour >= 18:
            assert conditions.solar_w_m2 == 0.0
        if 11 <= hour <= 13 and not conditions.raining:
            assert conditions.solar_w_m2 > 300


def test_clear_sky_peaks_at_noon() -> None:
    assert clear_sky_w_m2(12.0) == pytest.approx(1000.0)
    assert clear_sky_w_m2(9.0) < clear_sky_w_m2(12.0)
    assert clear_sky_w_m2(5.0) == clear_sky_w_m2(19.0) == 0.0


def rainy_minutes(season: str, start: datetime, days: int) -> list[float]:
    weather = Weather(11, season)  # type: ignore[arg-type]
    return [hour for hour, c in samples(weather, start, days, timedelta(minutes=3)) if c.raining]


def test_it_rains_in_the_rainy_season_and_less_in_the_dry_season() -> None:
    rainy_season = rainy_minutes("rainy", JANUARY, 60)
    dry_season = rainy_minutes("dry", JULY, 60)
    assert len(dry_season) > 0
    assert len(rainy_season) > 1.5 * len(dry_season)


def test_showers_fall_mostly_in_the_afternoon() -> None:
    minutes = rainy_minutes("rainy", JANUARY, 60)
    afternoon = [h for h in minutes if 13 <= h < 21]
    assert len(afternoon) > 0.5 * len(minutes)


def test_rain_saturates_the_air_and_hides_the_sun() -> None:
    weather = Weather(11, "rainy")
    showers = [(hour, c) for hour, c in samples(weather, JANUARY, 30, timedelta(minutes=5))
               if c.raining and 8 <= hour <= 16]
    assert showers, "some daytime rain within 30 rainy-season days"
    for hour, conditions in showers:
        assert conditions.solar_w_m2 <= 0.5 * clear_sky_w_m2(hour)
    wettest = max(c.rh_pct for _, c in showers)
    assert wettest >= 95


def test_auto_season_follows_the_calendar() -> None:
    january_noon = JANUARY + timedelta(hours=12)
    july_noon = JULY + timedelta(hours=12)
    assert Weather(3, "auto").at(january_noon) == Weather(3, "rainy").at(january_noon)
    assert Weather(3, "auto").at(july_noon) == Weather(3, "dry").at(july_noon)


def test_local_time_follows_the_utc_offset() -> None:
    # 12:00 UTC is 07:00 in Peru (sun up) but 22:00 at UTC+10 (night).
    moment = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert Weather(1, "dry", utc_offset_h=-5).at(moment).solar_w_m2 > 0
    assert Weather(1, "dry", utc_offset_h=10).at(moment).solar_w_m2 == 0


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Weather(1).at(datetime(2026, 1, 5, 12, 0))


def test_unknown_season_is_refused() -> None:
    with pytest.raises(ValueError, match="season"):
        Weather(1, season="monsoon")  # type: ignore[arg-type]
