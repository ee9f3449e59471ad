"""The message contract: topics, payload validation, one-line errors."""

import json
from datetime import UTC, datetime

import pytest

from cacao_dryer.contract import (
    MAX_CONFIG_VERSION,
    MAX_SEQ,
    Channel,
    Command,
    NodeConfig,
    Telemetry,
    Thresholds,
    decode,
    decode_message,
    encode,
    parse_topic,
    topic,
)
from cacao_dryer.errors import PayloadError, TopicError

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def telemetry(**changes):
    fields = dict(site_id="norandino", node_id="secador-01", seq=7, measured_at=NOW,
                  readings={"air_temp_c": 41.5, "air_rh_pct": 55.0},
                  fan_speed_pct=60, vent_open_pct=100, mode="auto", config_version=3)
    return Telemetry(**(fields | changes))


def test_topic_round_trips_through_parse():
    name = topic("norandino", "secador-01", Channel.TELEMETRY)
    assert name == "cacao/v1/norandino/secador-01/telemetry"
    assert parse_topic(name) == ("norandino", "secador-01", Channel.TELEMETRY)


@pytest.mark.parametrize("name", ["cacao/v2/s/n/telemetry", "cacao/v1/s/n", "x/v1/s/n/status",
                                  "cacao/v1/s/n/telemetry/extra"])
def test_foreign_topics_are_rejected(name):
    with pytest.raises(TopicError, match="expected cacao/v1"):
        parse_topic(name)


def test_unknown_channel_is_named():
    with pytest.raises(TopicError, match="unknown channel 'selfie'"):
        parse_topic("cacao/v1/s/n/selfie")


def test_telemetry_round_trips_and_leaves_out_missing_readings():
    payload = encode(telemetry())
    assert b"bean_moisture_pct_wb" not in payload
    site, node, message = decode_message("cacao/v1/norandino/secador-01/telemetry", payload)
    assert (site, node) == ("norandino", "secador-01")
    assert message == telemetry()


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{nope", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"schema_version": 99}', "schema_version 99 is not supported"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"{\"a\": \"\\ud800\"}", "lone UTF-16 surrogate"),
    (b"{\"a\": \"\xed\xa0\x80\"}", "not valid UTF-8"),
])
def test_malformed_payloads_get_one_line_reasons(payload, reason):
    with pytest.raises(PayloadError, match=reason) as error:
        decode(Channel.TELEMETRY, payload)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("channel", "payload", "reason"), [
    (Channel.TELEMETRY, {"seq": MAX_SEQ + 1}, "seq: Input should be less than or equal"),
    (Channel.TELEMETRY, {"config_version": MAX_CONFIG_VERSION + 1}, "config_version: "),
    (Channel.EVENT, {"seq": MAX_SEQ + 1}, "seq: Input should be less than or equal"),
    (Channel.STATUS, {"last_seq": MAX_SEQ + 1}, "last_seq: "),
    (Channel.STATUS, {"uptime_s": "Infinity"}, "uptime_s: Input should be a finite number"),
])
def test_numbers_no_store_or_reader_keeps_exactly_are_refused(channel, payload, reason):
    """Bounds every store and the dashboard's JavaScript hold exactly; no NaN or Infinity."""
    base = {"schema_version": 1, "site_id": "norandino", "node_id": "secador-01"}
    base |= {Channel.TELEMETRY: json.loads(encode(telemetry())),
             Channel.EVENT: {"seq": 1, "occurred_at": NOW.isoformat(), "type": "boot",
                             "message": "arranque"},
             Channel.STATUS: {"state": "online"}}[channel]
    decode(channel, json.dumps(base).encode())  # valid as it is
    raw = json.dumps(base | payload).replace('"Infinity"', "Infinity").encode()
    with pytest.raises(PayloadError, match=reason):
        decode(channel, raw)
    at_the_bound = {key: MAX_SEQ if "seq" in key else MAX_CONFIG_VERSION
                    for key, value in payload.items() if isinstance(value, int)}
    if at_the_bound:
        decode(channel, json.dumps(base | at_the_bound).encode())


