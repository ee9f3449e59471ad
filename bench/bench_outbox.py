"""Outbox disk cost per message and store-and-forward replay rate; prints Markdown tables.

    .venv/bin/python bench/bench_outbox.py [--adds 1000] [--replay 8640] [--dir /var/tmp]

Disk cost: 1,000 realistic telemetry messages (the contract's Telemetry, ~440 bytes) added to
a fresh outbox on the data disk, per sync mode and traffic pattern:
- online: the normal life of a node: add, the broker acknowledges, next add (the lazy delete
  of the acknowledged message rides in the next add's transaction);
- online, eager delete: the same with a separate delete commit per message (what a naive
  outbox does), for comparison;
- outage: adds only, nothing acknowledged (the queue grows).
Counters from /proc/self/io: ``wchar`` = bytes this process passed to write() (SQLite's own
WAL frames and checkpoint pages), ``write_bytes`` = bytes of page cache it dirtied (4 KiB
pages; with fsync per commit, what reaches the device). Per day = per message × 8,640
(one reading per 10 s).

Replay: N messages queued while the broker was unreachable, then a private Mosquitto (free
port, never 1883) and a persistent-session subscriber; timed from ``MqttLink.start()`` until
the outbox is empty (all PUBACKed) and until the subscriber has every sequence number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the private-broker helper the tests use

from support import wait_for  # noqa: E402
from support.mosquitto import MOSQUITTO, MosquittoBroker, Subscriber  # noqa: E402

from cacao_dryer.contract import Mode, Telemetry, encode  # noqa: E402
from cacao_dryer.measurements import MEASUREMENTS  # noqa: E402
from firmware.config import MqttConfig  # noqa: E402
from firmware.link import MqttLink  # noqa: E402
from firmware.outbox import Outbox  # noqa: E402

TOPIC = "cacao/v1/coop-piura/secador-01/telemetry"
READINGS_PER_DAY = 8640  # one reading per 10 s


def telemetry(seq: int) -> bytes:
    readings = {m.key: round((m.minimum + m.maximum) / 2 + 0.123, 2) for m in MEASUREMENTS}
    return encode(Telemetry(
        site_id="coop-piura", node_id="secador-01", seq=seq, measured_at=datetime.now(UTC),
        readings=readings, fan_speed_pct=60, vent_open_pct=35.5, mode=Mode.AUTO,
        config_version=3, batch_id="lote-secador-01-202611231500"))


def io_counters() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, value = line.split(":")
        fields[name] = int(value)
    return fields


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def disk_cost(folder: Path, sync: str, pattern: str, adds: int) -> dict[str, float]:
    path = folder / f"outbox-{sync}-{pattern}.sqlite"
    payloads = [telemetry(seq) for seq in range(1, adds + 1)]  # built before measuring
    outbox = Outbox(path, max_bytes=64 * 1024 * 1024, sync=sync)
    before = io_counters()
    started = time.perf_counter()
    for payload in payloads:
        outbox.add(TOPIC, lambda seq, p=payload: p, "telemetry")
        if pattern != "outage":
            outbox.remove([m.id for m in outbox.peek(1)])
            if pattern == "online, eager delete":
                outbox.flush()
    elapsed = time.perf_counter() - started
    after = io_counters()
    sizes = file_size(path), file_size(path.with_name(path.name + "-wal"))
    outbox.close()
    return {
        "wchar": (after["wchar"] - before["wchar"]) / adds,
        "write_bytes": (after["write_bytes"] - before["write_bytes"]) / adds,
        "ms": elapsed / adds * 1000,
        "db": sizes[0],
        "wal": sizes[1],
        "closed_db": file_size(path),
    }


def replay(folder: Path, count: int, broker_inflight: int | None) -> dict[str, float]:
    extra = (f"max_inflight_messages {broker_inflight}",) if broker_inflight else ()
    broker = MosquittoBroker(folder / "broker", extra=extra)
    outbox = Outbox(folder / "replay.sqlite", max_bytes=64 * 1024 * 1024, sync="full")
    started = time.perf_counter()
    for _ in range(count):
        outbox.add(TOPIC, telemetry, "telemetry")
    enqueue_s = time.perf_counter() - started
    with broker, Subscriber(broker, TOPIC, "gateway-bench") as gateway:
        link = MqttLink(MqttConfig(broker=broker.url), "secador-01", outbox,
                        reconnect_min_s=0.05, reconnect_max_s=0.5)
        started = time.perf_counter()
        link.start()
        wait_for(lambda: outbox.depth() == 0, 300, "the outbox to drain", interval=0.005)
        acked_s = time.perf_counter() - started
        wait_for(lambda: len(gateway.payloads()) >= count, 300, "the subscriber", interval=0.005)
        received_s = time.perf_counter() - started
        link.stop(timeout=5)
        seqs = {json.loads(p)["seq"] for p in gateway.payloads()}
    outbox.close()
    assert seqs == set(range(1, count + 1)), "replay lost messages"
    return {"enqueue_s": enqueue_s, "acked_s": acked_s, "received_s": received_s,
            "window": min(100, broker_inflight or 20)}


def machine(folder: Path) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout
    fs_type = fs.splitlines()[-1].split()[1] if fs else "?"
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, data dir on {fs_type}; "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"paho-mqtt {version('paho-mqtt')}, {mosquitto.splitlines()[0].strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adds", type=int, default=1000)
    parser.add_argument("--replay", type=int, default=READINGS_PER_DAY)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="Folder on the disk to measure (not tmpfs)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=args.dir))
    try:
        print(f"Machine: {machine(folder)}\n")
        print(f"Outbox disk cost, {args.adds} telemetry messages of "
              f"{len(telemetry(1))} bytes (per message; per day = x {READINGS_PER_DAY})\n")
        print("| sync | pattern | wchar B/msg | write_bytes B/msg | MB/day (write_bytes) "
              "| ms/add | db file | WAL file |")
        print("|---|---|---|---|---|---|---|---|")
        for sync in ("full", "normal"):
            for pattern in ("online", "online, eager delete", "outage"):
                cost = disk_cost(folder, sync, pattern, args.adds)
                per_day = cost["write_bytes"] * READINGS_PER_DAY / 1e6
                print(f"| {sync} | {pattern} | {cost['wchar']:.0f} | {cost['write_bytes']:.0f} "
                      f"| {per_day:.1f} | {cost['ms']:.2f} | {cost['db']:,} | "
                      f"{cost['wal']:,} |")
        print(f"\nReplay of {args.replay} queued messages to a private Mosquitto\n")
        print("| broker Receive Maximum | in flight | enqueue (adds/s, sync=full) "
              "| all PUBACKed | msgs/s | all at subscriber |")
        print("|---|---|---|---|---|---|")
        for inflight in (None, 100):
            run = folder / f"replay-{inflight or 'default'}"
            run.mkdir()
            result = replay(run, args.replay, inflight)
            print(f"| {inflight or '20 (default)'} | {result['window']} "
                  f"| {args.replay / result['enqueue_s']:.0f} "
                  f"| {result['acked_s']:.2f} s | {args.replay / result['acked_s']:.0f} "
                  f"| {result['received_s']:.2f} s |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
