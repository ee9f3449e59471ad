"""Gateway ingest benchmark: throughput, publish→queryable latency and memory of a real
`cacao-dryer gateway run` process (and its ingest workers), per store and worker count.
Prints Markdown; ``--write`` saves the table into bench/GATEWAY_RESULTS.md.

    .venv/bin/python bench/bench_gateway.py [--readings 200000] \
        [--runs sqlite:0,sqlite:2,influxdb1:0,influxdb1:2,influxdb1-nocount:2] [--write]

(``influxdb1-nocount``: InfluxDB 1.x with ``count_duplicates = false``, docs/storage.md.)

Each run gets a private Mosquitto and (for InfluxDB) a private influxd on free ports, never the
machine's own. 100 simulated nodes, QoS 1:
1. Throughput with a backlog: the gateway's persistent sessions exist (with workers: one per
   worker on the shared subscription), the gateway is stopped; N readings of 100 nodes are
   published (``RawPublisher``: pipelined, so publishing is not what is measured) and the
   broker queues them; then the gateway starts and the clock runs until the store holds all
   N (polled with one count query every 0.25 s). Afterwards every node's stored seq numbers
   are checked: exactly 1..N/100, nothing missing ("no loss").
2. Latency: with the gateway running and 100 nodes publishing 1,000 readings/s in total, a
   probe node publishes one reading every 50 ms and polls the store (``latest``, every 5 ms)
   until it is queryable; 200 probes, p50 and p99.
3. Memory: the peak, over the run, of the gateway's processes' summed resident set (each
   live process's VmHWM, so a child that has exited — the one that migrates the metadata
   database at start — is not added to the drain's peak), the peak of their summed PSS, and
   the main process's and each worker's own peak; then the summed RSS at the end of the
   latency test (steady 1,000 readings/s after the backlog).

``MALLOC_ARENA_MAX`` and other environment variables are passed on to the gateway as set.
``BENCH_PROFILE_DIR=<folder>`` runs each gateway under py-spy (``pip install py-spy``, not a
dependency) and leaves one collapsed-stack file per run there (the CPU columns then include
py-spy's own ptrace stops, so compare profiles with each other, not with other runs).

The broker config is the test broker's (tests/support/mosquitto.py) with
``max_queued_messages`` raised for the backlog and ``max_inflight_messages 1000`` (the Receive
Maximum Mosquitto grants publishers; the default 20 caps one publisher at ~25,000 msg/s).
The gateway uses ``receive_maximum = 20000`` and ``batch_max_readings = 5000`` unless told.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_outbox import machine  # noqa: E402
from mqtt_load import (  # noqa: E402
    NODES,
    SITE,
    T0,
    RawPublisher,
    create_session,
    reading,
    telemetry_payloads,
)
from support import wait_for  # noqa: E402
from support.influxd import InfluxDaemon  # noqa: E402
from support.mosquitto import MosquittoBroker, free_port  # noqa: E402

from cacao_dryer.contract import Channel, topic  # noqa: E402
from gateway.config import parse_gateway_config  # noqa: E402
from gateway.ingest import share_name  # noqa: E402
from gateway.service import open_store  # noqa: E402
from gateway.stores.line_protocol import time_ns  # noqa: E402

CLIENT_ID = "gateway-bench"
BROKER_EXTRA = ("max_queued_messages 5000000", "max_inflight_messages 1000")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the ingest workers)."""
    found = [pid]
    for child_pid in found:
        try:
            for task in Path(f"/proc/{child_pid}/task").iterdir():
                children = (task / "children").read_text().split()
                found.extend(int(child) for child in children if int(child) not in found)
        except OSError:
            continue
    return found


