"""Outside weather at a cacao cooperative in northern Peru (Tarapoto, San Martín), simulated.

``Weather(seed).at(moment)`` is a pure function of ``(seed, season, utc_offset_h, moment)``:
asking for the same moment twice, or in any order, gives the same answer. Each local day draws
its own minimum/maximum temperature, humidity, cloudiness and rain showers from a random
generator seeded by ``(seed, day)``; the day's values are cached, which changes nothing but speed.

The shape (see docs/simulator.md):

* temperature: minimum at sunrise (06:00 local), maximum at 14:00, cosine rise and fall between
  them; minima 21–23.5 °C, maxima 30.5–33 °C [SENAMHI];
* humidity: dew point near the night minimum, rising ~1–2 K by the afternoon, so relative
  humidity runs ~90–95 % at night and ~55–65 % in the afternoon (**estimate**, [SENAMHI]);
  clamped to 40..99 %;
* sunshine: a clear-sky sine bell 06:00–18:00 local (peak 1000 W/m², **estimate** for 6.5° S),
  dimmed by cloud;
* rain: showers drawn per day, mostly in the afternoon, more often in the rainy season
  (October–May) than in the dry season (June–September) [SENAMHI]; rain cools the air, saturates
  it and brings cloud.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from cacao_dryer.science import relative_humidity_pct, saturation_vapour_pressure_kpa

Season = Literal["rainy", "dry", "auto"]

# Rainy season October–May, dry June–September [SENAMHI].
RAINY_MONTHS = frozenset({10, 11, 12, 1, 2, 3, 4, 5})

SUNRISE_H = 6.0       # local solar time, ~constant the whole year at 6.5° S (estimate)
SUNSET_H = 18.0
HOTTEST_H = 14.0      # daily maximum of air temperature, mid-afternoon (estimate)
CLEAR_SKY_PEAK_W_M2 = 1000.0   # global horizontal irradiance at noon, clear sky (estimate)
CLOUD_DIMMING = 0.75  # fraction of sunshine a full overcast removes (estimate)
RH_MIN_PCT = 40.0
RH_MAX_PCT = 99.0
RAIN_RH_PCT = 97.0    # air in a shower is close to saturation (estimate)
RAIN_COOLING_K = 3.0  # a shower cools the air by about this much (estimate)
RAIN_RAMP_H = 10 / 60       # the shower's effect builds up over 10 min (estimate)
RAIN_AFTERMATH_H = 0.75     # and decays with this time constant after it stops (estimate)
SHOWER_CLOUD_H = 0.5        # shower clouds build up over 30 min before, clear 30 min after
COLDEST_NIGHT_C = 21.0      # nights rarely below 21 °C [SENAMHI]


@dataclass(frozen=True)
class AmbientConditions:
    """Outside air in the shade, sunshine on a horizontal surface, and whether it rains."""

    temp_c: float
    rh_pct: float
    solar_w_m2: float
    raining: bool


class AmbientSource(Protocol):
    """What the dryer model needs from the sky: ``Weather`` or ``ConstantWeather``."""

    def at(self, moment: datetime) -> AmbientConditions: ...


@dataclass(frozen=True)
class _SeasonClimate:
    min_temp_c: tuple[float, float]      # range of the daily minimum [SENAMHI]
    max_temp_c: tuple[float, float]      # range of the daily maximum on a clear day [SENAMHI]
    cloud_cooling_k: float               # a cloudy day's maximum is lower by up to this
    dew_depression_night_k: float        # daily minimum − dew point at dawn (estimate)
    dew_rise_k: float                    # dew point rise from dawn to afternoon (estimate)
    cloud_cover: tuple[float, float]     # range of a day's mean cloud cover, 0..1 (estimate)
    rain_day_probability: float          # chance that a day has showers (estimate)


# Rainy season: 150–300 mm/month [SENAMHI] → showers on about half of the days (estimate).
# Dry season: fewer, shorter showers, clearer and slightly drier air (estimate).
_CLIMATE = {
    "rainy": _SeasonClimate((22.0, 23.5), (31.5, 33.0), 1.0, 0.8, 2.0, (0.30, 0.70), 0.50),
    "dry": _SeasonClimate((21.0, 22.5), (32.0, 33.0), 0.8, 1.5, 1.0, (0.05, 0.40), 0.20),
}


@dataclass(frozen=True)
class _Day:
    """One local day's draw."""

    min_temp_c: float
    max_temp_c: float
    dew_night_c: float
    dew_rise_k: float
    cloud_knots: tuple[float, ...]               # cloud cover at each full hour 0..24
    showers: tuple[tuple[float, float], ...]     # (start_h, end_h) in hours after local midnight


