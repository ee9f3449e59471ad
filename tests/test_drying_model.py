"""The drying-end prediction: against the reference curve [CET2017], against simulated batches
(firmware/simulation), exact Page curves (hypothesis), and odd input."""

from __future__ import annotations

import functools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.errors import PayloadError
from cacao_dryer.science import dry_to_wet_basis, wet_to_dry_basis
from firmware.simulation.dryer import DryerModel
from firmware.simulation.weather import Weather
from gateway.drying_model import (
    DEFAULT_EQUILIBRIUM_PCT_WB,
    DryingClock,
    FitError,
    MoisturePoint,
    fit_page,
    predict_drying_end,
)

START = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)   # 06:00 in Peru
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
LIMA = "America/Lima"

# [source] docs/references.md, "Synthetic reference curve (estimate)": open-sun Newton model,
# k = 0.76 d⁻¹, 7 % reached on day 6 as reported by [CET2017]. Moisture % w.b. on days 0..6.
REFERENCE_CURVE = (58.0, 40.4, 25.9, 16.4, 11.1, 8.3, 7.0)


def page_points(m0: float, me: float, k_per_h: float, n: float, hours: range,
                start: datetime = START) -> list[MoisturePoint]:
    x0, xe = wet_to_dry_basis(m0), wet_to_dry_basis(me)
    return [MoisturePoint(start + h * HOUR,
                          dry_to_wet_basis(xe + (x0 - xe) * math.exp(-k_per_h * h ** n)))
            for h in hours]


# --- the reference curve ---------------------------------------------------------------------

@pytest.mark.parametrize("days_fitted", [3, 4])
def test_reference_curve_predicts_the_7_pct_day_within_three_quarters_of_a_day(days_fitted):
    # Tolerance ±0.75 day: a manager plans unloading by the day; the curve's own Me (≈ 5.8 %)
    # differs from our default (6.2 %), which alone moves the 7 % crossing by ~0.4 day.
    points = [MoisturePoint(START + day * DAY, value)
              for day, value in enumerate(REFERENCE_CURVE[:days_fitted + 1])]
    prediction = predict_drying_end(points, 7.0, now=START + days_fitted * DAY)
    true_day = START + 6 * DAY
    assert prediction.predicted_at is not None
    assert abs(prediction.predicted_at - true_day) <= 0.75 * DAY
    assert prediction.earliest <= true_day <= prediction.latest
    assert prediction.fit is not None and prediction.fit.r2 > 0.99


def test_reference_curve_is_nearly_newton():
    points = [MoisturePoint(START + day * DAY, value) for day, value in enumerate(REFERENCE_CURVE)]
    fit = fit_page(points, 5.8)
    assert fit.n == pytest.approx(1.0, abs=0.05)
    assert fit.k_per_h * 24 == pytest.approx(0.76, rel=0.05)   # [CET2017]


# --- simulated batches -----------------------------------------------------------------------

@functools.cache
def simulated(kind: str, month: int, seed: int) -> tuple[tuple[datetime, float], ...]:
    """Bean moisture every 10 min of a simulated batch under the reference policy (fans and
    vents on 06–18 local, closed at night), until 7 % or 12 days."""
    start = datetime(2026, month, 5, 11, 0, tzinfo=UTC)
    model = DryerModel(Weather(seed, "auto"), kind, 400, 56.0, start=start, seed=seed,  # type: ignore[arg-type]
                       max_step_s=300)
    series, moment = [(start, model.bean_moisture_pct_wb)], start
    while model.bean_moisture_pct_wb > 7.0 and moment - start < 12 * DAY:
        moment += timedelta(minutes=10)
        on = 100.0 if 6 <= (moment - timedelta(hours=5)).hour < 18 else 0.0
        model.step(moment, fan_speed_pct=on, vent_open_pct=on)
        series.append((moment, model.bean_moisture_pct_wb))
    return tuple(series)


def probe(series, until: datetime, seed: int) -> list[MoisturePoint]:
    """What a probe reports: ±1 % noise and a wild spike every ~50 readings."""
    rng = random.Random(seed)
    points = []
    for index, (at, value) in enumerate(series):
        if at > until:
            break
        spike = 15.0 if index % 53 == 7 else 0.0
        points.append(MoisturePoint(at, value + rng.uniform(-1.0, 1.0) + spike))
    return points


CASES = [(kind, month, seed) for kind in ("greenhouse", "open") for month in (1, 7)
         for seed in (1, 2, 3)]


