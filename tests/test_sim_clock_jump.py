"""A node's clock that steps while it runs, forward and back (NTP after a boot without RTC, a bad
time server): the simulated node steps through ``simulation.clock_offset_file``; the node loop
keeps its readings' interval (no burst, no stall), numbers every reading once, tells the
gateway at once (a status) and keeps the dryer physics on true time.

Pure parts (offset parsing, step detection, the loop's timetable) with hand-driven clocks; the
node loop in-process on a ManualClock; and a real ``cacao-dryer node run`` process on a
private Mosquitto whose offset file is rewritten while it runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.clock import ManualClock, OffsetClock, SystemClock, stepped_s
from cacao_dryer.contract import Channel, Mode, NodeState, Telemetry, decode
from cacao_dryer.errors import ConfigError
from firmware.agent import MIN_CLOCK_STEP, Timetable, clock_step, plan_tick
from firmware.config import load_node_config
from firmware.node import Node, build_node
from firmware.simulation.clock_offset import ClockOffsetFile, parse_clock_offset

EXAMPLE = Path(__file__).parent.parent / "firmware" / "examples" / "simulated.toml"
START = datetime(2026, 1, 10, 11, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)


def write_offset(path: Path, text: str) -> None:
    """As the fault suite and docs/simulator.md do it: never seen half written."""
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


# --- the offset file's text (pure) ----------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("21600", 21600.0), ("+6h", 21600.0), ("-3 h", -10800.0), ("-90min", -5400.0),
    ("2d\n", 172800.0), ("+0.5 h  # half an hour ahead", 1800.0), ("45 s", 45.0),
    ("", 0.0), ("  \n", 0.0), ("# right again", 0.0), ("0", 0.0), ("-.5h", -1800.0)])
def test_a_clock_offset_is_seconds_or_a_number_with_a_unit(text, seconds):
    assert parse_clock_offset(text) == seconds


@pytest.mark.parametrize("text", ["six hours", "+6 hours", "6h30", "--3h", "+", "1e5", "nan",
                                  "3651d", "-87700h"])
def test_anything_else_is_refused_in_one_line_naming_the_file(text):
    with pytest.raises(ConfigError, match=r"^/data/clock-offset.txt: ") as refused:
        parse_clock_offset(text, "/data/clock-offset.txt")
    assert "\n" not in str(refused.value)


# --- clocks that can tell they stepped ----------------------------------------------------

def test_an_offset_clock_shows_true_time_plus_its_offset_and_says_it_stepped():
    true_time = ManualClock(START)
    pi = OffsetClock(true_time)
    assert (pi.now(), stepped_s(pi)) == (START, 0.0)
    pi.set_offset(6 * 3600)
    true_time.advance(10)
    assert pi.now() == START + 6 * HOUR + 10 * SECOND
    assert stepped_s(pi) == 6 * 3600
    pi.sleep(5)  # sleeping is true time passing, not a step
    assert (true_time.now(), stepped_s(pi)) == (START + 15 * SECOND, 6 * 3600)
    with pytest.raises(ValueError, match="finite"):
        pi.set_offset(float("nan"))


def test_the_system_clock_has_not_stepped_and_a_manual_clock_cannot_tell():
    assert abs(stepped_s(SystemClock()) or 0.0) < 0.5  # the test machine's clock holds still
    assert stepped_s(ManualClock(START)) is None


def test_steps_under_a_second_are_not_steps_but_add_up():
    assert clock_step(None, 5.0) == (timedelta(0), 5.0)
    assert clock_step(0.0, 0.4) == (timedelta(0), 0.0)          # carried: compared from 0
    assert clock_step(0.0, 1.2) == (timedelta(seconds=1.2), 1.2)
    assert clock_step(21600.0, -10800.0) == (timedelta(hours=-9), -10800.0)
    assert MIN_CLOCK_STEP == SECOND


# --- the loop's timetable (pure) -------------------------------------------------------------

EVERY, STATUS_EVERY = 10 * SECOND, 60 * SECOND


def test_a_reported_forward_step_keeps_the_interval_and_sends_a_status_at_once():
    now = START + 6 * HOUR + 3 * SECOND  # the clock just jumped 6 h, 7 s before a reading
    due = Timetable(next_sample=START + 10 * SECOND, next_status=START + 50 * SECOND)
    plan = plan_tick(now, due, EVERY, STATUS_EVERY, 6 * HOUR)
    assert (plan.take_sample, plan.send_status) == (False, True)
    assert plan.due == Timetable(START + 6 * HOUR + 10 * SECOND, now + STATUS_EVERY)


def test_a_reported_backward_step_does_not_wait_for_the_time_it_left():
    now = START - 3 * HOUR + 3 * SECOND
    due = Timetable(next_sample=START + 10 * SECOND, next_status=START + 50 * SECOND)
    plan = plan_tick(now, due, EVERY, STATUS_EVERY, -3 * HOUR)
    assert (plan.take_sample, plan.send_status) == (False, True)
    assert plan.due.next_sample == START - 3 * HOUR + 10 * SECOND


def test_an_unreported_step_forward_takes_one_reading_not_a_burst():
    now = START + 6 * HOUR
    plan = plan_tick(now, Timetable(START + 10 * SECOND, START + 50 * SECOND), EVERY,
                     STATUS_EVERY)
    assert plan.take_sample and plan.due.next_sample == now + EVERY
    again = plan_tick(now + SECOND, plan.due, EVERY, STATUS_EVERY)
    assert not again.take_sample


def test_an_unreported_step_back_samples_now_instead_of_stalling():
    now = START - 3 * HOUR
    plan = plan_tick(now, Timetable(START + 10 * SECOND, START + 50 * SECOND), EVERY,
                     STATUS_EVERY)
    assert plan.take_sample and plan.send_status
    assert plan.due.next_sample == now + EVERY


@given(st.dictionaries(st.integers(1, 499), st.integers(-3 * 86_400, 3 * 86_400), max_size=8),
       st.integers(1, 30))
def test_reported_steps_leave_the_readings_exactly_one_interval_apart(steps, every_s):
    """One-second ticks, the clock stepping by up to three days either way at random ticks:
    the readings come every ``every_s`` ticks all the same (never two close together, never
    a gap), and each step sends a status at once."""
    every = timedelta(seconds=every_s)
    offset = timedelta(0)
    due = Timetable(START, START + STATUS_EVERY)
    sampled: list[int] = []
    for tick in range(500):
        step = timedelta(seconds=steps.get(tick, 0))
        offset += step
        plan = plan_tick(START + tick * SECOND + offset, due, every, STATUS_EVERY, step)
        due = plan.due
        assert plan.send_status or not step
        if plan.take_sample:
            sampled.append(tick)
    assert sampled == list(range(0, 500, every_s))


# --- the offset file ------------------------------------------------------------------------

class Ticks:
    """Real time for the file poller, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_offset_file_steps_the_clock_when_it_changes(tmp_path):
    path, ticks = tmp_path / "clock-offset.txt", Ticks()
    clock = OffsetClock(ManualClock(START))
    offset_file = ClockOffsetFile(path, clock, every_s=0.5, monotonic=ticks)
    assert offset_file.poll() is None and clock.offset_s == 0  # no file: the clock is right
    write_offset(path, "+6h\n")
    assert offset_file.poll() is None  # read at most every 0.5 s
    ticks.now = 0.5
    assert offset_file.poll() == 21600 and clock.now() == START + 6 * HOUR
    ticks.now = 1.0
    assert offset_file.poll() is None  # unchanged
    write_offset(path, "-3h")
    ticks.now = 1.5
    assert offset_file.poll() == -9 * 3600 and clock.offset_s == -10800
    path.unlink()
    ticks.now = 2.0
    assert offset_file.poll() == 10800 and clock.now() == START