def season_of(local_day: datetime) -> Literal["rainy", "dry"]:
    """Rainy October–May, dry June–September [SENAMHI]."""
    return "rainy" if local_day.month in RAINY_MONTHS else "dry"


@functools.lru_cache(maxsize=64)
def _day(seed: int, season: str, ordinal: int) -> _Day:
    """Draw a local day from a generator seeded by (seed, ordinal): order-independent."""
    if season == "auto":
        season = season_of(datetime.fromordinal(ordinal))
    climate = _CLIMATE[season]
    rng = random.Random(f"cacao-weather:{seed}:{season}:{ordinal}")
    cloud_mean = rng.uniform(*climate.cloud_cover)
    cloud_span = climate.cloud_cover[1] - climate.cloud_cover[0]
    min_temp_c = rng.uniform(*climate.min_temp_c)
    max_temp_c = rng.uniform(*climate.max_temp_c) - climate.cloud_cooling_k * (
        (cloud_mean - climate.cloud_cover[0]) / cloud_span)
    knots = tuple(min(1.0, max(0.0, cloud_mean + rng.uniform(-0.2, 0.2))) for _ in range(25))
    showers: list[tuple[float, float]] = []
    if rng.random() < climate.rain_day_probability:
        for _ in range(1 if rng.random() < 0.7 else 2):
            # Afternoon convective showers dominate; some fall at night (estimate).
            start_h = rng.uniform(13.0, 18.0) if rng.random() < 0.7 else rng.uniform(0.0, 24.0)
            showers.append((start_h, start_h + rng.uniform(0.3, 2.0)))
    return _Day(
        min_temp_c=min_temp_c,
        max_temp_c=max_temp_c,
        dew_night_c=min_temp_c - climate.dew_depression_night_k,
        dew_rise_k=climate.dew_rise_k,
        cloud_knots=knots,
        showers=tuple(sorted(showers)),
    )


def clear_sky_w_m2(local_hour: float) -> float:
    """Sunshine on a horizontal surface under a clear sky: a sine bell from sunrise to sunset."""
    if not SUNRISE_H < local_hour < SUNSET_H:
        return 0.0
    return CLEAR_SKY_PEAK_W_M2 * math.sin(math.pi * (local_hour - SUNRISE_H)
                                          / (SUNSET_H - SUNRISE_H))


