"""``cacao-dryer dashboard run``: the API and dashboard in a process of their own, next to a
gateway on the same stores, with a live view that never takes the gateway's messages."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.auth import PASSWORD, QUICK_HASHING, add_user
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import (
    AlertKind,
    AlertNotice,
    AlertSeverity,
    AlertState,
    Channel,
    Mode,
    NodeState,
    NodeStatus,
    Telemetry,
    alert_topic,
    encode,
    topic,
)
from gateway.config import GatewaySettings, parse_gateway_config
from gateway.runtime import GatewayRuntime

pytestmark = pytest.mark.integration
SITE, NODE = "demo", "secador-01"
REPO = Path(__file__).parent.parent


class LiveStream:
    """``GET /api/live`` over real HTTP in a thread, parsed into (event, data) pairs."""

    def __init__(self, url: str, cookie: str) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=60))
        self._thread = threading.Thread(target=self._run, args=(url, cookie), daemon=True)
        self._thread.start()

    def _run(self, url: str, cookie: str) -> None:
        try:
            with self._client.stream("GET", url, headers={"Cookie": cookie}) as response:
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        self.events.append((kind, json.loads(line.partition(":")[2])))
        except (httpx.HTTPError, RuntimeError):
            return  # closed by the test

    def seqs(self) -> list[int]:
        return [int(str(data["seq"])) for kind, data in self.events if kind == "reading"]

    def opened(self) -> bool:
        return any(kind == "resync" for kind, _data in self.events)

    def close(self) -> None:
        self._client.close()


def settings_for(tmp_path: Path, mosquitto: MosquittoBroker, port: int) -> GatewaySettings:
    """One site's config: the gateway and the dashboard read the same file in production."""
    return parse_gateway_config({
        "data_dir": str(tmp_path / "data"), "sites": [SITE],
        "mqtt": {"broker": mosquitto.url, "client_id": "gw-main"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "readings.sqlite3")},
        "api": {"port": port, **QUICK_HASHING}})


def telemetry(seq: int) -> bytes:
    return encode(Telemetry(site_id=SITE, node_id=NODE, seq=seq, measured_at=datetime.now(UTC),
                            readings={"air_temp_c": 40.0 + seq, "bean_moisture_pct_wb": 50.0},
                            fan_speed_pct=50, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=0))


