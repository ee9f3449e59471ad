"""SQLite time-series store: write throughput by batch size and query times; prints Markdown.

    .venv/bin/python bench/bench_store_sqlite.py [--dir /var/tmp] [--history-nodes 20]

Writes: 100 nodes' readings interleaved as the gateway receives them (node 1 seq 1, node 2
seq 1, ..., node 100 seq 1, node 1 seq 2, ...), into a fresh database on the data disk, by
``SqliteStore.write()`` in batches of 1, 100, 1000 and 5000 readings (each batch one fsynced
transaction, ``synchronous=FULL``); also the same batches written a second time (all
duplicates: what a node's replay or a gateway redelivery costs). Readings are built before
the clock starts.

Disk: bytes this process writes per reading in normal operation (20 nodes, each one reading
per 10 s, the ingest committing every 1 or 10 readings), from ``/proc/self/io``: the SD-card
wear of a gateway.

Queries: a database holding 7 days of readings every 10 s of ``--history-nodes`` nodes
(written interleaved, like the gateway does), then for one node: ``series()`` of the 7 days
with ``every_s=600`` (1,008 points of 4 fields averaged from 60,480 readings), the same
without downsampling for one day, ``latest()`` and ``seq_ranges()`` (and, for comparison,
the same ranges computed from the readings with window functions). Median of 5 runs after
one warm-up (page cache warm: the database fits in RAM, as it does on a gateway's first
weeks); the first, cold-process run is shown too.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.stores.sqlite import SqliteStore  # noqa: E402
from gateway.timeseries import StoredReading  # noqa: E402

NODES = 100
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SAMPLE_S = 10
WEEK_READINGS = 7 * 24 * 3600 // SAMPLE_S  # per node
SERIES_FIELDS = ["air_temp_c", "air_rh_pct", "bean_moisture_pct_wb", "tray_mass_kg"]


def reading(node: int, seq: int) -> StoredReading:
    phase = seq % 8640 / 8640
    return StoredReading(
        site_id="coop-piura", node_id=f"secador-{node:03d}", seq=seq,
        measured_at=T0 + timedelta(seconds=SAMPLE_S * (seq - 1), microseconds=node * 1000),
        fields={"air_temp_c": 30 + 20 * phase, "air_rh_pct": 70 - 30 * phase,
                "ambient_temp_c": 24 + 6 * phase, "ambient_rh_pct": 85 - 20 * phase,
                "bean_moisture_pct_wb": 55 - seq / 1500, "moisture_probe_v": 2.5 - seq / 90000,
                "tray_mass_kg": 5 - seq / 20000, "fan_speed_pct": 60.0, "vent_open_pct": 35.5,
                "config_version": 3.0},
        raining=False, mode="auto", alarms=(), batch_id=f"lote-{node:03d}-202603010000")


def interleaved(nodes: int, per_node: int) -> list[StoredReading]:
    return [reading(node, seq) for seq in range(1, per_node + 1) for node in range(1, nodes + 1)]


def bench_writes(folder: Path, batch: int, total: int) -> tuple[float, float, float]:
    """(readings/s new, median ms per write() call, readings/s all duplicates)."""
    readings = interleaved(NODES, total // NODES)
    batches = [readings[i:i + batch] for i in range(0, len(readings), batch)]
    path = folder / f"write-{batch}.sqlite3"
    with SqliteStore(path) as store:
        calls = []
        started = time.perf_counter()
        for chunk in batches:
            call = time.perf_counter()
            store.write(chunk)
            calls.append(time.perf_counter() - call)
        new_rate = len(readings) / (time.perf_counter() - started)
        started = time.perf_counter()
        for chunk in batches:
            store.write(chunk)
        duplicate_rate = len(readings) / (time.perf_counter() - started)
    return new_rate, statistics.median(calls) * 1000, duplicate_rate


def io_counters() -> dict[str, int]:
    """This process's I/O counters (Linux): ``wchar`` = bytes passed to write(), ``write_bytes``
    = bytes of page cache dirtied (4 KiB pages; with fsync, what reaches the device)."""
    counters = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, value = line.split(":")
        counters[name] = int(value)
    return counters


def bench_disk(folder: Path, nodes: int, batch: int) -> tuple[float, float]:
    """Bytes written per reading in normal operation: ``nodes`` nodes, one reading each per
    10 s, an hour already stored, the ingest committing every ``batch`` readings."""
    path = folder / f"disk-{nodes}-{batch}.sqlite3"
    hour = 3600 // SAMPLE_S
    with SqliteStore(path) as store:
        history = interleaved(nodes, hour)
        for start in range(0, len(history), 5000):
            store.write(history[start:start + 5000])
        later = [reading(node, seq) for seq in range(hour + 1, hour + 301)
                 for node in range(1, nodes + 1)]
        before = io_counters()
        for start in range(0, len(later), batch):
            store.write(later[start:start + batch])
        after = io_counters()
    return ((after["wchar"] - before["wchar"]) / len(later),
            (after["write_bytes"] - before["write_bytes"]) / len(later))


def timed(action: Callable[[], object], runs: int = 5) -> tuple[float, float]:
    """(first run, median of ``runs`` further runs), in milliseconds."""
    started = time.perf_counter()
    action()
    first = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return first, statistics.median(times)


def bench_queries(folder: Path, nodes: int) -> list[tuple[str, str]]:
    path = folder / "history.sqlite3"
    with SqliteStore(path) as store:
        for seq_start in range(1, WEEK_READINGS + 1, 50):  # 50 readings of each node a batch
            store.write([reading(node, seq)
                         for seq in range(seq_start, min(seq_start + 50, WEEK_READINGS + 1))
                         for node in range(1, nodes + 1)])
    rows = nodes * WEEK_READINGS
    size = sum(p.stat().st_size for p in folder.glob("history.sqlite3*"))
    node = "secador-001"
    end = T0 + timedelta(days=7)
    with SqliteStore(path) as store:  # a fresh process-side cache, as after a restart
        points = store.series("coop-piura", node, T0, end, SERIES_FIELDS, every_s=600)
        assert len(points) == 1008, len(points)
        downsampled = timed(lambda: store.series("coop-piura", node, T0, end, SERIES_FIELDS,
                                                 every_s=600))
        raw_day = timed(lambda: store.series("coop-piura", node, T0, T0 + timedelta(days=1),
                                             SERIES_FIELDS))
        latest = timed(lambda: store.latest("coop-piura", node))
        ranges = timed(lambda: store.seq_ranges("coop-piura", node))
    with sqlite3.connect(path) as db:  # what seq_runs saves: the runs from every reading
        window = timed(lambda: db.execute(
            "SELECT min(seq), max(seq) FROM (SELECT seq, seq - row_number() OVER "
            "(ORDER BY seq) AS run FROM readings WHERE site_id = ? AND node_id = ?) "
            "GROUP BY run ORDER BY run", ("coop-piura", node)).fetchall())
    return [
        ("database", f"{nodes} nodes × 7 days × 1 reading/10 s = {rows:,} readings, "
                     f"{size / 1e6:.0f} MB ({size / rows:.0f} bytes/reading incl. indexes)"),
        ("`series()` 7 days, 4 fields, `every_s=600` → 1,008 points",
         f"{downsampled[1]:.0f} ms (first run {downsampled[0]:.0f} ms)"),
        ("`series()` 1 day raw, 4 fields → 8,640 points",
         f"{raw_day[1]:.0f} ms (first run {raw_day[0]:.0f} ms)"),
        ("`latest()`", f"{latest[1]:.2f} ms"),
        ("`seq_ranges()` of a node with 60,480 readings", f"{ranges[1]:.2f} ms"),
        ("— the same ranges computed from the readings (window functions, no `seq_runs`)",
         f"{window[1]:.0f} ms"),
    ]


def machine(folder: Path) -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = "?"
    mounts = Path("/proc/mounts")
    if mounts.exists():
        best = ""
        for line in mounts.read_text().splitlines():
            _, point, kind, *_ = line.split()
            if str(folder.resolve()).startswith(point) and len(point) >= len(best):
                best, fs = point, kind
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"data dir on {fs}; Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the databases go (a real disk, not tmpfs)")
    parser.add_argument("--history-nodes", type=int, default=20,
                        help="nodes with 7 days of readings in the query database")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-store-sqlite-", dir=args.dir))
    try:
        print(f"Machine: {machine(folder)}\n")
        print("| batch size (readings / `write()`) | readings/s (new) | ms per `write()` "
              "(median) | readings/s (all duplicates) |")
        print("| ---: | ---: | ---: | ---: |")
        for batch, total in ((1, 2_000), (100, 50_000), (1000, 200_000), (5000, 200_000)):
            new_rate, call_ms, dup_rate = bench_writes(folder, batch, total)
            print(f"| {batch:,} | {new_rate:,.0f} | {call_ms:.1f} | {dup_rate:,.0f} |",
                  flush=True)
        print("\n| normal operation: 20 nodes, 1 reading / 10 s each, commit every | "
              "bytes written per reading (`wchar`) | page cache dirtied per reading "
              "(`write_bytes`) | per day, 20 nodes (`write_bytes`) |")
        print("| ---: | ---: | ---: | ---: |")
        for batch in (1, 10):
            wchar, dirtied = bench_disk(folder, 20, batch)
            per_day = dirtied * 20 * 86400 / SAMPLE_S
            print(f"| {batch} reading{'s' if batch > 1 else ''} | {wchar:,.0f} | "
                  f"{dirtied:,.0f} | {per_day / 1e9:.1f} GB |", flush=True)
        print("\n| query | result |")
        print("| --- | --- |")
        for name, result in bench_queries(folder, args.history_nodes):
            print(f"| {name} | {result} |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
