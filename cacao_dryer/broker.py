"""A private MQTT broker for the demo on any machine: Mosquitto when installed, else amqtt.

Production sites run the Mosquitto configuration shipped by the installer; this module is only
for "run it on my laptop" and speaks to a broker on 127.0.0.1 with anonymous access.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cacao_dryer.errors import CacaoDryerError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def mosquitto_config(port: int, data_dir: Path) -> str:
    return "\n".join([
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 10",
        # Mosquitto drops QoS 1 messages silently past 1,000 queued per client (see
        # docs/store-and-forward.md); a demo gateway may be slow to start.
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"log_dest file {data_dir}/mosquitto.log",
        "",
    ])


@dataclass
class LocalBroker:
    url: str
    protocol: str  # "5" (Mosquitto) or "3.1.1" (amqtt)
    kind: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_local_broker(workdir: Path, prefer: str = "mosquitto") -> LocalBroker:
    """Start a broker on a free loopback port; raises CacaoDryerError if none comes up."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mosquitto = find_mosquitto() if prefer == "mosquitto" else None
    if mosquitto:
        conf = workdir / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, workdir.resolve()))
        process = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        kind, protocol = "mosquitto", "5"
    else:
        process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.broker", str(port)],
            stdout=subprocess.DEVNULL, stderr=(workdir / "amqtt.log").open("wb"))
        kind, protocol = "amqtt", "3.1.1"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CacaoDryerError(f"{kind} broker exited with code {process.returncode} "
                                  f"(logs in {workdir})")
        if port_open(port):
            return LocalBroker(url=f"mqtt://127.0.0.1:{port}", protocol=protocol, kind=kind,
                               process=process)
        time.sleep(0.05)
    process.kill()
    raise CacaoDryerError(f"{kind} broker did not listen on port {port} within 15 s")


async def _serve_amqtt(port: int) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise CacaoDryerError("no MQTT broker: install Mosquitto (apt-get install mosquitto) "
                              "or amqtt (pip install 'cacao-dryer[demo]')") from None
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    })
    await broker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_amqtt(int(sys.argv[1])))
