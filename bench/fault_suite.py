"""End-to-end fault suite: the whole system, faults on a schedule, then every reading counted.

    .venv/bin/python bench/fault_suite.py --nodes 10 --minutes 3            # short
    .venv/bin/python bench/fault_suite.py --nodes 50 --minutes 30 --write   # long, saved

It starts, on free loopback ports and in a private folder (never the machine's own services):
a Mosquitto (persistence on), an influxd (InfluxDB 1.x), a PostgreSQL cluster, the gateway as a
real ``cacao-dryer gateway run`` process (readings in InfluxDB, metadata in PostgreSQL, HTTP API
and dashboard on a free port), and N simulated dryers as real ``cacao-dryer node run`` processes
in real time (a reading every 2 s), each with its own data folder and its own TCP hop to the broker
(``partition_proxy.ProxyHub``) so that its network can be cut.

Faults come from ``fault_schedule(seed, duration_s, nodes)`` — a pure function — one after the
other (the next waits until the system has recovered from the last): broker restart, InfluxDB
stopped, gateway SIGKILL, node SIGKILL, a node's network partitioned (blackholed), a running
node's clock stepped hours ahead or back (set right once the gateway alerts), and a client
publishing garbage on a node's topics.

At the end the nodes are stopped once their outboxes are empty and the suite compares, node by
node, the sequence numbers each node took (its own outbox database: the telemetry counter, what
is still queued, what it dropped) with those stored in InfluxDB (InfluxQL, not the gateway's
code): lost, duplicated, unexpected. For each fault it prints what raised the alarm (node state
and ``node_offline`` alerts from ``GET /api/alerts``, ``/api/health``, ``/metrics`` counters)
and the time to recover: from the end of the fault until every reading the affected nodes had
taken by then is stored, without a gap. docs/faults.md explains the output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
for _folder in (ROOT / "tests", ROOT / "bench"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from bench_outbox import machine  # noqa: E402
from partition_proxy import PartitionStyle, ProxyHub  # noqa: E402
from support.influxd import InfluxDaemon  # noqa: E402
from support.mosquitto import MosquittoBroker, free_port  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

import firmware  # noqa: E402
from cacao_dryer.contract import (  # noqa: E402
    AlertKind,
    Channel,
    Mode,
    NodeStatus,
    Telemetry,
    decode_message,
    encode,
    topic,
)
from gateway.ingest import storable_reading  # noqa: E402
from gateway.mqtt_in import MAX_PACKET_BYTES  # noqa: E402

SITE = "coop-fallas"
GATEWAY_CLIENT = "fault-gateway"
DATABASE = "cacao"
EXAMPLE_NODE = Path(firmware.__file__).parent / "examples" / "simulated.toml"
RESULTS = ROOT / "bench" / "FAULT_RESULTS.md"
LONG_RUN_S = 15 * 60          # from this fault-phase length on, outages last long enough to
#                               open node_offline alerts (120 s after the Last Will + 30 s job)
OFFLINE_ALERT_AFTER_S = 120.0 + 30.0 + 20.0   # open delay + alert job period + margin
KEEPALIVE_DETECT_S = 1.5 * 30                 # broker: 1.5 × the node's 30 s keepalive
# clock_wrong opens once a node's clock has been over 5 min off for 5 min, judged every 30 s
# by the alert job from the node's status (which the node sends at once when its clock steps):
# the longest a clock jump keeps a node's clock wrong, waiting for that alert.
CLOCK_ALERT_AFTER_S = 300.0 + 2 * 30.0 + 30.0
PASSWORD = "fallas-de-prueba-2026"
QUICK_HASHING = {"password_time_cost": 2, "password_memory_kib": 19_456,
                 "password_parallelism": 1}


class FaultKind(StrEnum):
    BROKER_RESTART = "broker_restart"   # Mosquitto stopped and started on the same port
    INFLUXDB_DOWN = "influxdb_down"     # influxd stopped for a while: the gateway spools
    GATEWAY_KILL = "gateway_kill"       # SIGKILL to the gateway's process group, restarted
    NODE_KILL = "node_kill"             # SIGKILL to one node, restarted later
    PARTITION = "partition"             # one node's network blackholed, then back
    CLOCK_JUMP = "clock_jump"           # one running node's clock stepped ± hours, then back
    GARBAGE = "garbage"                 # hostile payloads on one node's topics


NODE_FAULTS = frozenset({FaultKind.NODE_KILL, FaultKind.PARTITION, FaultKind.CLOCK_JUMP,
                         FaultKind.GARBAGE})
SYSTEM_TARGET = {FaultKind.BROKER_RESTART: "broker", FaultKind.INFLUXDB_DOWN: "influxdb",
                 FaultKind.GATEWAY_KILL: "gateway"}
# (shortest, longest) duration in seconds per kind: a clock jump's is the longest its clock
# stays wrong (it is set right as soon as clock_wrong opens, after ~5.5 min; it needs a run of
# 7 minutes or more), garbage's its burst. Long runs: outages long enough for the offline
# alert; InfluxDB down for minutes.
CLOCK_HOLD_S = (CLOCK_ALERT_AFTER_S, CLOCK_ALERT_AFTER_S)
DURATIONS_LONG: dict[FaultKind, tuple[float, float]] = {
    FaultKind.BROKER_RESTART: (5, 15), FaultKind.INFLUXDB_DOWN: (90, 150),
    FaultKind.GATEWAY_KILL: (5, 20), FaultKind.NODE_KILL: (180, 220),
    FaultKind.PARTITION: (230, 260), FaultKind.CLOCK_JUMP: CLOCK_HOLD_S,
    FaultKind.GARBAGE: (10, 20)}
DURATIONS_SHORT: dict[FaultKind, tuple[float, float]] = {
    FaultKind.BROKER_RESTART: (2, 4), FaultKind.INFLUXDB_DOWN: (8, 12),
    FaultKind.GATEWAY_KILL: (2, 4), FaultKind.NODE_KILL: (4, 8),
    FaultKind.PARTITION: (8, 15), FaultKind.CLOCK_JUMP: CLOCK_HOLD_S,
    FaultKind.GARBAGE: (2, 3)}
SETTLE_LONG_S = 60.0    # planned time after each fault for the system to recover
SETTLE_SHORT_S = 8.0
JUMPS_H = (3.0, 6.0, 9.0)


def partition_style(duration_s: float) -> PartitionStyle:
    """A link that goes silent (blackhole) when the partition lasts long enough for the
    broker's keepalive to notice; a reset connection (cut) for shorter ones, so that they are
    noticed at all."""
    return "blackhole" if duration_s >= KEEPALIVE_DETECT_S + 15 else "cut"


@dataclass(frozen=True)
class Fault:
    at_s: float            # planned start, seconds into the fault phase (the earliest)
    kind: FaultKind
    target: str            # a node id, or "broker", "influxdb", "gateway"
    duration_s: float
    jump_h: float = 0.0    # clock_jump: hours the node's clock steps (+ ahead, - back)

    def describe(self) -> str:
        extra = f", clock {self.jump_h:+g} h" if self.kind is FaultKind.CLOCK_JUMP else ""
        return f"{self.kind.value} {self.target} ({self.duration_s:g} s{extra})"


def fault_schedule(seed: int, duration_s: float, nodes: Sequence[str],
                   kinds: Sequence[FaultKind] = tuple(FaultKind)) -> list[Fault]:
    """The faults of one run: rounds of ``kinds`` in a seeded order, one after the other,
    each followed by time to settle, as long as they fit in ``duration_s``. The same seed,
    duration and nodes always give the same schedule. Runs of ``LONG_RUN_S`` or more use the
    long durations (node outages long enough for ``node_offline``), shorter runs the short
    ones. Node faults pick a node at random, never the one the previous node fault hit when
    there is another. Clock jumps alternate forward and back (the first's direction drawn
    from the seed), so that two of them try both."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    if not nodes:
        raise ValueError("fault_schedule needs at least one node")
    if not kinds:
        raise ValueError("fault_schedule needs at least one fault kind")
    rng = random.Random(seed)
    # a generator of its own: the rest of the schedule stays what it was without directions
    direction = random.Random(f"{seed}-clock-jump").choice((1.0, -1.0))
    long_run = duration_s >= LONG_RUN_S
    ranges = DURATIONS_LONG if long_run else DURATIONS_SHORT
    settle = SETTLE_LONG_S if long_run else SETTLE_SHORT_S
    faults: list[Fault] = []
    cursor = 0.0
    last_node: str | None = None
    while True:
        order = list(dict.fromkeys(kinds))
        rng.shuffle(order)
        added = False
        for kind in order:
            low, high = ranges[kind]
            duration = round(rng.uniform(low, high), 1)
            if cursor + duration + settle > duration_s:
                continue
            if kind in NODE_FAULTS:
                choices = [n for n in nodes if n != last_node] or list(nodes)
                target = rng.choice(choices)
                last_node = target
            else:
                target = SYSTEM_TARGET[kind]
            jump = 0.0
            if kind is FaultKind.CLOCK_JUMP:
                jump = rng.choice(JUMPS_H) * direction
                direction = -direction
            faults.append(Fault(round(cursor, 1), kind, target, duration, jump))
            cursor += duration + settle
            added = True
        if not added:
            return faults


