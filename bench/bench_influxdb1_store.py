"""InfluxDB 1.x store throughput against a private influxd; prints a Markdown table.

    .venv/bin/python bench/bench_influxdb1_store.py [--readings 200000] [--batch 5000]

Readings are realistic points of our schema (every measurement, the state fields, seq, mode,
alarms, raining, batch: 14 fields) from 100 nodes, one reading per node every 10 s.

- ceiling: the same points pre-encoded as line protocol, one ``POST /write`` per batch, no
  Python work per reading (one client; and two clients in parallel);
- ``InfluxDB1Store.write``: what the gateway calls (encode + the "which already exist" query
  + the POST), into an empty database, then the same batches again (a full replay: every
  reading a duplicate);
- ``seq_ranges`` of one of those nodes, and a downsampled ``series`` of it;
- ``seq_ranges`` of one node with a long history (``--node-readings``, 1 per 10 s) and gaps.

The influxd is private (free loopback port, data in a temporary folder), as in the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the private-influxd helper the tests use

from support.influxd import INFLUXD, InfluxDaemon  # noqa: E402

from cacao_dryer.measurements import MEASUREMENTS  # noqa: E402
from gateway.stores.influxdb1 import InfluxDB1Store  # noqa: E402
from gateway.stores.line_protocol import lines  # noqa: E402
from gateway.timeseries import STATE_FIELDS, StoredReading  # noqa: E402

NODES = 100
START = datetime(2026, 3, 1, tzinfo=UTC)


def make_batches(total: int, batch: int) -> list[list[StoredReading]]:
    values = {m.key: round((m.minimum + m.maximum) / 2 + 0.123, 2) for m in MEASUREMENTS}
    values |= {name: 42.5 for name in STATE_FIELDS}
    readings = [StoredReading(
        site_id="coop-piura", node_id=f"secador-{i % NODES:03d}", seq=i // NODES + 1,
        measured_at=START + timedelta(seconds=10 * (i // NODES), microseconds=i % NODES),
        fields=values, raining=False, mode="auto", alarms=("rewetting_risk",),
        batch_id="lote-2026-03-01") for i in range(total)]
    return [readings[i:i + batch] for i in range(0, total, batch)]


def long_node_batches(total: int, batch: int) -> list[list[StoredReading]]:
    """One node's readings every 10 s with 3 gaps (a lost reading each)."""
    gaps = {total // 4, total // 2, 3 * total // 4}
    readings = [StoredReading(
        site_id="coop-piura", node_id="long", seq=seq,
        measured_at=START + timedelta(seconds=10 * seq), fields={"air_temp_c": 45.0},
        mode="auto") for seq in range(1, total + 1) if seq not in gaps]
    return [readings[i:i + batch] for i in range(0, len(readings), batch)]


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def post_all(url: str, database: str, bodies: list[bytes]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for body in bodies:
            response = client.post("/write", params={"db": database, "precision": "ns"},
                                   content=body)
            response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--node-readings", type=int, default=300_000)
    args = parser.parse_args()
    batches = make_batches(args.readings, args.batch)
    bodies = [lines(batch) for batch in batches]
    total = sum(len(batch) for batch in batches)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as folder, InfluxDaemon(Path(folder)) as influxd:
        influxd.query("CREATE DATABASE ceiling1")
        influxd.query("CREATE DATABASE ceiling2")
        seconds = timed(lambda: post_all(influxd.url, "ceiling1", bodies))
        rows.append((f"ceiling: pre-encoded line protocol, {args.batch} points/request, "
                     f"1 client", f"{total / seconds:,.0f} points/s"))
        simple = [b"\n".join(b"m,node=n%d v=%d.5 %d" % (i % NODES, i, 10**18 + i)
                             for i in range(first, first + args.batch))
                  for first in range(0, total, args.batch)]
        influxd.query("CREATE DATABASE simple")
        seconds = timed(lambda: post_all(influxd.url, "simple", simple))
        rows.append(("for comparison: points with 1 field, the same way, 1 client",
                     f"{total / seconds:,.0f} points/s"))
        halves = [bodies[0::2], bodies[1::2]]
        threads = [threading.Thread(target=post_all, args=(influxd.url, "ceiling2", half))
                   for half in halves]
        seconds = timed(lambda: ([t.start() for t in threads], [t.join() for t in threads]))
        rows.append(("ceiling: the same, 2 clients in parallel",
                     f"{total / seconds:,.0f} points/s"))
        encode_s = timed(lambda: [lines(batch) for batch in batches])
        rows.append(("line-protocol encoding alone (Python)",
                     f"{total / encode_s:,.0f} readings/s"))
        with InfluxDB1Store(influxd.url, "store", timeout_s=60) as store:
            new = 0

            def write_all() -> None:
                nonlocal new
                for batch in batches:
                    new += store.write(batch)

            seconds = timed(write_all)
            assert new == total, (new, total)
            rows.append((f"InfluxDB1Store.write, {args.batch} readings/batch, new readings",
                         f"{total / seconds:,.0f} readings/s"))
            new = 0
            seconds = timed(write_all)
            assert new == 0, new
            rows.append(("InfluxDB1Store.write, the same batches again (all duplicates)",
                         f"{total / seconds:,.0f} readings/s"))
        with InfluxDB1Store(influxd.url, "store2", timeout_s=60) as store2:
            halves = [batches[0::2], batches[1::2]]

            def write_half(half: list[list[StoredReading]]) -> None:
                for batch in half:
                    store2.write(batch)

            threads = [threading.Thread(target=write_half, args=(half,)) for half in halves]
            seconds = timed(lambda: ([t.start() for t in threads], [t.join() for t in threads]))
            rows.append(("InfluxDB1Store.write from 2 threads at once (encoding of one batch "
                         "overlaps the other's request)", f"{total / seconds:,.0f} readings/s"))
        with InfluxDB1Store(influxd.url, "store", timeout_s=60) as store:
            per_node = total // NODES
            ranges: list[tuple[int, int]] = []
            seconds = timed(lambda: ranges.extend(store.seq_ranges("coop-piura", "secador-007")))
            assert ranges == [(1, per_node)], ranges
            rows.append((f"seq_ranges of a node with {per_node:,} readings "
                         f"({per_node * 10 / 86400:.1f} days)", f"{seconds * 1000:.0f} ms"))
            points: list[object] = []
            end = START + timedelta(seconds=10 * per_node)
            seconds = timed(lambda: points.extend(store.series(
                "coop-piura", "secador-007", START, end, ["air_temp_c", "air_rh_pct"],
                every_s=600)))
            rows.append((f"series of 2 fields over those readings in 600 s means "
                         f"({len(points)} points)", f"{seconds * 1000:.0f} ms"))
            long_run = long_node_batches(args.node_readings, args.batch)
            for batch in long_run:
                store.write(batch)
            ranges.clear()
            seconds = timed(lambda: ranges.extend(store.seq_ranges("coop-piura", "long")))
            assert len(ranges) == 4, ranges
            rows.append((f"seq_ranges of a node with {args.node_readings:,} readings "
                         f"({args.node_readings * 10 / 86400:.0f} days at 1 per 10 s), 3 gaps",
                         f"{seconds * 1000:.0f} ms"))
    version = subprocess.run([INFLUXD, "version"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    print(f"{version.strip()}, {cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, httpx {httpx.__version__}, "
          f"{total:,} readings of 14 fields from {NODES} nodes\n")
    print("| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
