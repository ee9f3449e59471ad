"""Probe calibration on the node side: the shared curve code, the set_calibration command in
the contract, and the real node agent (simulated chips, MockFactory pins, real outbox and
state files) applying, persisting and answering it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cacao_dryer.calibration import (
    MAX_POINTS,
    check_curve,
    extend_with,
    fit_calibration,
    volts_to_moisture_pct_wb,
)
from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    Channel,
    Command,
    EventType,
    NodeEvent,
    SetCalibrationAction,
    decode,
    encode,
)
from cacao_dryer.errors import ConfigError
from firmware.config import MoistureProbeConfig, load_node_config
from firmware.node import Node, build_node

EXAMPLE = Path(__file__).parent.parent / "firmware" / "examples" / "simulated.toml"
START = datetime(2026, 1, 10, 11, 0, tzinfo=UTC)
CONFIG_CURVE = [[0.80, 6.0], [1.20, 10.0], [1.80, 20.0], [2.60, 40.0], [3.20, 60.0]]
NEW_CURVE = [(0.8, 5.0), (1.2, 9.0), (1.8, 18.0), (2.6, 37.0), (3.2, 58.0)]


# --- the shared curve code --------------------------------------------------------------------

BAD_CURVES = [
    ([(1.0, 50.0)], "at least (two|2 items)"),
    ([(2.0, 50.0), (1.0, 10.0)], "strictly increasing"),
    ([(1.0, 50.0), (1.0, 10.0)], "strictly increasing"),
    ([(1.0, 90.0), (2.0, 10.0)], r"within 0\.\.80"),
    ([(1.0, -1.0), (2.0, 10.0)], r"within 0\.\.80"),
]


@pytest.mark.parametrize(("points", "why"), BAD_CURVES)
def test_a_bad_curve_is_refused_alike_by_the_config_file_and_the_command(points, why) -> None:
    with pytest.raises(ValueError, match=why):
        check_curve(points)
    with pytest.raises(ValidationError, match=why):
        SetCalibrationAction(points=points)
    with pytest.raises(ValidationError, match=why):
        MoistureProbeConfig(type="moisture_probe", name="sonda", calibration=points)


def test_a_command_carries_at_most_twenty_points_and_no_infinity() -> None:
    too_many = [(1.0 + i / 10, 60.0 - i) for i in range(MAX_POINTS + 1)]
    with pytest.raises(ValidationError, match="at most 20 items"):
        SetCalibrationAction(points=too_many)
    with pytest.raises(ValidationError):
        SetCalibrationAction.model_validate({"points": [[1.0, "nan"], [2.0, 10.0]]})
    with pytest.raises(ValidationError, match="sensor"):
        SetCalibrationAction(sensor="Sonda 1", points=NEW_CURVE)


def test_the_command_round_trips_through_the_contract() -> None:
    command = Command(command_id="cal-1", issued_at=START,
                      action=SetCalibrationAction(sensor="sonda-humedad", points=NEW_CURVE))
    decoded = decode(Channel.COMMAND, encode(command))
    assert isinstance(decoded, Command) and decoded.action == command.action


def test_many_readings_are_thinned_to_twenty_points_keeping_the_trend() -> None:
    pairs = [(1.0 + i * 0.05, 60.0 - i * 1.2) for i in range(45)]
    curve = fit_calibration(pairs)
    assert len(curve) == MAX_POINTS
    check_curve(curve)
    assert [m for _, m in curve] == sorted((m for _, m in curve), reverse=True)


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 80.0)), min_size=2,
                max_size=60))
def test_a_fitted_curve_always_fits_in_a_command(pairs: list[tuple[float, float]]) -> None:
    try:
        curve = fit_calibration(pairs)
    except ConfigError:
        return
    SetCalibrationAction(points=curve)


def test_the_old_curves_outer_points_are_kept_where_they_continue_the_trend() -> None:
    # one batch's readings only cover 1.8..2.6 V; the old curve goes on both ways
    fitted = [(1.8, 19.0), (2.2, 28.0), (2.6, 38.0)]
    old = [(0.8, 6.0), (1.2, 10.0), (1.7, 21.0), (2.6, 40.0), (3.2, 60.0)]
    # 1.7 V = 21 % would make the curve fall then rise: left out; 2.6 V is the fitted one's
    assert extend_with(fitted, old) == [(0.8, 6.0), (1.2, 10.0), *fitted, (3.2, 60.0)]
    assert len(extend_with(fitted, old, max_points=4)) == 4


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 80.0)), min_size=2,
                max_size=40),
       st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 80.0)), min_size=2,
                max_size=20))
def test_an_extended_curve_is_valid_and_monotonic(pairs, old_pairs) -> None:
    try:
        fitted, old = fit_calibration(pairs), fit_calibration(old_pairs)
    except ConfigError:
        return
    curve = extend_with(fitted, old)
    SetCalibrationAction(points=curve)
    moistures = [m for _, m in curve]
    assert moistures in (sorted(moistures), sorted(moistures, reverse=True))
    # where the readings are, the extended curve says what the fitted one says
    for volts, moisture in fitted:
        assert volts_to_moisture_pct_wb(curve, volts) == pytest.approx(moisture)


# --- the node ---------------------------------------------------------------------------------

def make_node(data_dir: Path, clock: ManualClock) -> Node:
    settings = load_node_config(EXAMPLE).model_copy(update={"data_dir": data_dir})
    return build_node(settings, clock=clock)


def command(action: dict, command_id: str = "cal-1") -> bytes:
    return json.dumps({"schema_version": 1, "command_id": command_id,
                       "issued_at": "2026-01-10T11:00:00Z", "action": action}).encode()


def results(node: Node) -> list[NodeEvent]:
    found = [decode(Channel.EVENT, m.payload) for m in node.outbox.peek(100_000)
             if m.topic.endswith("/event")]
    return [e for e in found if isinstance(e, NodeEvent) and e.type is EventType.COMMAND_RESULT]


def probe_reading(node: Node, clock: ManualClock) -> tuple[float, float]:
    node.agent.step(clock.now())
    readings = node.agent.cycle(clock.now()).readings  # type: ignore[union-attr]
    clock.advance(10)
    return readings.moisture_probe_v, readings.bean_moisture_pct_wb


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def test_set_calibration_is_used_from_the_next_reading_and_answered(tmp_path, clock) -> None:
    # without the tray, the telemetry's bean moisture is the probe's
    settings = load_node_config(EXAMPLE)
    node = build_node(settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "sensors": [s for s in settings.sensors if s.type != "load_cell_tray"]}), clock=clock)
    agent = node.agent
    assert agent.probe_calibration() == {"sensor": "sonda-humedad", "points": CONFIG_CURVE,
                                         "source": "config"}
    volts, moisture = probe_reading(node, clock)
    assert moisture == pytest.approx(volts_to_moisture_pct_wb(CONFIG_CURVE, volts), abs=0.05)
    agent.handle_command(command({"type": "set_calibration", "sensor": "sonda-humedad",
                                  "points": NEW_CURVE}), clock.now())
    (result,) = results(node)
    assert result.data["ok"] is True and result.data["command_id"] == "cal-1"
    assert result.data["action"] == "set_calibration"
    assert result.data["probe_calibration"] == {
        "sensor": "sonda-humedad", "points": [list(p) for p in NEW_CURVE], "source": "gateway"}
    assert result.message == ("probe sonda-humedad calibrated: 5 points, 0.8 V = 5 % to "
                              "3.2 V = 58 %")
    volts, moisture = probe_reading(node, clock)
    assert moisture == pytest.approx(volts_to_moisture_pct_wb(NEW_CURVE, volts), abs=0.05)
    assert moisture != pytest.approx(volts_to_moisture_pct_wb(CONFIG_CURVE, volts), abs=0.5)


def test_a_calibration_survives_a_restart_and_the_boot_event_says_so(tmp_path, clock) -> None:
    first = make_node(tmp_path / "data", clock)
    first.agent.handle_command(command({"type": "set_calibration", "points": NEW_CURVE}),
                               clock.now())
    first.outbox.close()
    second = make_node(tmp_path / "data", clock)
    assert second.agent.hardware.moisture_probe.calibration == NEW_CURVE  # type: ignore[union-attr]
    assert second.agent.calibration_source == "gateway"
    stored = json.loads((tmp_path / "data" / "calibration.json").read_text())
    assert stored["sensor"] == "sonda-humedad" and stored["command_id"] == "cal-1"


def test_a_calibration_for_another_probe_is_rejected_and_nothing_changes(tmp_path,
                                                                          clock) -> None:
    node = make_node(tmp_path / "data", clock)
    node.agent.handle_command(command({"type": "set_calibration", "sensor": "otra-sonda",
                                       "points": NEW_CURVE}), clock.now())
    (result,) = results(node)
    assert result.data["ok"] is False
    assert result.message == ("command cal-1 failed: this node's moisture probe is "
                              "'sonda-humedad', not 'otra-sonda'")
    assert node.agent.hardware.moisture_probe.calibration == [  # type: ignore[union-attr]
        tuple(p) for p in CONFIG_CURVE]
    assert not (tmp_path / "data" / "calibration.json").exists()


def test_an_invalid_curve_is_rejected_in_one_line(tmp_path, clock) -> None:
    node = make_node(tmp_path / "data", clock)
    node.agent.handle_command(command({"type": "set_calibration",
                                       "points": [[2.0, 50.0], [1.0, 10.0]]}), clock.now())
    (result,) = results(node)
    assert result.data == {"command_id": "cal-1", "ok": False}
    assert "calibration volts must be strictly increasing" in result.message
    assert "\n" not in result.message


def test_a_node_without_a_probe_rejects_a_calibration(tmp_path, clock) -> None:
    settings = load_node_config(EXAMPLE)
    settings = settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "sensors": [s for s in settings.sensors if s.type != "moisture_probe"]})
    node = build_node(settings, clock=clock)
    node.agent.handle_command(command({"type": "set_calibration", "points": NEW_CURVE}),
                              clock.now())
    (result,) = results(node)
    assert result.data["ok"] is False and "no moisture probe" in result.message


def test_a_stored_calibration_of_a_probe_no_longer_configured_is_ignored(tmp_path,
                                                                         clock) -> None:
    first = make_node(tmp_path / "data", clock)
    first.agent.handle_command(command({"type": "set_calibration", "points": NEW_CURVE}),
                               clock.now())
    first.outbox.close()
    # the technician fitted a new probe and named it differently in the config file
    settings = load_node_config(EXAMPLE)
    sensors = [s.model_copy(update={"name": "sonda-nueva"}) if s.type == "moisture_probe"
               else s for s in settings.sensors]
    second = build_node(settings.model_copy(update={"data_dir": tmp_path / "data",
                                                     "sensors": sensors}), clock=clock)
    assert second.agent.probe_calibration() == {"sensor": "sonda-nueva",
                                                "points": CONFIG_CURVE, "source": "config"}


def test_an_unreadable_stored_calibration_is_set_aside_and_reported(tmp_path, clock) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "calibration.json").write_text('{"sensor": "sonda-humedad", "points": [[2, 5]]}')
    node = make_node(data, clock)
    assert node.agent.calibration_source == "config"
    resets = [decode(Channel.EVENT, m.payload) for m in node.outbox.peek(100)
              if m.topic.endswith("/event")]
    assert any(isinstance(e, NodeEvent) and e.type is EventType.STORAGE_RESET
               and "stored probe calibration calibration.json" in e.message for e in resets)
    assert list(data.glob("calibration.json.corrupt-*"))
