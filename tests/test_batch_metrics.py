"""Batch metrics, quality flags and the end suggestion: simulated batches (firmware/simulation),
handcrafted series that trigger each flag, and odd input."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.contract import Thresholds
from cacao_dryer.errors import PayloadError
from cacao_dryer.science import (
    dry_to_wet_basis,
    gab_equilibrium_moisture_pct_wb,
    wet_to_dry_basis,
)
from dashboard.pages.batches import flag_reason
from firmware.simulation.dryer import DryerModel
from firmware.simulation.weather import Weather
from gateway.batch_metrics import (
    REASONS,
    SOURCE,
    TIME,
    BatchData,
    Sample,
    SpotCheck,
    compute_metrics,
    suggest_end,
)
from gateway.drying_model import MoisturePoint
from gateway.timeseries import SeriesPoint

START = datetime(2026, 7, 6, 11, 0, tzinfo=UTC)   # 06:00 in Peru, dry season
HOUR = timedelta(hours=1)
STEP = timedelta(minutes=10)


def local_hour(moment: datetime) -> int:
    return (moment - timedelta(hours=5)).hour


def newton_moisture(hours: float, m0: float = 55.0, me: float = 6.0,
                    k_per_h: float = 0.037) -> float:
    """A good batch: 55 % → 7.5 % in 114 h, 7.2 % at 120 h."""
    x0, xe = wet_to_dry_basis(m0), wet_to_dry_basis(me)
    return dry_to_wet_basis(xe + (x0 - xe) * math.exp(-k_per_h * hours))


def series(hours: float, moisture: Callable[[float], float] = newton_moisture,
           air_temp: Callable[[float, bool], float] | None = None,
           air_rh: Callable[[float, bool], float] | None = None) -> list[Sample]:
    """Readings every 10 min: 40 °C / 50 % RH by day, 25 °C / 75 % at night, unless told."""
    readings, moment = [], START
    while moment <= START + hours * HOUR:
        h = (moment - START) / HOUR
        day = 6 <= local_hour(moment) < 18
        readings.append(Sample(moment, {
            "bean_moisture_pct_wb": moisture(h),
            "air_temp_c": air_temp(h, day) if air_temp else (40.0 if day else 25.0),
            "air_rh_pct": air_rh(h, day) if air_rh else (50.0 if day else 75.0)}))
        moment += STEP
    return readings


def ended(samples: list[Sample], hours: float = 120.0, **kwargs) -> BatchData:
    end = START + hours * HOUR
    return BatchData(start=START, now=end, end=end, samples=samples,
                     initial_moisture_pct_wb=55.0, **kwargs)


def codes(batch: BatchData) -> list[str]:
    return [flag.code for flag in compute_metrics(batch).flags]


# --- a good batch ----------------------------------------------------------------------------

def test_a_good_batch_has_sensible_metrics_and_no_flag():
    metrics = compute_metrics(ended(series(120), final_moisture_pct_wb=7.2))
    assert metrics.flags == []
    assert metrics.duration_h == 120.0
    assert metrics.final_moisture_pct_wb == 7.2 and metrics.moisture_source == "final"
    assert metrics.average_drying_rate_pct_per_h == pytest.approx((55 - 7.2) / 120, abs=1e-3)
    assert 0.5 < metrics.max_sustained_rate_pct_per_h < 2.5
    assert metrics.max_air_temp_c == 40.0
    assert metrics.time_above_limit_h == 0.0 and metrics.time_above_alarm_h == 0.0


def test_night_humidity_margin_is_the_lowest_night_distance_to_equilibrium():
    # At night 75 % RH: GAB equilibrium 9.2 % [Sandoval2020]; the last night's beans ≈ 7.2 %.
    metrics = compute_metrics(ended(series(120)))
    expected = newton_moisture(119.5) - gab_equilibrium_moisture_pct_wb(75.0)
    assert metrics.min_night_humidity_margin_pct == pytest.approx(expected, abs=0.1)
    at = metrics.min_night_humidity_margin_at
    assert at is not None and not 6 <= local_hour(at) < 18


# --- each flag -------------------------------------------------------------------------------

def test_fast_drying_is_flagged_with_the_rate():
    fast = series(120, moisture=lambda h: max(55.0 - 3.2 * h, 7.2) if h < 20 else 7.2)
    [flag] = compute_metrics(ended(fast)).flags
    assert flag.code == "dried_too_fast"
    assert "3.2 %/h over 6 h (limit 2.5 %/h)" in flag.reason


def test_reaching_ready_in_under_three_days_is_too_fast():
    quick = series(120, moisture=lambda h: newton_moisture(h, k_per_h=0.07))
    [flag] = compute_metrics(ended(quick)).flags
    assert flag.code == "dried_too_fast"
    assert "reached 7.5 % after 60 h" in flag.reason and "at least 72 h" in flag.reason


def test_air_above_the_hard_limit_is_overheating():
    hot = series(120, air_temp=lambda h, day: 68.0 if 30 <= h < 31.5 else (40.0 if day else 25))
    [flag] = compute_metrics(ended(hot)).flags
    assert flag.code == "overheated"
    assert flag.reason == "air at or above 65 °C for 1.5 h (max 68.0 °C)"
    metrics = compute_metrics(ended(hot))
    assert metrics.time_above_limit_h == pytest.approx(1.5)
    assert metrics.time_above_alarm_h == pytest.approx(1.5)


def test_a_hot_early_phase_is_overheating():
    warm = series(120, air_temp=lambda h, day: 52.0 if 4 <= h < 7 else (40.0 if day else 25))
    [flag] = compute_metrics(ended(warm)).flags
    assert flag.code == "overheated"
    assert "above 45 °C for 3.0 h in the early phase (max 52.0 °C)" in flag.reason


def test_moisture_rising_is_rewetting():
    def rewet(h: float) -> float:
        return newton_moisture(h) + (2.5 if 96 <= h < 108 else 0.0)   # rain all day
    [flag] = compute_metrics(ended(series(120, moisture=rewet), final_moisture_pct_wb=7.2)).flags
    assert flag.code == "rewetted"
    # 3-hour medians: the first one after the rain came is already 2.2 points up.
    assert flag.reason == ("moisture rose from 9.0 % to 11.2 % (+2.2 points) by "
                           "2026-07-10 07:25 local")


def test_still_wet_after_seven_days_is_too_long():
    slow = series(200, moisture=lambda h: newton_moisture(h, k_per_h=0.012))
    flags = compute_metrics(ended(slow, hours=200)).flags
    assert [f.code for f in flags] == ["too_long", "not_dry"]
    assert "after 7 days (mould risk above 8 %)" in flags[0].reason


def test_an_ended_batch_above_ready_is_not_dry():
    [flag] = compute_metrics(ended(series(120), final_moisture_pct_wb=8.4)).flags
    assert flag.code == "not_dry"
    assert flag.reason == "final moisture 8.4 % (final) is above 7.5 % (rejected above 8 %)"


def test_a_running_batch_still_drying_is_not_flagged_not_dry():
    running = BatchData(start=START, now=START + 60 * HOUR, samples=series(60))
    assert compute_metrics(running).flags == []


def test_below_the_over_dry_limit_is_over_dried():
    [flag] = compute_metrics(ended(series(120), final_moisture_pct_wb=5.2)).flags
    assert flag.code == "over_dried"
    assert flag.reason == "moisture 5.2 % (final) is below 6 % (brittle beans)"


def test_thresholds_from_the_site_are_used():
    strict = Thresholds(max_drying_rate_pct_per_h=0.5)
    assert codes(ended(series(120), thresholds=strict)) == ["dried_too_fast"]


# --- each flag's reason as a key and numbers, for other languages ------------------------------

def rewet_for_a_day(h: float) -> float:
    return newton_moisture(h) + (2.5 if 96 <= h < 108 else 0.0)


FLAGGED: dict[str, tuple[Callable[[], BatchData], dict[str, object]]] = {
    "dried_too_fast.rate": (
        lambda: ended(series(120, moisture=lambda h: max(55.0 - 3.2 * h, 7.2) if h < 20
                             else 7.2)),
        {"rate_pct_per_h": 3.2, "window_h": 6, "limit_pct_per_h": 2.5}),
    "dried_too_fast.too_soon": (
        lambda: ended(series(120, moisture=lambda h: newton_moisture(h, k_per_h=0.07))),
        {"moisture_pct": 7.5, "after_h": 60, "min_drying_h": 72}),
    "overheated.above_limit": (
        lambda: ended(series(120, air_temp=lambda h, day: 68.0 if 30 <= h < 31.5
                             else (40.0 if day else 25))),
        {"limit_c": 65.0, "duration_h": 1.5, "max_c": 68.0}),
    "overheated.early_phase": (
        lambda: ended(series(120, air_temp=lambda h, day: 52.0 if 4 <= h < 7
                             else (40.0 if day else 25))),
        {"limit_c": 45.0, "duration_h": 3.0, "max_c": 52.0}),
    "rewetted.rise": (
        lambda: ended(series(120, moisture=rewet_for_a_day), final_moisture_pct_wb=7.2),
        {"low_pct": 9.0, "high_pct": 11.2, "rise_points": 2.2, "at": "2026-07-10T12:25:00Z"}),
    "too_long.still_wet": (
        lambda: ended(series(200, moisture=lambda h: newton_moisture(h, k_per_h=0.012)),
                      hours=200),
        {"moisture_pct": 17.9, "days": 7, "reject_above_pct": 8.0}),
    "not_dry.above_ready": (
        lambda: ended(series(120), final_moisture_pct_wb=8.4),
        {"moisture_pct": 8.4, "source": "final", "ready_pct": 7.5, "reject_above_pct": 8.0}),
    "over_dried.below_limit": (
        lambda: ended(series(120), spot_checks=[SpotCheck(START + 110 * HOUR, 5.24)]),
        {"moisture_pct": 5.2, "source": "spot_check", "limit_pct": 6.0}),
}


def test_every_reason_has_a_batch_that_gives_it():
    assert set(FLAGGED) == set(REASONS)


@pytest.mark.parametrize("key", sorted(FLAGGED))
def test_a_flag_names_its_reason_and_the_numbers_it_shows(key: str):
    batch, params = FLAGGED[key]
    [flag] = [f for f in compute_metrics(batch()).flags if f.reason_key == key]
    assert flag.reason_params == params
    assert set(flag.reason_params) == set(REASONS[key])
    assert [type(v) for v in flag.reason_params.values()] == [type(v) for v in params.values()]


# Where the English text differs from ``reason``: times the dashboard's way, sources by label.
ENGLISH_TEXT = {
    "rewetted.rise": "moisture rose from 9.0 % to 11.2 % (+2.2 points) by 07/10/2026 07:25 AM",
    "not_dry.above_ready": "final moisture 8.4 % (final value) is above 7.5 % (rejected above "
                           "8 %)",
    "over_dried.below_limit": "moisture 5.2 % (spot check) is below 6 % (brittle beans)",
}


@pytest.mark.parametrize("key", sorted(FLAGGED))
def test_the_english_text_of_a_reason_reads_as_the_reason(key: str):
    """The catalog's English sentence filled with the flag's numbers says what ``reason``
    says, with the same numbers."""
    batch, _ = FLAGGED[key]
    [flag] = [f for f in compute_metrics(batch()).flags if f.reason_key == key]
    assert flag_reason(flag, "en", ZoneInfo("America/Lima")) == ENGLISH_TEXT.get(key, flag.reason)
    assert bool({TIME, SOURCE} & set(REASONS[key].values())) == (key in ENGLISH_TEXT)


# --- where the final moisture comes from -----------------------------------------------------

def test_final_moisture_prefers_entered_then_mass_then_spot_check_then_reading():
    samples = series(120)
    check = [SpotCheck(START + 100 * HOUR, 7.4)]
    by_reading = compute_metrics(ended(samples))
    by_check = compute_metrics(ended(samples, spot_checks=check))
    by_mass = compute_metrics(ended(samples, spot_checks=check, initial_mass_kg=100.0,
                                    final_mass_kg=48.6))
    entered = compute_metrics(ended(samples, spot_checks=check, initial_mass_kg=100.0,
                                    final_mass_kg=48.6, final_moisture_pct_wb=7.1))
    assert by_reading.moisture_source == "reading"
    assert by_reading.final_moisture_pct_wb == pytest.approx(newton_moisture(119.9), abs=0.05)
    assert (by_check.moisture_source, by_check.final_moisture_pct_wb) == ("spot_check", 7.4)
    assert by_mass.moisture_source == "final_mass"
    assert by_mass.final_moisture_pct_wb == pytest.approx(7.4, abs=0.1)   # [IIETA2025] example
    assert (entered.moisture_source, entered.final_moisture_pct_wb) == ("final", 7.1)


# --- simulated batches -----------------------------------------------------------------------

def simulate_until_ready(kind: str, seed: int) -> tuple[list[Sample], datetime]:
    """A simulated batch under the reference policy, a noisy probe (±1 %), ended when
    suggest_end says so (7.5 %, held 3 h), checked every hour."""
    rng = random.Random(seed)
    model = DryerModel(Weather(seed, "auto"), kind, 400, 56.0, start=START, seed=seed,
                       max_step_s=300)  # type: ignore[arg-type]
    samples, moment = [], START
    while moment - START < timedelta(days=10):
        moment += STEP
        on = 100.0 if 6 <= local_hour(moment) < 18 else 0.0
        model.step(moment, fan_speed_pct=on, vent_open_pct=on)
        samples.append(Sample(moment, {
            "bean_moisture_pct_wb": model.bean_moisture_pct_wb + rng.uniform(-1, 1),
            "air_temp_c": model.air_temp_c, "air_rh_pct": model.air_rh_pct}))
        if moment.minute == 0 and suggest_end(samples, 7.5, 3.0, moment).should_end:
            break
    return samples, moment


@pytest.mark.parametrize("kind", ["greenhouse", "open"])
def test_simulated_batches_give_sensible_metrics_and_no_flag(kind):
    samples, end = simulate_until_ready(kind, seed=1)
    metrics = compute_metrics(BatchData(start=START, now=end, end=end, samples=samples,
                                        initial_moisture_pct_wb=56.0))
    # Greenhouse ~4 days, open sun ~6 [CET2017]; inside air 40–60 °C at midday [Kallari].
    assert 3 * 24 <= metrics.duration_h <= 8 * 24
    assert 6.0 <= metrics.final_moisture_pct_wb <= 7.5
    assert 0.25 <= metrics.average_drying_rate_pct_per_h <= 0.7
    assert 0.5 <= metrics.max_sustained_rate_pct_per_h <= 2.5
    assert 30.0 <= metrics.max_air_temp_c <= 60.0
    assert metrics.time_above_limit_h == 0.0
    assert metrics.flags == []


# --- suggesting the end ----------------------------------------------------------------------

def noisy_moisture(values: Callable[[float], float], hours: float, seed: int = 3,
                   ) -> list[SeriesPoint]:
    rng = random.Random(seed)
    return [SeriesPoint(START + i * STEP, {"bean_moisture_pct_wb": values(i / 6) +
                                           rng.uniform(-1, 1)})
            for i in range(int(hours * 6) + 1)]


def test_suggests_the_end_after_holding_the_target_despite_noise():
    points = noisy_moisture(lambda h: 9.0 if h < 10 else 6.3, hours=16)
    suggestion = suggest_end(points, 7.0, 4.0, now=START + 16 * HOUR)
    assert suggestion.should_end
    assert START + 9 * HOUR <= suggestion.since <= START + 11 * HOUR
    assert "ready to unload" in suggestion.reason


def test_does_not_suggest_the_end_before_the_hold():
    points = noisy_moisture(lambda h: 9.0 if h < 13 else 6.3, hours=16)
    suggestion = suggest_end(points, 7.0, 4.0, now=START + 16 * HOUR)
    assert not suggestion.should_end and suggestion.since is not None
    assert "of the 4 h required" in suggestion.reason


def test_low_spikes_do_not_end_a_batch():
    points = [MoisturePoint(START + i * STEP, 5.0 if i % 4 == 0 else 8.0) for i in range(60)]
    assert not suggest_end(points, 7.0, 1.0, now=START + 10 * HOUR).should_end


def test_a_gap_breaks_the_hold_and_stale_readings_end_nothing():
    points = [*noisy_moisture(lambda h: 6.3, hours=3),
              *(p for p in noisy_moisture(lambda h: 6.3, hours=8) if p.at >= START + 6 * HOUR)]
    assert not suggest_end(points, 7.0, 4.0, now=START + 8 * HOUR).should_end
    stale = suggest_end(points, 7.0, 1.0, now=START + 12 * HOUR)
    assert not stale.should_end and "no moisture reading since" in stale.reason


def test_spot_checks_count_for_the_end():
    checks = [SpotCheck(START + h * HOUR, 6.8) for h in range(7)]
    assert suggest_end(checks, 7.0, 5.0, now=START + 6 * HOUR).should_end


@pytest.mark.parametrize(("hold_h", "now", "message"), [
    (-1.0, START, "hold_h"),
    (math.nan, START, "hold_h"),
    (2.0, datetime(2026, 7, 6, 12, 0), "timezone-aware"),
])
def test_suggest_end_rejects_bad_arguments(hold_h, now, message):
    with pytest.raises(PayloadError, match=message):
        suggest_end([], 7.0, hold_h, now)


# --- odd input -------------------------------------------------------------------------------

def test_an_empty_batch_has_empty_metrics():
    metrics = compute_metrics(BatchData(start=START, now=START + 5 * HOUR))
    assert metrics.duration_h == 5.0 and metrics.final_moisture_pct_wb is None
    assert metrics.max_sustained_rate_pct_per_h is None and metrics.max_air_temp_c is None
    assert metrics.flags == []
    assert suggest_end([], 7.0, 2.0, START).reason == "no moisture readings"


def test_missing_fields_gaps_and_readings_outside_the_batch_are_handled():
    samples = [Sample(START - HOUR, {"air_temp_c": 80.0}),            # before loading
               Sample(START + 2 * HOUR, {"air_temp_c": math.nan}),
               Sample(START + 30 * HOUR, {"bean_moisture_pct_wb": 30.0}),
               Sample(START + HOUR, {"air_rh_pct": 70.0, "air_temp_c": 66.0}),
               Sample(START + 90 * HOUR, {"air_temp_c": 30.0})]
    metrics = compute_metrics(ended(samples, hours=100))
    assert metrics.max_air_temp_c == 66.0
    assert metrics.time_above_limit_h == pytest.approx(0.5)   # one sample, 30 min at most
    assert metrics.final_moisture_pct_wb == 30.0


def test_bad_batch_arguments_raise_payload_errors():
    with pytest.raises(PayloadError, match="start must be a timezone-aware"):
        compute_metrics(BatchData(start=datetime(2026, 7, 6), now=START))
    with pytest.raises(PayloadError, match="unknown time zone"):
        compute_metrics(BatchData(start=START, now=START, site_timezone="Nowhere/Land"))
    naive = [Sample(datetime(2026, 7, 6, 12, 0), {"air_temp_c": 30.0})]
    with pytest.raises(PayloadError, match="sample time must be a timezone-aware"):
        compute_metrics(BatchData(start=START, now=START + HOUR, samples=naive))
    with pytest.raises(PayloadError, match="sample time must be a timezone-aware"):
        suggest_end(naive, 7.0, 1.0, START)


values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(-20, 120))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(-600, 12_000), values, values, values),
                     max_size=60),
       end_h=st.one_of(st.none(), st.floats(0, 250)), final=values)
def test_odd_samples_never_raise(rows, end_h, final):
    samples = [Sample(START + timedelta(minutes=m), {
        key: value for key, value in (("bean_moisture_pct_wb", w), ("air_temp_c", t),
                                      ("air_rh_pct", r)) if value is not None})
        for m, w, t, r in rows]
    end = None if end_h is None else START + end_h * HOUR
    batch = BatchData(start=START, now=START + 200 * HOUR, end=end, samples=samples,
                      final_moisture_pct_wb=final)
    metrics = compute_metrics(batch)
    assert all(flag.reason and "\n" not in flag.reason for flag in metrics.flags)
    assert all(set(flag.reason_params) == set(REASONS[flag.reason_key])
               for flag in metrics.flags)
    suggest_end(samples, 7.0, 2.0, START + 200 * HOUR)