# --- hostile payloads ------------------------------------------------------------------------

def garbage_messages(node_id: str, other_node: str, rng: random.Random, site: str = SITE
                     ) -> list[tuple[str, bytes]]:
    """(topic, payload) a broken or hostile client sends on a node's topics: random bytes,
    invalid UTF-8, wrong types, missing and extra fields, NaN, a depth bomb, a payload over
    the contract's 64 KiB and one of 2 MiB, another node's reading, a seq no store can keep.
    None is valid. The 2 MiB one never reaches the gateway: it announces a Maximum Packet Size
    of 1 MiB and the broker drops bigger messages for it (``reaches_gateway``)."""
    telemetry_topic = topic(site, node_id, Channel.TELEMETRY)
    status_topic = topic(site, node_id, Channel.STATUS)
    event_topic = topic(site, node_id, Channel.EVENT)
    good = json.loads(encode(Telemetry(
        site_id=site, node_id=node_id, seq=1, measured_at=datetime(2026, 1, 1, tzinfo=UTC),
        readings={"air_temp_c": 40.0}, fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
        config_version=0)))

    def variant(**changes: Any) -> bytes:
        data = dict(good)
        for key, value in changes.items():
            if value is _DROP:
                data.pop(key, None)
            else:
                data[key] = value
        return json.dumps(data).encode()

    other = dict(good, node_id=other_node)
    return [
        (telemetry_topic, rng.randbytes(200)),
        (telemetry_topic, b"\xff\xfe\xfa" * 50),
        (telemetry_topic, b""),
        (telemetry_topic, b"null"),
        (telemetry_topic, b"[1, 2, 3]"),
        (telemetry_topic, b'"secador"'),
        (telemetry_topic, variant(seq="siete")),
        (telemetry_topic, variant(seq=-5)),
        (telemetry_topic, variant(seq=0)),
        (telemetry_topic, variant(seq=2**70)),
        (telemetry_topic, variant(measured_at="ayer")),
        (telemetry_topic, variant(measured_at="2026-01-01T00:00:00")),  # no time zone
        (telemetry_topic, variant(readings={"air_temp_c": "caliente"})),
        (telemetry_topic, variant(readings={"air_temp_c": 900.0})),
        (telemetry_topic, variant(fan_speed_pct=250)),
        (telemetry_topic, variant(mode="turbo")),
        (telemetry_topic, variant(schema_version=2)),
        (telemetry_topic, variant(readings=_DROP)),
        (telemetry_topic, variant(hacker="; DROP TABLE readings")),
        (telemetry_topic, json.dumps(good).replace("40.0", "NaN").encode()),
        (telemetry_topic, json.dumps(good).replace("40.0", "Infinity").encode()),
        (telemetry_topic, b"[" * 100_000 + b"]" * 100_000),   # a depth bomb, 200 kB
        (telemetry_topic, variant(batch_id="x" * 70_000)),    # over 64 KiB
        (telemetry_topic, b"{" + b" " * (2 * 1024 * 1024) + b"}"),  # 2 MiB: see below
        (telemetry_topic, json.dumps(other).encode()),        # speaks for another node
        (status_topic, b"\x00\x01\x02"),
        (status_topic, json.dumps({"schema_version": 1, "site_id": site, "node_id": node_id,
                                   "state": "dancing"}).encode()),
        (event_topic, json.dumps({"schema_version": 1, "site_id": site, "node_id": node_id,
                                  "seq": 1, "occurred_at": "2026-01-01T00:00:00Z",
                                  "type": "boot", "message": "x" * 600}).encode()),
        (event_topic, b"{\"schema_version\": 1, \"seq\": "),
    ]