def test_a_surrogate_pair_escaped_in_json_is_fine_text():
    raw = encode(telemetry()).replace(b'"sensor_faults":{}', b'"sensor_faults":{"dht":'
                                      b'"\\ud83c\\udf6b roto"}')
    assert decode(Channel.TELEMETRY, raw).sensor_faults == {"dht": "\U0001f36b roto"}


def test_out_of_range_reading_names_the_field_and_value():
    bad = encode(telemetry()).replace(b"41.5", b"150.0")
    with pytest.raises(PayloadError, match=r"readings\.air_temp_c: .*90.*got 150\.0"):
        decode(Channel.TELEMETRY, bad)


def test_unknown_field_is_rejected():
    bad = encode(telemetry()).replace(b'"seq":7', b'"seq":7,"colour":"red"')
    with pytest.raises(PayloadError, match="colour: Extra inputs are not permitted"):
        decode(Channel.TELEMETRY, bad)


def test_oversized_payload_is_rejected_before_parsing():
    with pytest.raises(PayloadError, match="exceeds"):
        decode(Channel.TELEMETRY, b" " * (64 * 1024 + 1))


def test_payload_cannot_speak_for_another_node():
    payload = encode(telemetry(node_id="secador-02"))
    with pytest.raises(PayloadError, match="payload names norandino/secador-02"):
        decode_message("cacao/v1/norandino/secador-01/telemetry", payload)


def test_not_a_number_is_rejected():
    bad = encode(telemetry()).replace(b"41.5", b"NaN")
    with pytest.raises(PayloadError, match="air_temp_c"):
        decode(Channel.TELEMETRY, bad)


def test_thresholds_defaults_follow_the_reference():
    t = Thresholds()
    assert (t.target_moisture_pct_wb, t.air_temp_warn_c, t.air_temp_alarm_c,
            t.air_temp_limit_c) == (7.0, 55.0, 60.0, 65.0)
    assert (t.fan_on_dew_point_diff_k, t.fan_off_dew_point_diff_k) == (3.0, 1.0)


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="air_temp_warn_c <= air_temp_alarm_c"):
        Thresholds(air_temp_warn_c=62, air_temp_alarm_c=60)


def test_threshold_schema_carries_unit_and_source_for_the_dashboard():
    schema = Thresholds.model_json_schema()["properties"]["air_temp_limit_c"]
    assert schema["unit"] == "°C" and schema["source"] == "ICCO"
    assert (schema["minimum"], schema["maximum"], schema["default"]) == (35.0, 65.0, 65.0)


def test_config_message_round_trips():
    config = NodeConfig(version=4, issued_at=NOW, issued_by="tecnico",
                        thresholds=Thresholds(target_moisture_pct_wb=7.5))
    assert decode(Channel.CONFIG, encode(config)) == config


def test_command_actions_are_told_apart_by_type():
    payload = (b'{"schema_version":1,"command_id":"c1","issued_at":"2026-11-23T15:00:00Z",'
               b'"action":{"type":"override","fan_speed_pct":100,"duration_s":600}}')
    command = decode(Channel.COMMAND, payload)
    assert isinstance(command, Command) and command.action.type == "override"


def test_override_without_anything_to_override_is_rejected():
    payload = (b'{"schema_version":1,"command_id":"c1","issued_at":"2026-11-23T15:00:00Z",'
               b'"action":{"type":"override","duration_s":600}}')
    with pytest.raises(PayloadError, match="override needs fan_speed_pct or vent_open_pct"):
        decode(Channel.COMMAND, payload)


def test_unknown_command_type_is_rejected():
    payload = (b'{"schema_version":1,"command_id":"c1","issued_at":"2026-11-23T15:00:00Z",'
               b'"action":{"type":"self_destruct"}}')
    with pytest.raises(PayloadError, match="action"):
        decode(Channel.COMMAND, payload)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"[" * 5000 + b"]" * 5000, "nested too deeply|not valid JSON"),
    (b'{"schema_version":1,"version":' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_hostile_json_is_a_payload_error_not_a_crash(payload, reason):
    with pytest.raises(PayloadError, match=reason):
        decode(Channel.CONFIG, payload)


def test_no_threshold_can_allow_air_above_the_bean_limit():
    with pytest.raises(ValueError, match="air_temp_limit_c"):
        Thresholds(air_temp_limit_c=70)
