"""Node benchmark: CPU per control-and-publish cycle, resident memory, SD-card writes per day,
and store-and-forward replay after a 24-hour outage. Prints Markdown; ``--write`` also saves
bench/RESULTS.md.

    .venv/bin/python bench/bench_node.py [--cycles 8640] [--rss-seconds 30] [--write]

All runs use the simulated dryer from firmware/examples/simulated.toml, a private Mosquitto on
a free port (never the machine's own), and a data dir on the real disk (/var/tmp, not tmpfs).

1. Cycle cost: one simulated day (8,640 cycles of 10 s, each with its ten 1-s ticks), ManualClock,
   link connected: process CPU time (all threads: loop, paho, forwarder) per cycle, and bytes the
   process dirtied on disk (``write_bytes``) — the SD-card cost of a day at one reading per 10 s.
   The simulated dryer's physics run inside the loop too, so this is an upper bound for a Pi.
2. Memory: a real ``cacao-dryer node run`` process (simulated, real time) after N seconds:
   VmRSS and its peak VmHWM from /proc.
3. Replay: 8,640 readings (24 h at one per 10 s) produced by the node loop while the broker is
   unreachable, then the broker comes up: time until every reading is acknowledged and until a
   subscriber holds every sequence number.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the private-broker helper the tests use
sys.path.insert(0, str(ROOT / "bench"))

from bench_outbox import io_counters, machine  # noqa: E402
from support import wait_for  # noqa: E402
from support.mosquitto import MosquittoBroker, Subscriber  # noqa: E402

from cacao_dryer.clock import ManualClock  # noqa: E402
from firmware.config import NodeSettings, load_node_config  # noqa: E402
from firmware.node import Node, build_node  # noqa: E402

EXAMPLE = ROOT / "firmware" / "examples" / "simulated.toml"
START = datetime(2026, 1, 10, 11, 0, tzinfo=UTC)
READINGS_PER_DAY = 8640


def settings_for(folder: Path, broker_url: str) -> NodeSettings:
    settings = load_node_config(EXAMPLE)
    return settings.model_copy(update={
        "data_dir": folder / "data",
        "mqtt": settings.mqtt.model_copy(update={"broker": broker_url}),
    })


def run_cycles(node: Node, clock: ManualClock, cycles: int) -> None:
    interval = int(node.settings.sample_interval_s)
    for _ in range(cycles):
        for tick in range(interval):
            now = clock.now()
            node.agent.step(now)
            if tick == 0:
                node.agent.cycle(now)
            clock.advance(1)


def cycle_cost(folder: Path, cycles: int) -> dict[str, float]:
    with MosquittoBroker(folder / "broker") as broker:
        clock = ManualClock(START)
        node = build_node(settings_for(folder, broker.url), clock=clock)
        node.link.start()
        wait_for(lambda: node.link.connected, 10, "the link to connect")
        io_before, cpu_before, wall_before = io_counters(), time.process_time(), time.perf_counter()
        run_cycles(node, clock, cycles)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        wait_for(lambda: node.outbox.depth() == 0, 60, "the outbox to drain")
        io_after = io_counters()
        node.link.stop(timeout=5)
        node.outbox.close()
    written = io_after["write_bytes"] - io_before["write_bytes"]
    return {"cpu_ms": cpu / cycles * 1000, "wall_ms": wall / cycles * 1000,
            "bytes_per_day": written / cycles * READINGS_PER_DAY}


def node_memory(folder: Path, seconds: float) -> dict[str, float]:
    with MosquittoBroker(folder / "broker") as broker:
        data = tomllib.loads(EXAMPLE.read_text())
        data |= {"data_dir": str(folder / "data")}
        data["simulation"] |= {"speed": 1.0}
        config = folder / "node.toml"
        config.write_text(tomli_w.dumps(data))
        process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config", str(config),
             "--broker", broker.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(seconds)
            status = Path(f"/proc/{process.pid}/status").read_text()
        finally:
            process.terminate()
            process.wait(timeout=30)
    fields = {line.split(":")[0]: line.split(":")[1].split()[0] for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    baseline = subprocess.run([sys.executable, "-c", "import re;print(open('/proc/self/status')"
                               ".read())"], capture_output=True, text=True).stdout
    python_rss = next(line.split()[1] for line in baseline.splitlines()
                      if line.startswith("VmRSS"))
    return {"rss_mb": int(fields["VmRSS"]) / 1024, "hwm_mb": int(fields["VmHWM"]) / 1024,
            "python_mb": int(python_rss) / 1024}


def replay_after_outage(folder: Path, readings: int) -> dict[str, float]:
    broker = MosquittoBroker(folder / "broker")  # not started: the outage
    clock = ManualClock(START)
    node = build_node(settings_for(folder, broker.url), clock=clock)
    run_cycles(node, clock, readings)
    queued = node.outbox.depth()
    with broker, Subscriber(broker, "cacao/v1/+/+/telemetry", "gateway-bench") as gateway:
        started = time.perf_counter()
        node.link.start()
        wait_for(lambda: node.outbox.depth() == 0, 300, "the outbox to drain", interval=0.005)
        acked = time.perf_counter() - started
        wait_for(lambda: len({json.loads(p)["seq"] for p in gateway.payloads()}) >= readings,
                 300, "every reading at the subscriber", interval=0.01)
        received = time.perf_counter() - started
        node.link.stop(timeout=5)
        seqs = {json.loads(p)["seq"] for p in gateway.payloads()}
    node.outbox.close()
    assert seqs >= set(range(1, readings + 1)), "replay lost readings"
    return {"queued": queued, "acked_s": acked, "received_s": received,
            "duplicates": len(gateway.payloads()) - len(seqs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=READINGS_PER_DAY)
    parser.add_argument("--rss-seconds", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--write", action="store_true", help="also write bench/RESULTS.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-node-", dir=args.dir))
    try:
        for name in ("cost", "memory", "replay"):
            (folder / name).mkdir()
        cost = cycle_cost(folder / "cost", args.cycles)
        memory = node_memory(folder / "memory", args.rss_seconds)
        replay = replay_after_outage(folder / "replay", READINGS_PER_DAY)
        report = "\n".join([
            "# Node benchmark results",
            "",
            f"Run {datetime.now(UTC):%Y-%m-%d} with `.venv/bin/python bench/bench_node.py "
            f"--write` on: {machine(folder)}.",
            "",
            "| measure | result | goal |",
            "| --- | --- | --- |",
            f"| CPU per control-and-publish cycle (incl. 10 ticks and simulator physics), "
            f"{args.cycles} cycles | {cost['cpu_ms']:.2f} ms (wall {cost['wall_ms']:.2f} ms) "
            "| small next to 10 s |",
            f"| Disk bytes dirtied per day at 1 reading / 10 s (outbox sync=full, link up) "
            f"| {cost['bytes_per_day'] / 1e6:.1f} MB | gentle on SD cards |",
            f"| Resident memory of a running node after {args.rss_seconds:g} s "
            f"(peak) | {memory['rss_mb']:.1f} MB ({memory['hwm_mb']:.1f} MB) | < 40 MB |",
            f"| — of which a bare Python interpreter | {memory['python_mb']:.1f} MB | |",
            f"| Replay after a 24 h outage: {replay['queued']:.0f} queued messages "
            f"({READINGS_PER_DAY} readings + events) all acknowledged | "
            f"{replay['acked_s']:.1f} s | < 60 s, no loss |",
            f"| — every reading at a subscriber (duplicates: {replay['duplicates']}) "
            f"| {replay['received_s']:.1f} s, none lost | |",
            "",
            "Notes: the cycle figure includes the simulated dryer's physics and the simulated "
            "chips, which a real node does not run; a Raspberry Pi Zero 2 W core is roughly "
            "5-10x slower than this machine's. Disk bytes are the process's `write_bytes` "
            "(page cache dirtied, 4 KiB granularity), the closest a test gets to what the "
            "card sees; see docs/store-and-forward.md for the outbox alone. At ~90 MB/day a "
            "node writes ~33 GB a year: a 16 GB card rated for 1,000 write cycles lasts "
            "decades even with 10x write amplification; a relaxed outbox (SQLite "
            "synchronous=NORMAL) would write about a third of that, but nodes never use it: "
            "after a power cut it could reuse sequence numbers (docs/store-and-forward.md).",
            "",
            "Memory: where a node's resident memory goes (x86_64, import by import): the "
            "interpreter ~10.7 MB, pydantic (library, pydantic-core, validators) ~16 MB, "
            "paho-mqtt with ssl/libcrypto ~6 MB, gpiozero ~2 MB, sqlite3 ~2 MB, this "
            "project's modules ~4 MB. typer + rich (5.5 MB) were replaced by argparse to get "
            "this close to the goal; pydantic is required by the message contract.",
            "",
        ])
        print(report)
        if args.write:
            (ROOT / "bench" / "RESULTS.md").write_text(report)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
