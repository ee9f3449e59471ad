"""Quality-flag reasons in the reader's language: every reason gateway.batch_metrics can give
has a text in every catalog naming exactly its numbers, and dashboard.pages.batches.flag_reason
fills it the language's way (numbers with the catalog's separators, times in the site's zone,
moisture sources by their label), falling back to the English ``reason``."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pytest

from dashboard.i18n import LANGUAGES, catalog, format_number
from dashboard.pages.batches import REASON_KEYS, as_set_digits, flag_reason
from gateway.batch_metrics import REASONS, QualityFlag

LIMA = ZoneInfo("America/Lima")
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def es(value: float, digits: int = 1) -> str:
    return format_number(value, "es", digits)


def test_every_reason_has_a_text_key_and_no_key_is_left_over() -> None:
    assert set(REASON_KEYS) == set(REASONS)
    assert all(key.startswith("batches.reason_") for key in REASON_KEYS.values())


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("reason", sorted(REASONS))
def test_each_reason_text_names_exactly_the_reasons_numbers(language: str, reason: str) -> None:
    text = catalog(language)[REASON_KEYS[reason]]
    assert sorted(PLACEHOLDER.findall(text)) == sorted(REASONS[reason])
    assert "\n" not in text


def test_a_spanish_reason_writes_its_numbers_the_spanish_way() -> None:
    fast = QualityFlag("dried_too_fast", "moisture fell 3.2 %/h over 6 h (limit 2.5 %/h)",
                       "dried_too_fast.rate",
                       {"rate_pct_per_h": 3.2, "window_h": 6, "limit_pct_per_h": 2.5})
    assert flag_reason(fast, "es", LIMA) == (
        f"la humedad bajó {es(3.2)} % por hora durante 6 horas (límite {es(2.5)} % por hora)")


def test_a_threshold_is_written_as_set_and_a_measure_with_its_decimals() -> None:
    hot = QualityFlag("overheated", "air at or above 65 °C for 2.0 h (max 70.0 °C)",
                      "overheated.above_limit", {"limit_c": 65.0, "duration_h": 2.0,
                                                 "max_c": 70.0})
    assert flag_reason(hot, "es", LIMA) == (
        f"el aire estuvo a 65 °C o más durante {es(2.0)} horas (máximo {es(70.0)} °C)")
    assert [as_set_digits(v) for v in (65.0, 62.5, 7.25, 7.125, 0.1 + 0.2)] == [0, 1, 2, 3, 1]


def test_a_reason_time_is_written_in_the_sites_zone_the_languages_way() -> None:
    rewet = QualityFlag("rewetted", "moisture rose from 9.0 % to 11.2 % (+2.2 points) by "
                        "2026-07-10 07:25 local", "rewetted.rise",
                        {"low_pct": 9.0, "high_pct": 11.2, "rise_points": 2.2,
                         "at": "2026-07-10T12:25:00Z"})
    assert flag_reason(rewet, "es", LIMA) == (
        f"la humedad volvió a subir de {es(9.0)} % a {es(11.2)} % (+{es(2.2)} puntos) hasta "
        "el 10/07/2026 07:25")
    assert flag_reason(rewet, "en", LIMA).endswith("by 07/10/2026 07:25 AM")


def test_a_moisture_source_is_named_in_the_readers_words() -> None:
    wet = QualityFlag("not_dry", "final moisture 8.4 % (spot_check) is above 7.5 % (rejected "
                      "above 8 %)", "not_dry.above_ready",
                      {"moisture_pct": 8.4, "source": "spot_check", "ready_pct": 7.5,
                       "reject_above_pct": 8.0})
    assert flag_reason(wet, "es", LIMA) == (
        f"la humedad final {es(8.4)} % (medición a mano) está por encima de {es(7.5)} % (el "
        "grano se rechaza por encima de 8 %)")


@pytest.mark.parametrize("flag", [
    QualityFlag("overheated", "air too hot"),                                  # no key
    QualityFlag("overheated", "air too hot", "overheated.somewhere_else", {"limit_c": 65.0}),
    QualityFlag("overheated", "air too hot", "overheated.above_limit",          # a number short
                {"limit_c": 65.0, "duration_h": 2.0}),
], ids=["no key", "unknown key", "missing number"])
def test_a_reason_without_a_complete_text_is_the_english_one(flag: QualityFlag) -> None:
    assert flag_reason(flag, "es", LIMA) == "air too hot"