def test_a_malformed_offset_file_is_reported_once_and_leaves_the_clock(tmp_path, caplog):
    path, ticks = tmp_path / "clock-offset.txt", Ticks()
    clock = OffsetClock(ManualClock(START), offset_s=3600)
    offset_file = ClockOffsetFile(path, clock, monotonic=ticks)
    write_offset(path, "six hours")
    with caplog.at_level(logging.WARNING, logger="cacao_dryer.node"):
        for second in range(3):
            ticks.now = second
            assert offset_file.poll() is None
    assert clock.offset_s == 3600
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}: 'six hours' is not a clock offset (seconds, or a number with "
                        "s, min, h or d: +6h, -3 h, -10800); the clock stays +3600 s off"]


# --- the setting ----------------------------------------------------------------------------

def node_toml(folder: Path, **simulation: object) -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    data |= {"data_dir": "data"}
    data["simulation"] |= simulation
    return data


def test_a_relative_offset_file_is_next_to_the_config(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(tomli_w.dumps(node_toml(tmp_path, clock_offset_file="clock-offset.txt")))
    settings = load_node_config(config)
    assert settings.simulation.clock_offset_file == tmp_path / "clock-offset.txt"


def test_a_real_node_refuses_an_offset_file(tmp_path):
    config = tmp_path / "node.toml"
    data = node_toml(tmp_path, clock_offset_file="clock-offset.txt") | {"simulated": False}
    config.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError, match="clock_offset_file steps a simulated node's clock"):
        load_node_config(config)