def reaches_gateway(topic_name: str, payload: bytes) -> bool:
    """Whether the broker hands this message to the gateway (its PUBLISH packet — topic,
    packet id, properties and payload plus at most 5 bytes of header — fits the Maximum
    Packet Size the gateway announces)."""
    return len(payload) + len(topic_name.encode()) + 16 <= MAX_PACKET_BYTES


class _Drop:
    pass


_DROP = _Drop()


# --- the processes -----------------------------------------------------------------------------

def node_id(index: int) -> str:
    return f"secador-{index:02d}"


class NodeProcess:
    """One simulated dryer: ``cacao-dryer node run`` with its own config and data folder,
    connected through its partition proxy."""

    def __init__(self, folder: Path, index: int, broker_url: str, reading_every_s: float,
                 start: datetime) -> None:
        self.node_id = node_id(index)
        self.folder = folder / self.node_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_file = folder / f"{self.node_id}.toml"
        self.log_file = folder / f"{self.node_id}.log"
        self.data_dir = self.folder / "data"
        self.clock_offset_file = self.folder / "clock-offset.txt"
        self.index = index
        self.broker_url = broker_url
        self.reading_every_s = reading_every_s
        self.write_config(start)
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, start: datetime) -> None:
        data = tomllib.loads(EXAMPLE_NODE.read_text(encoding="utf-8"))
        data |= {"node_id": self.node_id, "site_id": SITE, "data_dir": str(self.data_dir),
                 "sample_interval_s": self.reading_every_s,
                 "status_interval_s": max(5.0, 6 * self.reading_every_s),
                 "mqtt": {"broker": self.broker_url, "protocol": "5"}}
        # Real time (speed 1): the node's clock is right, as a node with NTP; only the
        # clock_jump fault makes it wrong, stepping it while it runs through its clock
        # offset file (docs/simulator.md). A restart passes ``start`` = now.
        data["simulation"] |= {"seed": self.index, "speed": 1.0,
                               "start": start.isoformat(), "start_batch": True,
                               "clock_offset_file": str(self.clock_offset_file)}
        self.config_file.write_text(tomli_w.dumps(data), encoding="utf-8")

    def set_clock_offset(self, seconds: float) -> None:
        """Step the running node's clock to ``seconds`` off true time (0: right again); the
        file is replaced in one rename, so the node never reads it half written."""
        part = self.clock_offset_file.with_name(self.clock_offset_file.name + ".part")
        part.write_text(f"{seconds:+.0f}\n", encoding="utf-8")
        os.replace(part, self.clock_offset_file)

    def simulated_now(self) -> datetime | None:
        """Where the node's clock was when it last saved it (``simulated-time.txt``)."""
        try:
            return datetime.fromisoformat(
                (self.data_dir / "simulated-time.txt").read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config",
                 str(self.config_file)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.running and self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self) -> None:
        if self.running and self.process is not None:
            self.process.terminate()

    def wait_stopped(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def outbox_state(self) -> tuple[int, list[int], int]:
        """(last telemetry seq given out, telemetry seqs still queued, messages dropped when
        full) from the node's own outbox database; the node must be stopped."""
        path = self.data_dir / "outbox.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            counters = dict(db.execute("SELECT name, value FROM counters"))
            queued = [row[0] for row in db.execute(
                "SELECT seq FROM outbox WHERE counter = 'telemetry' ORDER BY seq")]
        return (int(counters.get("telemetry", 0)), queued,
                int(counters.get("outbox.dropped_total", 0)))


class GatewayProcess:
    """``cacao-dryer gateway run`` in its own process group, as systemd runs it."""

    def __init__(self, folder: Path, broker: MosquittoBroker, influxd: InfluxDaemon,
                 metadata_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.config_file = folder / "gateway.toml"
        self.config_file.write_text(tomli_w.dumps({
            "sites": [SITE], "data_dir": str(folder / "data"),
            "mqtt": {"broker": broker.url, "client_id": GATEWAY_CLIENT},
            "storage": {"kind": "influxdb1", "url": influxd.url, "database": DATABASE},
            "metadata": {"url": metadata_url},
            "api": {"port": self.port, **QUICK_HASHING}}), encoding="utf-8")
        self.log_file = folder / "gateway.log"
        self.spool_file = folder / "data" / "spool.jsonl"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
                 str(self.config_file)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL to the whole group (the gateway and any ingest workers)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def add_user(self, username: str) -> None:
        password_file = self.folder / "password.txt"
        password_file.write_text(PASSWORD + "\n", encoding="utf-8")
        subprocess.run([sys.executable, "-m", "cacao_dryer.cli", "user", "add", "--config",
                        str(self.config_file), "--username", username, "--role", "operator",
                        "--password-file", str(password_file)],
                       check=True, capture_output=True, cwd=ROOT)

    def spooled_lines(self) -> int:
        try:
            with self.spool_file.open("rb") as handle:
                return sum(1 for _ in handle)
        except OSError:
            return 0


# --- watching the system -----------------------------------------------------------------------

@dataclass
class NodeSeen:
    """What the observer saw a node publish (QoS 0 subscriber, not part of the system)."""

    telemetry: list[tuple[float, int]] = field(default_factory=list)    # (monotonic, seq)
    statuses: list[tuple[float, str, int, int]] = field(default_factory=list)
    #           (monotonic, state, last_seq, queue_depth), live (not retained) ones only


class Observer:
    """Subscribes to every node's telemetry and status, straight on the broker."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.nodes: dict[str, NodeSeen] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-observer",
                                   protocol=mqtt.MQTTv5)
        self._client.reconnect_delay_set(0.2, 1.0)
        self._client.on_connect = lambda client, *_: client.subscribe(
            [(f"cacao/v1/{SITE}/+/telemetry", 0), (f"cacao/v1/{SITE}/+/status", 0)])
        self._client.on_message = self._on_message
        self._port = broker.port

    def start(self) -> None:
        self._client.connect_async("127.0.0.1", self._port, keepalive=10)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        try:  # only what the gateway accepts: the garbage client's messages are refused here
            _site, node, decoded = decode_message(message.topic, message.payload)
            if isinstance(decoded, Telemetry):
                storable_reading(message.topic, decoded)
        except Exception:  # a PayloadError, TopicError... an observer never stops
            return
        now = time.monotonic()
        with self._lock:
            seen = self.nodes.setdefault(node, NodeSeen())
            if isinstance(decoded, Telemetry):
                seen.telemetry.append((now, decoded.seq))
            elif isinstance(decoded, NodeStatus) and not message.retain:
                seen.statuses.append((now, decoded.state.value, decoded.last_seq or 0,
                                      decoded.queue_depth or 0))

    def highest_seq(self, node: str, until: float) -> int:
        with self._lock:
            seen = self.nodes.get(node)
            return max((seq for at, seq in seen.telemetry if at <= until), default=0) \
                if seen else 0

    def first_online_status(self, node: str, after: float) -> tuple[int, int] | None:
        """(last_seq, queue_depth) of the node's first online status after ``after``."""
        with self._lock:
            seen = self.nodes.get(node)
            for at, state, last_seq, depth in (seen.statuses if seen else []):
                if at > after and state == "online":
                    return last_seq, depth
        return None

    def latest_status(self, node: str) -> tuple[float, str, int, int] | None:
        with self._lock:
            seen = self.nodes.get(node)
            return seen.statuses[-1] if seen and seen.statuses else None


_METRIC = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$')


def parse_metrics(text: str) -> dict[str, Any]:
    """The few numbers of the gateway's /metrics the suite needs."""
    found: dict[str, Any] = {"invalid": 0.0, "node_up": {}, "spooled": 0.0,
                             "store_errors": 0.0, "stored": 0.0, "duplicates": 0.0}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "cacao_gateway_invalid_messages_total":
            found["invalid"] += value
        elif name == "cacao_node_up":
            node = re.search(r'node="([^"]+)"', labels)
            if node:
                found["node_up"][node.group(1)] = value
        elif name in ("cacao_gateway_spooled_total", "cacao_gateway_store_errors_total",
                      "cacao_gateway_stored_total", "cacao_gateway_duplicates_total"):
            found[name.removeprefix("cacao_gateway_").removesuffix("_total")] = value
    return found


@dataclass
class Sample:
    at: float
    health: str                 # ok, degraded, unreachable
    problems: tuple[str, ...]
    metrics: dict[str, Any] | None   # None when /metrics did not answer 200
    spooled: int | None = None       # /api/health readings_spooled (since the gateway started)
    metrics_status: int | None = None


class Monitor:
    """Polls the gateway's /api/health and /metrics once a second, as a monitoring probe
    would, and keeps every answer with its time."""

    def __init__(self, gateway: GatewayProcess, every_s: float = 1.0) -> None:
        self.gateway = gateway
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=3.0) as client:
            while not self._stop.is_set():
                self.sample(client)
                self._stop.wait(self.every_s)

    def sample(self, client: httpx.Client) -> Sample:
        now = time.monotonic()
        sample = Sample(now, "unreachable", (), None)
        try:
            answer = client.get("/api/health")
            if answer.status_code == 200:
                body = answer.json()
                sample.health, sample.problems = body["status"], tuple(body["problems"])
                sample.spooled = int(body["readings_spooled"])
            scrape = client.get("/metrics")
            sample.metrics_status = scrape.status_code
            if scrape.status_code == 200:
                sample.metrics = parse_metrics(scrape.text)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        with self._lock:
            self.samples.append(sample)
        return sample

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.at <= end]

    def latest_metrics(self) -> dict[str, Any] | None:
        with self._lock:
            for sample in reversed(self.samples):
                if sample.metrics is not None:
                    return sample.metrics
        return None


