"""Nodes and readings through the API, on a real gateway context (SQLite stores, private
Mosquitto)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.contract import EventType, NodeEvent, NodeState, NodeStatus
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.api.routes.readings import choose_bucket_s
from gateway.context import GatewayContext
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE = "demo", "secador-01"
ADMIN = Actor("ana", Role.ADMIN)


def client_for(context: GatewayContext, actor: Actor | None = ADMIN) -> TestClient:
    return TestClient(create_app(context, local_actor=actor))


def readings(context: GatewayContext, count: int, every_s: float = 10.0,
             node: str = NODE) -> list[StoredReading]:
    start = context.clock.now() - timedelta(seconds=every_s * count)
    return [StoredReading(site_id=SITE, node_id=node, seq=seq,
                          measured_at=start + timedelta(seconds=every_s * seq),
                          fields={"air_temp_c": 40.0 + seq % 10, "air_rh_pct": 50.0,
                                  "bean_moisture_pct_wb": 50.0 - seq / 100},
                          raining=False, mode="auto")
            for seq in range(1, count + 1)]


@pytest.fixture
def with_node(gateway: GatewayContext) -> GatewayContext:
    stored = readings(gateway, 360)
    gateway.store.write(stored)
    registry = NodeRegistry(gateway.metadata, gateway.clock)
    registry.batch_received(stored[-1:], [NodeStatus(site_id=SITE, node_id=NODE,
                                                     state=NodeState.ONLINE,
                                                     firmware_version="0.1.0")],
                            [NodeEvent(site_id=SITE, node_id=NODE, seq=1,
                                       occurred_at=gateway.clock.now(), type=EventType.BOOT,
                                       message="booted", data={"boot_id": "abc"})])
    return gateway


def test_node_list_shows_state_and_latest_reading(with_node: GatewayContext) -> None:
    nodes = client_for(with_node).get("/api/nodes").json()
    assert [(n["node_id"], n["state"], n["stale"]) for n in nodes] == [(NODE, "online", False)]
    assert nodes[0]["latest"]["seq"] == 360
    assert nodes[0]["latest"]["readings"]["air_rh_pct"] == 50.0


def test_node_goes_stale_when_nothing_is_heard(with_node: GatewayContext) -> None:
    with_node.clock.advance(11 * 60)
    assert client_for(with_node).get(f"/api/nodes/{SITE}/{NODE}").json()["stale"] is True


def test_unknown_node_is_a_404_with_one_line(with_node: GatewayContext) -> None:
    response = client_for(with_node).get(f"/api/nodes/{SITE}/secador-99")
    assert response.status_code == 404
    assert response.json()["detail"] == "node demo/secador-99 is not known to this gateway"


def test_events_newest_first(with_node: GatewayContext) -> None:
    events = client_for(with_node).get(f"/api/nodes/{SITE}/{NODE}/events").json()
    assert [(e["seq"], e["type"]) for e in events] == [(1, "boot")]


def test_gaps_show_missing_sequence_numbers(gateway: GatewayContext) -> None:
    stored = [r for r in readings(gateway, 20) if r.seq not in (5, 6, 7, 15)]
    gateway.store.write(stored)
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(stored[-1:], [], [])
    gaps = client_for(gateway).get(f"/api/nodes/{SITE}/{NODE}/gaps").json()
    assert gaps["missing_ranges"] == [[5, 7], [15, 15]] and gaps["missing_readings"] == 4


def test_renaming_a_node_is_audited_and_needs_a_technician(with_node: GatewayContext) -> None:
    operator = client_for(with_node, Actor("olga", Role.OPERATOR))
    assert operator.patch(f"/api/nodes/{SITE}/{NODE}",
                          json={"name": "Secador norte"}).status_code == 403
    response = client_for(with_node).patch(f"/api/nodes/{SITE}/{NODE}",
                                           json={"name": "Secador norte"})
    assert response.status_code == 200 and response.json()["name"] == "Secador norte"
    from gateway.metadata.models import AuditEntry

    with with_node.metadata.session() as session:
        entry = session.query(AuditEntry).one()
        assert (entry.actor, entry.action, entry.old, entry.new) == (
            "ana", "node.update", {"name": None}, {"name": "Secador norte"})


def test_anonymous_callers_see_nothing(with_node: GatewayContext) -> None:
    anonymous = client_for(with_node, actor=None)
    for path in ("/api/nodes", f"/api/nodes/{SITE}/{NODE}",
                 f"/api/readings/{SITE}/{NODE}/latest"):
        assert anonymous.get(path).status_code == 401


def test_override_reaches_the_nodes_command_topic(with_node: GatewayContext,
                                                  mosquitto: MosquittoBroker) -> None:
    subscriber = Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watcher",
                            persistent=False).start()
    try:
        response = client_for(with_node).post(f"/api/nodes/{SITE}/{NODE}/override",
                                              json={"fan_speed_pct": 80, "duration_s": 600})
        assert response.status_code == 200 and response.json()["delivered_to_broker"]
        wait_for(lambda: len(subscriber.payloads()) == 1, what="the command on the broker")
    finally:
        subscriber.stop()
    command = json.loads(subscriber.payloads()[0])
    assert command["action"] == {"type": "override", "fan_speed_pct": 80.0,
                                 "duration_s": 600.0}
    assert command["issued_by"] == "ana"


def test_override_without_fan_or_vent_is_refused(with_node: GatewayContext) -> None:
    response = client_for(with_node).post(f"/api/nodes/{SITE}/{NODE}/override",
                                          json={"duration_s": 600})
    assert response.status_code == 422
    assert "fan_speed_pct or vent_open_pct" in response.json()["detail"]


def test_series_is_downsampled_to_fit(with_node: GatewayContext) -> None:
    body = client_for(with_node).get(f"/api/readings/{SITE}/{NODE}/series",
                                     params={"max_points": 100}).json()
    assert body["every_s"] == 900 and len(body["times"]) <= 100
    assert body["units"]["air_temp_c"] == "°C"
    assert all(v is not None for v in body["values"]["air_temp_c"])


def test_series_raw_returns_every_reading(with_node: GatewayContext) -> None:
    end = with_node.clock.now()
    body = client_for(with_node).get(
        f"/api/readings/{SITE}/{NODE}/series",
        params={"raw": "true", "start": (end - timedelta(minutes=10)).isoformat(),
                "end": end.isoformat(), "fields": ["air_temp_c"]}).json()
    assert body["every_s"] is None and len(body["times"]) == 60


@pytest.mark.parametrize(("params", "message"), [
    ({"fields": ["bean_colour"]}, "fields: unknown bean_colour"),
    ({"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
     "start must be before end"),
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-03-30T00:00:00Z"},
     "range longer than 60 days"),
    ({"start": "2026-03-01T00:00:00"}, "start: give a time zone"),
    ({"every_s": "-5"}, "every_s"),
])
def test_bad_series_queries_get_one_line_errors(with_node: GatewayContext,
                                                params: dict[str, object],
                                                message: str) -> None:
    response = client_for(with_node).get(f"/api/readings/{SITE}/{NODE}/series", params=params)
    assert response.status_code == 422
    assert message in response.json()["detail"] and "\n" not in response.json()["detail"]


def test_bucket_choice_keeps_seven_days_under_the_limit() -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert choose_bucket_s(start, start + timedelta(days=7), 2000) == 600
    assert choose_bucket_s(start, start + timedelta(hours=1), 2000) == 10


def test_prometheus_metrics_count_nodes_gaps_and_ingest(gateway: GatewayContext) -> None:
    stored = [r for r in readings(gateway, 20) if r.seq not in (5, 6)]
    gateway.store.write(stored)
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(
        stored[-1:], [NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)], [])
    gateway.ingest_stats.received = 18
    response = client_for(gateway, actor=None).get("/metrics")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert "cacao_gateway_received_total 18.0" in lines
    assert f'cacao_node_up{{node="{NODE}",site="{SITE}"}} 1.0' in lines
    assert f'cacao_node_missing_readings{{node="{NODE}",site="{SITE}"}} 2.0' in lines
    assert "cacao_batches_running 0.0" in lines
    assert "cacao_gateway_store_up 1.0" in lines


def test_prometheus_metrics_answer_while_the_readings_store_is_down(
        gateway: GatewayContext) -> None:
    """Monitoring needs /metrics most when InfluxDB is down (the fault suite found it
    answering 503 then): the store's gauges go, the rest stays, store_up says 0."""
    from support.mosquitto import free_port

    from gateway.stores.influxdb1 import InfluxDB1Store

    NodeRegistry(gateway.metadata, gateway.clock).batch_received(
        [], [NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)], [])
    gateway.store.close()
    gateway.store = InfluxDB1Store(f"http://127.0.0.1:{free_port()}", "cacao", timeout_s=1)
    response = client_for(gateway, actor=None).get("/metrics")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert "cacao_gateway_store_up 0.0" in lines
    assert f'cacao_node_up{{node="{NODE}",site="{SITE}"}} 1.0' in lines
    assert not [line for line in lines if line.startswith("cacao_node_missing_readings{")]
    gateway.store.close()
