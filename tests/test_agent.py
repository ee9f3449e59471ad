"""The node loop with the simulated dryer, gpiozero MockFactory pins and a real outbox, driven by
a ManualClock (no broker: what would be published is read back from the outbox)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    Alarm,
    Channel,
    EventType,
    Mode,
    NodeConfig,
    NodeEvent,
    Telemetry,
    Thresholds,
    decode,
    encode,
)
from firmware.config import load_node_config
from firmware.node import Node, build_node

EXAMPLE = Path(__file__).parent.parent / "firmware" / "examples" / "simulated.toml"
# 11:00 UTC = 06:00 in Peru, January (rainy season).
START = datetime(2026, 1, 10, 11, 0, tzinfo=UTC)


def make_node(data_dir: Path, clock: ManualClock, **changes: object) -> Node:
    settings = load_node_config(EXAMPLE).model_copy(update={"data_dir": data_dir, **changes})
    return build_node(settings, clock=clock)


def run(node: Node, clock: ManualClock, seconds: int) -> list[Telemetry]:
    """Advance the node's loop by ``seconds`` of clock time, one-second ticks."""
    produced = []
    interval = int(node.settings.sample_interval_s)
    for second in range(seconds):
        now = clock.now()
        node.agent.step(now)
        if second % interval == 0:
            produced.append(node.agent.cycle(now))
        clock.advance(1)
    return produced


def queued(node: Node, channel: Channel) -> list:
    return [decode(channel, m.payload) for m in node.outbox.peek(100_000)
            if m.topic.endswith("/" + channel.value)]


def events(node: Node, kind: EventType) -> list[NodeEvent]:
    return [e for e in queued(node, Channel.EVENT) if e.type is kind]


def command(action: dict, **fields: object) -> bytes:
    body = {"schema_version": 1, "command_id": "c-1", "issued_at": "2026-01-10T11:00:00Z",
            "action": action} | fields
    return json.dumps(body).encode()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def node(tmp_path: Path, clock: ManualClock) -> Node:
    return make_node(tmp_path / "data", clock)


def test_each_cycle_queues_one_reading_with_the_next_sequence_number(node, clock):
    produced = run(node, clock, 60)
    assert [t.seq for t in produced] == [1, 2, 3, 4, 5, 6]
    assert [t.seq for t in queued(node, Channel.TELEMETRY)] == [1, 2, 3, 4, 5, 6]


def test_readings_come_from_the_simulated_dryer_through_the_drivers(node, clock):
    last = run(node, clock, 120)[-1]
    readings = last.readings
    assert 15 < readings.air_temp_c < 40 and 15 < readings.ambient_temp_c < 40
    assert 40 < readings.bean_moisture_pct_wb < 60  # fresh batch at 56 %
    assert readings.tray_mass_kg == pytest.approx(5.0, abs=0.2)
    assert last.batch_id is not None and last.raining is not None


def test_fans_and_vents_follow_the_controller_on_gpiozero_pins(node, clock):
    last = run(node, clock, 30)[-1]
    hardware = node.agent.hardware
    assert [fan.speed_pct for fan in hardware.fans] == [last.fan_speed_pct] * 2
    assert [vent.target_pct for vent in hardware.vents] == [last.vent_open_pct] * 2


def test_sequence_numbers_continue_after_a_restart(tmp_path, clock):
    first = make_node(tmp_path / "data", clock)
    run(first, clock, 30)
    first.outbox.close()
    second = make_node(tmp_path / "data", clock)
    assert [t.seq for t in run(second, clock, 30)] == [4, 5, 6]


def test_a_new_config_is_applied_persisted_and_acknowledged(tmp_path, node, clock):
    config = NodeConfig(version=2, issued_at=START, thresholds=Thresholds(air_temp_warn_c=50))
    node.agent.handle_config(encode(config))
    assert node.agent.thresholds.air_temp_warn_c == 50
    assert [e.data["version"] for e in events(node, EventType.CONFIG_APPLIED)] == [2]
    assert run(node, clock, 1)[0].config_version == 2
    node.outbox.close()
    restarted = make_node(tmp_path / "data", clock)
    assert restarted.agent.config_version == 2


def test_an_invalid_config_is_rejected_and_the_old_one_kept(node):
    bad = b'{"schema_version":1,"version":3,"issued_at":"2026-01-10T11:00:00Z",' \
          b'"thresholds":{"air_temp_warn_c":64,"air_temp_alarm_c":60}}'
    node.agent.handle_config(bad)
    rejected = events(node, EventType.CONFIG_REJECTED)
    assert len(rejected) == 1 and "air_temp_warn_c <= air_temp_alarm_c" in rejected[0].message
    assert rejected[0].data["version"] == 3
    assert node.agent.config_version == 0


def test_an_older_config_version_is_refused(node):
    newer = NodeConfig(version=5, issued_at=START, thresholds=Thresholds())
    older = NodeConfig(version=4, issued_at=START, thresholds=Thresholds(air_temp_warn_c=40))
    node.agent.handle_config(encode(newer))
    node.agent.handle_config(encode(older))
    assert node.agent.config_version == 5
    assert "older than the applied version 5" in events(node, EventType.CONFIG_REJECTED)[0].message


