"""Readings → InfluxDB line protocol (pure; the round trip through a real influxd is in
test_store_influxdb1.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.stores.line_protocol import (
    escape_key,
    escape_measurement,
    escape_tag_value,
    lines,
    measured_at_from_ns,
    point_time_ns,
    reading_line,
    string_field,
)
from gateway.timeseries import StoredReading

AT = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
AT_US = 1772366400_123456


def reading(**changes: object) -> StoredReading:
    values: dict[str, object] = {
        "site_id": "coop-norte", "node_id": "secador-01", "seq": 1234, "measured_at": AT,
        "fields": {"air_temp_c": 48.5, "config_version": 3.0}, "raining": False,
        "mode": "auto", "alarms": (), "batch_id": None}
    values.update(changes)
    return StoredReading(**values)  # type: ignore[arg-type]


def test_a_reading_is_one_line_with_node_and_site_tags_fields_and_time() -> None:
    line = reading_line(reading(alarms=("rain", "over_dry"), batch_id="lot-7"))
    assert line == (
        'dryer_reading,node=secador-01,site=coop-norte air_temp_c=48.5,config_version=3.0,'
        'seq=1234i,mode="auto",alarms="rain,over_dry",raining=false,batch_id="lot-7" '
        f"{AT_US * 1000 + 234}")


def test_numeric_fields_are_always_written_as_floats() -> None:
    line = reading_line(reading(fields={"fan_speed_pct": 100, "tray_mass_kg": 1e-05}))
    assert "fan_speed_pct=100.0," in line
    assert "tray_mass_kg=1e-05," in line


def test_unknown_rain_state_and_batch_are_left_out() -> None:
    line = reading_line(reading(raining=None, batch_id=None))
    assert "raining" not in line
    assert "batch_id" not in line
    assert 'alarms=""' in line


def test_raining_is_a_boolean_field() -> None:
    assert "raining=true" in reading_line(reading(raining=True))


def test_timestamp_is_the_microsecond_times_1000_plus_seq_mod_1000() -> None:
    assert point_time_ns(AT, 1234) == AT_US * 1000 + 234
    assert point_time_ns(AT, 7) == AT_US * 1000 + 7


def test_the_same_reading_always_gets_the_same_timestamp() -> None:
    same_moment_elsewhere = AT.astimezone(timezone(timedelta(hours=-5)))  # Lima
    assert point_time_ns(same_moment_elsewhere, 1234) == point_time_ns(AT, 1234)


def test_two_readings_taken_in_the_same_microsecond_get_different_timestamps() -> None:
    assert point_time_ns(AT, 41) != point_time_ns(AT, 42)


@given(st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2262, 1, 1),
                    timezones=st.just(UTC)),
       st.integers(min_value=1, max_value=2**40))
def test_measured_at_is_recovered_exactly_from_the_timestamp(at: datetime, seq: int) -> None:
    assert measured_at_from_ns(point_time_ns(at, seq)) == at


def test_tag_values_escape_spaces_commas_and_equals_signs() -> None:
    assert escape_tag_value("coop norte,a=b") == r"coop\ norte\,a\=b"
    line = reading_line(reading(site_id="coop norte", node_id="a=b,c"))
    assert line.startswith(r"dryer_reading,node=a\=b\,c,site=coop\ norte ")


def test_field_keys_escape_spaces_commas_and_equals_signs() -> None:
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"


def test_measurement_names_escape_spaces_and_commas_but_not_equals() -> None:
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"


def test_string_fields_escape_quotes_and_backslashes_and_keep_line_breaks() -> None:
    assert string_field('say "hi" \\ bye\nnext') == '"say \\"hi\\" \\\\ bye\nnext"'


@pytest.mark.parametrize("value", ["a\\b", "trailing\\", "two\nlines", "cr\r", ""])
def test_tag_values_line_protocol_cannot_carry_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="tag value"):
        reading_line(reading(node_id=value))


@pytest.mark.parametrize("name", ["time", "seq", "mode", "site"])
def test_numeric_fields_may_not_use_reserved_names(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        reading_line(reading(fields={name: 1.0}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="air_temp_c"):
        reading_line(reading(fields={"air_temp_c": value}))


@pytest.mark.parametrize("alarm", ["", "a,b"])
def test_alarms_that_would_not_split_back_are_refused(alarm: str) -> None:
    with pytest.raises(ValueError, match="alarm"):
        reading_line(reading(alarms=(alarm,)))


def test_a_time_without_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        reading_line(reading(measured_at=datetime(2026, 3, 1, 12, 0)))


def test_times_outside_influxdbs_range_are_refused() -> None:
    with pytest.raises(ValueError, match="outside InfluxDB's time range"):
        reading_line(reading(measured_at=datetime(2300, 1, 1, tzinfo=UTC)))


def test_errors_name_the_reading() -> None:
    with pytest.raises(ValueError, match="reading coop-norte/secador-01 seq 1234"):
        reading_line(reading(fields={"air_temp_c": float("nan")}))


def test_a_body_is_one_line_per_reading_in_utf8() -> None:
    body = lines([reading(seq=1), reading(seq=2, site_id="cooperativa-señor")])
    assert body.count(b"\n") == 1
    assert "site=cooperativa-señor".encode() in body.splitlines()[1]
