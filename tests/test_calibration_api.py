"""Probe calibration on the gateway: the calibrations table and its migration (SQLite and
PostgreSQL), the service and the HTTP API on a real gateway context (SQLite stores, private
Mosquitto), roles, one-line errors, and the whole loop with a real simulated node process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic import command as alembic
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import wait_for
from support.auth import add_user, api_settings, log_in
from support.gateway_context import registry_ingest
from support.migrations import insert_site_and_node
from support.mosquitto import MosquittoBroker, Subscriber
from support.nodes import NodeProcess

from cacao_dryer.contract import (
    Channel,
    Command,
    EventType,
    NodeEvent,
    SetCalibrationAction,
    decode,
    utc_iso,
)
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.ingest import Ingest
from gateway.metadata.database import (
    MIGRATIONS,
    _alembic_config,
    create_metadata_engine,
    open_metadata,
)
from gateway.metadata.models import AuditEntry, Calibration
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE = "demo", "secador-01"
BASE = f"/api/calibration/{SITE}/{NODE}"
TECHNICIAN = Actor("tomas", Role.TECHNICIAN)
OPERATOR = Actor("olga", Role.OPERATOR)
CONFIG_CURVE = [[0.8, 6.0], [1.2, 10.0], [1.8, 20.0], [2.6, 40.0], [3.2, 60.0]]


def app_for(context: GatewayContext, actor: Actor | None) -> FastAPI:
    return create_app(context, local_actor=actor)


def client_for(context: GatewayContext, actor: Actor | None = TECHNICIAN) -> TestClient:
    return TestClient(app_for(context, actor))


def event(seq: int, at: datetime, kind: EventType, data: dict, message: str = "x",
          node: str = NODE) -> NodeEvent:
    return NodeEvent(site_id=SITE, node_id=node, seq=seq, occurred_at=at, type=kind,
                     message=message, data=data)


@pytest.fixture
def gw(gateway: GatewayContext) -> GatewayContext:
    """A dryer that booted with the config file's curve and sent a reading every minute for
    the last hour: probe volts falling 2.6 → 1.8 V as the beans dry."""
    now = gateway.clock.now()
    readings = [StoredReading(
        site_id=SITE, node_id=NODE, seq=seq, measured_at=now - timedelta(minutes=60 - seq),
        fields={"moisture_probe_v": round(2.6 - seq * 0.8 / 60, 4),
                "bean_moisture_pct_wb": 40.0 - seq / 3}) for seq in range(1, 61)]
    gateway.store.write(readings)
    boot = event(1, now - timedelta(hours=2), EventType.BOOT, {
        "boot_id": "b1", "config_version": 0,
        "probe_calibration": {"sensor": "sonda-humedad", "points": CONFIG_CURVE,
                              "source": "config"}})
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(readings, [], [boot])
    return gateway


def body(context: GatewayContext, *pairs: tuple[float, float], **extra: object) -> dict:
    """(minutes ago, hand-meter %) pairs → a request body with times."""
    now = context.clock.now()
    return {"pairs": [{"measured_at": utc_iso(now - timedelta(minutes=ago)),
                       "meter_moisture_pct_wb": meter} for ago, meter in pairs], **extra}


THREE = ((50, 35.0), (30, 30.0), (10, 24.0))   # hand meter 1 to 3 % under the probe


# --- the table and its migration --------------------------------------------------------------

def test_migration_0004_upgrades_a_0003_database_with_its_data(metadata_url: str) -> None:
    engine = create_metadata_engine(metadata_url)
    alembic.upgrade(_alembic_config(engine), "0003")
    with engine.begin() as connection:
        insert_site_and_node(connection)
    engine.dispose()
    database = open_metadata(metadata_url)
    try:
        assert database.revision() == ScriptDirectory(str(MIGRATIONS)).get_current_head()
        with database.session() as session:
            session.add(Calibration(
                site_id=SITE, node_id=NODE, sensor="sonda", points=[[1.0, 50.0], [2.0, 10.0]],
                pairs=[], created_by="tomas", created_at=datetime.now().astimezone(),
                command_id="cal-1", delivered_to_broker=True))
        with database.session() as session:
            stored = session.scalar(select(Calibration))
            assert stored is not None and stored.points == [[1.0, 50.0], [2.0, 10.0]]
            assert stored.applied is None and stored.applied_at is None
    finally:
        database.close()
    engine = create_metadata_engine(metadata_url)
    alembic.downgrade(_alembic_config(engine), "0003")  # and back, for a gateway rollback
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM nodes").scalar() == 1
    engine.dispose()


# --- preview ----------------------------------------------------------------------------------

def test_preview_finds_the_probe_volts_and_compares_before_and_after(gw: GatewayContext
                                                                     ) -> None:
    answer = client_for(gw).post(f"{BASE}/preview", json=body(gw, *THREE))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["current"]["points"] == CONFIG_CURVE
    assert result["current"]["source"] == "config"
    now = gw.clock.now()
    first = result["pairs"][0]
    # the reading 50 min ago: seq 10, 2.6 - 10 × 0.8/60 V
    assert first["probe_v"] == pytest.approx(2.4667, abs=1e-4)
    assert first["reading_at"] == utc_iso(now - timedelta(minutes=50))
    assert first["before_pct_wb"] == pytest.approx(36.67, abs=0.01)  # the config curve
    assert first["meter_moisture_pct_wb"] == 35.0
    assert result["fitted"] == [[pytest.approx(p[0], abs=1e-4), p[1]] for p in (
        (1.9333, 24.0), (2.2, 30.0), (2.4667, 35.0))]
    # outside the readings the node's curve goes on, so the probe still reads wetter and
    # drier beans
    assert result["points"][:2] == [[0.8, 6.0], [1.2, 10.0]]
    assert result["points"][-1] == [3.2, 60.0]
    assert result["rmse_before_pct"] > 1.0 and result["rmse_after_pct"] == 0.0
    assert [p["after_pct_wb"] for p in result["pairs"]] == [35.0, 30.0, 24.0]


def test_preview_changes_nothing_and_sends_nothing(gw: GatewayContext,
                                                   mosquitto: MosquittoBroker) -> None:
    command_topic = f"cacao/v1/{SITE}/{NODE}/command"
    with Subscriber(mosquitto, command_topic, "watch", persistent=False) as watcher:
        assert client_for(gw).post(f"{BASE}/preview", json=body(gw, *THREE)).status_code == 200
        # a marker through the gateway's own publisher: anything sent before it arrives first
        assert gw.publisher.publish(command_topic, b"marker")
        wait_for(lambda: len(watcher.messages()) >= 1, 10, "the marker")
    assert [payload for _topic, payload, *_ in watcher.messages()] == [b"marker"]
    with gw.metadata.session() as session:
        assert session.scalar(select(func.count()).select_from(Calibration)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_pairs_may_give_the_volts_directly_and_then_need_no_readings(gw: GatewayContext
                                                                     ) -> None:
    answer = client_for(gw).post(f"{BASE}/preview", json={
        "pairs": [{"probe_v": 1.0, "meter_moisture_pct_wb": 8.0},
                  {"probe_v": 3.0, "meter_moisture_pct_wb": 52.0}],
        "keep_outside_points": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["points"] == [[1.0, 8.0], [3.0, 52.0]]
    assert answer.json()["pairs"][0]["reading_at"] is None


def test_without_the_nodes_curve_before_is_the_stored_reading(gateway: GatewayContext) -> None:
    now = gateway.clock.now()
    readings = [StoredReading(site_id=SITE, node_id=NODE, seq=s,
                              measured_at=now - timedelta(minutes=s),
                              fields={"moisture_probe_v": 1.0 + s / 10,
                                      "bean_moisture_pct_wb": 10.0 + s})
                for s in (1, 5)]
    gateway.store.write(readings)
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(readings, [], [])
    answer = client_for(gateway).post(f"{BASE}/preview", json=body(gateway, (1, 12.0),
                                                                   (5, 14.0)))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["current"] is None
    assert [p["before_pct_wb"] for p in result["pairs"]] == [11.0, 15.0]
    assert result["points"] == [[1.1, 12.0], [1.5, 14.0]]


@pytest.mark.parametrize(("change", "status", "detail"), [
    ({"pairs": [{"measured_at": "2026-03-01T06:00:00Z", "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]}, 422,
     "pair 1: no probe reading of demo/secador-01 within 2 min of 2026-03-01T06:00:00Z"),
    ({"pairs": [{"probe_v": 2.0, "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 32}]}, 422,
     "calibration needs readings at two or more different probe voltages"),
    ({"pairs": [{"probe_v": 1.0, "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 30}]}, 422,
     "calibration readings show no change of moisture with probe voltage"),
    ({"pairs": [{"meter_moisture_pct_wb": 30}, {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]},
     422, "body.pairs.0: Value error, give measured_at (the probe volts are looked up) or "
     "probe_v"),
    ({"pairs": [{"probe_v": 1.0, "meter_moisture_pct_wb": 90},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]}, 422,
     "body.pairs.0.meter_moisture_pct_wb: Input should be less than or equal to 80"),
    ({"pairs": [{"probe_v": 1.0, "meter_moisture_pct_wb": 30}]}, 422,
     "body.pairs: List should have at least 2 items after validation, not 1"),
    ({"pairs": [{"measured_at": "2026-03-01T07:00:00", "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]}, 422,
     "body.pairs.0.measured_at: Input should have timezone info"),
    ({"pairs": [{"measured_at": "2026-03-02T12:00:00Z", "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]}, 422,
     "pair 1: measured_at 2026-03-02T12:00:00Z is in the future"),
    ({"pairs": [{"measured_at": "0001-01-01T00:00:00Z", "meter_moisture_pct_wb": 30},
                {"probe_v": 2.0, "meter_moisture_pct_wb": 20}]}, 422,
     "body.pairs.0: Value error, measured_at is before 2000: a typo?"),
    ({"pairs": [], "colour": "brown"}, 422, None),
])
def test_bad_requests_are_one_line_errors(gw: GatewayContext, change: dict, status: int,
                                          detail: str | None) -> None:
    for path in (f"{BASE}/preview", BASE):
        answer = client_for(gw).post(path, json=change)
        assert answer.status_code == status, answer.text
        text = answer.json()["detail"]
        assert "\n" not in text
        if detail is not None:
            assert text == detail
    with gw.metadata.session() as session:
        assert session.scalar(select(func.count()).select_from(Calibration)) == 0


def test_an_unknown_dryer_is_404(gw: GatewayContext) -> None:
    client = client_for(gw)
    for answer in (client.post("/api/calibration/demo/nadie/preview", json=body(gw, *THREE)),
                   client.post("/api/calibration/demo/nadie", json=body(gw, *THREE)),
                   client.get("/api/calibration/demo/nadie"),
                   client.get("/api/calibration/demo/nadie/spot-checks")):
        assert answer.status_code == 404
        assert answer.json()["detail"] == "node demo/nadie is not known to this gateway"


# --- save, the node's answer, the list --------------------------------------------------------

def test_save_records_audits_and_sends_the_curve(gw: GatewayContext,
                                                 mosquitto: MosquittoBroker) -> None:
    client = client_for(gw)
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watch",
                    persistent=False) as watcher:
        answer = client.post(BASE, json=body(gw, *THREE, comment="lote L-031, medidor 2"))
        assert answer.status_code == 201, answer.text
        wait_for(lambda: len(watcher.messages()) == 1, 10, "the command on the broker")
    saved = answer.json()
    assert saved["state"] == "pending" and saved["applied"] is None
    assert saved["delivered_to_broker"] is True and saved["created_by"] == "tomas"
    assert saved["sensor"] == "sonda-humedad" and saved["comment"] == "lote L-031, medidor 2"
    assert saved["command_id"].startswith("cal-") and len(saved["pairs"]) == 3
    command = decode(Channel.COMMAND, watcher.messages()[0][1])
    assert isinstance(command, Command) and isinstance(command.action, SetCalibrationAction)
    assert command.command_id == saved["command_id"] and command.issued_by == "tomas"
    assert command.action.sensor == "sonda-humedad"
    assert [list(p) for p in command.action.points] == saved["points"]
    with gw.metadata.session() as session:
        (entry,) = session.scalars(select(AuditEntry))
        assert (entry.actor, entry.action, entry.target) == (
            "tomas", "calibration.send", "demo/secador-01/sonda-humedad")
        assert entry.old == {"points": CONFIG_CURVE, "source": "config"}
        assert entry.new["points"] == saved["points"] and entry.new["pairs"] == 3
        assert entry.detail == "lote L-031, medidor 2"


@pytest.mark.parametrize(("ok", "state"), [(True, "applied"), (False, "rejected")])
def test_the_nodes_answer_marks_the_calibration_applied_or_rejected(gw: GatewayContext,
                                                                    ok: bool,
                                                                    state: str) -> None:
    client = client_for(gw)
    saved = client.post(BASE, json=body(gw, *THREE)).json()
    at = gw.clock.now() + timedelta(seconds=2)
    message = ("probe sonda-humedad calibrated: 5 points" if ok else
               f"command {saved['command_id']} failed: this node's moisture probe is 'x'")
    registry = NodeRegistry(gw.metadata, gw.clock)
    answer = event(2, at, EventType.COMMAND_RESULT,
                   {"command_id": saved["command_id"], "ok": ok, "action": "set_calibration"}
                   | ({"probe_calibration": {"sensor": "sonda-humedad",
                                             "points": saved["points"], "source": "gateway"}}
                      if ok else {}), message)
    registry.batch_received([], [], [answer])
    # a redelivery or a second answer changes nothing
    registry.batch_received([], [], [answer, event(3, at, EventType.COMMAND_RESULT, {
        "command_id": saved["command_id"], "ok": not ok})])
    listing = client_for(gw, OPERATOR).get(BASE)
    assert listing.status_code == 200
    (record,) = listing.json()["calibrations"]
    assert record["state"] == state and record["applied"] is ok
    assert record["applied_at"] == utc_iso(at) and record["node_message"] == message
    current = listing.json()["current"]
    assert current["source"] == ("gateway" if ok else "config")
    assert current["points"] == (saved["points"] if ok else CONFIG_CURVE)


def test_answers_to_other_commands_and_other_nodes_are_not_taken(gw: GatewayContext) -> None:
    saved = client_for(gw).post(BASE, json=body(gw, *THREE)).json()
    registry = NodeRegistry(gw.metadata, gw.clock)
    at = gw.clock.now()
    registry.batch_received([], [], [
        event(2, at, EventType.COMMAND_RESULT, {"command_id": "start-x-1", "ok": True}),
        event(1, at, EventType.COMMAND_RESULT, {"command_id": saved["command_id"], "ok": True},
              node="secador-02")])
    (record,) = client_for(gw).get(BASE).json()["calibrations"]
    assert record["state"] == "pending"


def test_the_list_is_newest_first_and_limited(gw: GatewayContext) -> None:
    client = client_for(gw)
    ids = []
    for _ in range(3):
        ids.append(client.post(BASE, json=body(gw, *THREE)).json()["id"])
        gw.clock.advance(60)
    listing = client.get(BASE, params={"limit": 2}).json()["calibrations"]
    assert [c["id"] for c in listing] == ids[::-1][:2]
    assert client.get(BASE, params={"limit": 0}).status_code == 422


def test_spot_checks_of_the_dryers_batches_come_with_their_probe_volts(gw: GatewayContext
                                                                      ) -> None:
    client = TestClient(app_for(gw, Actor("ana", Role.ADMIN)))
    started = gw.clock.now() - timedelta(minutes=55)
    batch = client.post("/api/batches", json={
        "site_id": SITE, "node_id": NODE, "lot_code": "L-1", "producer": "Coop",
        "crop": "cacao", "initial_moisture_pct_wb": 45, "started_at": utc_iso(started)})
    assert batch.status_code == 201, batch.text
    batch_id = batch.json()["batch_id"]
    for ago, moisture in ((40, 33.0), (20, 28.0)):
        made = client.post(f"/api/batches/{batch_id}/spot-checks", json={
            "moisture_pct_wb": moisture,
            "measured_at": utc_iso(gw.clock.now() - timedelta(minutes=ago))})
        assert made.status_code == 201, made.text
    found = client.get(f"{BASE}/spot-checks").json()
    assert [(c["moisture_pct_wb"], c["batch_id"]) for c in found] == [
        (28.0, batch_id), (33.0, batch_id)]
    assert found[0]["probe_v"] == pytest.approx(2.6 - 40 * 0.8 / 60, abs=1e-4)
    # ready to use as pairs
    pairs = [{"measured_at": c["measured_at"], "meter_moisture_pct_wb": c["moisture_pct_wb"],
              "spot_check_id": c["spot_check_id"]} for c in found]
    preview = client.post(f"{BASE}/preview", json={"pairs": pairs})
    assert preview.status_code == 200, preview.text
    assert [p["spot_check_id"] for p in preview.json()["pairs"]] == [
        c["spot_check_id"] for c in found]


# --- roles, logins, the schema ----------------------------------------------------------------

@pytest.mark.parametrize(("role", "read", "write"), [
    (Role.OPERATOR, 200, 403), (Role.TECHNICIAN, 200, 201), (Role.MANAGER, 200, 403),
    (Role.ADMIN, 200, 201)])
def test_roles(gw: GatewayContext, role: Role, read: int, write: int) -> None:
    client = client_for(gw, Actor("x", role))
    assert client.get(BASE).status_code == read
    assert client.get(f"{BASE}/spot-checks").status_code == read
    preview = client.post(f"{BASE}/preview", json=body(gw, *THREE))
    assert preview.status_code == (200 if write == 201 else 403)
    saved = client.post(BASE, json=body(gw, *THREE))
    assert saved.status_code == write
    if write == 403:
        assert saved.json()["detail"] == f"{role.value} may not do this (needs technician)"


def test_a_logged_in_technician_needs_the_csrf_token_to_save(gw: GatewayContext) -> None:
    api_settings(gw)
    add_user(gw, "tomas", Role.TECHNICIAN)
    client = TestClient(app_for(gw, None))
    assert client.get(BASE).status_code == 401
    token = log_in(client, "tomas")
    refused = client.post(BASE, json=body(gw, *THREE))
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    saved = client.post(BASE, json=body(gw, *THREE), headers={"X-CSRF-Token": token})
    assert saved.status_code == 201 and saved.json()["created_by"] == "tomas"


def test_the_routes_are_in_the_api_schema(gw: GatewayContext) -> None:
    paths = client_for(gw).get("/openapi.json").json()["paths"]
    assert set(paths[BASE.replace(SITE, "{site_id}").replace(NODE, "{node_id}")]) == {
        "get", "post"}
    for tail in ("/preview", "/spot-checks"):
        assert "/api/calibration/{site_id}/{node_id}" + tail in paths


# --- the whole loop with a real node ----------------------------------------------------------

@pytest.fixture
def ingest(gateway: GatewayContext) -> Iterator[Ingest]:
    with registry_ingest(gateway) as service:
        yield service


@pytest.mark.integration
def test_a_real_node_applies_a_calibration_saved_through_the_api(
        gateway: GatewayContext, ingest: Ingest, mosquitto: MosquittoBroker,
        tmp_path: Path) -> None:
    node_id = "secador-cal"
    base = f"/api/calibration/{SITE}/{node_id}"
    node = NodeProcess(tmp_path / "node", mosquitto, site_id=SITE, node_id=node_id,
                       start=utc_iso(gateway.clock.now())).start()
    client = client_for(gateway)
    try:
        def current() -> dict | None:
            answer = client.get(base)
            return answer.json()["current"] if answer.status_code == 200 else None

        wait_for(lambda: current() is not None, 30, "the node's boot event with its curve")
        assert current()["source"] == "config"  # type: ignore[index]

        def latest_with_volts() -> StoredReading | None:
            latest = gateway.store.latest(SITE, node_id)
            return latest if latest is not None and "moisture_probe_v" in latest.fields \
                else None

        wait_for(lambda: latest_with_volts() is not None, 30, "a reading with probe volts")
        latest = latest_with_volts()
        assert latest is not None
        # the hand meter reads 2 % drier than the probe's config curve at this reading; a
        # second pair gives the volts directly
        probe_says = _config_curve(latest.fields["moisture_probe_v"])
        pairs = [{"measured_at": utc_iso(latest.measured_at),
                  "meter_moisture_pct_wb": round(max(10.0, probe_says - 2.0), 1)},
                 {"probe_v": 0.9, "meter_moisture_pct_wb": 6.0}]
        saved = client.post(base, json={"pairs": pairs})
        assert saved.status_code == 201, saved.text
        calibration_id = saved.json()["id"]

        def state() -> str:
            records = client.get(base).json()["calibrations"]
            return next(r["state"] for r in records if r["id"] == calibration_id)

        wait_for(lambda: state() == "applied", 30, "the node's command_result")
        now = current()
        assert now is not None and now["source"] == "gateway"
        assert now["points"] == saved.json()["points"]
        (record,) = client.get(base).json()["calibrations"]
        assert record["node_message"].startswith("probe sonda-humedad calibrated")
    finally:
        node.stop()
    # the node keeps it: the file next to its outbox
    assert (tmp_path / "node" / "data" / "calibration.json").exists()


def _config_curve(volts: float) -> float:
    from cacao_dryer.calibration import volts_to_moisture_pct_wb

    return volts_to_moisture_pct_wb([tuple(p) for p in CONFIG_CURVE], volts)
