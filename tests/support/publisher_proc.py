"""A minimal node publisher, run as a subprocess by the SIGKILL test.

    python publisher_proc.py --broker mqtt://127.0.0.1:PORT --data-dir DIR --count N
        --topic T --status-topic S --client-id ID

Adds readings to the durable outbox (numbered by the outbox's "telemetry" counter) until that
counter reaches N, while the MQTT link forwards them; prints ``added <seq>`` every 50 readings
and ``drained`` once the broker has acknowledged everything, then stops cleanly. Started again
on the same data dir it continues where the killed process left off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from firmware.config import MqttConfig
from firmware.link import MqttLink
from firmware.outbox import Outbox


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--status-topic", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args()

    outbox = Outbox(args.data_dir / "outbox.sqlite", max_bytes=16 * 1024 * 1024, sync="full")
    link = MqttLink(MqttConfig(broker=args.broker), args.client_id, outbox,
                    will=(args.status_topic, b"offline"),
                    on_connect_publish=[(args.status_topic, b"online", 1, True)],
                    reconnect_min_s=0.05, reconnect_max_s=0.5)
    link.start()
    pid = os.getpid()
    while outbox.counter("telemetry") < args.count:
        seq = outbox.add(
            args.topic,
            lambda s: json.dumps({"seq": s, "pid": pid, "ts": time.time()}).encode(),
            "telemetry")
        link.wake()
        if seq % 50 == 0:
            print(f"added {seq}", flush=True)
    deadline = time.monotonic() + args.drain_timeout
    while outbox.depth() > 0:
        if time.monotonic() > deadline:
            print(f"not drained: {outbox.depth()} waiting", flush=True)
            return 1
        time.sleep(0.01)
    print("drained", flush=True)
    link.stop(final_publish=(args.status_topic, b"offline", 1, True))
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
