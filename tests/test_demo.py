"""The README's demo, for real: ``cacao-dryer demo`` as a process — broker, simulated dryers,
gateway with SQLite, dashboard, demo logins printed, a batch drying — and Ctrl-C ending it
all; plus the terminal-only fallback on the pure-Python broker."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_for
from support.mosquitto import free_port

from cacao_dryer.demo import (
    DemoClock,
    demo_password,
    pick_port,
    prepare_workdir,
    run_demo,
    simulated_start,
)
from gateway.auth.passwords import check_password

REPO = Path(__file__).parent.parent
USER_LINE = re.compile(r"^  (\S+)\s+(operator|technician|manager|admin)\s+(\S+)$")


class Console:
    """The demo's standard output, line by line, read in a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line.rstrip("\n"))
                                         for line in stdout], daemon=True).start()

    def until(self, text: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                self.lines.append(self._queue.get(timeout=max(0.01,
                                                              deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} on the console within {timeout:g} s:\n"
                                     + "\n".join(self.lines)) from None
        return self.lines


def children_of(pid: int) -> set[int]:
    """Every process whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
def test_the_demo_brings_up_the_whole_site_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    with socket.socket() as busy:  # the asked-for port is taken: the demo takes the next
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        wanted = busy.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "demo", "--nodes", "2",
             "--port", str(wanted), "--workdir", str(tmp_path / "demo")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        console = Console(process)
        try:
            lines = console.until("Ctrl-C stops everything.", 90)
        except BaseException:
            process.kill()
            raise
    api = httpx.Client(timeout=10)
    try:
        url = next(line.split()[1] for line in lines if line.startswith("Dashboard: "))
        assert any(f"Port {wanted} is in use" in line for line in lines), lines
        assert url.startswith("http://127.0.0.1:") and url != f"http://127.0.0.1:{wanted}/"
        users = {m[2]: (m[1], m[3]) for m in map(USER_LINE.match, lines) if m}
        assert sorted(users) == ["admin", "manager", "operator", "technician"], lines
        for role, (username, password) in users.items():
            session = httpx.Client(base_url=url, timeout=10)
            login = session.post("/api/auth/login",
                                 json={"username": username, "password": password})
            assert login.status_code == 200, login.text
            assert session.get("/api/auth/me").json()["role"] == role
            session.close()
        username, password = users["operator"]
        api = httpx.Client(base_url=url, timeout=10)
        api.post("/api/auth/login", json={"username": username, "password": password})

        nodes = api.get("/api/nodes").json()
        assert [(n["node_id"], n["state"]) for n in nodes] == [
            ("secador-01", "online"), ("secador-02", "online")]
        assert all(not n["stale"] for n in nodes)
        # The gateway keeps the dryers' accelerated time: their readings are recent by its clock.
        now = datetime.fromisoformat(api.get("/api/health").json()["now"])
        for node in nodes:
            measured = datetime.fromisoformat(node["latest"]["measured_at"])
            assert abs(now - measured) < timedelta(minutes=10), (node["node_id"], now, measured)
        batch_id = nodes[0]["running_batch_id"]
        assert batch_id and nodes[1]["running_batch_id"] is None  # the last dryer stays free
        assert any(f"{batch_id} on secador-01" in line for line in lines)

        def batch() -> dict[str, Any]:
            answer: dict[str, Any] = api.get(f"/api/batches/{batch_id}").json()
            return answer
        first = batch()
        assert (first["started_by"], first["lot_code"]) == ("demo", "DEMO-01")
        wait_for(lambda: batch()["current_moisture_pct_wb"] is not None, 20,
                 "the batch's first moisture reading", interval=0.5)
        first = batch()
        assert first["node"]["started_at"] is not None  # the dryer took the start command

        def drying() -> bool:
            now = batch()
            return (now["current_moisture_pct_wb"] < first["current_moisture_pct_wb"] - 1
                    and now["progress_pct"] > first["progress_pct"])
        wait_for(drying, 40, "the batch's moisture falling and progress rising", interval=1)
        prediction = api.get(f"/api/batches/{batch_id}/prediction")
        assert prediction.status_code == 200, prediction.text
    finally:
        api.close()
        children = children_of(process.pid)
        process.send_signal(signal.SIGINT)  # Ctrl-C, to the demo alone
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            for child in children:
                if alive(child):
                    os.kill(child, signal.SIGKILL)
            raise
    assert len(children) == 3, children  # the broker and two dryers
    assert process.returncode == 0
    console.until("Stopped.", 5)
    assert [child for child in children if alive(child)] == []


@pytest.mark.integration
def test_with_the_pure_python_broker_the_dryers_show_in_the_terminal(tmp_path, capsys):
    view = run_demo(nodes=3, speed=600, broker=None, duration_s=8, workdir=tmp_path,
                    embedded_broker=True)
    assert view is not None and not hasattr(view, "users")
    assert sorted(view.nodes) == ["demo/secador-01", "demo/secador-02", "demo/secador-03"]
    for name, node in view.nodes.items():
        assert node.telemetry is not None, f"{name} sent no telemetry"
        assert node.readings_seen >= 3
        assert node.telemetry.readings.bean_moisture_pct_wb is not None
        assert node.status is not None and node.status.state.value == "online"
    assert view.invalid == 0
    assert any(": boot — node started" in line for line in view.events)
    out = capsys.readouterr().out
    assert "need an MQTT 5 broker" in out and "secador-01" in out
    for index in (1, 2, 3):
        assert (tmp_path / f"secador-{index:02d}" / "outbox.sqlite3").exists()


def test_the_demo_clock_catches_up_forwards_and_is_set_once_at_start() -> None:
    start = datetime(2026, 1, 10, 11, 0, tzinfo=UTC)
    clock = DemoClock(start, speed=600)
    clock.catch_up(start - timedelta(hours=1))  # behind: ignored
    assert start <= clock.now() < start + timedelta(minutes=5)
    clock.catch_up(start + timedelta(hours=2))
    assert start + timedelta(hours=2) <= clock.now() < start + timedelta(hours=2, minutes=5)
    clock.set_to(start)  # while the demo starts: the first dryer's time, even if behind
    assert start <= clock.now() < start + timedelta(minutes=5)
    with pytest.raises(ValueError):
        DemoClock(datetime(2026, 1, 10), speed=600)


def test_the_demo_day_starts_at_six_in_peru() -> None:
    start = simulated_start(datetime(2026, 3, 2, 3, 30, tzinfo=UTC))  # 22:30 on the 1st in Lima
    assert start.isoformat() == "2026-03-01T06:00:00-05:00"


def test_demo_passwords_are_new_each_time_and_accepted_by_the_gateway() -> None:
    passwords = {demo_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert re.fullmatch(r"[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}", password)
        check_password("operador", password)


def test_a_taken_port_gives_the_next_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert pick_port("127.0.0.1", port) != port
    assert pick_port("127.0.0.1", port) == port


def test_a_new_demo_removes_only_an_earlier_demos_files(tmp_path: Path) -> None:
    for name in ("gateway/metadata.sqlite3", "broker/mosquitto.conf", "secador-01/outbox.sqlite3",
                 "secador-01.toml", "secador-01.log", "notes.txt", "secador-mine/keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    prepare_workdir(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "notes.txt", "secador-mine", "secador-mine/keep.txt"]
