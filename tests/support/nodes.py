"""A real dryer node for integration tests: ``cacao-dryer node run`` of the simulated dryer
(firmware/examples/simulated.toml) in its own process, on a test's private broker."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Self

import tomli_w

from support.mosquitto import MosquittoBroker

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware" / "examples" / "simulated.toml"


class NodeProcess:
    """The node's config goes to ``folder/node.toml``, its data to ``folder/data``, its log to
    ``folder/node.log``. ``start`` is the node's simulated start time (ISO 8601), usually the
    test gateway's clock; no batch is started by the simulator."""

    def __init__(self, folder: Path, broker: MosquittoBroker, *, site_id: str, node_id: str,
                 start: str, speed: float = 60.0, sample_interval_s: float = 10.0,
                 status_interval_s: float = 60.0) -> None:
        data = tomllib.loads(EXAMPLE.read_text())
        data |= {"node_id": node_id, "site_id": site_id, "data_dir": str(folder / "data"),
                 "sample_interval_s": sample_interval_s, "status_interval_s": status_interval_s}
        data["simulation"] |= {"speed": speed, "start": start, "start_batch": False}
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "node.toml"
        self.config.write_text(tomli_w.dumps(data))
        self.broker = broker
        self.log = folder / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config",
             str(self.config), "--broker", self.broker.url],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        """SIGTERM (the node closes cleanly), SIGKILL if it takes longer than 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def applied_config(self) -> dict[str, Any]:
        """The thresholds config the node persisted after applying it."""
        return json.loads((self.config.parent / "data" / "config.json").read_text())
