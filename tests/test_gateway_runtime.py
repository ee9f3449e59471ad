"""The assembled gateway: MQTT in, metadata and readings stored, API answering over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import Channel, Mode, NodeState, NodeStatus, Telemetry, encode, topic
from gateway.config import parse_gateway_config
from gateway.runtime import GatewayRuntime, local_actor_for, metadata_url

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
        "api": {"port": port}})
    runtime = GatewayRuntime(settings)
    runtime.start()
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    try:
        assert api.get("/api/health").json()["status"] == "ok"
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


def test_api_acts_as_local_admin_only_on_loopback() -> None:
    assert local_actor_for("127.0.0.1") is not None
    assert local_actor_for("::1") is not None
    assert local_actor_for("localhost") is not None
    assert local_actor_for("0.0.0.0") is None
    assert local_actor_for("192.168.1.10") is None


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