def stored_stats(influxd: InfluxDaemon) -> dict[str, tuple[int, int, int, int]] | None:
    """Per node (points, distinct seqs, lowest seq, highest seq) from InfluxQL; None while
    InfluxDB does not answer."""
    try:
        answer = influxd.query("SELECT count(seq), count(distinct(seq)), min(seq), max(seq) "
                               "FROM dryer_reading GROUP BY node", database=DATABASE)
    except (OSError, ValueError):
        return None
    result = answer.get("results", [{}])[0]
    if "error" in result:
        return {} if "database not found" in result["error"] else None
    return {s["tags"]["node"]: tuple(int(v) for v in s["values"][0][1:])  # type: ignore[misc]
            for s in result.get("series", [])}


def stored_seqs(influxd: InfluxDaemon) -> dict[str, list[int]]:
    """Every stored seq of every node (one point each, duplicates included)."""
    answer = influxd.query("SELECT seq FROM dryer_reading GROUP BY node", database=DATABASE)
    series = answer["results"][0].get("series", [])
    return {s["tags"]["node"]: [int(row[1]) for row in s["values"]] for s in series}


def contiguous_top(stats: tuple[int, int, int, int] | None) -> int:
    """The highest seq n such that 1..n are all stored (0 if seq 1 is missing or there is a
    gap: then the top is not known without reading every seq)."""
    if stats is None:
        return 0
    _points, distinct, low, high = stats
    return high if low == 1 and distinct == high else 0


# --- one run -------------------------------------------------------------------------------------

@dataclass
class FaultResult:
    fault: Fault
    started: float = 0.0          # monotonic
    ended: float = 0.0
    started_utc: datetime = field(default_factory=lambda: datetime.now(UTC))
    recovered_s: float | None = None
    signals: list[str] = field(default_factory=list)  # what raised the alarm
    missed: list[str] = field(default_factory=list)   # an expected alarm that did not come
    notes: list[str] = field(default_factory=list)
    clock_alert: dict[str, Any] | None = None  # clock_jump: the alert as first seen


@dataclass
class NodeResult:
    node: str
    taken: int            # readings the node took (its telemetry counter)
    queued: int           # still in its outbox at the end (not lost: on its disk)
    dropped: int          # dropped by a full outbox
    stored: int           # points in InfluxDB
    distinct: int
    lost: list[int]
    duplicates: int
    unexpected: list[int]  # stored seqs the node never took