# --- the node loop, in-process --------------------------------------------------------------

class LoopClock(ManualClock):
    """True time for ``NodeAgent.run``: each sleep advances it; ``actions[n]`` runs after
    the n-th sleep (step the node's clock, stop the loop)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.sleeps = 0
        self.actions: dict[int, object] = {}

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.sleeps += 1
        action = self.actions.get(self.sleeps)
        if callable(action):
            action()


def simulated_node(tmp_path: Path, world: ManualClock) -> Node:
    settings = load_node_config(EXAMPLE).model_copy(update={
        "data_dir": tmp_path / "data", "sample_interval_s": 10.0})
    return build_node(settings, clock=world)


def readings(node: Node) -> list[Telemetry]:
    return [decode(Channel.TELEMETRY, m.payload) for m in node.outbox.peek(100_000)
            if m.topic.endswith("/telemetry")]


def test_the_loop_steps_forward_and_back_with_every_reading_numbered_once(tmp_path):
    world, stop = LoopClock(START), threading.Event()
    node = simulated_node(tmp_path, world)
    assert isinstance(node.clock, OffsetClock)
    world.actions = {95: lambda: node.clock.set_offset(6 * 3600),
                     195: lambda: node.clock.set_offset(-3 * 3600), 300: stop.set}
    node.agent.run(stop)
    taken = readings(node)
    assert [t.seq for t in taken] == list(range(1, 31))  # 300 one-second ticks, one per 10 s
    gaps = [b.measured_at - a.measured_at for a, b in itertools.pairwise(taken)]
    assert gaps.count(10 * SECOND) == len(gaps) - 2
    assert [g for g in gaps if g != 10 * SECOND] == [6 * HOUR + 10 * SECOND,
                                                     -9 * HOUR + 10 * SECOND]
    # the dryer physics stayed on true time: no "time went backwards", no 6-h drying leap
    assert node.agent.errors_total == 0, node.agent.last_error
    assert node.model.time == START + 299 * SECOND  # the last tick's true time


def test_a_manual_override_lasts_as_asked_across_a_step_back(tmp_path):
    world, stop = LoopClock(START), threading.Event()
    node = simulated_node(tmp_path, world)
    override = {"schema_version": 1, "command_id": "c-1", "issued_at": START.isoformat(),
                "action": {"type": "override", "fan_speed_pct": 80, "vent_open_pct": 40,
                           "duration_s": 600}}
    node.agent.deliver(Channel.COMMAND, json.dumps(override).encode())
    world.actions = {100: lambda: node.clock.set_offset(-3 * 3600), 700: stop.set}
    node.agent.run(stop)
    # a reading each 10 s of true time: manual for the 600 s asked, not 600 s plus 3 h
    assert [t.mode for t in readings(node)] == [Mode.MANUAL] * 60 + [Mode.AUTO] * 10


# --- a real node process ---------------------------------------------------------------------

SITE, NODE = "demo", "secador-reloj"


class ClockNodeProcess:
    """``cacao-dryer node run`` of the simulated dryer with ``simulation.clock_offset_file``,
    at 10× real time: a reading each real second, a periodic status only every 6 real
    minutes, so a status with the new clock within the test's waits is the step's own."""

    def __init__(self, folder: Path, broker: MosquittoBroker) -> None:
        data = tomllib.loads(EXAMPLE.read_text())
        data |= {"node_id": NODE, "site_id": SITE, "data_dir": str(folder / "data"),
                 "sample_interval_s": 10.0, "status_interval_s": 3600.0}
        data["simulation"] |= {"speed": 10.0, "start": START.isoformat(), "start_batch": True,
                               "clock_offset_file": "clock-offset.txt"}
        self.config = folder / "node.toml"
        self.config.write_text(tomli_w.dumps(data))
        self.offset_file = folder / "clock-offset.txt"
        self.log = folder / "node.log"
        self.broker = broker
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config",
                 str(self.config), "--broker", self.broker.url],
                stdout=log, stderr=subprocess.STDOUT)

    def step_clock(self, hours: float) -> None:
        write_offset(self.offset_file, f"{hours:+g}h")

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)


@pytest.fixture
def clock_node(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[ClockNodeProcess]:
    node = ClockNodeProcess(tmp_path, mosquitto)
    yield node
    if node.process is not None and node.process.poll() is None:
        node.process.kill()
        node.process.wait()


def telemetry(subscriber: Subscriber) -> list[Telemetry]:
    return [decode(Channel.TELEMETRY, p) for t, p, _ in subscriber.messages()
            if t.endswith("/telemetry")]


def live_statuses(subscriber: Subscriber) -> list[dict]:
    return [json.loads(p) for t, p, retained in subscriber.messages()
            if t.endswith("/status") and not retained]


@pytest.mark.integration
def test_a_running_node_process_steps_its_clock_both_ways(clock_node, mosquitto):
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/#", "clock-test") as subscriber:
        clock_node.start()
        wait_for(lambda: len(telemetry(subscriber)) >= 3, 60, "the first readings")

        def step_and_wait(hours: float) -> None:
            before = len(telemetry(subscriber))
            clock_node.step_clock(hours)
            wait_for(lambda: len(telemetry(subscriber)) >= before + 3, 30,
                     f"readings after the step to {hours:+g} h")

        statuses_before = len(live_statuses(subscriber))
        last_before = telemetry(subscriber)[-1].measured_at
        step_and_wait(+6)
        statuses = live_statuses(subscriber)[statuses_before:]
        assert statuses, "no status right after the step forward"
        # the status already carries the new clock (the gateway measures offsets from it)
        assert datetime.fromisoformat(statuses[0]["sent_at"]) - last_before > 5 * HOUR
        step_and_wait(-3)
        step_and_wait(0)
        assert clock_node.terminate() == 0
        wait_for(lambda: any(s["state"] == NodeState.OFFLINE.value
                             for s in live_statuses(subscriber)), 10, "the goodbye status")
    taken = telemetry(subscriber)
    seqs = [t.seq for t in taken]
    assert seqs == list(range(1, len(seqs) + 1))  # in order, none twice, none skipped
    gaps = [b.measured_at - a.measured_at for a, b in itertools.pairwise(taken)]
    jumps = [g for g in gaps if abs(g) > HOUR]
    assert len(jumps) == 3
    for jump, step in zip(jumps, (6 * HOUR, -9 * HOUR, 3 * HOUR), strict=True):
        assert abs(jump - step) < 60 * SECOND, (jump, step)
    steady = [g for g in gaps if abs(g) <= HOUR]
    assert min(steady) >= 5 * SECOND, "a burst of readings"  # one per 10 simulated s
    assert max(steady) <= 60 * SECOND, "readings stalled"
    goodbye = [s for s in live_statuses(subscriber) if s["state"] == NodeState.OFFLINE.value]
    assert goodbye[-1]["errors_total"] == 0, goodbye[-1].get("last_error")
    assert clock_node.log.read_text().count("clock stepped") == 3