class Weather:
    """Seeded, deterministic weather of northern Peru.

    ``season`` is ``"rainy"``, ``"dry"``, or ``"auto"`` (by the local calendar month, [SENAMHI]).

    >>> from datetime import UTC, datetime
    >>> weather = Weather(seed=1, season="rainy")
    >>> noon = weather.at(datetime(2026, 1, 5, 17, 0, tzinfo=UTC))   # 12:00 in Peru
    >>> noon.solar_w_m2 > 0 and 24 < noon.temp_c < 34
    True
    """

    def __init__(self, seed: int, season: Season = "auto", utc_offset_h: float = -5.0) -> None:
        if season not in ("rainy", "dry", "auto"):
            raise ValueError(f"Weather season must be 'rainy', 'dry' or 'auto', got {season!r}")
        self.seed = seed
        self.season = season
        self.utc_offset_h = utc_offset_h

    def _day(self, ordinal: int) -> _Day:
        return _day(self.seed, self.season, ordinal)

    def at(self, moment: datetime) -> AmbientConditions:
        if moment.tzinfo is None:
            raise ValueError("Weather.at needs a timezone-aware datetime")
        local = moment.replace(tzinfo=None) - moment.utcoffset() + timedelta(
            hours=self.utc_offset_h)
        ordinal = local.toordinal()
        hour = (local.hour + local.minute / 60 + local.second / 3600
                + local.microsecond / 3.6e9)
        today = self._day(ordinal)

        temp_c, dew_c = self._clear_air(ordinal, hour)
        rh_pct = relative_humidity_pct(temp_c, saturation_vapour_pressure_kpa(dew_c))

        rain_weight, cloud_weight, raining = self._rain(ordinal, hour)
        temp_c = max(temp_c - RAIN_COOLING_K * rain_weight, min(temp_c, COLDEST_NIGHT_C))
        rh_pct += (RAIN_RH_PCT - rh_pct) * rain_weight
        rh_pct = min(RH_MAX_PCT, max(RH_MIN_PCT, rh_pct))

        knot = int(hour)
        frac = hour - knot
        cloud = today.cloud_knots[knot] * (1 - frac) + today.cloud_knots[knot + 1] * frac
        cloud = max(cloud, 0.95 * cloud_weight)
        solar_w_m2 = clear_sky_w_m2(hour) * (1 - CLOUD_DIMMING * cloud)
        return AmbientConditions(temp_c=temp_c, rh_pct=rh_pct, solar_w_m2=solar_w_m2,
                                 raining=raining)

    def _clear_air(self, ordinal: int, hour: float) -> tuple[float, float]:
        """Air temperature and dew point without rain: cosine rise from the day's minimum at
        sunrise to its maximum at 14:00, cosine fall to the next day's minimum."""
        if hour < SUNRISE_H:          # falling since yesterday afternoon
            warm, cool = self._day(ordinal - 1), self._day(ordinal)
            phase = 0.5 * (1 + math.cos(math.pi * (hour + 24 - HOTTEST_H)
                                        / (24 - HOTTEST_H + SUNRISE_H)))
        elif hour < HOTTEST_H:        # rising this morning
            warm = cool = self._day(ordinal)
            phase = 0.5 * (1 - math.cos(math.pi * (hour - SUNRISE_H) / (HOTTEST_H - SUNRISE_H)))
        else:                         # falling towards tomorrow's dawn
            warm, cool = self._day(ordinal), self._day(ordinal + 1)
            phase = 0.5 * (1 + math.cos(math.pi * (hour - HOTTEST_H)
                                        / (24 - HOTTEST_H + SUNRISE_H)))
        temp_c = cool.min_temp_c + (warm.max_temp_c - cool.min_temp_c) * phase
        dew_c = cool.dew_night_c + (warm.dew_night_c + warm.dew_rise_k - cool.dew_night_c) * phase
        return temp_c, dew_c

    def _rain(self, ordinal: int, hour: float) -> tuple[float, float, bool]:
        """(weight 0..1 of rain's effect on the air, weight 0..1 of shower clouds, raining now)
        from yesterday's, today's and tomorrow's showers (a shower may run past midnight, its
        aftermath longer, its clouds come early)."""
        weight = 0.0
        clouds = 0.0
        raining = False
        for offset_h, day in ((-24.0, self._day(ordinal - 1)), (0.0, self._day(ordinal)),
                              (24.0, self._day(ordinal + 1))):
            for start_h, end_h in day.showers:
                start_h += offset_h
                end_h += offset_h
                clouds = max(clouds, min(1.0, max(0.0, 1 - (start_h - hour) / SHOWER_CLOUD_H),
                                         max(0.0, 1 - (hour - end_h) / SHOWER_CLOUD_H)))
                if hour < start_h:
                    continue
                if hour < end_h:
                    raining = True
                    weight = max(weight, min(1.0, (hour - start_h) / RAIN_RAMP_H))
                else:
                    peak = min(1.0, (end_h - start_h) / RAIN_RAMP_H)
                    weight = max(weight, peak * math.exp(-(hour - end_h) / RAIN_AFTERMATH_H))
        return weight, clouds, raining


class ConstantWeather:
    """Fixed outside conditions — a climate chamber, for experiments with one variable at a
    time (e.g. how beans behave in 90 % RH air)."""

    def __init__(self, temp_c: float, rh_pct: float, solar_w_m2: float = 0.0,
                 raining: bool = False) -> None:
        self._conditions = AmbientConditions(temp_c, rh_pct, solar_w_m2, raining)

    def at(self, moment: datetime) -> AmbientConditions:
        return self._conditions
