"""What operators and technicians do from the dashboard, over FastAPI's TestClient against a
real gateway context (SQLite, a private Mosquitto, real logins with CSRF): the dryer page
shows each role what it may do (batch forms and acknowledge for everyone, the manual override
for technicians only), the alerts page, and the API under them — cancelling an override, the
override's state from the node's own events, taring the tray, and acknowledging alerts by
role."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select
from support import wait_for
from support.auth import logged_in_client
from support.mosquitto import MosquittoBroker, Subscriber
from support.pages import add_dryers, page_config, visible_text

from cacao_dryer.contract import EventType, NodeEvent, NodeState, NodeStatus
from dashboard.i18n import catalog
from dashboard.pages.audit import ACTION_TEXTS
from gateway.alert_service import AlertService
from gateway.api.app import create_app
from gateway.auth.roles import Role
from gateway.context import GatewayContext
from gateway.metadata.models import AlertRecord, AuditEntry
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE = "demo", "secador-01"
NODE_PAGE = f"/nodes/{SITE}/{NODE}"
OVERRIDE = f"/api/nodes/{SITE}/{NODE}/override"
TARE = f"/api/nodes/{SITE}/{NODE}/tare"


@pytest.fixture
def dryer(gateway: GatewayContext) -> GatewayContext:
    """The gateway with one known, online dryer that has just sent a reading."""
    add_dryers(gateway, [NODE], names={NODE: "Secador norte"})
    hear(gateway, readings=[reading(gateway, 1, mode="auto")],
         statuses=[NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)])
    return gateway


def reading(context: GatewayContext, seq: int, mode: str) -> StoredReading:
    return StoredReading(site_id=SITE, node_id=NODE, seq=seq, measured_at=context.clock.now(),
                         fields={"air_temp_c": 45.0, "air_rh_pct": 40.0,
                                 "bean_moisture_pct_wb": 30.0}, raining=False, mode=mode)


def hear(context: GatewayContext, readings: list[StoredReading] | None = None,
         statuses: list[NodeStatus] | None = None, events: list[NodeEvent] | None = None
         ) -> None:
    """What the ingest does with a batch from the node: store readings, then the registry."""
    if readings:
        context.store.write(readings)
    NodeRegistry(context.metadata, context.clock).batch_received(
        readings or [], statuses or [], events or [])


def event(context: GatewayContext, seq: int, kind: EventType, message: str,
          **data: object) -> NodeEvent:
    return NodeEvent(site_id=SITE, node_id=NODE, seq=seq, occurred_at=context.clock.now(),
                     type=kind, message=message, data=data)


@pytest.fixture
def operator(dryer: GatewayContext) -> Iterator[TestClient]:
    with logged_in_client(dryer, Role.OPERATOR, follow_redirects=False) as client:
        yield client


@pytest.fixture
def technician(dryer: GatewayContext) -> Iterator[TestClient]:
    with logged_in_client(dryer, Role.TECHNICIAN, follow_redirects=False) as client:
        yield client


# --- the dryer page per role ----------------------------------------------------------------

def test_an_operator_gets_the_batch_forms_and_alerts_but_no_override_controls(
        operator: TestClient) -> None:
    answer = operator.get(NODE_PAGE)
    assert answer.status_code == 200
    html = visible_text(answer.text)  # not the catalog
    texts = catalog("es")
    for element in ('id="start-form"', 'id="spot-form"', 'id="end-form"', 'id="end-open"',
                    'id="alert-list"', 'id="override-status"', 'id="end-suggestion"'):
        assert element in html, element
    assert texts["operator.start_submit"] in html and texts["operator.end_confirm"] in html
    assert texts["operator.spot_submit"] in html
    assert 'inputmode="decimal"' in html and "% b.h." in html and ">kg<" in html
    # the override's state is shown to everyone; its controls only to technicians
    assert 'id="override-form"' not in html and 'id="override-cancel"' not in html
    assert texts["operator.override_submit"] not in html
    assert "js/alert-items.js" in answer.text and "css/operator.css" in html


@pytest.mark.parametrize("role", [Role.TECHNICIAN, Role.ADMIN])
def test_technicians_and_admins_get_the_override_controls(dryer: GatewayContext,
                                                         role: Role) -> None:
    with logged_in_client(dryer, role) as client:
        html = client.get(NODE_PAGE).text
    texts = catalog("es")
    assert 'id="override-form"' in html and 'id="override-cancel"' in html
    assert texts["operator.override_safety"] in html
    for preset in ('value="900"', 'value="3600"', 'value="14400"', 'value="custom"'):
        assert preset in html
    assert 'id="start-form"' in html  # and what operators do


def test_a_manager_sees_the_batch_forms_but_not_the_override(dryer: GatewayContext) -> None:
    with logged_in_client(dryer, Role.MANAGER) as client:
        html = client.get(NODE_PAGE).text
    assert 'id="start-form"' in html and 'id="override-form"' not in html


def test_the_dryer_page_in_english(operator: TestClient) -> None:
    operator.cookies.set("cacao_lang", "en")
    html = operator.get(NODE_PAGE).text
    english = catalog("en")
    assert english["operator.start_title"] in html and "% w.b." in html
    assert english["operator.end_cancel"] in html


def test_pages_without_a_login_go_to_the_login_page(dryer: GatewayContext) -> None:
    with TestClient(create_app(dryer), follow_redirects=False) as anonymous:
        for path in (NODE_PAGE, "/alerts"):
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login?next=%2F")
        assert anonymous.delete(OVERRIDE).status_code == 401
        assert anonymous.get(OVERRIDE).status_code == 401


# --- the alerts page ------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["es", "en"])
def test_the_alerts_page_has_its_filters_in_plain_words(operator: TestClient,
                                                        language: str) -> None:
    operator.cookies.set("cacao_lang", language)
    answer = operator.get("/alerts")
    assert answer.status_code == 200
    html = answer.text
    texts = catalog(language)
    assert texts["alerts.title"] in html
    assert '<a href="/alerts" aria-current="page">' + texts["nav.alerts"] + "</a>" in html
    for key in ("alerts.kind_over_temperature", "alerts.kind_node_offline",
                "alerts.severity_critical", "alerts.state_closed", "alerts.filter_dryer"):
        assert texts[key] in html, key
    assert '<option value="demo/secador-01">Secador norte</option>' in html
    config = page_config(html)
    assert config["dryer_names"] == {"demo/secador-01": "Secador norte"}
    assert "js/alerts.js" in html and "js/alert-items.js" in html


def test_every_role_finds_alerts_in_the_navigation(operator: TestClient) -> None:
    html = operator.get("/").text
    assert f'<a href="/alerts">{catalog("es")["nav.alerts"]}</a>' in html


# --- manual override: start, state, cancel --------------------------------------------------

def command_on_broker(mosquitto: MosquittoBroker, send: Callable[[], Response]
                      ) -> dict[str, Any]:
    """``send`` a technician's command through the API while watching the dryer's command
    topic on the real broker: the command the broker delivered (the API said it did)."""
    subscriber = Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watcher",
                            persistent=False).start()
    try:
        answer = send()
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivered_to_broker"] is True
        wait_for(lambda: len(subscriber.payloads()) == 1, what="the command on the broker")
    finally:
        subscriber.stop()
    command: dict[str, Any] = json.loads(subscriber.payloads()[0])
    assert command["command_id"] == answer.json()["command_id"]
    assert command["issued_by"] == "technician-user"
    return command


def test_cancelling_an_override_sends_clear_override_and_is_audited(
        dryer: GatewayContext, technician: TestClient, mosquitto: MosquittoBroker) -> None:
    command = command_on_broker(mosquitto, lambda: technician.delete(OVERRIDE))
    assert command["action"] == {"type": "clear_override"}
    with dryer.metadata.session() as session:
        entry = session.query(AuditEntry).filter_by(action="node.override_clear").one()
    assert entry.actor == "technician-user" and entry.target == f"{SITE}/{NODE}"
    assert entry.new == {"command_id": command["command_id"], "delivered_to_broker": True}


def test_operators_may_read_the_override_but_not_set_or_cancel_it(
        operator: TestClient) -> None:
    assert operator.get(OVERRIDE).status_code == 200
    refused = operator.post(OVERRIDE, json={"fan_speed_pct": 100, "duration_s": 900})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "operator may not do this (needs technician)"
    assert operator.delete(OVERRIDE).status_code == 403


def test_cancelling_on_an_unknown_dryer_is_a_404(technician: TestClient) -> None:
    answer = technician.delete(f"/api/nodes/{SITE}/nadie/override")
    assert answer.status_code == 404
    assert answer.json()["detail"] == f"node {SITE}/nadie is not known to this gateway"


def test_an_override_longer_than_12_hours_is_refused_in_one_line(
        technician: TestClient) -> None:
    answer = technician.post(OVERRIDE, json={"fan_speed_pct": 50, "duration_s": 13 * 3600})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("body.duration_s:")


def test_the_override_state_follows_the_nodes_own_events(dryer: GatewayContext,
                                                         technician: TestClient) -> None:
    assert technician.get(OVERRIDE).json()["state"] == "none"
    sent = technician.post(OVERRIDE, json={"fan_speed_pct": 80, "vent_open_pct": 30,
                                           "duration_s": 900}).json()
    status = technician.get(OVERRIDE).json()
    assert status["state"] == "sent" and status["command_id"] == sent["command_id"]
    assert (status["fan_speed_pct"], status["vent_open_pct"], status["duration_s"]) == (
        80, 30, 900)
    assert status["requested_by"] == "technician-user" and status["delivered_to_broker"]

    dryer.clock.advance(5)
    started_at = dryer.clock.now()
    hear(dryer, readings=[reading(dryer, 2, mode="manual")], events=[
        event(dryer, 1, EventType.OVERRIDE_STARTED, "manual override: fans 80 %",
              command_id=sent["command_id"]),
        event(dryer, 2, EventType.COMMAND_RESULT, "manual override: fans 80 %",
              command_id=sent["command_id"], ok=True, action="override")])
    status = technician.get(OVERRIDE).json()
    assert status["state"] == "active" and status["mode"] == "manual"
    assert status["started_at"] == started_at.isoformat().replace("+00:00", "Z")
    assert status["expires_at"] == (started_at + timedelta(seconds=900)).isoformat().replace(
        "+00:00", "Z")

    dryer.clock.advance(900)
    hear(dryer, readings=[reading(dryer, 3, mode="auto")], events=[
        event(dryer, 3, EventType.OVERRIDE_ENDED, "manual override expired; automatic control")])
    status = technician.get(OVERRIDE).json()
    assert status["state"] == "ended" and status["mode"] == "auto"
    assert status["node_message"] == "manual override expired; automatic control"


def test_an_override_the_node_refuses_or_never_answers_says_so(dryer: GatewayContext,
                                                               technician: TestClient) -> None:
    first = technician.post(OVERRIDE, json={"vent_open_pct": 100, "duration_s": 600}).json()
    hear(dryer, events=[event(dryer, 1, EventType.COMMAND_RESULT,
                              f"command {first['command_id']} failed: expired",
                              command_id=first["command_id"], ok=False, action="override")])
    status = technician.get(OVERRIDE).json()
    assert status["state"] == "refused" and "failed: expired" in status["node_message"]

    technician.post(OVERRIDE, json={"vent_open_pct": 100, "duration_s": 600})
    assert technician.get(OVERRIDE).json()["state"] == "sent"
    dryer.clock.advance(11 * 60)  # longer than a command lives
    assert technician.get(OVERRIDE).json()["state"] == "unanswered"


def test_a_node_that_restarts_ends_its_override(dryer: GatewayContext,
                                                technician: TestClient) -> None:
    sent = technician.post(OVERRIDE, json={"fan_speed_pct": 0, "duration_s": 3600}).json()
    hear(dryer, events=[event(dryer, 1, EventType.OVERRIDE_STARTED, "manual override",
                              command_id=sent["command_id"])])
    assert technician.get(OVERRIDE).json()["state"] == "active"
    dryer.clock.advance(60)
    hear(dryer, events=[event(dryer, 2, EventType.BOOT, "booted", boot_id="b2")])
    status = technician.get(OVERRIDE).json()
    assert status["state"] == "ended" and status["node_message"] == "booted"


# --- acknowledging alerts -------------------------------------------------------------------

def offline_alert(context: GatewayContext) -> int:
    """A real node_offline alert: the dryer says nothing for 11 minutes and the alert job
    runs."""
    context.clock.advance(11 * 60)
    report = AlertService(context).run_round()
    assert report.opened == 1
    with context.metadata.session() as session:
        return session.execute(select(AlertRecord.alert_id)).scalar_one()


def test_an_operator_acknowledges_an_open_alert_once(dryer: GatewayContext,
                                                     operator: TestClient) -> None:
    alert_id = offline_alert(dryer)
    listed = operator.get("/api/alerts", params={"site_id": SITE, "node_id": NODE}).json()
    assert [(a["alert_id"], a["kind"], a["acknowledged_by"]) for a in listed] == [
        (alert_id, "node_offline", None)]
    answer = operator.post(f"/api/alerts/{alert_id}/ack", json={"note": "voy a revisar"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["acknowledged_by"] == "operator-user"
    assert answer.json()["acknowledged_at"] is not None
    again = operator.post(f"/api/alerts/{alert_id}/ack", json={})
    assert again.status_code == 409
    assert again.json()["detail"] == (f"alert {alert_id} was already acknowledged by "
                                      "operator-user")
    assert operator.post("/api/alerts/99999/ack", json={}).status_code == 404


def test_acknowledging_needs_a_login_and_the_csrf_token(dryer: GatewayContext,
                                                        operator: TestClient) -> None:
    alert_id = offline_alert(dryer)
    with TestClient(create_app(dryer)) as anonymous:
        assert anonymous.post(f"/api/alerts/{alert_id}/ack", json={}).status_code == 401
    token = operator.headers.pop("X-CSRF-Token")
    refused = operator.post(f"/api/alerts/{alert_id}/ack", json={})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    operator.headers["X-CSRF-Token"] = token
    assert operator.post(f"/api/alerts/{alert_id}/ack", json={}).status_code == 200


def test_a_note_too_long_is_a_one_line_422(dryer: GatewayContext, operator: TestClient
                                           ) -> None:
    alert_id = offline_alert(dryer)
    answer = operator.post(f"/api/alerts/{alert_id}/ack", json={"note": "x" * 501})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("body.note:")


# --- taring the tray ------------------------------------------------------------------------

def test_a_technician_tares_the_tray_the_command_reaches_the_broker_and_is_audited(
        dryer: GatewayContext, technician: TestClient, mosquitto: MosquittoBroker) -> None:
    command = command_on_broker(mosquitto, lambda: technician.post(TARE))
    assert command["action"] == {"type": "tare_tray"}
    with dryer.metadata.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "node.tare")).one()
    assert (entry.actor, entry.target) == ("technician-user", f"{SITE}/{NODE}")
    assert entry.new == {"command_id": command["command_id"], "delivered_to_broker": True}
    assert ACTION_TEXTS["node.tare"] == "audit.action_node_tare"  # the audit page's words


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.MANAGER])
def test_only_technicians_and_admins_may_tare(dryer: GatewayContext, role: Role) -> None:
    with logged_in_client(dryer, role) as client:
        refused = client.post(TARE)
    assert refused.status_code == 403
    assert refused.json()["detail"] == f"{role.value} may not do this (needs technician)"


def test_taring_needs_a_login_and_the_csrf_token(dryer: GatewayContext) -> None:
    with TestClient(create_app(dryer)) as anonymous:
        assert anonymous.post(TARE).status_code == 401
    with logged_in_client(dryer, Role.ADMIN) as admin:
        token = admin.headers.pop("X-CSRF-Token")
        refused = admin.post(TARE)
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
        admin.headers["X-CSRF-Token"] = token
        assert admin.post(TARE).status_code == 200


def test_taring_an_unknown_dryer_or_one_with_a_batch_running_is_refused_in_one_line(
        dryer: GatewayContext, technician: TestClient) -> None:
    unknown = technician.post(f"/api/nodes/{SITE}/nadie/tare")
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == f"node {SITE}/nadie is not known to this gateway"
    started = technician.post("/api/batches", json={
        "site_id": SITE, "node_id": NODE, "lot_code": "L-077", "initial_moisture_pct_wb": 55})
    assert started.status_code == 201, started.text
    running = technician.post(TARE)
    assert running.status_code == 409
    assert running.json()["detail"] == (
        f"batch {started.json()['batch_id']} is running in {SITE}/{NODE}: end it and empty "
        "the tray before taring")
    with dryer.metadata.session() as session:
        assert session.scalars(select(AuditEntry).where(
            AuditEntry.action == "node.tare")).all() == []
