"""Gateway ingest benchmark: throughput, publish→queryable latency and memory of a real
`cacao-dryer gateway run` process, per store. Prints Markdown; ``--write`` saves
bench/GATEWAY_RESULTS.md.

    .venv/bin/python bench/bench_gateway.py [--readings 100000] [--stores sqlite,influxdb1]

Private Mosquitto and influxd on free ports (never the machine's own), 100 simulated nodes:
1. Throughput: the gateway's session is created, the gateway stopped; N readings from 100
   nodes are published at QoS 1 (the broker queues them for the persistent session); the
   gateway starts and the clock runs until every reading is in the store.
2. Latency: with the gateway running and 100 nodes publishing 1,000 readings/s in total, a probe
   node publishes one reading every 50 ms and polls the store until it is queryable.
3. Memory: the gateway process's peak resident set (VmHWM) over the whole run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_outbox import machine  # noqa: E402
from support import wait_for  # noqa: E402
from support.influxd import InfluxDaemon  # noqa: E402
from support.mosquitto import MosquittoBroker  # noqa: E402

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic  # noqa: E402
from gateway.config import parse_gateway_config  # noqa: E402
from gateway.service import open_store  # noqa: E402

SITE = "bench"
NODES = [f"secador-{i:03d}" for i in range(1, 101)]
T0 = datetime(2026, 1, 10, tzinfo=UTC)


def reading(node: str, seq: int) -> bytes:
    return encode(Telemetry(site_id=SITE, node_id=node, seq=seq,
                            measured_at=T0 + timedelta(seconds=10 * seq),
                            readings={"air_temp_c": 41.2, "air_rh_pct": 55.0,
                                      "ambient_temp_c": 29.0, "ambient_rh_pct": 70.0,
                                      "bean_moisture_pct_wb": 33.3},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


class Publisher:
    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, node: str, seq: int) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic(SITE, node, Channel.TELEMETRY), reading(node, seq),
                                   qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Gateway:
    def __init__(self, folder: Path, broker: MosquittoBroker, storage: dict) -> None:
        self.data = {"sites": [SITE], "data_dir": str(folder / "gw"),
                     "mqtt": {"broker": broker.url, "client_id": "gateway-bench",
                              "receive_maximum": 20000},
                     "storage": storage}
        self.config = folder / "gateway.toml"
        self.config.write_text(tomli_w.dumps(self.data))
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_kb = 0
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
             str(self.config), "--log-level", "warning"])
        self._watch = threading.Thread(target=self._watch_memory, daemon=True)
        self._watch.start()

    def _watch_memory(self) -> None:
        process = self.process
        while process is not None and process.poll() is None:
            try:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=60)

    def store(self):  # type: ignore[no-untyped-def]
        return open_store(parse_gateway_config(self.data))


def stored_total(store) -> int:  # type: ignore[no-untyped-def]
    return sum(last - first + 1 for node in NODES
               for first, last in store.seq_ranges(SITE, node))


def run(kind: str, folder: Path, readings: int) -> dict[str, float]:
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    influxd = None
    if kind == "influxdb1":
        influxd = InfluxDaemon(folder / "influxd")
        influxd.start()
        storage = {"kind": "influxdb1", "url": influxd.url, "database": "bench"}
    else:
        storage = {"kind": "sqlite", "path": str(folder / "readings.sqlite3")}
    gateway = Gateway(folder, broker, storage)
    try:
        gateway.start()  # creates the persistent session, then goes away
        time.sleep(2)
        gateway.stop()
        publisher = Publisher(broker.port, "bench-nodes")
        per_node = readings // len(NODES)
        items = [(node, seq) for seq in range(1, per_node + 1) for node in NODES]
        for start in range(0, len(items), 5000):  # paho keeps what it sends in memory
            for info in [publisher.send(node, seq) for node, seq in items[start:start + 5000]]:
                info.wait_for_publish(120)
        store = gateway.store()
        gateway.start()
        started = time.perf_counter()
        wait_for(lambda: stored_total(store) >= per_node * len(NODES), 600,
                 "every reading stored", interval=0.2)
        throughput = per_node * len(NODES) / (time.perf_counter() - started)
        # latency under 1,000 readings/s of background load
        stop = threading.Event()

        def background() -> None:
            seq = per_node
            while not stop.is_set():
                seq += 1
                tick = time.perf_counter()
                for node in NODES:
                    publisher.send(node, seq)
                time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))

        load = threading.Thread(target=background, daemon=True)
        load.start()
        probe = Publisher(broker.port, "bench-probe")
        latencies = []
        for seq in range(1, 201):
            sent = time.perf_counter()
            probe.send("probe", seq)
            wait_for(lambda s=seq: (store.latest(SITE, "probe") or _NONE).seq >= s, 30,
                     "the probe reading", interval=0.002)
            latencies.append(time.perf_counter() - sent)
            time.sleep(0.05)
        stop.set()
        load.join()
        probe.close()
        publisher.close()
        store.close()
        latencies.sort()
        return {"throughput": throughput, "p50_ms": statistics.median(latencies) * 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "rss_mb": gateway.peak_kb / 1024, "readings": per_node * len(NODES)}
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        broker.kill()
        if influxd is not None:
            influxd.kill()


class _None:
    seq = 0


_NONE = _None()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,influxdb1")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-", dir="/var/tmp"))
    try:
        rows = []
        for kind in args.stores.split(","):
            (folder / kind).mkdir()
            result = run(kind, folder / kind, args.readings)
            rows.append(f"| {kind} | {result['readings']:,.0f} | {result['throughput']:,.0f} "
                        f"| {result['p50_ms']:.0f} | {result['p99_ms']:.0f} "
                        f"| {result['rss_mb']:.0f} |")
        report = "\n".join([
            "# Gateway benchmark results", "",
            f"Run {datetime.now(UTC):%Y-%m-%d} with `.venv/bin/python bench/bench_gateway.py "
            f"--write` on: {machine(folder)}.", "",
            "| store | backlog (100 nodes, QoS 1) | ingest readings/s | latency p50 ms "
            "| latency p99 ms (at 1,000 readings/s) | gateway peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- |", *rows, "",
            "Goals (issue 3): ≥ 20,000 readings/s into InfluxDB with no loss, p99 < 1 s at "
            "1,000 readings/s, < 150 MB RSS. Latency is publish → queryable in the store, "
            "measured by a probe node polling the store every 2 ms.", ""])
        # (The committed results file also carries a status paragraph written by hand.)
        print(report)
        if args.write:
            (ROOT / "bench" / "GATEWAY_RESULTS.md").write_text(report)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