class Gateway:
    def __init__(self, folder: Path, broker: MosquittoBroker, storage: dict[str, Any],
                 workers: int, receive_maximum: int = 20000, batch: int = 5000) -> None:
        self.data = {"sites": [SITE], "data_dir": str(folder / "gw"),
                     "mqtt": {"broker": broker.url, "client_id": CLIENT_ID,
                              "receive_maximum": receive_maximum},
                     "storage": storage, "ingest_workers": workers,
                     "batch_max_readings": batch, "api": {"port": free_port()}}
        self.workers = workers
        self.config = folder / "gateway.toml"
        self.config.write_text(tomli_w.dumps(self.data))
        self.process: subprocess.Popen[bytes] | None = None
        self._profiler: subprocess.Popen[bytes] | None = None
        self.peak_kb: dict[int, int] = {}
        self.peak_sum_kb = 0  # the peak of the live processes' summed VmHWM
        self.peak_pss_kb = 0
        self.cpu_s = 0.0
        self._watch: threading.Thread | None = None

    def create_sessions(self, port: int) -> None:
        """The sessions the gateway will resume, so the broker queues the backlog for them."""
        base = f"{topic(SITE, '+', Channel.TELEMETRY).rsplit('/', 1)[0]}"
        if self.workers == 0:
            create_session(port, CLIENT_ID, [f"{base}/{c.value}" for c in Channel
                                             if c in (Channel.TELEMETRY, Channel.STATUS,
                                                      Channel.EVENT)])
            return
        group = share_name(parse_gateway_config(self.data))
        for index in range(1, self.workers + 1):
            create_session(port, f"{CLIENT_ID}-w{index}",
                           [f"$share/{group}/{base}/{Channel.TELEMETRY.value}"])

    def start(self) -> None:
        command = [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
                   str(self.config), "--log-level", "warning"]
        self.process = subprocess.Popen(command)
        profile = os.environ.get("BENCH_PROFILE_DIR")
        if profile:  # sample every thread with py-spy (pip install py-spy; not a dependency)
            self._profiler = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                 "--rate", "250", "--threads", "--subprocesses", "--pid",
                 str(self.process.pid), "--output",
                 str(Path(profile) / f"{self.config.parent.name}.txt")])
        self._watch = threading.Thread(target=self._watch_memory, daemon=True)
        self._watch.start()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the gateway and its workers so far."""
        assert self.process is not None
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / 100  # clock ticks

    def _watch_memory(self) -> None:
        """Peak RSS (VmHWM) of each process, the peak of the live processes' summed VmHWM,
        and the peak of their summed PSS (shared library pages divided between the processes
        that map them)."""
        process = self.process
        while process is not None and process.poll() is None:
            pss_kb = hwm_kb = 0
            for pid in process_tree(process.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM"):
                            hwm = int(line.split()[1])
                            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)
                            hwm_kb += hwm
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            pss_kb += int(line.split()[1])
                except OSError:
                    continue
            self.peak_sum_kb = max(self.peak_sum_kb, hwm_kb)
            self.peak_pss_kb = max(self.peak_pss_kb, pss_kb)
            time.sleep(0.2)

    def rss_now_mb(self) -> float:
        """The gateway's processes' summed resident set right now."""
        assert self.process is not None
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    @property
    def peak_mb(self) -> float:
        return self.peak_sum_kb / 1024

    def process_peaks_mb(self) -> tuple[int, list[int]]:
        """(the main process's peak RSS, each other process's), MB."""
        assert self.process is not None
        main = self.peak_kb.get(self.process.pid, 0) // 1024
        others = sorted(kb // 1024 for pid, kb in self.peak_kb.items()
                        if pid != self.process.pid)
        return main, others

    def stop(self) -> None:
        assert self.process is not None
        if self._profiler is not None:  # SIGINT: py-spy writes its samples and exits
            self._profiler.send_signal(signal.SIGINT)
            self._profiler.wait(timeout=60)
        self.process.terminate()
        self.process.wait(timeout=60)

    def store(self) -> Any:
        return open_store(parse_gateway_config(self.data))


def counter(kind: str, folder: Path, influxd: InfluxDaemon | None) -> Any:
    """``count(since)``: how many readings are stored (measured at or after ``since``)."""
    if kind == "sqlite":
        path = folder / "readings.sqlite3"

        def count_sqlite(since: datetime | None = None) -> int:
            if not path.exists():
                return 0
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                try:  # cheap in SQLite whatever the size
                    return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0
        return count_sqlite
    assert influxd is not None
    client = httpx.Client(base_url=influxd.url, timeout=30)

    def count_influx(since: datetime | None = None) -> int:
        where = f" WHERE time >= {time_ns(since)}" if since is not None else ""
        answer = client.post("/query", data={
            "db": "bench", "q": f"SELECT count(seq) FROM dryer_reading{where}"})
        series = answer.json()["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0
    return count_influx


def run(kind: str, workers: int, folder: Path, readings: int, receive_maximum: int = 20000,
        batch: int = 5000) -> dict[str, Any]:
    broker = MosquittoBroker(folder / "broker", extra=BROKER_EXTRA)
    broker.start()
    influxd = None
    if kind in ("influxdb1", "influxdb1-nocount"):
        influxd = InfluxDaemon(folder / "influxd")
        influxd.start()
        storage: dict[str, Any] = {"kind": "influxdb1", "url": influxd.url,
                                   "database": "bench"}
        if kind == "influxdb1-nocount":  # [storage] count_duplicates = false
            storage["count_duplicates"] = False
            kind = "influxdb1"
    else:
        storage = {"kind": "sqlite", "path": str(folder / "readings.sqlite3")}
    gateway = Gateway(folder, broker, storage, workers, receive_maximum, batch)
    load_before = os.getloadavg()[0]
    try:
        gateway.create_sessions(broker.port)
        per_node = readings // len(NODES)
        publisher = RawPublisher(broker.port, "bench-nodes")
        publish_rate = publisher.publish_all(telemetry_payloads(per_node))
        stored = counter(kind, folder, influxd)
        total = per_node * len(NODES)
        gateway.start()
        started = time.perf_counter()
        first: tuple[float, int, float] | None = None  # (CPU s, readings, time) at the start

        last_round = T0 + timedelta(seconds=10 * per_node)  # the newest reading of each node

        def all_stored() -> bool:
            """A full count in InfluxDB scans every point: poll the newest readings (cheap)
            and count everything only once they are all in."""
            nonlocal first
            if first is None:
                count = stored()
                if count:
                    first = (gateway.cpu_seconds(), count, time.perf_counter())
                return False
            return stored(last_round) >= len(NODES) and stored() >= total
        wait_for(all_stored, 900, "every reading stored", interval=0.25)
        finished = time.perf_counter()
        assert first is not None
        startup_s = first[2] - started
        rate = (total - first[1]) / (finished - first[2])
        cpu_per_reading = (gateway.cpu_seconds() - first[0]) / (total - first[1] or 1)
        store = gateway.store()
        missing = [node for node in NODES
                   if store.seq_ranges(SITE, node) != [(1, per_node)]]
        latencies = latency(broker, publisher, store, per_node)
        steady_mb = gateway.rss_now_mb()  # just after 1,000 readings/s for ~15 s
        publisher.close()
        store.close()
        return {"kind": kind, "workers": workers, "readings": total,
                "throughput": rate, "startup_s": startup_s, "publish_rate": publish_rate,
                "no_loss": not missing,
                "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "rss_mb": gateway.peak_mb, "pss_mb": gateway.peak_pss_kb / 1024,
                "rss_mb_per_process": gateway.process_peaks_mb(), "steady_mb": steady_mb,
                "load_before": load_before,
                "cpu_us": cpu_per_reading * 1e6}
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        broker.kill()
        if influxd is not None:
            influxd.kill()


def latency(broker: MosquittoBroker, publisher: RawPublisher, store: Any,
            per_node: int) -> list[float]:
    """Publish → queryable of 200 probe readings under 1,000 readings/s from 100 nodes."""
    stop = threading.Event()

    def background() -> None:
        seq = per_node
        while not stop.is_set():
            seq += 1
            tick = time.perf_counter()
            publisher.publish_all(telemetry_payloads(1, first_seq=seq))
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))

    load = threading.Thread(target=background, daemon=True)
    load.start()
    probe = RawPublisher(broker.port, "bench-probe")
    latencies = []
    try:
        for seq in range(1, 201):
            message = [(topic(SITE, "probe", Channel.TELEMETRY), reading("probe", seq))]
            sent = time.perf_counter()
            probe.publish_all(message)
            wait_for(lambda s=seq: (getattr(store.latest(SITE, "probe"), "seq", 0)) >= s, 30,
                     "the probe reading", interval=0.005)
            latencies.append(time.perf_counter() - sent)
            time.sleep(0.05)
    finally:
        stop.set()
        load.join()
        probe.close()
    latencies.sort()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--runs", default="sqlite:0,sqlite:2,influxdb1:0,influxdb1:2,"
                        "influxdb1-nocount:2",
                        help="store:workers, comma-separated")
    parser.add_argument("--receive-maximum", type=int, default=20000,
                        help="the gateway's mqtt.receive_maximum (per process)")
    parser.add_argument("--batch", type=int, default=5000,
                        help="the gateway's batch_max_readings")
    parser.add_argument("--write", action="store_true",
                        help="replace the table in bench/GATEWAY_RESULTS.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-", dir="/var/tmp"))
    load_at_start = os.getloadavg()[0]
    arenas = (f"; MALLOC_ARENA_MAX={os.environ['MALLOC_ARENA_MAX']}"
              if "MALLOC_ARENA_MAX" in os.environ else "")
    try:
        rows = []
        for spec in args.runs.split(","):
            kind, workers = spec.split(":")
            run_folder = folder / spec.replace(":", "-")
            run_folder.mkdir()
            result = run(kind, int(workers), run_folder, args.readings,
                         args.receive_maximum, args.batch)
            print(result, file=sys.stderr)
            main_mb, others_mb = result["rss_mb_per_process"]
            parts = f"main {main_mb}" + "".join(f" + {mb}" for mb in others_mb)
            rows.append(
                f"| {spec.split(':')[0]} | {result['workers']} | {result['readings']:,} "
                f"| **{result['throughput']:,.0f}** | {'yes' if result['no_loss'] else 'NO'} "
                f"| {result['cpu_us']:.0f} | {result['p50_ms']:.0f} | {result['p99_ms']:.0f} "
                f"| **{result['rss_mb']:.0f}** ({result['pss_mb']:.0f}); {parts} "
                f"| {result['steady_mb']:.0f} "
                f"| {result['startup_s']:.1f} | {result['load_before']:.1f} |")
        table = "\n".join([
            f"Run {datetime.now(UTC):%Y-%m-%d} with `.venv/bin/python bench/bench_gateway.py "
            f"--runs {args.runs} --readings {args.readings} --receive-maximum "
            f"{args.receive_maximum} --batch {args.batch}` on: {machine(folder)}; "
            f"load average before: {load_at_start:.1f}{arenas}.",
            "",
            "| store | ingest workers | backlog (100 nodes, QoS 1) | ingest readings/s "
            "| every seq stored once | gateway CPU µs/reading | latency p50 ms "
            "| latency p99 ms (at 1,000 readings/s) | gateway peak RSS MB, all processes "
            "(PSS); each process's peak | RSS MB at 1,000 readings/s, after the backlog "
            "| start → first reading stored s | load average before the row |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows])
        print(table)
        if args.write:
            replace_section(ROOT / "bench" / "GATEWAY_RESULTS.md", "gateway", table)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``<!-- name:start -->`` and ``<!-- name:end -->`` markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = path.read_text()
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{text}\n{end}{after}")


if __name__ == "__main__":
    sys.exit(main())