def test_the_same_config_delivered_again_is_acknowledged_again(node):
    config = encode(NodeConfig(version=2, issued_at=START, thresholds=Thresholds()))
    node.agent.handle_config(config)
    node.agent.handle_config(config)
    assert [e.data["version"] for e in events(node, EventType.CONFIG_APPLIED)] == [2, 2]


def test_override_forces_fans_until_it_expires(node, clock):
    node.agent.handle_command(command({"type": "override", "fan_speed_pct": 80,
                                       "vent_open_pct": 40, "duration_s": 600}), clock.now())
    during = run(node, clock, 300)[-1]
    assert (during.mode, during.fan_speed_pct, during.vent_open_pct) == (Mode.MANUAL, 80, 40)
    after = run(node, clock, 400)[-1]
    assert after.mode is Mode.AUTO
    assert len(events(node, EventType.OVERRIDE_ENDED)) == 1
    assert events(node, EventType.COMMAND_RESULT)[0].data["ok"] is True


def test_an_expired_command_is_not_executed(node, clock):
    late = command({"type": "override", "fan_speed_pct": 80, "duration_s": 600},
                   expires_at=(START - timedelta(minutes=1)).isoformat())
    node.agent.handle_command(late, clock.now())
    assert node.agent.override is None
    result = events(node, EventType.COMMAND_RESULT)[0]
    assert result.data["ok"] is False and "expired" in result.message


def test_a_malformed_command_gets_a_failed_result_naming_the_problem(node, clock):
    node.agent.handle_command(b'{"schema_version":1,"command_id":"c-9"}', clock.now())
    result = events(node, EventType.COMMAND_RESULT)[0]
    assert result.data == {"command_id": "c-9", "ok": False}
    assert "issued_at" in result.message


def test_batch_start_and_end(node, clock):
    node.agent.handle_command(command({"type": "start_batch", "batch_id": "lote-77",
                                       "initial_moisture_pct_wb": 58}), clock.now())
    assert run(node, clock, 10)[-1].batch_id == "lote-77"
    assert node.agent.batch.initial_tray_mass_kg == pytest.approx(5.0, abs=0.2)
    node.agent.handle_command(command({"type": "end_batch", "batch_id": "lote-77"}),
                              clock.now())
    assert run(node, clock, 10)[-1].batch_id is None
    assert [e.type for e in queued(node, Channel.EVENT)].count(EventType.BATCH_ENDED) == 1


def test_ending_a_batch_that_is_not_in_the_dryer_fails(node, clock):
    node.agent.handle_command(command({"type": "end_batch", "batch_id": "lote-otro"}),
                              clock.now())
    result = events(node, EventType.COMMAND_RESULT)[-1]
    assert result.data["ok"] is False and "not in this dryer" in result.message


def test_a_dead_inside_sensor_is_reported_and_the_dryer_ventilated(node, clock):
    run(node, clock, 60)
    node.model.inject_fault("aire-interior", "dead")
    last = run(node, clock, 600)[-1]
    assert "aire-interior" in last.sensor_faults
    assert "air_temp_c" not in last.readings.model_dump(exclude_none=True)
    assert Alarm.SENSOR_FAULT in last.alarms
    assert last.vent_open_pct == 100 and last.fan_speed_pct > 0
    assert [e.data["sensor"] for e in events(node, EventType.SENSOR_FAULT)] == ["aire-interior"]
    node.model.clear_fault("aire-interior")
    run(node, clock, 60)
    assert len(events(node, EventType.SENSOR_RECOVERED)) == 1


def test_tray_moisture_follows_the_mass_balance(node, clock):
    last = run(node, clock, 30)[-1]
    batch = node.agent.batch
    dry_matter = batch.initial_tray_mass_kg * (1 - batch.initial_moisture_pct_wb / 100)
    expected = 100 * (1 - dry_matter / last.readings.tray_mass_kg)
    assert last.readings.bean_moisture_pct_wb == pytest.approx(expected, abs=0.01)


def test_status_reports_queue_and_sequence(node, clock):
    run(node, clock, 30)
    status = decode(Channel.STATUS, node.agent.status())
    assert (status.last_seq, status.queue_depth) == (3, node.outbox.depth())
    assert status.simulated is True and status.config_version == 0


def test_boot_batch_is_started_once_for_the_demo(tmp_path, clock):
    first = make_node(tmp_path / "data", clock)
    batch = first.agent.batch
    first.outbox.close()
    assert make_node(tmp_path / "data", clock).agent.batch == batch


def test_tare_command_zeroes_the_tray(node, clock):
    node.agent.handle_command(command({"type": "tare_tray"}), clock.now())
    assert events(node, EventType.COMMAND_RESULT)[-1].data["ok"] is True
    assert node.agent.hardware.tray.read() == pytest.approx(0.0, abs=0.05)


def test_tare_survives_a_restart(tmp_path, clock):
    first = make_node(tmp_path / "data", clock)
    first.agent.handle_command(command({"type": "tare_tray"}), clock.now())
    offset = first.agent.hardware.tray.tare_offset_counts
    first.outbox.close()
    second = make_node(tmp_path / "data", clock)
    assert second.agent.hardware.tray.tare_offset_counts == offset
