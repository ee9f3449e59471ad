"""The assembled gateway: MQTT in, metadata and readings stored, API answering over HTTP."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.auth import PASSWORD, QUICK_HASHING, add_user
from support.influxd import InfluxDaemon
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import Channel, Mode, NodeState, NodeStatus, Telemetry, encode, topic
from gateway.config import parse_gateway_config
from gateway.runtime import GatewayRuntime, cleartext_warning, metadata_url

pytestmark = pytest.mark.integration
SITE, NODE = "demo", "secador-01"


def test_gateway_ingests_and_answers_over_http(tmp_path: Path,
                                               mosquitto: MosquittoBroker) -> None:
    port = free_port()
    settings = parse_gateway_config({
        "data_dir": str(tmp_path), "sites": [SITE],
        "mqtt": {"broker": f"mqtt://127.0.0.1:{mosquitto.port}", "client_id": "gw-runtime"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "readings.sqlite3")},
        "api": {"port": port, **QUICK_HASHING}})
    runtime = GatewayRuntime(settings)
    context = runtime.start()
    add_user(context, "ana", "operator")
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    try:
        assert api.get("/api/health").json()["status"] == "ok"
        assert api.get("/api/nodes").status_code == 401  # no local admin, even on loopback
        assert api.post("/api/auth/login", json={"username": "ana", "password": PASSWORD}
                        ).status_code == 200  # the client keeps the session cookie
        wait_for(lambda: runtime.ingest is not None and runtime.ingest.connected, timeout=10,
                 what="ingest connected")
        node.publish(topic(SITE, NODE, Channel.STATUS),
                     encode(NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)),
                     qos=1, retain=True).wait_for_publish(5)
        node.publish(topic(SITE, NODE, Channel.TELEMETRY), encode(Telemetry(
            site_id=SITE, node_id=NODE, seq=1, measured_at=datetime.now(UTC),
            readings={"air_temp_c": 47.5}, fan_speed_pct=0, vent_open_pct=100,
            mode=Mode.AUTO, config_version=0)), qos=1).wait_for_publish(5)

        def listed() -> bool:
            nodes = api.get("/api/nodes").json()
            return (len(nodes) == 1 and nodes[0]["state"] == "online"
                    and nodes[0]["latest"] is not None)
        wait_for(listed, timeout=10, what="the node listed with its reading")
        assert api.get("/api/nodes").json()[0]["latest"]["readings"]["air_temp_c"] == 47.5
        assert "cacao_gateway_stored_total 1.0" in api.get("/metrics").text
    finally:
        api.close()
        node.loop_stop()
        node.disconnect()
        runtime.stop()


def test_logins_over_plain_http_on_the_lan_are_warned_about() -> None:
    def warning(**api: object) -> str | None:
        return cleartext_warning(parse_gateway_config({"api": api}).api)

    assert warning(host="127.0.0.1") is None and warning(host="::1") is None
    assert warning(host="localhost") is None
    assert "logins cross the LAN unencrypted" in (warning(host="0.0.0.0") or "")
    assert warning(host="0.0.0.0", secure_cookies=True) is None


def test_metadata_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret\n")
    settings = parse_gateway_config({"metadata": {
        "url": "postgresql+psycopg://gateway@db.local/cacao", "password_file": str(secret)}})
    assert metadata_url(settings) == "postgresql+psycopg://gateway:s3cret@db.local/cacao"


def test_unreadable_metadata_password_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    from cacao_dryer.errors import ConfigError

    settings = parse_gateway_config({"metadata": {
        "url": "postgresql+psycopg://gateway@db.local/cacao",
        "password_file": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match=r"metadata.password_file .*missing: cannot read"):
        metadata_url(settings)


def test_alert_reaches_a_webhook_and_a_phone_through_the_whole_gateway(
        tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """One over-temperature alert: a signed webhook delivery, and an SMS file in the
    gammu outbox for the operator on duty ([notify]), counted in /metrics."""
    import http.server
    import json
    import threading

    from cacao_dryer.clock import ManualClock
    from gateway.webhooks import verify_signature

    received: list[tuple[dict[str, object], str | None]] = []
    secret = "a-long-enough-webhook-secret"

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert verify_signature(secret, body, self.headers.get("X-Cacao-Signature"))
            received.append((json.loads(body), self.headers.get("X-Cacao-Delivery")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "hook-secret").write_text(secret)
    settings = parse_gateway_config({
        "data_dir": str(tmp_path), "sites": [SITE],
        "mqtt": {"broker": f"mqtt://127.0.0.1:{mosquitto.port}", "client_id": "gw-hooks"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "readings.sqlite3")},
        "api": {"port": free_port(), **QUICK_HASHING},
        "webhooks": [{"name": "cooperative-office", "url":
                      f"http://127.0.0.1:{server.server_port}/alerts",
                      "secret_file": str(tmp_path / "hook-secret"),
                      "kinds": ["over_temperature"]}],
        "notify": {"sms": {"outbox": str(tmp_path / "sms-outbox")},
                   "recipients": [{"name": "luis", "language": "es",
                                   "phone": "+51987654321"}]}})
    (tmp_path / "sms-outbox").mkdir()
    clock = ManualClock(datetime.now(UTC))
    runtime = GatewayRuntime(settings, clock=clock)
    context = runtime.start()
    add_user(context, "ana", "operator")
    api = httpx.Client(base_url=f"http://127.0.0.1:{settings.api.port}")
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    try:
        assert api.post("/api/auth/login", json={"username": "ana", "password": PASSWORD}
                        ).status_code == 200
        # A retained status proves the gateway's subscriptions are in place.
        node.publish(topic(SITE, NODE, Channel.STATUS),
                     encode(NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)),
                     qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: len(api.get("/api/nodes").json()) == 1, timeout=10,
                 what="the node registered")
        for seq in (1, 2):
            node.publish(topic(SITE, NODE, Channel.TELEMETRY), encode(Telemetry(
                site_id=SITE, node_id=NODE, seq=seq, measured_at=clock.now(),
                readings={"air_temp_c": 64.0}, fan_speed_pct=100, vent_open_pct=100,
                mode=Mode.AUTO, config_version=0)), qos=1).wait_for_publish(5)
            wait_for(lambda seq=seq: (latest := context.store.latest(SITE, NODE)) is not None
                     and latest.seq == seq, timeout=10, what=f"reading {seq} stored")
            context.alerts.run_round()
            clock.advance(120)
        wait_for(lambda: len(received) == 1, timeout=15, what="the webhook delivery")
        notice, delivery_id = received[0]
        assert notice["kind"] == "over_temperature" and notice["state"] == "open"
        assert delivery_id
        # gammu-smsd sends the OUT* files; the gateway writes a hidden temporary file first
        # and renames it, so gammu never reads half a message.
        wait_for(lambda: list((tmp_path / "sms-outbox").glob("OUT*")), timeout=15,
                 what="the SMS in the gammu outbox")
        [sms] = (tmp_path / "sms-outbox").glob("OUT*")
        assert "+51987654321" in sms.name
        assert "64" in sms.read_text(encoding="utf-16")  # the temperature, in Spanish
        # The file is written before the queue marks the message delivered.
        wait_for(lambda: 'cacao_notifications{channel="sms",state="delivered"} 1.0'
                 in api.get("/metrics").text, timeout=10, what="the SMS counted as delivered")
    finally:
        api.close()
        node.loop_stop()
        node.disconnect()
        runtime.stop()
        server.shutdown()


def test_gateway_run_tells_systemd_it_is_ready_and_alive(tmp_path: Path,
                                                          mosquitto: MosquittoBroker) -> None:
    """`cacao-dryer gateway run` under systemd (Type=notify, WatchdogSec): READY=1 once it
    runs, WATCHDOG=1 while every part does, STOPPING=1 on SIGTERM."""
    import signal
    import socket
    import subprocess
    import sys

    import tomli_w

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    config = tmp_path / "gateway.toml"
    config.write_text(tomli_w.dumps({
        "data_dir": str(tmp_path / "data"), "sites": [SITE],
        "mqtt": {"broker": mosquitto.url, "client_id": "gw-systemd"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "readings.sqlite3")},
        "api": {"port": free_port()}}))
    process = subprocess.Popen(
        [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        received = [listener.recv(100).decode(), listener.recv(100).decode()]
        assert received == ["READY=1", "WATCHDOG=1"]
        process.send_signal(signal.SIGTERM)
        assert listener.recv(100).decode() in ("WATCHDOG=1", "STOPPING=1")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_health_reports_a_lost_broker_and_a_store_that_is_down_while_they_are_out(
        tmp_path: Path, mosquitto: MosquittoBroker, influxd: InfluxDaemon, workers: int
) -> None:
    """What a monitoring probe sees: degraded with the reason while InfluxDB is stopped
    (readings wait in the spool) and while the broker is gone; ok again once they are back."""
    port = free_port()
    settings = parse_gateway_config({
        "data_dir": str(tmp_path), "sites": [SITE], "ingest_workers": workers,
        "mqtt": {"broker": f"mqtt://127.0.0.1:{mosquitto.port}", "client_id": "gw-health"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "influxdb1", "url": influxd.url, "database": "cacao"},
        "api": {"port": port, **QUICK_HASHING}})
    runtime = GatewayRuntime(settings)
    runtime.start()
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}")

    def health() -> dict[str, Any]:
        body: dict[str, Any] = api.get("/api/health").json()
        return body

    def reading(seq: int) -> None:
        node.publish(topic(SITE, NODE, Channel.TELEMETRY), encode(Telemetry(
            site_id=SITE, node_id=NODE, seq=seq, measured_at=datetime.now(UTC),
            readings={"air_temp_c": 47.5}, fan_speed_pct=0, vent_open_pct=100,
            mode=Mode.AUTO, config_version=0)), qos=1).wait_for_publish(5)
    try:
        wait_for(lambda: health()["status"] == "ok", 20, "health ok once connected")
        assert health()["mqtt_broker"] == "connected"
        assert health()["readings_store"] == "ok"

        influxd.stop()
        body = health()
        assert body["status"] == "degraded" and body["readings_store"] == "unavailable"
        assert any(problem.startswith("readings store: ") for problem in body["problems"])
        reading(1)
        wait_for(lambda: health()["readings_waiting_in_spool"] == 1, 20, "the reading spooled")
        assert any("1 readings waiting in the local spool" in problem
                   for problem in health()["problems"])
        assert "cacao_gateway_spool_waiting 1.0" in api.get("/metrics").text

        influxd.start()
        wait_for(lambda: health()["status"] == "ok", 30, "health ok with the store back")
        body = health()
        assert body["readings_waiting_in_spool"] == 0 and body["readings_stored"] == 1

        mosquitto.stop()
        wait_for(lambda: health()["mqtt_broker"] == "disconnected", 20, "broker loss seen")
        body = health()
        assert body["status"] == "degraded"
        assert any(problem.startswith("MQTT broker: not connected") for problem in
                   body["problems"])
        assert "cacao_gateway_broker_connected 0.0" in api.get("/metrics").text
        mosquitto.start()
        wait_for(lambda: health()["status"] == "ok", 60, "health ok with the broker back")
        assert "cacao_gateway_broker_connected 1.0" in api.get("/metrics").text
    finally:
        api.close()
        node.loop_stop()
        node.disconnect()
        runtime.stop()