@dataclass
class RunReport:
    nodes: int
    seed: int
    reading_every_s: float
    machine: str
    started_at: datetime
    wall_s: float
    faults: list[FaultResult]
    node_results: list[NodeResult]
    alerts: list[dict[str, Any]]
    garbage_sent: int
    invalid_counted: int
    load_before: float

    @property
    def lost(self) -> int:
        return sum(len(r.lost) for r in self.node_results)

    @property
    def duplicated(self) -> int:
        return sum(r.duplicates for r in self.node_results)

    @property
    def unexpected(self) -> int:
        return sum(len(r.unexpected) for r in self.node_results)

    @property
    def taken(self) -> int:
        return sum(r.taken for r in self.node_results)

    @property
    def unalerted(self) -> list[FaultResult]:
        return [f for f in self.faults if f.missed]

    @property
    def unrecovered(self) -> list[FaultResult]:
        return [f for f in self.faults if f.recovered_s is None]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.unalerted
                    or self.unrecovered)


class FaultSuite:
    """The whole system in ``folder``; ``run()`` warms up, injects ``schedule`` and checks."""

    def __init__(self, folder: Path, nodes: int, schedule: Sequence[Fault], *,
                 reading_every_s: float = 2.0, seed: int = 1, metadata_url: str | None = None,
                 warmup_s: float = 20.0, recover_timeout_s: float = 240.0,
                 say: Callable[[str], None] = print) -> None:
        self.folder = folder
        self.node_count = nodes
        self.schedule = list(schedule)
        self.reading_every_s = reading_every_s
        self.seed = seed
        self.warmup_s = warmup_s
        self.recover_timeout_s = recover_timeout_s
        self.say = say
        self._metadata_url = metadata_url
        self.postgres: PostgresServer | None = None
        self.broker = MosquittoBroker(folder / "mosquitto", extra=("log_type subscribe",))
        self.influxd = InfluxDaemon(folder / "influxd")
        self.proxies = ProxyHub()
        self.gateway: GatewayProcess | None = None
        self.nodes: dict[str, NodeProcess] = {}
        self.observer = Observer(self.broker)
        self.monitor: Monitor | None = None
        self.garbage_sent = 0
        self.invalid_counted = 0

    # --- set-up and tear-down --------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.influxd.start()
        if self._metadata_url is None:
            self.postgres = PostgresServer()
            self.postgres.start()
            self._metadata_url = self.postgres.create_database()
        self.gateway = GatewayProcess(self.folder / "gateway", self.broker, self.influxd,
                                      self._metadata_url)
        self.gateway.start()
        self._wait(self._gateway_ready, 60, "the gateway to answer and subscribe")
        self.gateway.add_user("fallas")
        self.observer.start()
        self.monitor = Monitor(self.gateway)
        self.monitor.start()
        start = datetime.now(UTC).replace(microsecond=0)
        for index in range(1, self.node_count + 1):
            port = self.proxies.add(node_id(index), "127.0.0.1", self.broker.port)
            node = NodeProcess(self.folder / "nodes", index, f"mqtt://127.0.0.1:{port}",
                               self.reading_every_s, start)
            self.nodes[node.node_id] = node
            node.start()

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        if self.monitor is not None:
            self.monitor.stop()
        with contextlib.suppress(Exception):
            self.observer.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.proxies.close()
        self.influxd.kill()
        self.broker.kill()
        if self.postgres is not None:
            self.postgres.stop()

    def _gateway_ready(self) -> bool:
        assert self.gateway is not None
        if self.gateway.process is not None and self.gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited: see {self.gateway.log_file}")
        try:
            healthy = httpx.get(f"{self.gateway.url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
        log = self.broker.log_file.read_text(errors="replace")
        return healthy and f" {GATEWAY_CLIENT} 1 cacao/v1/{SITE}/+/telemetry" in log

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float, what: str,
              interval: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(interval)
        return True

    def _within(self, predicate: Callable[[], bool], timeout: float,
                interval: float = 0.5) -> float | None:
        """Seconds until ``predicate`` held, or None after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start <= timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(interval)
        return None

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> RunReport:
        started_at = datetime.now(UTC)
        load_before = os.getloadavg()[0]
        wall = time.monotonic()
        self.start()
        try:
            self.say(f"{self.node_count} nodes starting; warming up {self.warmup_s:g} s")
            self._wait(lambda: self._all_storing(time.monotonic() - 1), 120,
                       "every node's readings to be stored")
            time.sleep(self.warmup_s)
            results = self._inject_all()
            node_results = self._finish()
            alerts = self._alerts()
            self._judge(results, alerts)
        finally:
            self.close()
        return RunReport(
            nodes=self.node_count, seed=self.seed, reading_every_s=self.reading_every_s,
            machine=machine(self.folder),
            started_at=started_at, wall_s=time.monotonic() - wall, faults=results,
            node_results=node_results, alerts=alerts, garbage_sent=self.garbage_sent,
            invalid_counted=self.invalid_counted, load_before=load_before)

    def _all_storing(self, since: float) -> bool:
        stats = stored_stats(self.influxd) or {}
        return all(contiguous_top(stats.get(node)) >= max(1, self.observer.highest_seq(
            node, since)) for node in self.nodes)

    def _inject_all(self) -> list[FaultResult]:
        phase = time.monotonic()
        results: list[FaultResult] = []
        for fault in self.schedule:
            delay = phase + fault.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.say(f"[{time.monotonic() - phase:6.0f} s] {fault.describe()}")
            result = FaultResult(fault, started=time.monotonic())
            self._inject(fault, result)
            result.ended = time.monotonic()
            self._recover(result)
            self.say(f"           recovered in {result.recovered_s:.1f} s" if result.recovered_s
                     is not None else "           NOT recovered")
            results.append(result)
        return results

    def _inject(self, fault: Fault, result: FaultResult) -> None:
        assert self.gateway is not None
        kind = fault.kind
        if kind is FaultKind.BROKER_RESTART:
            self.broker.stop()
            time.sleep(fault.duration_s)
            self.broker.start(timeout=30)
        elif kind is FaultKind.INFLUXDB_DOWN:
            self.influxd.stop()
            time.sleep(fault.duration_s)
            self.influxd.start(timeout=60)
        elif kind is FaultKind.GATEWAY_KILL:
            self.gateway.kill()
            time.sleep(fault.duration_s)
            self.gateway.start()
        elif kind is FaultKind.NODE_KILL:
            node = self.nodes[fault.target]
            node.kill()
            time.sleep(fault.duration_s)
            node.write_config(datetime.now(UTC))  # a node with NTP: its clock is right
            node.start()
        elif kind is FaultKind.PARTITION:
            style = partition_style(fault.duration_s)
            self.proxies.partition(fault.target, style)
            time.sleep(fault.duration_s)
            self.proxies.heal(fault.target)
            result.notes.append(f"{style}: " + (
                "silent link, no byte passes" if style == "blackhole"
                else "connection reset, new ones refused"))
        elif kind is FaultKind.CLOCK_JUMP:
            self._clock_jump(fault, result)
        elif kind is FaultKind.GARBAGE:
            self._garbage(fault, result)

    def _clock_jump(self, fault: Fault, result: FaultResult) -> None:
        """Step a running node's clock by ``fault.jump_h`` (a Pi without RTC and a bad time
        server, a wrong ``date -s``), keep it wrong until the gateway's ``clock_wrong`` alert
        about it opens — at most ``fault.duration_s`` — then set it right, as NTP would. The
        node keeps running and measuring throughout."""
        node = self.nodes[fault.target]
        jump = timedelta(hours=fault.jump_h)
        before = datetime.now(UTC)
        node.set_clock_offset(jump.total_seconds())
        deadline = result.started + fault.duration_s
        known_s: float | None = None
        with self._api() as client:
            while time.monotonic() < deadline:
                if known_s is None and self._gateway_has_clock(client, node.node_id, jump):
                    known_s = time.monotonic() - result.started
                result.clock_alert = self._clock_alert(client, node.node_id,
                                                       result.started_utc)
                if result.clock_alert is not None:
                    break
                time.sleep(1.0 if known_s is None else 3.0)
        node.set_clock_offset(0)
        result.notes.append(
            f"node clock stepped {fault.jump_h:+g} h while running ({before:%d %H:%M} → "
            f"{before + jump:%d %H:%M} UTC), set right after "
            f"{time.monotonic() - result.started:.0f} s; the gateway "
            + (f"had its new time after {known_s:.0f} s (status sent_at in GET /api/nodes)"
               if known_s is not None else "never showed its new time (GET /api/nodes)"))

    @contextlib.contextmanager
    def _api(self) -> Iterator[httpx.Client]:
        """An HTTP client of the gateway's API, logged in as the suite's operator."""
        assert self.gateway is not None
        with httpx.Client(base_url=self.gateway.url, timeout=10) as client:
            client.post("/api/auth/login", json={"username": "fallas", "password": PASSWORD}
                        ).raise_for_status()
            yield client

    @staticmethod
    def _gateway_has_clock(client: httpx.Client, node: str, jump: timedelta) -> bool:
        """Whether the node's latest status the gateway holds carries the stepped clock
        (``sent_at`` about ``jump`` off the suite's clock; a status is at most one status
        interval old)."""
        try:
            answer = client.get(f"/api/nodes/{SITE}/{node}")
            sent_at = datetime.fromisoformat(answer.json()["status"]["sent_at"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return abs(sent_at - datetime.now(UTC) - jump) < timedelta(minutes=2)

    @staticmethod
    def _clock_alert(client: httpx.Client, node: str, since: datetime) -> dict[str, Any] | None:
        """The node's clock_wrong alert raised for a jump at ``since``: opened since, or open
        from an earlier jump and updated since (a close is no alarm); None if there is none."""
        try:
            answer = client.get("/api/alerts", params={
                "state": "all", "limit": 100, "site_id": SITE, "node_id": node,
                "kind": AlertKind.CLOCK_WRONG.value})
            answer.raise_for_status()
            alerts: list[dict[str, Any]] = answer.json()
        except (httpx.HTTPError, ValueError):
            return None
        for alert in alerts:
            if alert["kind"] != AlertKind.CLOCK_WRONG.value:
                continue
            if datetime.fromisoformat(alert["opened_at"]) >= since or (
                    alert["closed_at"] is None
                    and datetime.fromisoformat(alert["updated_at"]) >= since):
                return alert
        return None

    def _garbage(self, fault: Fault, result: FaultResult) -> None:
        rng = random.Random(f"{self.seed}-{fault.at_s}")
        others = [n for n in self.nodes if n != fault.target] or ["secador-otro"]
        messages = garbage_messages(fault.target, rng.choice(others), rng)
        before = self._invalid_now()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-garbage",
                             protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        pause = fault.duration_s / len(messages)
        try:
            for topic_name, payload in messages:
                client.publish(topic_name, payload, qos=1).wait_for_publish(30)
                time.sleep(pause)
        finally:
            client.disconnect()
            client.loop_stop()
        self.garbage_sent += len(messages)
        expected = sum(reaches_gateway(name, payload) for name, payload in messages)
        counted = self._within(lambda: self._invalid_now() - before >= expected, 60)
        delta = self._invalid_now() - before
        self.invalid_counted += delta
        result.notes.append(f"{len(messages)} hostile messages sent (up to 2 MiB; "
                            f"{len(messages) - expected} over the gateway's 1 MiB packet limit, "
                            f"dropped by the broker), {delta} counted invalid")
        if counted is not None and delta == expected:
            result.signals.append(f"all {expected} counted invalid "
                                  "(cacao_gateway_invalid_messages_total)")
        else:
            result.missed.append(f"{delta} of {expected} counted invalid")

    def _invalid_now(self) -> int:
        assert self.gateway is not None
        try:
            text = httpx.get(f"{self.gateway.url}/metrics", timeout=3).text
        except httpx.HTTPError:
            return 0
        return int(parse_metrics(text)["invalid"])

    def _affected(self, fault: Fault) -> list[str]:
        return [fault.target] if fault.kind in NODE_FAULTS else list(self.nodes)

    def _recover(self, result: FaultResult) -> None:
        """Time from the fault's end until every reading the affected nodes had taken by then
        is stored without a gap (a restarted node: until one of its new readings is)."""
        fault, end = result.fault, result.ended
        reconnects = fault.kind in (FaultKind.BROKER_RESTART, FaultKind.NODE_KILL,
                                    FaultKind.PARTITION)
        restarted = fault.kind is FaultKind.NODE_KILL
        targets: dict[str, int] = {}
        deadline = end + self.recover_timeout_s
        for node in self._affected(fault):
            target = self.observer.highest_seq(node, end)
            if reconnects:
                status = None
                while status is None and time.monotonic() < deadline:
                    status = self.observer.first_online_status(node, end)
                    if status is None:
                        time.sleep(0.25)
                if status is not None:
                    target = max(target, status[0])
            targets[node] = target + (1 if restarted else 0)

        def recovered() -> bool:
            stats = stored_stats(self.influxd)
            return stats is not None and all(
                contiguous_top(stats.get(node)) >= seq for node, seq in targets.items())

        left = max(0.0, deadline - time.monotonic())
        if self._within(recovered, left) is not None:
            result.recovered_s = time.monotonic() - end

    # --- the end ---------------------------------------------------------------------------

    def _finish(self) -> list[NodeResult]:
        """Let the nodes empty their outboxes, stop them, and count every reading."""
        after = time.monotonic()
        self.say("draining: waiting for every node's outbox to empty")

        def drained() -> bool:
            for node in self.nodes:
                status = self.observer.latest_status(node)
                if status is None or status[0] <= after or status[3] > 2:
                    return False
            return True

        if self._within(drained, 180) is None:
            self.say("  some outboxes still hold messages: stopping anyway")
        for node in self.nodes.values():
            node.terminate()
        for node in self.nodes.values():
            node.wait_stopped()
        expected: dict[str, tuple[int, set[int], int]] = {}
        for name, node in self.nodes.items():
            taken, queued, dropped = node.outbox_state()
            expected[name] = (taken, set(queued), dropped)

        def all_stored() -> bool:
            stats = stored_stats(self.influxd) or {}
            return all(stats.get(name, (0, 0, 0, 0))[1] >= taken - len(queued) - dropped
                       for name, (taken, queued, dropped) in expected.items())

        self._within(all_stored, 120)
        seqs = stored_seqs(self.influxd)
        results = []
        for name, (taken, queued, dropped) in expected.items():
            stored = seqs.get(name, [])
            distinct = set(stored)
            wanted = set(range(1, taken + 1))
            results.append(NodeResult(
                node=name, taken=taken, queued=len(queued), dropped=dropped,
                stored=len(stored), distinct=len(distinct),
                lost=sorted(wanted - distinct - queued),
                duplicates=len(stored) - len(distinct),
                unexpected=sorted(distinct - wanted)))
        return results

    def _alerts(self) -> list[dict[str, Any]]:
        assert self.gateway is not None
        with httpx.Client(base_url=self.gateway.url, timeout=10) as client:
            login = client.post("/api/auth/login", json={"username": "fallas",
                                                         "password": PASSWORD})
            login.raise_for_status()
            answer = client.get("/api/alerts", params={"state": "all", "limit": 1000,
                                                       "site_id": SITE})
            answer.raise_for_status()
            alerts: list[dict[str, Any]] = answer.json()
        return alerts

    def _judge(self, results: list[FaultResult], alerts: list[dict[str, Any]]) -> None:
        """What raised the alarm for each fault (the garbage one judged itself)."""
        assert self.monitor is not None
        for result in results:
            fault = result.fault
            window = self.monitor.between(result.started, result.ended + 30)
            during = self.monitor.between(result.started, result.ended)
            if fault.kind is FaultKind.GATEWAY_KILL:
                if any(s.health == "unreachable" for s in during):
                    result.signals.append("/api/health did not answer")
                else:
                    result.missed.append("/api/health kept answering")
            elif fault.kind is FaultKind.INFLUXDB_DOWN:
                self._judge_influxdb(result, during)
            elif fault.kind is FaultKind.BROKER_RESTART:
                if any(s.health == "degraded" for s in window):
                    result.signals.append("/api/health degraded")
                else:
                    result.missed.append("/api/health and /metrics do not say the gateway "
                                         "lost its broker")
            elif fault.kind in (FaultKind.NODE_KILL, FaultKind.PARTITION):
                self._judge_node(result, window, alerts)
            elif fault.kind is FaultKind.CLOCK_JUMP:
                self._judge_clock(result, window, alerts)

    def _judge_influxdb(self, result: FaultResult, during: list[Sample]) -> None:
        if any(s.health == "degraded" for s in during):
            result.signals.append("/api/health degraded: "
                                  + next(s.problems[0] for s in during if s.problems))
        else:
            result.missed.append("/api/health said ok throughout")
        spooled = [s.spooled for s in during if s.spooled is not None]
        if len(spooled) >= 2 and spooled[-1] > spooled[0]:
            result.signals.append(f"{spooled[-1] - spooled[0]} readings spooled "
                                  "(/api/health readings_spooled)")
        else:
            result.missed.append("no readings spooled")
        failed = sorted({s.metrics_status for s in during
                         if s.metrics_status is not None and s.metrics_status != 200})
        if failed:
            result.notes.append(f"/metrics answered HTTP {', '.join(map(str, failed))} while "
                                "InfluxDB was down (every gateway metric gone)")

    def _judge_node(self, result: FaultResult, window: list[Sample],
                    alerts: list[dict[str, Any]]) -> None:
        fault = result.fault
        node = fault.target
        down = [s for s in window if s.metrics and s.metrics["node_up"].get(node) == 0.0]
        if down:
            result.signals.append(f"node offline after {down[0].at - result.started:.0f} s "
                                  "(Last Will or its own offline status; cacao_node_up 0)")
        else:
            result.missed.append("never shown offline")
        opened = [a for a in alerts if a["node_id"] == node and a["kind"] == "node_offline"
                  and result.started_utc <= datetime.fromisoformat(a["opened_at"])
                  <= result.started_utc + timedelta(seconds=fault.duration_s + 120)]
        needed = OFFLINE_ALERT_AFTER_S + (KEEPALIVE_DETECT_S if fault.kind is
                                          FaultKind.PARTITION else 0)
        if opened:
            at = datetime.fromisoformat(opened[0]["opened_at"]) - result.started_utc
            result.signals.append(f"node_offline alert opened after {at.total_seconds():.0f} s")
        elif fault.duration_s >= needed:
            result.missed.append("no node_offline alert")

    def _judge_clock(self, result: FaultResult, window: list[Sample],
                     alerts: list[dict[str, Any]]) -> None:
        """A clock jump's alarm is the node's ``clock_wrong`` alert, as the suite saw it while
        it held the jump: opened after the jump, or (one still open from an earlier jump)
        updated for it. The node must stay online throughout."""
        fault, started = result.fault, result.started_utc
        alert = result.clock_alert
        if alert is None:
            result.missed.append(f"no clock_wrong alert in {fault.duration_s:.0f} s")
        elif datetime.fromisoformat(alert["opened_at"]) >= started:
            at = datetime.fromisoformat(alert["opened_at"]) - started
            result.signals.append(f"clock_wrong alert opened after {at.total_seconds():.0f} s "
                                  f"(\"{alert['message'].split(':')[0]}\")")
        else:
            at = datetime.fromisoformat(alert["updated_at"]) - started
            result.signals.append("clock_wrong alert (open since an earlier jump) updated "
                                  f"after {at.total_seconds():.0f} s")
        final = [a for a in alerts if alert is not None and a["alert_id"] == alert["alert_id"]]
        if final and final[0]["closed_at"]:
            closed = datetime.fromisoformat(final[0]["closed_at"]) - started
            result.notes.append(f"clock_wrong closed {closed.total_seconds():.0f} s after the "
                                "jump (once the clock was right for 5 min)")
        down = [s for s in window
                if s.metrics and s.metrics["node_up"].get(fault.target) == 0.0]
        if down:
            result.notes.append(f"**node shown offline after {down[0].at - result.started:.0f} "
                                "s** (a clock step should not disconnect it)")


# --- output --------------------------------------------------------------------------------------

def report_markdown(report: RunReport, command: str) -> str:
    lines = [
        f"Run {report.started_at:%Y-%m-%d %H:%M} UTC with `{command}` on: {report.machine}; "
        f"load average before: {report.load_before:.1f}. {report.nodes} nodes at "
        f"a reading every {report.reading_every_s:g} s (clocks in real time), seed {report.seed}, "
        f"{len(report.faults)} faults, {report.wall_s / 60:.1f} min in all.",
        "",
        f"**{report.taken:,} readings taken, {report.lost} lost, {report.duplicated} "
        f"duplicated, {report.unexpected} unexpected; "
        f"{len(report.faults) - len(report.unalerted)} of {len(report.faults)} faults "
        f"raised their alarm, {len(report.faults) - len(report.unrecovered)} recovered.**",
        "",
        "| # | fault | target | lasted s | alarm raised by | missing alarm | recovered after s "
        "| notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for number, result in enumerate(report.faults, 1):
        fault = result.fault
        recovered = f"{result.recovered_s:.1f}" if result.recovered_s is not None else "**no**"
        lines.append(
            f"| {number} | {fault.kind.value} | {fault.target} | "
            f"{result.ended - result.started:.0f} | {'; '.join(result.signals) or '—'} | "
            f"{'**' + '; '.join(result.missed) + '**' if result.missed else '—'} | "
            f"{recovered} | {'; '.join(result.notes) or ''} |")
    lines += ["", "| node | readings taken | stored points | distinct seqs | lost | duplicated "
              "| unexpected | left in outbox | dropped (outbox full) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for node in report.node_results:
        lost = f"**{len(node.lost)}** ({_ranges(node.lost)})" if node.lost else "0"
        lines.append(f"| {node.node} | {node.taken:,} | {node.stored:,} | {node.distinct:,} | "
                     f"{lost} | {node.duplicates} | {len(node.unexpected)} | {node.queued} | "
                     f"{node.dropped} |")
    kinds: dict[str, int] = {}
    for alert in report.alerts:
        kinds[alert["kind"]] = kinds.get(alert["kind"], 0) + 1
    lines += ["", "Alerts the gateway opened during the run (`GET /api/alerts?state=all`): "
              + (", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
                 or "none") + "."]
    explained = {"node_offline", "clock_wrong"}  # judged per fault above
    others = [a for a in report.alerts if a["kind"] not in explained]
    if others:
        lines += ["", "Other alerts (not judged as a fault's alarm):", ""]
        lines += [f"- {a['node_id']} {a['kind']} at {a['opened_at'][11:19]}: "
                  f"{a['message'][:140]}" for a in others[:20]]
    return "\n".join(lines) + "\n"


def _ranges(seqs: Sequence[int], limit: int = 5) -> str:
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    text = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs[:limit])
    return text + (" …" if len(runs) > limit else "")


def write_results(markdown: str, block: str, path: Path = RESULTS) -> None:
    """Replace the ``block`` section of the results file (between its markers)."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"{start}\n{markdown}{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{section}\n"
    path.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def run_folder(keep: bool) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cacao-faults-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        if keep:
            print(f"logs and data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10, help="simulated dryers (1-100)")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="length of the fault phase; 15 or more: long outages")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reading-every", type=float, default=2.0, metavar="SECONDS",
                        help="each node takes a reading this often (1-60 s; default 2)")
    parser.add_argument("--faults", default=",".join(k.value for k in FaultKind),
                        help="comma-separated fault kinds (default: all)")
    parser.add_argument("--write", action="store_true", help="save into bench/FAULT_RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 100:
        parser.error("--nodes must be 1..100")
    if not 1 <= args.reading_every <= 60:
        parser.error("--reading-every must be 1..60 seconds")
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be above 0 and at most 1440")
    try:
        kinds = [FaultKind(name.strip()) for name in args.faults.split(",") if name.strip()]
    except ValueError as exc:
        parser.error(f"--faults: {exc} (one of {', '.join(k.value for k in FaultKind)})")
    # Stopped by SIGTERM (timeout, a CI runner): still stop every process started here.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    names = [node_id(i) for i in range(1, args.nodes + 1)]
    schedule = fault_schedule(args.seed, args.minutes * 60, names, kinds)
    print(f"{len(schedule)} faults planned: " + "; ".join(f.describe() for f in schedule))
    with run_folder(args.keep) as folder:
        suite = FaultSuite(folder, args.nodes, schedule, reading_every_s=args.reading_every,
                           seed=args.seed,
                           recover_timeout_s=240 if args.minutes * 60 >= LONG_RUN_S else 90)
        report = suite.run()
    command = "bench/fault_suite.py " + " ".join(a for a in (argv or sys.argv[1:])
                                                 if a not in ("--write", "--keep"))
    markdown = report_markdown(report, ".venv/bin/python " + command.strip())
    print()
    print(markdown)
    if args.write:
        write_results(markdown, "long" if args.minutes * 60 >= LONG_RUN_S else "short")
        print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
