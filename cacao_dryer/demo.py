"""``cacao-dryer demo``: a simulated collection center on one machine.

Starts a private broker (unless one is given), N simulated dryer nodes as real ``cacao-dryer
node run`` processes (configs derived from firmware/examples/simulated.toml), and the live
terminal view. Everything lives under ``workdir`` and stops on Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

import firmware
from cacao_dryer.broker import LocalBroker, start_local_broker
from cacao_dryer.errors import CacaoDryerError
from cacao_dryer.watch import SiteView, watch_site

DEMO_SITE = "demo"
EXAMPLE = Path(firmware.__file__).parent / "examples" / "simulated.toml"


def node_config(index: int, broker_url: str, protocol: str, speed: float,
                workdir: Path) -> dict[str, Any]:
    data = tomllib.loads(EXAMPLE.read_text())
    data["node_id"] = f"secador-{index:02d}"
    data["site_id"] = DEMO_SITE
    data["data_dir"] = str((workdir / f"secador-{index:02d}").resolve())
    # One reading per simulated 2 minutes keeps the message rate sane at high speed.
    data["sample_interval_s"] = max(10.0, min(600.0, speed / 5))
    data["status_interval_s"] = max(60.0, speed)
    data["mqtt"] = {"broker": broker_url, "protocol": protocol}
    data["simulation"] |= {"seed": index, "speed": speed,
                           "dryer": "open" if index % 3 == 0 else "greenhouse",
                           "initial_moisture_pct_wb": 55.0 + index % 4}
    return data


def start_nodes(count: int, broker: str, protocol: str, speed: float,
                workdir: Path) -> list[subprocess.Popen[bytes]]:
    processes = []
    for index in range(1, count + 1):
        path = workdir / f"secador-{index:02d}.toml"
        path.write_text(tomli_w.dumps(node_config(index, broker, protocol, speed, workdir)))
        log = (workdir / f"secador-{index:02d}.log").open("ab")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT))
    return processes


def run_demo(nodes: int, speed: float, broker: str | None, duration_s: float,
             workdir: Path, embedded_broker: bool = False) -> SiteView:
    """Run the demo until Ctrl-C or ``duration_s``; returns what the live view saw."""
    workdir.mkdir(parents=True, exist_ok=True)
    local: LocalBroker | None = None
    if broker is None:
        local = start_local_broker(workdir / "broker",
                                   prefer="amqtt" if embedded_broker else "mosquitto")
        broker, protocol = local.url, local.protocol
        print(f"Broker: {local.kind} at {broker} (MQTT {protocol})")
    else:
        protocol = "5"
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        processes.extend(start_nodes(nodes, broker, protocol, speed, workdir))
        print(f"{nodes} simulated dryers, time x{speed:g}; logs and data in {workdir}/. "
              "Ctrl-C stops everything.")
        time.sleep(1.0)
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise CacaoDryerError(f"{len(dead)} node(s) exited at start; see {workdir}/*.log")

    try:
        return watch_site(broker, site=DEMO_SITE, duration_s=duration_s, ready=start)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if local is not None:
            local.stop()
