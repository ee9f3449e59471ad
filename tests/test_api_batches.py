"""Batches through the HTTP API on a real gateway context (SQLite stores, private Mosquitto):
the whole loop with a real simulated node process, errors in one line, roles, lists, CSV."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import wait_for
from support.gateway_context import registry_ingest
from support.mosquitto import MosquittoBroker, Subscriber
from support.nodes import NodeProcess

from cacao_dryer.contract import Channel, Command, StartBatchAction, decode, utc_iso
from firmware.simulation.dryer import DryerModel
from firmware.simulation.weather import Weather
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.ingest import Ingest
from gateway.metadata.models import NodeConfigPush
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE, OTHER = "demo", "secador-01", "secador-02"
ADMIN = Actor("ana", Role.ADMIN)
OPERATOR = Actor("olga", Role.OPERATOR)


def client_for(context: GatewayContext, actor: Actor | None = OPERATOR) -> TestClient:
    return TestClient(create_app(context, local_actor=actor))


def start_body(node: str = NODE, **changes: object) -> dict[str, object]:
    return {"site_id": SITE, "node_id": node, "lot_code": "L-031",
            "producer": "Coop Alto Mayo", "crop": "cacao", "initial_mass_kg": 400,
            "initial_moisture_pct_wb": 56} | changes


@pytest.fixture
def gw(gateway: GatewayContext) -> GatewayContext:
    """The gateway with two dryers already heard of."""
    heard = [StoredReading(site_id=SITE, node_id=node, seq=1, measured_at=gateway.clock.now(),
                           fields={"air_temp_c": 30.0}) for node in (NODE, OTHER)]
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(heard, [], [])
    return gateway


# --- the whole loop with a real node ----------------------------------------------------------

@pytest.fixture
def ingest(gateway: GatewayContext) -> Iterator[Ingest]:
    with registry_ingest(gateway) as service:
        yield service


@pytest.mark.integration
def test_a_real_node_takes_the_batch_and_its_telemetry_carries_it(
        gateway: GatewayContext, ingest: Ingest, mosquitto: MosquittoBroker,
        tmp_path: Path) -> None:
    node_id = "secador-it"
    node = NodeProcess(tmp_path / "node", mosquitto, site_id=SITE, node_id=node_id,
                       start=utc_iso(gateway.clock.now())).start()
    client = client_for(gateway)
    try:
        wait_for(lambda: client.get(f"/api/nodes/{SITE}/{node_id}").status_code == 200, 30,
                 "the gateway to hear of the node")
        with Subscriber(mosquitto, f"cacao/v1/{SITE}/{node_id}/command", "watcher",
                        persistent=False) as watcher:
            response = client.post("/api/batches", json=start_body(node_id))
            assert response.status_code == 201, response.text
            wait_for(lambda: len(watcher.messages()) == 1, 10, "the command on the broker")
        started = response.json()
        batch_id = started["batch_id"]
        assert started["command"]["delivered_to_broker"] is True
        command = decode(Channel.COMMAND, watcher.messages()[0][1])
        assert isinstance(command, Command) and isinstance(command.action, StartBatchAction)
        assert command.action.batch_id == batch_id

        def latest_batch() -> str | None:
            latest = gateway.store.latest(SITE, node_id)
            return latest.batch_id if latest else None

        wait_for(lambda: latest_batch() == batch_id, 30, "telemetry carrying the batch id")

        def node_side() -> dict:
            return client.get(f"/api/batches/{batch_id}").json()["node"]

        wait_for(lambda: node_side()["started_at"] is not None, 30, "the node's batch_started")
        (sent,) = node_side()["commands"]
        assert (sent["action"], sent["delivered_to_broker"], sent["node_ok"]) == (
            "start_batch", True, True)

        gateway.clock.advance(600)
        ended = client.post(f"/api/batches/{batch_id}/end",
                            json={"final_moisture_pct_wb": 7.1})
        assert ended.status_code == 200, ended.text
        wait_for(lambda: node_side()["ended_at"] is not None, 30, "the node's batch_ended")
        wait_for(lambda: latest_batch() is None, 30, "telemetry without a batch")
        assert [(c["action"], c["node_ok"]) for c in node_side()["commands"]] == [
            ("start_batch", True), ("end_batch", True)]
        # The node's own confirmation created no second record.
        page = client.get("/api/batches", params={"node_id": node_id}).json()
        assert page["total"] == 1 and page["items"][0]["started_by"] == "olga"
    finally:
        node.stop()


# --- start, end and their errors --------------------------------------------------------------

def test_start_answers_201_with_the_record_and_the_command(gw: GatewayContext) -> None:
    response = client_for(gw).post("/api/batches", json=start_body(notes="primer lote"))
    assert response.status_code == 201
    body = response.json()
    assert body["batch_id"] == "secador-01-202603010700"
    assert body["running"] is True and body["duration_h"] == 0.0
    assert body["started_by"] == "olga" and body["notes"] == "primer lote"
    assert body["command"]["action"] == "start_batch"
    assert body["command"]["delivered_to_broker"] is True


def test_a_second_start_on_the_same_dryer_is_409_in_one_line(gw: GatewayContext) -> None:
    client = client_for(gw)
    first = client.post("/api/batches", json=start_body()).json()["batch_id"]
    response = client.post("/api/batches", json=start_body(lot_code="L-032"))
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"dryer demo/secador-01 already has batch {first} running since "
        "2026-03-01T12:00:00Z: end it first")


def test_starting_on_an_unknown_dryer_is_404(gw: GatewayContext) -> None:
    response = client_for(gw).post("/api/batches", json=start_body("secador-99"))
    assert response.status_code == 404
    assert response.json()["detail"] == "node demo/secador-99 is not known to this gateway"


@pytest.mark.parametrize(("change", "where"), [
    ({"initial_moisture_pct_wb": 5}, "body.initial_moisture_pct_wb"),
    ({"initial_moisture_pct_wb": 85}, "body.initial_moisture_pct_wb"),
    ({"initial_mass_kg": -3}, "body.initial_mass_kg"),
    ({"lot_code": "   "}, "body.lot_code"),
    ({"crop": "maiz"}, "body.crop"),
    ({"started_at": "2026-03-01T06:00:00"}, "body.started_at"),
    ({"node_id": "Secador 1"}, "body.node_id"),
    ({"colour": "brown"}, "body.colour"),
])
def test_bad_start_requests_are_422_with_one_line(gw: GatewayContext, change: dict,
                                                  where: str) -> None:
    response = client_for(gw).post("/api/batches", json=start_body(**change))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith(f"{where}: ") and "\n" not in detail


def test_a_start_in_the_future_is_422(gw: GatewayContext) -> None:
    later = utc_iso(gw.clock.now() + timedelta(days=1))
    response = client_for(gw).post("/api/batches", json=start_body(started_at=later))
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "started_at 2026-03-02T12:00:00Z is in the future (now 2026-03-01T12:00:00Z)")


def test_end_then_end_again_is_409(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    gw.clock.advance(4 * 24 * 3600)
    ended = client.post(f"/api/batches/{batch_id}/end",
                        json={"final_moisture_pct_wb": 7.0, "final_mass_kg": 172})
    assert ended.status_code == 200
    body = ended.json()
    assert body["running"] is False and body["duration_h"] == 96.0
    assert body["command"]["action"] == "end_batch"
    again = client.post(f"/api/batches/{batch_id}/end", json={})
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"batch {batch_id} already ended at 2026-03-05T12:00:00Z (by olga)")


def test_ending_an_unknown_batch_is_404(gw: GatewayContext) -> None:
    response = client_for(gw).post("/api/batches/lote-x/end", json={})
    assert response.status_code == 404
    assert response.json()["detail"] == "batch lote-x is not known to this gateway"


def test_the_broker_being_down_does_not_stop_the_record(gw: GatewayContext,
                                                       mosquitto: MosquittoBroker) -> None:
    mosquitto.kill()
    response = client_for(gw).post("/api/batches", json=start_body())
    assert response.status_code == 201
    assert response.json()["command"]["delivered_to_broker"] is False
    detail = client_for(gw).get(f"/api/batches/{response.json()['batch_id']}").json()
    assert detail["running"] is True
    assert detail["node"]["commands"][0]["delivered_to_broker"] is False


# --- spot checks, corrections, detail ---------------------------------------------------------

def test_spot_checks_are_recorded_and_listed(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    gw.clock.advance(24 * 3600)
    added = client.post(f"/api/batches/{batch_id}/spot-checks",
                        json={"moisture_pct_wb": 38.5, "note": "muestra del centro"})
    assert added.status_code == 201
    assert added.json()["method"] == "hand_meter" and added.json()["recorded_by"] == "olga"
    client.post(f"/api/batches/{batch_id}/spot-checks",
                json={"moisture_pct_wb": 41.0, "method": "halogen",
                      "measured_at": utc_iso(gw.clock.now() - timedelta(hours=2))})
    listed = client.get(f"/api/batches/{batch_id}/spot-checks").json()
    assert [(c["moisture_pct_wb"], c["method"]) for c in listed] == [
        (41.0, "halogen"), (38.5, "hand_meter")]
    detail = client.get(f"/api/batches/{batch_id}").json()
    assert [c["moisture_pct_wb"] for c in detail["spot_checks"]] == [41.0, 38.5]
    # No readings yet: the newest spot check tells where the beans are.
    assert (detail["current_moisture_pct_wb"], detail["current_moisture_source"]) == (
        38.5, "spot_check")
    assert detail["target_moisture_pct_wb"] == 7.0
    assert detail["progress_pct"] == pytest.approx((56 - 38.5) / (56 - 7) * 100, abs=0.1)


@pytest.mark.parametrize(("body", "where"), [
    ({"moisture_pct_wb": 95}, "body.moisture_pct_wb"),
    ({"moisture_pct_wb": 30, "method": "teeth"}, "body.method"),
    ({}, "body.moisture_pct_wb"),
])
def test_bad_spot_checks_are_422(gw: GatewayContext, body: dict, where: str) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    response = client.post(f"/api/batches/{batch_id}/spot-checks", json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(where)


def test_corrections_change_only_what_is_given(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    response = client.patch(f"/api/batches/{batch_id}",
                            json={"producer": "Asociación Alto Mayo", "initial_mass_kg": None})
    assert response.status_code == 200
    body = response.json()
    assert (body["producer"], body["initial_mass_kg"], body["lot_code"]) == (
        "Asociación Alto Mayo", None, "L-031")


@pytest.mark.parametrize(("body", "detail"), [
    ({}, "body: Value error, nothing to change: give at least one field"),
    ({"lot_code": None}, "body: Value error, lot_code cannot be cleared, only changed"),
    ({"started_at": "2026-03-01T11:00:00Z"}, "body.started_at: Extra inputs are not permitted"),
])
def test_bad_corrections_are_422(gw: GatewayContext, body: dict, detail: str) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    response = client.patch(f"/api/batches/{batch_id}", json=body)
    assert response.status_code == 422 and response.json()["detail"] == detail


def test_detail_shows_current_moisture_from_readings(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    t0 = gw.clock.now()
    gw.store.write([StoredReading(site_id=SITE, node_id=NODE, seq=1 + i,
                                  measured_at=t0 + timedelta(minutes=i),
                                  fields={"bean_moisture_pct_wb": 56.0 - i * 0.05})
                    for i in range(1, 121)])
    gw.clock.advance(2 * 3600)
    detail = client.get(f"/api/batches/{batch_id}").json()
    assert detail["current_moisture_source"] == "reading"
    assert detail["current_moisture_pct_wb"] == pytest.approx(50.0)
    assert detail["current_moisture_at"] == "2026-03-01T14:00:00Z"
    assert detail["duration_h"] == 2.0


# --- lists, roles -----------------------------------------------------------------------------

def test_the_list_filters_and_pages(gw: GatewayContext) -> None:
    client = client_for(gw)
    ids = []
    for number in range(3):
        ids.append(client.post("/api/batches", json=start_body(
            lot_code=f"L-{number}", producer=f"Productor {number}")).json()["batch_id"])
        gw.clock.advance(24 * 3600)
        client.post(f"/api/batches/{ids[-1]}/end", json={})
        gw.clock.advance(3600)
    running = client.post("/api/batches", json=start_body(OTHER)).json()["batch_id"]
    page = client.get("/api/batches", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)
    assert [b["batch_id"] for b in page["items"]] == [ids[2], ids[1]]
    assert [b["batch_id"] for b in client.get(
        "/api/batches", params={"running": "true"}).json()["items"]] == [running]
    assert [b["batch_id"] for b in client.get(
        "/api/batches", params={"producer": "productor 1"}).json()["items"]] == [ids[1]]
    since = utc_iso(gw.clock.now() - timedelta(hours=30))
    assert [b["batch_id"] for b in client.get(
        "/api/batches", params={"since": since, "node_id": NODE}).json()["items"]] == [ids[2]]


def test_list_parameters_are_checked(gw: GatewayContext) -> None:
    client = client_for(gw)
    naive = client.get("/api/batches", params={"since": "2026-03-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["detail"].startswith("query.since")
    backwards = client.get("/api/batches", params={"since": "2026-03-02T00:00:00Z",
                                                   "until": "2026-03-01T00:00:00Z"})
    assert backwards.status_code == 422
    assert backwards.json()["detail"] == "since must be before until"
    assert client.get("/api/batches", params={"limit": 0}).status_code == 422


def test_roles_operators_work_batches_managers_export(gw: GatewayContext) -> None:
    operator = client_for(gw, OPERATOR)
    batch_id = operator.post("/api/batches", json=start_body()).json()["batch_id"]
    for path in (f"/api/batches/{batch_id}/readings.csv", "/api/batches.csv"):
        forbidden = operator.get(path)
        assert forbidden.status_code == 403
        assert forbidden.json()["detail"] == "operator may not do this (needs manager)"
        assert client_for(gw, Actor("maria", Role.MANAGER)).get(path).status_code == 200
    anonymous = client_for(gw, None)
    assert anonymous.get("/api/batches").status_code == 401
    assert anonymous.post("/api/batches", json=start_body(OTHER)).status_code == 401


# --- CSV exports ------------------------------------------------------------------------------

def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_readings_export_has_one_row_per_bucket_of_the_batch(gw: GatewayContext) -> None:
    client = client_for(gw, ADMIN)
    t0 = gw.clock.now()
    # Readings every 30 s from an hour before the batch to two hours into it.
    gw.store.write([StoredReading(site_id=SITE, node_id=NODE, seq=10 + i,
                                  measured_at=t0 + timedelta(seconds=30 * i),
                                  fields={"air_temp_c": 40.0 + (i % 2),
                                          "bean_moisture_pct_wb": 55.0},
                                  batch_id=None)
                    for i in range(-120, 240)])
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    gw.clock.advance(2 * 3600)
    response = client.get(f"/api/batches/{batch_id}/readings.csv", params={"every_s": 600})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="{batch_id}.csv"' in response.headers["content-disposition"]
    rows = parse_csv(response.text)
    assert len(rows) == 12                           # 2 h in 10-minute means, none before
    assert rows[0]["batch_id"] == batch_id
    assert rows[0]["measured_at"] == "2026-03-01T12:00:00Z"
    assert rows[-1]["measured_at"] == "2026-03-01T13:50:00Z"
    assert float(rows[0]["air_temp_c"]) == 40.5 and rows[0]["air_rh_pct"] == ""
    raw = parse_csv(client.get(f"/api/batches/{batch_id}/readings.csv",
                               params={"raw": "true"}).text)
    assert len(raw) == 240 and raw[1]["measured_at"] == "2026-03-01T12:00:30Z"


def test_a_readings_export_too_fine_for_its_span_is_422(gw: GatewayContext) -> None:
    client = client_for(gw, ADMIN)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    gw.clock.advance(30 * 24 * 3600)
    response = client.get(f"/api/batches/{batch_id}/readings.csv", params={"every_s": 1})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "every_s 1 gives more than 100000 rows: choose a wider bucket")


def test_batch_summaries_export(gw: GatewayContext) -> None:
    client = client_for(gw, ADMIN)
    batch_id = client.post("/api/batches", json=start_body(
        producer='Juan "Chino" Pérez, Tocache', notes="línea 1\nlínea 2")).json()["batch_id"]
    client.post(f"/api/batches/{batch_id}/spot-checks", json={"moisture_pct_wb": 50})
    gw.clock.advance(90 * 3600)
    client.post(f"/api/batches/{batch_id}/end", json={"final_moisture_pct_wb": 7.4})
    client.post("/api/batches", json=start_body(OTHER, producer="Otra"))
    rows = parse_csv(client.get("/api/batches.csv", params={"node_id": NODE}).text)
    assert len(rows) == 1
    row = rows[0]
    assert (row["batch_id"], row["producer"], row["notes"]) == (
        batch_id, 'Juan "Chino" Pérez, Tocache', "línea 1\nlínea 2")
    assert (row["started_at"], row["ended_at"], row["duration_h"]) == (
        "2026-03-01T12:00:00Z", "2026-03-05T06:00:00Z", "90")
    assert (row["final_moisture_pct_wb"], row["spot_checks"], row["initial_mass_kg"]) == (
        "7.4", "1", "400")
    everything = parse_csv(client.get("/api/batches.csv").text)
    assert [r["node_id"] for r in everything] == [OTHER, NODE]


def test_openapi_lists_the_batch_routes(gw: GatewayContext) -> None:
    paths = client_for(gw).get("/openapi.json").json()["paths"]
    for path in ("/api/batches", "/api/batches/{batch_id}", "/api/batches/{batch_id}/end",
                 "/api/batches/{batch_id}/spot-checks", "/api/batches/{batch_id}/readings.csv",
                 "/api/batches.csv"):
        assert path in paths


# --- analysis on a simulated batch ------------------------------------------------------------

@dataclass(frozen=True)
class SimulatedBatch:
    readings: list[StoredReading]
    target_reached_at: datetime | None   # when the simulated beans first reached 7 %


def simulate_batch(start: datetime, days: float, node: str = NODE, every_s: int = 300,
                   fan_speed_pct: float = 50.0, vent_open_pct: float = 100.0,
                   batch_id: str | None = None) -> SimulatedBatch:
    """Readings of the simulated greenhouse dryer (Tarapoto weather, seed 1, 400 kg at 56 %)
    every ``every_s`` seconds, as a node would have stored them."""
    model = DryerModel(Weather(seed=1), start=start, seed=1)
    readings, reached = [], None
    for number in range(1, int(days * 86400 / every_s) + 1):
        at = start + timedelta(seconds=every_s * number)
        model.step(at, fan_speed_pct, vent_open_pct)
        moisture = model.bean_moisture_pct_wb
        if reached is None and moisture <= 7.0:
            reached = at
        readings.append(StoredReading(
            site_id=SITE, node_id=node, seq=number + 1, measured_at=at, batch_id=batch_id,
            fields={"air_temp_c": model.air_temp_c, "air_rh_pct": model.air_rh_pct,
                    "ambient_temp_c": model.ambient.temp_c,
                    "ambient_rh_pct": model.ambient.rh_pct, "bean_moisture_pct_wb": moisture,
                    "tray_mass_kg": model.tray_mass_kg, "fan_speed_pct": fan_speed_pct,
                    "vent_open_pct": vent_open_pct}))
    return SimulatedBatch(readings, reached)


def test_prediction_of_a_simulated_batch_brackets_when_it_really_dried(
        gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    truth = simulate_batch(gw.clock.now(), days=8)
    assert truth.target_reached_at is not None
    two_days = gw.clock.now() + timedelta(days=2)
    gw.store.write([r for r in truth.readings if r.measured_at <= two_days])
    gw.clock.advance(2 * 86400)
    response = client.get(f"/api/batches/{batch_id}/prediction")
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["every_s"], body["reason"]) == ("readings", 60, None)
    predicted = datetime.fromisoformat(body["predicted_at"])
    earliest = datetime.fromisoformat(body["earliest"])
    latest = datetime.fromisoformat(body["latest"])
    assert earliest <= predicted <= latest
    # The band covers when the simulated beans really got there (the accuracy of the model
    # itself is tests/test_drying_model.py's business).
    assert earliest <= truth.target_reached_at <= latest
    assert body["hours_remaining"] == pytest.approx(
        (predicted - gw.clock.now()).total_seconds() / 3600, abs=0.01)
    assert body["fit"]["n"] > 0 and body["target_moisture_pct_wb"] == 7.0


def test_prediction_falls_back_to_spot_checks_without_a_moisture_sensor(
        gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    truth = simulate_batch(gw.clock.now(), days=3)
    gw.clock.advance(3 * 86400)
    for reading in truth.readings[::96]:   # every 8 h, by hand
        added = client.post(f"/api/batches/{batch_id}/spot-checks", json={
            "measured_at": utc_iso(reading.measured_at),
            "moisture_pct_wb": round(reading.fields["bean_moisture_pct_wb"], 1)})
        assert added.status_code == 201
    body = client.get(f"/api/batches/{batch_id}/prediction").json()
    assert body["source"] == "spot_checks" and body["predicted_at"] is not None
    assert body["points_used"] == 1 + len(truth.readings[::96])  # with the loading moisture


def test_no_prediction_without_enough_data_says_why(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    body = client.get(f"/api/batches/{batch_id}/prediction").json()
    assert body["predicted_at"] is None and body["fit"] is None
    assert body["source"] == "spot_checks" and body["points_used"] == 1  # loading moisture
    assert body["reason"] and "\n" not in body["reason"]
    assert client.get(f"/api/batches/{batch_id}/prediction",
                      params={"confidence": 1.5}).status_code == 422


JULY = datetime(2026, 7, 9, 12, 0, tzinfo=UTC)  # dry season in Tarapoto: 07:00 local


def start_in_july(gw: GatewayContext, client: TestClient) -> tuple[str, SimulatedBatch]:
    """A batch started on 9 July with six days of simulated readings stored."""
    gw.clock.advance((JULY - gw.clock.now()).total_seconds())
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    sim = simulate_batch(JULY, days=6, batch_id=batch_id)
    gw.store.write(sim.readings)
    return batch_id, sim


def test_metrics_of_a_simulated_dry_season_batch(gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id, sim = start_in_july(gw, client)
    gw.clock.advance(6 * 86400)
    client.post(f"/api/batches/{batch_id}/end", json={})
    response = client.get(f"/api/batches/{batch_id}/metrics")
    assert response.status_code == 200
    body = response.json()
    # 6 days in 2-minute buckets; readings every 5 min, so each bucket holds one reading;
    # the one taken at the very moment of the end belongs to the next batch ([start, end)).
    assert (body["running"], body["every_s"], body["readings"]) == (False, 120, 1727)
    assert body["duration_h"] == 144.0 and body["initial_moisture_pct_wb"] == 56.0
    assert body["max_air_temp_c"] == round(max(r.fields["air_temp_c"] for r in sim.readings), 1)
    last = sim.readings[-1].fields["bean_moisture_pct_wb"]
    assert body["moisture_source"] == "reading"
    assert body["final_moisture_pct_wb"] == pytest.approx(last, abs=0.3)
    assert body["average_drying_rate_pct_per_h"] == pytest.approx(
        (56.0 - body["final_moisture_pct_wb"]) / 144.0, abs=0.01)
    assert body["time_above_limit_h"] == 0.0 and body["flags"] == []
    assert body["min_night_humidity_margin_pct"] is not None


def test_an_overheated_batch_is_flagged_and_found_by_the_flag_filter(
        gw: GatewayContext) -> None:
    client = client_for(gw, ADMIN)
    hot = client.post("/api/batches", json=start_body()).json()["batch_id"]
    fine = client.post("/api/batches", json=start_body(OTHER)).json()["batch_id"]
    t0 = gw.clock.now()
    for node, seq0 in ((NODE, 10), (OTHER, 10)):
        gw.store.write([StoredReading(
            site_id=SITE, node_id=node, seq=seq0 + i, measured_at=t0 + timedelta(minutes=5 * i),
            fields={"air_temp_c": 67.0 if node == NODE and 36 <= i < 60 else 40.0,
                    "air_rh_pct": 50.0, "bean_moisture_pct_wb": 55.0 - i * 0.01})
            for i in range(1, 145)])
    gw.clock.advance(12 * 3600)
    flags = client.get(f"/api/batches/{hot}/metrics").json()["flags"]
    assert [f["code"] for f in flags] == ["overheated"]
    assert "65 °C" in flags[0]["reason"] and "2.0 h" in flags[0]["reason"]
    assert client.get(f"/api/batches/{fine}/metrics").json()["flags"] == []
    page = client.get("/api/batches", params={"flag": "overheated"}).json()
    assert page["total"] == 1 and [b["batch_id"] for b in page["items"]] == [hot]
    unknown = client.get("/api/batches", params={"flag": "burnt"})
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith(
        "flag 'burnt' is not a quality flag (one of dried_too_fast, overheated")
    rows = parse_csv(client.get("/api/batches.csv", params={"metrics": "true"}).text)
    by_id = {row["batch_id"]: row for row in rows}
    assert by_id[hot]["quality_flags"] == "overheated"
    assert by_id[hot]["time_above_limit_h"] == "2"
    assert by_id[hot]["max_air_temp_c"] == "67"
    assert by_id[fine]["quality_flags"] == "" and "max_air_temp_c" in by_id[fine]
    assert "quality_flags" not in parse_csv(client.get("/api/batches.csv").text)[0]


def test_the_end_is_suggested_once_the_beans_stayed_dry_long_enough(
        gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id, _sim = start_in_july(gw, client)
    path = f"/api/batches/{batch_id}/end-suggestion"
    gw.clock.advance(3 * 86400)
    wet = client.get(path).json()           # 3 days in: the beans are at ~8.8 %
    assert (wet["should_end"], wet["source"]) == (False, "readings")
    assert re.fullmatch(r"moisture 8\.\d % is above the target 7 %", wet["reason"])
    gw.clock.advance(86400)
    dry = client.get(path).json()           # below 7 % since the evening of 12 July
    since = datetime.fromisoformat(dry["since"])
    assert (dry["should_end"], dry["hold_h"]) == (True, 6.0)
    assert datetime(2026, 7, 12, 18, tzinfo=UTC) <= since <= datetime(2026, 7, 12, 21,
                                                                       tzinfo=UTC)
    assert dry["reason"].endswith("ready to unload")
    longer = client.get(path, params={"hold_h": 24}).json()
    assert longer["should_end"] is False
    assert re.fullmatch(r"at or below 7 % for 1\d\.\d h of the 24 h required",
                        longer["reason"])
    assert client.get(path, params={"hold_h": -1}).status_code == 422
    client.post(f"/api/batches/{batch_id}/end", json={})
    ended = client.get(path).json()
    assert ended["should_end"] is False and ended["reason"].startswith("batch ended at")


def test_metrics_of_a_batch_without_readings_are_empty_not_an_error(
        gw: GatewayContext) -> None:
    client = client_for(gw)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    gw.clock.advance(3600)
    body = client.get(f"/api/batches/{batch_id}/metrics").json()
    assert (body["readings"], body["max_air_temp_c"], body["flags"]) == (0, None, [])
    assert body["duration_h"] == 1.0 and body["initial_moisture_pct_wb"] == 56.0
    for path in ("metrics", "prediction", "end-suggestion"):
        assert client.get(f"/api/batches/lote-x/{path}").status_code == 404


def test_starting_a_batch_pushes_the_early_stage_thresholds_at_once(
        gw: GatewayContext) -> None:
    client = client_for(gw, ADMIN)
    saved = client.put("/api/thresholds/profiles", json={
        "site_id": SITE, "stage": "early", "values": {"air_temp_warn_c": 45.0}})
    assert saved.status_code == 200, saved.text
    with gw.metadata.session() as session:
        before = session.scalar(select(func.count()).select_from(NodeConfigPush))
    gw.clock.advance(60)
    batch_id = client.post("/api/batches", json=start_body()).json()["batch_id"]
    with gw.metadata.session() as session:
        push = session.scalars(select(NodeConfigPush).where(NodeConfigPush.node_id == NODE)
                               .order_by(NodeConfigPush.version.desc())).first()
        after = session.scalar(select(func.count()).select_from(NodeConfigPush))
    assert after == before + 1 and push is not None
    assert push.thresholds["air_temp_warn_c"] == 45.0
    assert f"early stage of batch {batch_id}" in push.reason
