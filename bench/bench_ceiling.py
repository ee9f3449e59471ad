"""The machine's ceiling for the gateway's job, part by part, without the gateway: how fast
this machine can move the benchmark's readings into the broker, out of it, through Python's
decoding and into influxd. Prints Markdown; ``--write`` saves it into
bench/GATEWAY_RESULTS.md.

    .venv/bin/python bench/bench_ceiling.py [--readings 200000] [--write]

Same readings (100 nodes, the contract's JSON), same private Mosquitto config and influxd as
bench/bench_gateway.py:

- publish: ``RawPublisher`` (pipelined QoS 1, pre-encoded packets) into the broker;
- drain, C: ``mosquitto_sub -q 1`` resuming a persistent session that holds the backlog
  (output to /dev/null) — the broker's delivery rate to one consumer;
- drain, the gateway's receiver: ``gateway.mqtt_in.MqttReceiver`` taking the same backlog and
  acknowledging each list at once, doing nothing else;
- decode: ``gateway.ingest.decode_payload`` + ``StoredReading.from_telemetry`` on one core;
- influxd: the same readings as the gateway's line protocol, pre-encoded, 5,000 points per
  ``POST /write``, from 1 and 2 clients (no Python per point);
- ``InfluxDB1Store.write`` of decoded readings, 5,000 per batch (encoding, "which exist
  already" query, POST), one thread.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import BROKER_EXTRA, replace_section  # noqa: E402
from bench_outbox import machine  # noqa: E402
from mqtt_load import SITE, RawPublisher, create_session, telemetry_payloads  # noqa: E402
from support.influxd import InfluxDaemon  # noqa: E402
from support.mosquitto import MosquittoBroker  # noqa: E402

from gateway.config import GatewayMqttConfig  # noqa: E402
from gateway.ingest import decode_payload  # noqa: E402
from gateway.mqtt_in import MqttReceiver  # noqa: E402
from gateway.stores.influxdb1 import InfluxDB1Store  # noqa: E402
from gateway.stores.line_protocol import reading_line  # noqa: E402
from gateway.timeseries import StoredReading  # noqa: E402

FILTER = f"cacao/v1/{SITE}/+/telemetry"
BATCH = 5000


def broker_parts(folder: Path, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    broker = MosquittoBroker(folder / "broker", extra=BROKER_EXTRA)
    broker.start()
    try:
        create_session(broker.port, "drain-c", [FILTER])
        create_session(broker.port, "drain-py", [FILTER])
        publisher = RawPublisher(broker.port, "bench-nodes")
        publish = publisher.publish_all(messages)  # queued twice: one copy per session
        publisher.close()
        started = time.perf_counter()
        subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-V", "mqttv5", "-c",
                        "-i", "drain-c", "-x", "3600", "-q", "1", "-t", FILTER,
                        "-C", str(len(messages))], stdout=subprocess.DEVNULL, check=True)
        drain_c = len(messages) / (time.perf_counter() - started)
        lists: queue.Queue[list] = queue.Queue()
        receiver = MqttReceiver(GatewayMqttConfig(broker=broker.url, receive_maximum=20000),
                                "drain-py", [FILTER], lists.put)
        started = time.perf_counter()
        receiver.start()
        taken = 0
        while taken < len(messages):
            batch = lists.get(timeout=60)
            taken += len(batch)
            receiver.ack(batch)
        drain_py = len(messages) / (time.perf_counter() - started)
        receiver.stop()
    finally:
        broker.kill()
    return {"publish": publish, "drain_c": drain_c, "drain_py": drain_py}


def decode_rate(messages: list[tuple[str, bytes]]) -> tuple[float, list[StoredReading]]:
    started = time.process_time()
    readings = [StoredReading.from_telemetry(decode_payload(name, payload)[2])  # type: ignore[arg-type]
                for name, payload in messages]
    return len(messages) / (time.process_time() - started), readings


def influx_parts(folder: Path, readings: list[StoredReading]) -> dict[str, float]:
    influxd = InfluxDaemon(folder / "influxd")
    influxd.start()
    try:
        bodies = ["\n".join(reading_line(r) for r in readings[i:i + BATCH]).encode()
                  for i in range(0, len(readings), BATCH)]
        results = {}
        for clients in (1, 2):
            database = f"raw{clients}"
            httpx.post(f"{influxd.url}/query", data={"q": f"CREATE DATABASE {database}"})

            def post(part: list[bytes], database: str = database) -> None:
                with httpx.Client(base_url=influxd.url, timeout=60) as client:
                    for body in part:
                        client.post("/write", params={"db": database, "precision": "ns"},
                                    content=body).raise_for_status()
            threads = [threading.Thread(target=post, args=(bodies[i::clients],))
                       for i in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            results[f"raw_{clients}"] = len(readings) / (time.perf_counter() - started)
        store = InfluxDB1Store(influxd.url, "store")
        started = time.perf_counter()
        for i in range(0, len(readings), BATCH):
            store.write(readings[i:i + BATCH])
        results["store"] = len(readings) / (time.perf_counter() - started)
        store.close()
        return results
    finally:
        influxd.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--write", action="store_true",
                        help="replace the ceiling table in bench/GATEWAY_RESULTS.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-ceiling-", dir="/var/tmp"))
    try:
        load = os.getloadavg()[0]
        messages = telemetry_payloads(args.readings // 100)
        mqtt_rates = broker_parts(folder, messages)
        decode, readings = decode_rate(messages)
        influx = influx_parts(folder, readings)
        rows = [
            ("publish: pipelined QoS 1 publisher → Mosquitto", mqtt_rates["publish"]),
            ("drain: Mosquitto → `mosquitto_sub -q 1` (C), persistent session backlog",
             mqtt_rates["drain_c"]),
            ("drain: Mosquitto → the gateway's `MqttReceiver` (acks per list, no decoding)",
             mqtt_rates["drain_py"]),
            ("decode + validate + to StoredReading (Python, one core, CPU time)", decode),
            ("influxd: pre-encoded line protocol, 5,000 points/request, 1 client",
             influx["raw_1"]),
            ("influxd: the same, 2 clients in parallel", influx["raw_2"]),
            ("`InfluxDB1Store.write`, 5,000 readings/batch, one thread", influx["store"]),
        ]
        table = "\n".join([
            f"Run {datetime.now(UTC):%Y-%m-%d} with `.venv/bin/python bench/bench_ceiling.py "
            f"--readings {args.readings}` on: {machine(folder)}; load average before: "
            f"{load:.1f}.", "",
            "| part, alone | readings/s |", "| --- | --- |",
            *(f"| {name} | {rate:,.0f} |" for name, rate in rows)])
        print(table)
        if args.write:
            replace_section(ROOT / "bench" / "GATEWAY_RESULTS.md", "ceiling", table)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
