"""The node loop survives what the field throws at it — driver bugs, a full or corrupt SD card,
hostile messages, clock steps — and keeps the beans safe. Fake chips only at the physical
boundary; GPIO on gpiozero's MockFactory; a real outbox on disk."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chip_fakes import ScriptedDht, SteadyChips
from gpiozero.pins.mock import MockFactory

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    Alarm,
    Channel,
    EventType,
    NodeConfig,
    Thresholds,
    decode,
    encode,
)
from firmware.agent import NodeAgent
from firmware.config import NodeSettings, load_node_config
from firmware.hardware import build_hardware
from firmware.node import build_node, open_outbox
from firmware.state_store import StateStore

EXAMPLE = Path(__file__).parent.parent / "firmware" / "examples" / "simulated.toml"
START = datetime(2026, 1, 10, 17, 0, tzinfo=UTC)
FAN_PIN = 18


class BrokenDhtChips(SteadyChips):
    """The inside DHT's library raises something no driver expects."""

    def dht(self, config):  # type: ignore[no-untyped-def]
        if config.location == "inside":
            self.opened.append(config.name)
            return ScriptedDht(then=ValueError("library bug"))
        return super().dht(config)


def hardware_settings(tmp_path: Path) -> NodeSettings:
    settings = load_node_config(EXAMPLE)
    return settings.model_copy(update={"simulated": False, "data_dir": tmp_path / "data"})


def make_agent(tmp_path: Path, clock: ManualClock, factory: MockFactory,
               chips: SteadyChips | None = None) -> NodeAgent:
    settings = hardware_settings(tmp_path)
    hardware = build_hardware(settings, chips or SteadyChips(), factory, clock)
    store = StateStore(settings.data_dir)
    return NodeAgent(settings, clock=clock, hardware=hardware,
                     outbox=open_outbox(settings, store), store=store)


def events(agent: NodeAgent, kind: EventType) -> list:
    return [e for e in (decode(Channel.EVENT, m.payload) for m in agent.outbox.peek(10_000)
                        if m.topic.endswith("/event")) if e.type is kind]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


class LoopClock(ManualClock):
    """A ManualClock for running ``NodeAgent.run``: each sleep advances it; ``actions`` maps a
    sleep count to something to do then (step the clock back, stop the loop)."""

    def __init__(self, start: datetime, actions: dict[int, object]) -> None:
        super().__init__(start)
        self.sleeps = 0
        self.actions = actions

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.sleeps += 1
        action = self.actions.get(self.sleeps)
        if callable(action):
            action()


def test_a_driver_bug_is_a_sensor_fault_and_the_dryer_ventilates(tmp_path, clock, factory):
    agent = make_agent(tmp_path, clock, factory, BrokenDhtChips(temp_c=30.0))
    telemetry = agent.cycle(clock.now())
    assert "driver error ValueError: library bug" in telemetry.sensor_faults["aire-interior"]
    assert (telemetry.fan_speed_pct, telemetry.vent_open_pct) == (100.0, 100.0)
    assert factory.pin(FAN_PIN).state == 1.0


def test_control_goes_on_when_readings_cannot_be_stored(tmp_path, clock, factory):
    agent = make_agent(tmp_path, clock, factory, SteadyChips(temp_c=66.0, rh_pct=20.0))
    agent.outbox.close()  # the SD card is gone: every write fails
    assert agent.cycle(clock.now()) is None
    assert agent.errors_total >= 1 and "storing the reading" in agent.last_error
    assert factory.pin(FAN_PIN).state == 1.0  # above the 65 °C limit: fans full regardless
    assert Alarm.AIR_TEMP_LIMIT in agent.last_decision.alarms


