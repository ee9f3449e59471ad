"""Threshold profiles and the audit log through the HTTP API, on a real gateway context
(SQLite, a real publisher on a private Mosquitto) — and end to end with a real simulated node
process and the gateway's real ingest and node registry: a threshold changed in the API is
applied by the node, also after the node was offline, and a refused config is visible."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import wait_for
from support.gateway_context import registry_ingest
from support.mosquitto import MosquittoBroker, Subscriber
from support.nodes import NodeProcess

from cacao_dryer.contract import Channel, Thresholds, topic
from gateway import thresholds as service
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.ingest import Ingest
from gateway.metadata.models import Batch, Node, Site

SITE, NODE = "demo", "secador-01"
TECHNICIAN = Actor("ana", Role.TECHNICIAN)


def client_for(context: GatewayContext, actor: Actor | None = TECHNICIAN) -> TestClient:
    return TestClient(create_app(context, local_actor=actor))


@pytest.fixture
def known(gateway: GatewayContext) -> GatewayContext:
    """The gateway knows site demo and two dryers (as the registry records them)."""
    now = gateway.clock.now()
    with gateway.metadata.session() as session:
        session.add(Site(site_id=SITE, name="Demo", created_at=now))
        session.flush()
        for node_id in (NODE, "secador-02"):
            session.add(Node(site_id=SITE, node_id=node_id, first_seen_at=now,
                             last_seen_at=now, state="online"))
    return gateway


def put(client: TestClient, values: dict[str, Any], **scope: Any) -> Any:
    return client.put("/api/thresholds/profiles",
                      json={"site_id": SITE, "values": values, **scope})


# --- the API ----------------------------------------------------------------------------------

def test_schema_explains_every_field_with_unit_range_default_and_source(
        known: GatewayContext) -> None:
    body = client_for(known, Actor("op", Role.OPERATOR)).get("/api/thresholds/schema").json()
    fields = {f["name"]: f for f in body["fields"]}
    assert set(fields) == set(Thresholds.model_fields)
    assert fields["air_temp_limit_c"] == {
        "name": "air_temp_limit_c", "type": "number", "unit": "°C", "minimum": 35.0,
        "maximum": 65.0, "default": 65.0, "source": "ICCO",
        "description": "Hard limit: beans must not get hotter (flavour)"}
    assert fields["night_start_hour"]["type"] == "integer"
    assert fields["night_start_hour"]["unit"] == "h"
    assert body["layers"] == ["default", "site", "site+<stage>", "dryer", "dryer+<stage>"]
    assert body["stages"] == ["early", "main"]


def test_saving_a_profile_creates_a_version_and_pushes_it(known: GatewayContext,
                                                          mosquitto: MosquittoBroker) -> None:
    client = client_for(known)
    response = put(client, {"air_temp_warn_c": 52}, comment="temporada seca")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] is True
    assert body["profile"]["target"] == "demo/*/*" and body["profile"]["layer"] == "site"
    assert body["profile"]["latest"]["values"] == {"air_temp_warn_c": 52.0}
    assert body["pushes"] == [
        {"site_id": SITE, "node_id": NODE, "version": 1, "delivered_to_broker": True},
        {"site_id": SITE, "node_id": "secador-02", "version": 1, "delivered_to_broker": True}]
    with Subscriber(mosquitto, topic(SITE, "+", Channel.CONFIG), "probe",
                    persistent=False) as probe:
        wait_for(lambda: len(probe.messages()) == 2, 10, "two retained configs")
    assert {json.loads(p)["thresholds"]["air_temp_warn_c"] for p in probe.payloads()} == {52.0}


def test_profile_history_lists_every_version_newest_first(known: GatewayContext) -> None:
    client = client_for(known)
    put(client, {"fan_min_speed_pct": 35}, node_id=NODE, stage="early")
    put(client, {"fan_min_speed_pct": 40}, node_id=NODE, stage="early", comment="más aire")
    [listed] = client.get("/api/thresholds/profiles", params={"site_id": SITE}).json()
    assert (listed["node_id"], listed["stage"], listed["layer"], listed["target"]) == \
        (NODE, "early", "dryer+early", "demo/secador-01/early")
    detail = client.get(f"/api/thresholds/profiles/{listed['profile_id']}").json()
    assert [(v["version"], v["values"], v["created_by"], v["comment"])
            for v in detail["versions"]] == [(2, {"fan_min_speed_pct": 40.0}, "ana", "más aire"),
                                             (1, {"fan_min_speed_pct": 35.0}, "ana", "")]
    assert client.get("/api/thresholds/profiles", params={"site_id": "otro"}).json() == []


def test_an_unknown_profile_is_a_404(known: GatewayContext) -> None:
    response = client_for(known).get("/api/thresholds/profiles/999")
    assert (response.status_code, response.json()["detail"]) == \
        (404, "threshold profile 999 does not exist")


@pytest.mark.parametrize(("values", "detail"), [
    ({"air_temp_warn_c": 62}, "thresholds of demo/secador-01, no batch: air_temp_warn_c <= "
     "air_temp_alarm_c <= air_temp_limit_c must hold (here air_temp_warn_c=62, "
     "air_temp_alarm_c=60, air_temp_limit_c=65)"),
    ({"air_temp_limit_c": 80}, "values.air_temp_limit_c: Input should be less than or equal "
     "to 65 (got 80)"),
    ({"bean_temp_c": 40}, "values.bean_temp_c: not a threshold (GET /api/thresholds/schema "
     "lists them)"),
])
def test_an_invalid_save_is_a_422_in_one_line_and_changes_nothing(
        known: GatewayContext, values: dict[str, Any], detail: str) -> None:
    client = client_for(known)
    response = put(client, values)
    assert (response.status_code, response.json()) == (422, {"detail": detail})
    assert client.get("/api/thresholds/profiles").json() == []
    manager = client_for(known, Actor("rosa", Role.MANAGER))
    assert manager.get("/api/audit").json()["total"] == 0


def test_a_bad_stage_or_site_is_refused(known: GatewayContext) -> None:
    client = client_for(known)
    response = put(client, {}, stage="late")
    assert response.status_code == 422 and response.json()["detail"].startswith("body.stage")
    response = put(client, {}, node_id="secador-77")
    assert (response.status_code, response.json()["detail"]) == \
        (404, "node demo/secador-77 is not known to this gateway")


def test_a_dryers_effective_thresholds_say_which_layer_set_each(known: GatewayContext) -> None:
    client = client_for(known)
    put(client, {"air_temp_warn_c": 52, "target_moisture_pct_wb": 7.5})
    put(client, {"air_temp_warn_c": 50}, node_id=NODE)
    body = client.get(f"/api/nodes/{SITE}/{NODE}/thresholds").json()
    assert body["values"]["air_temp_warn_c"] == {"value": 50.0, "unit": "°C", "source": "dryer"}
    assert body["values"]["target_moisture_pct_wb"] == \
        {"value": 7.5, "unit": "% w.b.", "source": "site"}
    assert body["values"]["air_temp_limit_c"]["source"] == "default"
    assert (body["managed"], body["stage"], body["batch_id"], body["layers"], body["in_sync"]) \
        == (True, None, None, {"site": 1, "dryer": 1}, True)
    assert (body["rollout"]["desired_version"], body["rollout"]["state"]) == (2, "pending")
    other = client.get(f"/api/nodes/{SITE}/secador-02/thresholds").json()
    assert other["values"]["air_temp_warn_c"]["source"] == "site"


def test_a_dryer_in_a_batch_shows_its_stage_and_is_out_of_sync_until_reconciled(
        known: GatewayContext) -> None:
    client = client_for(known)
    put(client, {"early_phase_max_air_temp_c": 42}, stage="early")  # no batch yet: defaults
    with known.metadata.session() as session:
        session.add(Batch(batch_id="secador-01-lote-1", site_id=SITE, node_id=NODE,
                          lot_code="L-1", started_at=known.clock.now(), started_by="luis",
                          initial_moisture_pct_wb=55.0))
    body = client.get(f"/api/nodes/{SITE}/{NODE}/thresholds").json()
    assert (body["stage"], body["batch_id"], body["in_sync"]) == \
        ("early", "secador-01-lote-1", False)
    assert body["values"]["early_phase_max_air_temp_c"] == \
        {"value": 42.0, "unit": "°C", "source": "site+early"}
    assert service.reconcile(known).pushed == [(SITE, NODE, 2)]
    assert client.get(f"/api/nodes/{SITE}/{NODE}/thresholds").json()["in_sync"] is True


def test_rollout_shows_who_runs_which_version_and_who_is_overdue(known: GatewayContext) -> None:
    client = client_for(known)
    put(client, {"air_temp_warn_c": 52})
    with known.metadata.session() as session:
        service.record_config_event(session, SITE, "secador-02", "config_applied", 1,
                                    known.clock.now(), "config version 1 applied")
    known.clock.advance(20 * 60)
    rows = {r["node_id"]: r for r in client.get("/api/thresholds/rollout").json()}
    assert (rows["secador-02"]["state"], rows["secador-02"]["applied_version"],
            rows["secador-02"]["overdue"]) == ("applied", 1, False)
    assert (rows[NODE]["state"], rows[NODE]["desired_version"], rows[NODE]["applied_version"],
            rows[NODE]["pending_s"], rows[NODE]["overdue"]) == ("pending", 1, None, 1200.0, True)
    patient = client.get("/api/thresholds/rollout", params={"timeout_s": 3600}).json()
    assert [r["overdue"] for r in patient] == [False, False]


def test_an_operator_may_read_but_not_change_thresholds(known: GatewayContext) -> None:
    operator = client_for(known, Actor("luis", Role.OPERATOR))
    response = put(operator, {"air_temp_warn_c": 52})
    assert (response.status_code, response.json()["detail"]) == \
        (403, "operator may not do this (needs technician)")
    assert operator.get("/api/thresholds/profiles").status_code == 200
    assert operator.get("/api/thresholds/rollout").status_code == 200
    assert operator.get("/api/audit").status_code == 403


def test_without_a_login_every_thresholds_route_is_a_401(known: GatewayContext) -> None:
    anonymous = client_for(known, None)
    assert put(anonymous, {"air_temp_warn_c": 52}).status_code == 401
    for path in ("/api/thresholds/schema", "/api/thresholds/profiles",
                 "/api/thresholds/rollout", f"/api/nodes/{SITE}/{NODE}/thresholds",
                 "/api/audit"):
        assert anonymous.get(path).status_code == 401, path


def test_a_manager_reads_the_audit_log_filtered_and_paged(known: GatewayContext) -> None:
    technician = client_for(known)
    put(technician, {"air_temp_warn_c": 52})
    known.clock.advance(60)
    put(technician, {"air_temp_warn_c": 50}, node_id=NODE, comment="secador con sombra")
    manager = client_for(known, Actor("rosa", Role.MANAGER))
    page = manager.get("/api/audit", params={"limit": 1}).json()
    assert (page["total"], page["limit"], page["offset"], len(page["entries"])) == (2, 1, 0, 1)
    newest = page["entries"][0]
    assert (newest["actor"], newest["action"], newest["target"], newest["detail"]) == \
        ("ana", "thresholds.update", "demo/secador-01/*", "secador con sombra")
    assert newest["old"] is None
    assert newest["new"]["values"] == {"air_temp_warn_c": 50.0}
    assert newest["new"]["effective_changes"] == {NODE: {"air_temp_warn_c": [52.0, 50.0]}}
    since = (known.clock.now() - timedelta(seconds=30)).isoformat()
    assert manager.get("/api/audit", params={"since": since}).json()["total"] == 1
    assert manager.get("/api/audit", params={"target": "demo/*"}).json()["total"] == 1
    assert manager.get("/api/audit", params={"actor": "nadie"}).json()["total"] == 0
    response = manager.get("/api/audit", params={"since": "2026-03-01T12:00:00"})
    assert response.status_code == 422 and response.json()["detail"].startswith("query.since")


# --- end to end with a real node --------------------------------------------------------------

@pytest.fixture
def node(tmp_path: Path, mosquitto: MosquittoBroker, gateway: GatewayContext
         ) -> Iterator[NodeProcess]:
    (tmp_path / "node").mkdir()
    process = NodeProcess(tmp_path / "node", mosquitto, site_id=SITE, node_id=NODE,
                          start=gateway.clock.now().isoformat(), speed=10.0,
                          sample_interval_s=5.0, status_interval_s=30.0)
    yield process
    process.kill()


@pytest.fixture
def ingest(gateway: GatewayContext) -> Iterator[Ingest]:
    with registry_ingest(gateway) as service:
        yield service


def node_in_db(context: GatewayContext) -> Node | None:
    with context.metadata.session() as session:
        return session.get(Node, (SITE, NODE))


def applied_version(context: GatewayContext) -> int | None:
    node = node_in_db(context)
    return node.applied_config_version if node else None


def rollout_of(client: TestClient) -> dict[str, Any]:
    [row] = [r for r in client.get("/api/thresholds/rollout").json() if r["node_id"] == NODE]
    return row



@pytest.mark.integration
def test_a_threshold_changed_in_the_api_is_applied_by_the_node(
        gateway: GatewayContext, ingest: Ingest, node: NodeProcess) -> None:
    node.start()
    wait_for(lambda: node_in_db(gateway) is not None, 30, "the registry to record the node")
    client = client_for(gateway)
    response = put(client, {"air_temp_warn_c": 50, "fan_min_speed_pct": 35}, node_id=NODE)
    assert response.json()["pushes"] == [
        {"site_id": SITE, "node_id": NODE, "version": 1, "delivered_to_broker": True}]
    wait_for(lambda: applied_version(gateway) == 1, 30, "the node to apply version 1")
    assert rollout_of(client)["state"] == "applied"
    assert node.applied_config()["thresholds"]["air_temp_warn_c"] == 50.0
    response = put(client, {"air_temp_warn_c": 48}, node_id=NODE)
    wait_for(lambda: applied_version(gateway) == 2, 30, "the node to apply version 2")
    body = client.get(f"/api/nodes/{SITE}/{NODE}/thresholds").json()
    assert (body["rollout"]["state"], body["rollout"]["applied_version"],
            body["values"]["fan_min_speed_pct"]["source"]) == ("applied", 2, "default")
    assert node.applied_config()["thresholds"]["fan_min_speed_pct"] == 30.0
    node.stop()


@pytest.mark.integration
def test_a_node_that_was_offline_applies_the_retained_config_when_back(
        gateway: GatewayContext, ingest: Ingest, node: NodeProcess) -> None:
    node.start()
    wait_for(lambda: node_in_db(gateway) is not None, 30, "the registry to record the node")
    node.stop()  # clean stop: the node publishes offline
    wait_for(lambda: (n := node_in_db(gateway)) is not None and n.state == "offline", 30,
             "the node to be offline")
    client = client_for(gateway)
    put(client, {"target_moisture_pct_wb": 7.5})  # site-wide: every dryer
    assert rollout_of(client)["state"] == "pending"
    node.start()
    wait_for(lambda: applied_version(gateway) == 1, 30, "the node to apply version 1")
    assert node.applied_config()["thresholds"]["target_moisture_pct_wb"] == 7.5
    assert rollout_of(client)["state"] == "applied"
    node.stop()


@pytest.mark.integration
def test_a_config_the_node_refuses_is_visible_with_its_reason(
        gateway: GatewayContext, ingest: Ingest, node: NodeProcess,
        mosquitto: MosquittoBroker) -> None:
    """A gateway newer than the firmware sends a field the node does not know: the node keeps
    its config and says why; the rollout shows it, and it becomes overdue."""
    node.start()
    wait_for(lambda: node_in_db(gateway) is not None, 30, "the registry to record the node")
    client = client_for(gateway)
    put(client, {"air_temp_warn_c": 50}, node_id=NODE)
    wait_for(lambda: applied_version(gateway) == 1, 30, "the node to apply version 1")
    with gateway.metadata.session() as session:  # version 2 recorded, not yet published
        service.save_profile(session, gateway.store, service.ProfileChange(
            site_id=SITE, node_id=NODE, values={"air_temp_warn_c": 48}), "ana",
            gateway.clock.now())
        push = service.latest_push(session, SITE, NODE)
        assert push is not None and push.version == 2
        newer = {"schema_version": 1, "version": 2, "issued_at": "2026-03-01T12:00:00Z",
                 "issued_by": "ana", "thresholds": {**push.thresholds, "bean_temp_max_c": 45}}
    with Subscriber(mosquitto, "unused/#", "newer-gateway", persistent=False) as newer_gateway:
        newer_gateway.publish(topic(SITE, NODE, Channel.CONFIG), json.dumps(newer).encode(),
                              retain=True)

    def refused() -> dict[str, Any]:
        return rollout_of(client)

    wait_for(lambda: refused()["state"] == "rejected", 30, "the rejection to be recorded")
    row = refused()
    assert (row["desired_version"], row["applied_version"]) == (2, 1)
    assert "thresholds.bean_temp_max_c" in row["node_message"]
    assert "\n" not in row["node_message"]
    gateway.clock.advance(service.DEFAULT_APPLY_TIMEOUT_S)
    with gateway.metadata.session() as session:
        [late] = service.pending_configs(session, gateway.clock.now(),
                                         service.DEFAULT_APPLY_TIMEOUT_S)
    assert (late.node_id, late.desired_version, late.rejected) == (NODE, 2, True)
    node.stop()