def test_after_two_days_the_7_pct_time_is_predicted_within_two_and_a_half_days():
    errors_d, inside = [], 0
    for kind, month, seed in CASES:
        series = simulated(kind, month, seed)
        start, (true_at, true_value) = series[0][0], series[-1]
        assert true_value <= 7.0
        now = start + 2 * DAY
        prediction = predict_drying_end(probe(series, now, seed), 7.0, now=now,
                                        site_timezone=LIMA)
        assert prediction.predicted_at is not None, (kind, month, seed, prediction.reason)
        errors_d.append((prediction.predicted_at - true_at) / DAY)
        inside += prediction.earliest <= true_at <= prediction.latest
    # Measured (docs/batches.md): rainy-season greenhouses dry slower after day 2 than their
    # first two days suggest; everything else lands within about a day.
    assert max(abs(e) for e in errors_d) <= 2.5, errors_d
    assert sorted(abs(e) for e in errors_d)[len(errors_d) // 2] <= 1.0, errors_d
    assert inside >= 0.75 * len(CASES), (inside, errors_d)


def test_open_sun_batches_fit_a_dark_night():
    series = simulated("open", 7, 1)
    fit = fit_page(probe(series, series[0][0] + 2 * DAY, 1), site_timezone=LIMA)
    assert fit.clock is not None and fit.clock.night_weight == 0.0   # covered at night
    assert fit.r2 > 0.98


def test_counting_drying_hours_beats_elapsed_time_for_open_sun():
    series = simulated("open", 1, 2)
    start, true_at = series[0][0], series[-1][0]
    points = probe(series, start + 2 * DAY, 2)
    elapsed = predict_drying_end(points, 7.0, now=start + 2 * DAY)
    drying = predict_drying_end(points, 7.0, now=start + 2 * DAY, site_timezone=LIMA)
    assert elapsed.predicted_at and drying.predicted_at
    assert abs(drying.predicted_at - true_at) < abs(elapsed.predicted_at - true_at)


def test_spikes_barely_move_the_prediction():
    series = simulated("greenhouse", 7, 1)
    now = series[0][0] + 2 * DAY
    clean = [MoisturePoint(at, value) for at, value in series if at <= now]
    noisy = probe(series, now, 1)
    a = predict_drying_end(clean, 7.0, now=now, site_timezone=LIMA).predicted_at
    b = predict_drying_end(noisy, 7.0, now=now, site_timezone=LIMA).predicted_at
    assert a is not None and b is not None and abs(a - b) < 6 * HOUR


# --- behaviour -------------------------------------------------------------------------------

def test_rewetting_pushes_the_end_later():
    points = page_points(55.0, 6.0, 0.03, 1.1, range(0, 49))
    now = START + 48 * HOUR
    before = predict_drying_end(points, 7.0, now=now)
    rained = [*points, *(MoisturePoint(now + i * 10 * timedelta(minutes=1), 24.0)
                         for i in range(1, 7))]
    after = predict_drying_end(rained, 7.0, now=now + HOUR)
    assert before.predicted_at and after.predicted_at
    assert after.predicted_at > before.predicted_at + 3 * HOUR
    assert after.current_moisture_pct_wb == pytest.approx(24.0)


def test_already_at_target_predicts_when_it_was_reached():
    points = page_points(55.0, 5.0, 0.05, 1.0, range(0, 120))
    reached = next(p.at for p in points if p.moisture_pct_wb <= 7.0)
    prediction = predict_drying_end(points, 7.0, now=START + 130 * HOUR)
    assert prediction.predicted_at == reached
    assert prediction.hours_remaining == 0.0
    assert "reached" in (prediction.reason or "")


def test_the_band_contains_the_prediction_and_widens_with_confidence():
    points = page_points(55.0, 6.0, 0.03, 1.1, range(0, 30))
    narrow = predict_drying_end(points, 7.0, now=START + 30 * HOUR, confidence=0.5)
    wide = predict_drying_end(points, 7.0, now=START + 30 * HOUR, confidence=0.95)
    assert narrow.earliest < narrow.predicted_at < narrow.latest
    assert wide.earliest < narrow.earliest and wide.latest > narrow.latest
    assert wide.predicted_at == narrow.predicted_at


def test_drying_clock_skips_the_night():
    clock = DryingClock(LIMA, night_weight=0.0)
    dusk = datetime(2026, 1, 5, 23, 0, tzinfo=UTC)            # 18:00 in Lima
    assert clock.hours_between(START, dusk) == pytest.approx(12.0)
    assert clock.hours_between(dusk, dusk + 11 * HOUR) == 0.0
    assert clock.advance(dusk - HOUR, 2.0) == START + DAY + HOUR   # 07:00 next day
    assert DryingClock(LIMA, 0.5).hours_between(START, START + DAY) == pytest.approx(18.0)


@pytest.mark.parametrize(("points", "reason"), [
    ([], "no moisture readings"),
    ([MoisturePoint(START, 50.0)], "1 hourly moisture readings"),
    ([MoisturePoint(START + h * HOUR, 50.0) for h in range(3)], "3 hourly"),
    ([MoisturePoint(START + h * HOUR, 50.0) for h in range(5)], "4.0 h of moisture"),
    ([MoisturePoint(START + h * HOUR, 50.0) for h in range(24)], "moisture not falling"),
    ([MoisturePoint(START + h * HOUR, 30.0 + h) for h in range(24)], "moisture not falling"),
    ([MoisturePoint(START + h * HOUR, math.nan) for h in range(24)], "no moisture readings"),
])
def test_odd_readings_give_a_reason_not_an_error(points, reason):
    prediction = predict_drying_end(points, 7.0, now=START + DAY)
    assert prediction.predicted_at is None and prediction.earliest is None
    assert reason in (prediction.reason or "")


def test_beans_starting_near_equilibrium_give_a_reason():
    points = [MoisturePoint(START + h * HOUR, 7.0) for h in range(24)]
    prediction = predict_drying_end(points, 6.5, now=START + DAY)
    assert prediction.predicted_at is None
    assert "already near equilibrium" in (prediction.reason or "")


def test_fit_page_says_why_it_cannot_fit():
    with pytest.raises(FitError, match="at least 4 needed"):
        fit_page([MoisturePoint(START, 50.0)])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"now": datetime(2026, 1, 5, 12, 0)}, "timezone-aware"),
    ({"target_pct_wb": DEFAULT_EQUILIBRIUM_PCT_WB}, "above the equilibrium"),
    ({"equilibrium_pct_wb": 8.0}, "above the equilibrium"),
    ({"equilibrium_pct_wb": math.nan}, "equilibrium moisture must be"),
    ({"confidence": 1.0}, "confidence"),
    ({"site_timezone": "Mars/Olympus"}, "unknown time zone"),
])
def test_bad_arguments_raise_one_line_payload_errors(kwargs, message):
    arguments = {"target_pct_wb": 7.0, "now": START + DAY} | kwargs
    with pytest.raises(PayloadError, match=message) as caught:
        predict_drying_end(page_points(55.0, 6.0, 0.03, 1.1, range(0, 24)), **arguments)
    assert "\n" not in str(caught.value)