def test_a_message_whose_handler_fails_does_not_stop_the_node(tmp_path, clock, factory):
    agent = make_agent(tmp_path, clock, factory)
    (agent.settings.data_dir / "config.json.tmp").mkdir()  # config.json cannot be written
    config = NodeConfig(version=3, issued_at=START, thresholds=Thresholds())
    agent.deliver(Channel.CONFIG, encode(config))
    agent.step(clock.now())
    assert agent.config_version == 0 and agent.errors_total == 1
    rejected = events(agent, EventType.CONFIG_REJECTED)
    assert len(rejected) == 1 and "config not applied" in rejected[0].message
    assert agent.cycle(clock.now()) is not None  # and the node carries on


def test_a_hostile_config_payload_is_rejected_in_one_line(tmp_path, clock, factory):
    agent = make_agent(tmp_path, clock, factory)
    agent.deliver(Channel.CONFIG, b"[" * 20_000)
    agent.step(clock.now())
    rejected = events(agent, EventType.CONFIG_REJECTED)
    assert len(rejected) == 1 and "nested too deeply" in rejected[0].message
    assert agent.errors_total == 0  # a bad payload is the sender's error, handled normally


def test_sampling_goes_on_after_the_clock_steps_back(tmp_path, factory):
    stop = threading.Event()
    clock = LoopClock(START, {})
    clock.actions = {100: lambda: clock.advance(-3600), 400: stop.set}
    agent = make_agent(tmp_path, clock, factory)
    agent.run(stop)
    # 400 one-second ticks at one reading per 10 s: ~40 readings, not ~10 and an hour's stall
    assert agent.outbox.counter("telemetry") >= 38


def test_starting_a_batch_on_an_empty_tray_is_refused(tmp_path, clock, factory):
    # counts == the tray's tare offset: nothing on the tray
    agent = make_agent(tmp_path, clock, factory, SteadyChips(counts=8400))
    command = {"schema_version": 1, "command_id": "c-1", "issued_at": START.isoformat(),
               "action": {"type": "start_batch", "batch_id": "lote-1",
                          "initial_moisture_pct_wb": 56}}
    agent.handle_command(json.dumps(command).encode(), clock.now())
    result = events(agent, EventType.COMMAND_RESULT)[-1]
    assert result.data["ok"] is False and "put at least 0.5 kg" in result.message
    assert agent.batch is None


def test_a_corrupt_outbox_is_set_aside_and_numbering_jumps_past_old_numbers(tmp_path):
    settings = load_node_config(EXAMPLE).model_copy(update={"data_dir": tmp_path / "data"})
    settings.data_dir.mkdir()
    (settings.data_dir / "outbox.sqlite3").write_bytes(b"this is no database" * 100)
    node = build_node(settings, clock=ManualClock(START))
    reset = [decode(Channel.EVENT, m.payload) for m in node.outbox.peek(100)
             if m.topic.endswith("/event")]
    assert reset[0].type is EventType.STORAGE_RESET
    assert "not a usable outbox database" in reset[0].message
    assert node.agent.cycle(ManualClock(START).now()).seq > int(time.time()) - 60
    assert list(settings.data_dir.glob("outbox.sqlite3.corrupt-*"))


def test_the_loop_tells_systemd_it_is_ready_and_alive(tmp_path, factory, monkeypatch):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    stop = threading.Event()
    clock = LoopClock(START, {20: stop.set})
    make_agent(tmp_path, clock, factory).run(stop)
    received = []
    listener.setblocking(False)
    while True:
        try:
            received.append(listener.recv(100).decode())
        except BlockingIOError:
            break
    listener.close()
    assert received[0] == "READY=1" and received[-1] == "STOPPING=1"
    assert "WATCHDOG=1" in received


def test_boot_ventilates_before_anything_is_read_from_disk(tmp_path):
    settings = load_node_config(EXAMPLE).model_copy(update={"data_dir": tmp_path / "data"})
    node = build_node(settings, clock=ManualClock(START))
    assert [fan.speed_pct for fan in node.agent.hardware.fans] == [100.0, 100.0]
    assert node.agent.hardware.vents[0].target_pct == 100.0