@pytest.fixture
def node(mosquitto: MosquittoBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def test_dashboard_alone_shows_live_readings_and_never_takes_the_gateways_messages(
        tmp_path: Path, mosquitto: MosquittoBroker, node: mqtt.Client) -> None:
    gateway_settings = settings_for(tmp_path, mosquitto, free_port())
    gateway = GatewayRuntime(gateway_settings)
    gateway_context = gateway.start()
    add_user(gateway_context, "olga", "operator")
    dashboard_port = free_port()
    dashboard_settings = gateway_settings.model_copy(update={
        "api": gateway_settings.api.model_copy(update={"port": dashboard_port})})
    dashboard = GatewayRuntime(dashboard_settings, dashboard_only=True)
    dashboard_context = dashboard.start()
    web = httpx.Client(base_url=f"http://127.0.0.1:{dashboard_port}")
    stream: LiveStream | None = None
    try:
        # The dashboard process runs no ingest and no jobs of its own.
        assert dashboard.ingest is None and dashboard_context.alerts is None
        assert dashboard.live_feed is not None
        assert dashboard.live_feed.client_id.startswith("gw-main-live-")
        assert web.post("/api/auth/login", json={"username": "olga", "password": PASSWORD}
                        ).status_code == 200  # the user the gateway's database holds
        page = web.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        stream = LiveStream(f"http://127.0.0.1:{dashboard_port}/api/live?site_id={SITE}",
                            f"cacao_session={web.cookies['cacao_session']}")
        wait_for(stream.opened, 10, "the dashboard's live stream open")
        wait_for(lambda: dashboard.live_feed is not None and dashboard.live_feed.subscribed
                 and gateway.ingest is not None and gateway.ingest.connected, 10,
                 "both subscribed")

        node.publish(topic(SITE, NODE, Channel.STATUS),
                     encode(NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)),
                     qos=1, retain=True).wait_for_publish(5)
        for seq in (1, 2, 3):
            node.publish(topic(SITE, NODE, Channel.TELEMETRY), telemetry(seq),
                         qos=1).wait_for_publish(5)
        wait_for(lambda: stream is not None and stream.seqs()[-1:] == [3], 10,
                 "reading 3 on the dashboard's live stream")
        assert any(kind == "status" for kind, _data in stream.events)
        wait_for(lambda: gateway_context.ingest_stats.stored == 3, 10, "the gateway stored 3")

        # The gateway's alert notices (retained on .../alert/<kind>) reach this dashboard's
        # pages live too; a notice naming another node is refused and counted.
        now = datetime.now(UTC)
        notice = AlertNotice(site_id=SITE, node_id=NODE, alert_id=7,
                             kind=AlertKind.OVER_TEMPERATURE, severity=AlertSeverity.CRITICAL,
                             state=AlertState.OPEN, opened_at=now, updated_at=now,
                             message="air 68.0 °C")
        node.publish(alert_topic(SITE, NODE, AlertKind.OVER_TEMPERATURE),
                     notice.model_copy(update={"node_id": "secador-99"}).model_dump_json(),
                     qos=1).wait_for_publish(5)
        node.publish(alert_topic(SITE, NODE, AlertKind.OVER_TEMPERATURE),
                     encode(notice), qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: stream is not None and any(kind == "alert" for kind, _ in stream.events),
                 10, "the alert on the dashboard's live stream")
        [alert] = [data for kind, data in stream.events if kind == "alert"]
        assert (alert["alert_id"], alert["kind"], alert["state"]) == (7, "over_temperature", "open")
        assert sum(dashboard.live_feed.invalid.values()) == 1

        # Pages and API of the dashboard answer from the gateway's stores...
        def listed() -> list[tuple[str, str, int]]:
            return [(n["node_id"], n["state"], n["latest"] and n["latest"]["seq"])
                    for n in web.get("/api/nodes").json()]
        wait_for(lambda: listed() == [(NODE, "online", 3)], 10,
                 "the node as the gateway recorded it")
        # ... and the dashboard itself stored nothing.
        assert dashboard_context.ingest_stats.received == 0
        assert dashboard_context.ingest_stats.stored == 0
        assert "cacao_gateway_stored_total 0.0" in web.get("/metrics").text

        # With the gateway stopped, the dashboard still sees readings live, and the broker
        # keeps them for the gateway's persistent session: the dashboard consumed nothing.
        gateway.stop()
        for seq in (4, 5):
            node.publish(topic(SITE, NODE, Channel.TELEMETRY), telemetry(seq),
                         qos=1).wait_for_publish(5)
        wait_for(lambda: stream is not None and stream.seqs()[-1:] == [5], 10,
                 "reading 5 on the dashboard's live stream while the gateway is down")
        gateway = GatewayRuntime(gateway_settings)
        gateway_context = gateway.start()
        wait_for(lambda: gateway_context.ingest_stats.stored == 2, 10,
                 "the restarted gateway storing the 2 readings the broker kept for it")
        assert gateway_context.store.seq_ranges(SITE, NODE) == [(1, 5)]
    finally:
        web.close()
        gateway.stop()
        dashboard.stop()  # ends the live stream
        if stream is not None:
            stream.close()


def write_config(tmp_path: Path, mosquitto: MosquittoBroker) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps({
        "data_dir": "data", "sites": [SITE],
        "mqtt": {"broker": mosquitto.url, "client_id": "gw-cli"},
        "api": {"port": 1, **QUICK_HASHING}}))  # --port replaces it
    return path


def dashboard_process(config: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cacao_dryer.cli", "dashboard", "run", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_dashboard_run_serves_until_sigterm(tmp_path: Path,
                                            mosquitto: MosquittoBroker) -> None:
    port = free_port()
    process = dashboard_process(write_config(tmp_path, mosquitto), port)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        try:
            return api.get("/api/health").json()["status"] == "ok"
        except httpx.HTTPError:
            return False
    try:
        # generous: a process start (imports, migrations) on a loaded 2-core machine
        wait_for(healthy, 60, "the dashboard process answering", interval=0.1)
        assert api.get("/login").status_code == 200
        assert api.get("/api/nodes").status_code == 401
        assert (tmp_path / "data" / "metadata.sqlite3").exists()  # the config's own database
    finally:
        api.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_dashboard_run_on_a_busy_port_is_a_one_line_error(tmp_path: Path,
                                                          mosquitto: MosquittoBroker) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = dashboard_process(write_config(tmp_path, mosquitto), port)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: API could not listen on 127.0.0.1:{port} "
                      "(port in use or not allowed)"], output