def test_naive_reading_times_are_a_payload_error():
    with pytest.raises(PayloadError, match="moisture point time"):
        predict_drying_end([MoisturePoint(datetime(2026, 1, 5), 50.0)], 7.0, now=START)


# --- properties ------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(k_per_h=st.floats(0.005, 0.2), n=st.floats(0.6, 1.6), m0=st.floats(40.0, 60.0),
       me=st.floats(3.0, 7.0))
def test_exact_page_curves_are_recovered(k_per_h, n, m0, me):
    hours_to_mr_005 = (-math.log(0.05) / k_per_h) ** (1 / n)
    span = int(min(max(hours_to_mr_005, 12.0), 300.0))
    fit = fit_page(page_points(m0, me, k_per_h, n, range(0, span + 1)), me)
    assert fit.k_per_h == pytest.approx(k_per_h, rel=0.01)
    assert fit.n == pytest.approx(n, rel=0.01)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), targets=st.lists(st.floats(6.5, 40.0), min_size=2,
                                                        max_size=5),
       zone=st.sampled_from([None, LIMA]))
def test_predictions_are_monotone_in_the_target(seed, targets, zone):
    rng = random.Random(seed)
    curve = page_points(rng.uniform(45, 60), 5.5, rng.uniform(0.01, 0.08),
                        rng.uniform(0.8, 1.3), range(0, rng.randint(8, 60)))
    points = [MoisturePoint(p.at, p.moisture_pct_wb + rng.uniform(-1, 1)) for p in curve]
    now = points[-1].at
    predicted = [(target, predict_drying_end(points, target, now=now, site_timezone=zone))
                 for target in sorted(targets)]
    times = [p.predicted_at for _, p in predicted if p.predicted_at is not None]
    assert times == sorted(times, reverse=True)


readings = st.lists(st.tuples(st.integers(0, 10 * 24 * 60),
                              st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                        st.floats(0.0, 70.0))), max_size=80)


@settings(max_examples=150, deadline=None)
@given(readings=readings, target=st.floats(6.5, 30.0), zone=st.sampled_from([None, LIMA]))
def test_odd_readings_never_raise(readings, target, zone):
    points = [MoisturePoint(START + timedelta(minutes=m), value) for m, value in readings]
    prediction = predict_drying_end(points, target, now=START + 11 * DAY, site_timezone=zone)
    assert (prediction.predicted_at is None) == (prediction.reason is not None
                                                 and "reached" not in prediction.reason)
    if prediction.predicted_at is not None and prediction.earliest and prediction.latest:
        assert prediction.earliest <= prediction.predicted_at <= prediction.latest
