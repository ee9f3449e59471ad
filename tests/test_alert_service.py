"""The alert job on real stores: alerts open once, close with hysteresis, are acknowledged,
announced retained on MQTT, survive restarts, and never duplicate across two gateways."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import wait_for
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker, Subscriber
from support.postgres import PostgresServer

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import NodeState, NodeStatus
from gateway.alert_service import AlertService
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.metadata.models import AlertRecord, AuditEntry, Batch, Node
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE = "demo", "secador-01"


class Dryer:
    """Writes one reading per call at the clock's time, as the ingest would. With
    ``clock_behind_s`` the node's own clock is that far behind the gateway's: it stamps its
    readings and its status (sent each minute, as a node does) with that time."""

    def __init__(self, context: GatewayContext, clock_behind_s: float | None = None) -> None:
        self.context = context
        self.seq = 0
        self.clock_behind_s = clock_behind_s
        self.registry = NodeRegistry(context.metadata, context.clock)
        self.status()

    def node_time(self) -> datetime:
        return self.context.clock.now() - timedelta(seconds=self.clock_behind_s or 0.0)

    def status(self) -> None:
        sent_at = self.node_time() if self.clock_behind_s is not None else None
        self.registry.batch_received([], [NodeStatus(site_id=SITE, node_id=NODE,
                                                     state=NodeState.ONLINE,
                                                     sent_at=sent_at)], [])

    def reading(self, air_temp_c: float, seq: int | None = None,
                bean_moisture_pct_wb: float | None = None) -> None:
        self.seq = seq if seq is not None else self.seq + 1
        fields = {"air_temp_c": air_temp_c, "air_rh_pct": 40.0}
        if bean_moisture_pct_wb is not None:
            fields["bean_moisture_pct_wb"] = bean_moisture_pct_wb
        reading = StoredReading(site_id=SITE, node_id=NODE, seq=self.seq,
                                measured_at=self.node_time(), fields=fields,
                                raining=False, mode="auto")
        self.context.store.write([reading])
        self.registry.batch_received([reading], [], [])

    def run(self, service: AlertService, minutes: int, air_temp_c: float) -> None:
        for _ in range(minutes):
            self.context.clock.advance(60)
            if self.clock_behind_s is not None:
                self.status()
            self.reading(air_temp_c)
            service.run_round()


def alerts(context: GatewayContext) -> list[AlertRecord]:
    with context.metadata.session() as session:
        return list(session.scalars(select(AlertRecord).order_by(AlertRecord.alert_id)))


def test_over_temperature_opens_once_and_closes_after_cooling(gateway: GatewayContext) -> None:
    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.run(service, 10, air_temp_c=63.0)
    dryer.run(service, 10, air_temp_c=63.5)
    opened = [a for a in alerts(gateway) if a.kind == "over_temperature"]
    assert len(opened) == 1 and opened[0].closed_at is None
    assert "63" in opened[0].message
    dryer.run(service, 30, air_temp_c=50.0)
    closed = [a for a in alerts(gateway) if a.kind == "over_temperature"]
    assert len(closed) == 1 and closed[0].closed_at is not None


def test_alert_is_announced_retained_on_its_topic(gateway: GatewayContext,
                                                  mosquitto: MosquittoBroker) -> None:
    service = AlertService(gateway)
    Dryer(gateway).run(service, 5, air_temp_c=64.0)
    subscriber = Subscriber(mosquitto, f"cacao/v1/{SITE}/+/alert/+", "late-dashboard",
                            persistent=False).start()
    try:
        wait_for(lambda: len(subscriber.messages()) >= 1, what="the retained alert")
        topic_name, payload, retained = subscriber.messages()[0]
    finally:
        subscriber.stop()
    notice = json.loads(payload)
    assert topic_name == f"cacao/v1/{SITE}/{NODE}/alert/over_temperature" and retained
    assert notice["state"] == "open" and notice["kind"] == "over_temperature"


def test_silent_node_raises_node_offline(gateway: GatewayContext) -> None:
    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.reading(40.0)
    for _ in range(20):
        gateway.clock.advance(60)
        service.run_round()
    assert [a.kind for a in alerts(gateway)] == ["node_offline"]


def test_missing_readings_raise_a_sequence_gap(gateway: GatewayContext) -> None:
    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.reading(40.0, seq=1)
    dryer.reading(40.0, seq=5)  # 2-4 never arrived
    dryer.run(service, 15, air_temp_c=40.0)
    gap = [a for a in alerts(gateway) if a.kind == "sequence_gap"]
    assert len(gap) == 1 and "2" in gap[0].message


def test_gaps_are_read_from_the_store_every_few_minutes_not_every_round(
        gateway: GatewayContext) -> None:
    """Reading a node's gaps scans its whole history (InfluxDB): once per GAPS_EVERY_S, not
    every 30 s. A gap that appears is seen within that time, and alerted
    gap_open_delay_s later."""
    from gateway.alert_service import GAPS_EVERY_S

    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.reading(40.0, seq=1)
    node = (SITE, NODE)
    with gateway.metadata.session() as session:
        assert service.snapshot(session, session.get(Node, node), gateway.clock.now()
                                ).missing_seq_ranges == ()
    dryer.reading(40.0, seq=5)  # 2-4 never arrived: not seen until the next look-up
    seen_after = None
    for round_number in range(1, 30):
        gateway.clock.advance(30)
        with gateway.metadata.session() as session:
            missing = service.snapshot(session, session.get(Node, node),
                                       gateway.clock.now()).missing_seq_ranges
        if missing:
            seen_after = round_number * 30
            assert missing == ((2, 4),)
            break
    assert seen_after is not None and 30 < seen_after <= GAPS_EVERY_S + 30


def test_waiting_delays_survive_a_gateway_restart(gateway: GatewayContext) -> None:
    dryer = Dryer(gateway)
    dryer.run(AlertService(gateway), 1, air_temp_c=63.0)  # over the alarm: delay starts
    pending = Path(gateway.settings.data_dir) / "alerts-pending.json"
    assert "over_temperature" in pending.read_text()
    restarted = AlertService(gateway)
    dryer.run(restarted, 1, air_temp_c=63.0)  # the 60 s delay has passed across the restart
    assert [a.kind for a in alerts(gateway)] == ["over_temperature"]


def test_node_two_hours_behind_gets_over_temperature_and_clock_wrong(
        gateway: GatewayContext) -> None:
    """Its readings say they were taken two hours ago; the gateway judges them on its own
    clock, so the over-temperature alert opens as for any node, and clock_wrong tells the
    technician. Once the node's clock is set, clock_wrong closes; the heat alert stays."""
    service = AlertService(gateway)
    dryer = Dryer(gateway, clock_behind_s=7200)
    dryer.run(service, 1, air_temp_c=63.0)
    assert alerts(gateway) == []  # one measurement: wait for the next status
    dryer.run(service, 5, air_temp_c=63.0)

    def by_kind() -> dict[str, AlertRecord]:
        return {alert.kind: alert for alert in alerts(gateway)}

    hot, clock = by_kind()["over_temperature"], by_kind()["clock_wrong"]
    assert len(alerts(gateway)) == 2 and hot.closed_at is None
    assert (clock.severity, clock.value) == ("warning", 120.0)
    assert clock.message.startswith("node clock is 2.0 h behind the gateway: readings carry "
                                    "wrong times")
    dryer.clock_behind_s = 0.0  # the technician set up NTP
    dryer.run(service, 4, air_temp_c=63.0)
    assert by_kind()["clock_wrong"].closed_at is None  # 5 min with the right time first
    dryer.run(service, 2, air_temp_c=63.0)
    hot, clock = by_kind()["over_temperature"], by_kind()["clock_wrong"]
    assert hot.closed_at is None and clock.closed_at is not None
    assert clock.message == "node clock right again (0 s off the gateway)"


def test_stalled_drying_is_seen_on_a_node_two_hours_behind(gateway: GatewayContext) -> None:
    """A day and more of readings, moisture stuck at 14 %, stamped two hours late: the hourly
    history is read and placed on the gateway's clock, so the stall is recognised."""
    started = gateway.clock.now()
    dryer = Dryer(gateway, clock_behind_s=7200)
    with gateway.metadata.session() as session:
        session.add(Batch(batch_id="lote-1", site_id=SITE, node_id=NODE, lot_code="L-1",
                          started_at=started, started_by="luis"))
    for _ in range(27 * 6):  # 27 h, a reading every 10 min
        gateway.clock.advance(600)
        dryer.reading(40.0, bean_moisture_pct_wb=14.0)
    assert (gateway.clock.now() - started).total_seconds() == 27 * 3600
    service = AlertService(gateway)
    dryer.run(service, 61, air_temp_c=40.0)
    stalled = [a for a in alerts(gateway) if a.kind == "drying_stalled"]
    assert len(stalled) == 1 and "fell only 0.0 points in 24 h" in stalled[0].message


def client(context: GatewayContext, role: Role = Role.OPERATOR) -> TestClient:
    return TestClient(create_app(context, local_actor=Actor("olga", role)))


def test_operator_acknowledges_an_alert_once(gateway: GatewayContext) -> None:
    gateway.alerts = AlertService(gateway)
    Dryer(gateway).run(gateway.alerts, 5, air_temp_c=64.0)
    (alert,) = client(gateway).get("/api/alerts").json()
    response = client(gateway).post(f"/api/alerts/{alert['alert_id']}/ack",
                                    json={"note": "abrí las ventanas"})
    assert response.status_code == 200
    assert response.json()["acknowledged_by"] == "olga"
    again = client(gateway).post(f"/api/alerts/{alert['alert_id']}/ack", json={})
    assert again.status_code == 409 and "already acknowledged by olga" in again.json()["detail"]
    with gateway.metadata.session() as session:
        entry = session.scalars(select(AuditEntry)).one()
        assert (entry.actor, entry.action, entry.detail) == ("olga", "alert.acknowledge",
                                                             "abrí las ventanas")


def test_acknowledging_unknown_or_closed_alerts_is_refused(gateway: GatewayContext) -> None:
    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.run(service, 5, air_temp_c=64.0)
    dryer.run(service, 30, air_temp_c=40.0)
    (closed,) = client(gateway).get("/api/alerts", params={"state": "closed"}).json()
    assert client(gateway).post(f"/api/alerts/{closed['alert_id']}/ack",
                                json={}).status_code == 409
    missing = client(gateway).post("/api/alerts/999/ack", json={})
    assert missing.status_code == 404 and missing.json()["detail"] == "alert 999 does not exist"


def test_alert_list_filters(gateway: GatewayContext) -> None:
    service = AlertService(gateway)
    dryer = Dryer(gateway)
    dryer.run(service, 5, air_temp_c=64.0)
    api = client(gateway)
    assert len(api.get("/api/alerts", params={"kind": "over_temperature"}).json()) == 1
    assert api.get("/api/alerts", params={"kind": "node_offline"}).json() == []
    assert api.get("/api/alerts", params={"node_id": "secador-02"}).json() == []
    assert api.get("/api/alerts", params={"kind": "fire"}).status_code == 422


def test_two_gateways_on_one_postgresql_open_one_alert(
        tmp_path: Path, mosquitto: MosquittoBroker, postgres_server: PostgresServer,
        clock: ManualClock) -> None:
    url = postgres_server.create_database()
    with gateway_context(tmp_path / "a", mosquitto, url, clock) as first, \
            gateway_context(tmp_path / "b", mosquitto, url, clock) as second:
        second.store = first.store  # one shared readings store, as with InfluxDB
        dryer = Dryer(first)
        services = [AlertService(first), AlertService(second)]
        for _ in range(5):
            clock.advance(60)
            dryer.reading(64.0)
            for service in services:
                service.run_round()
        assert len([a for a in alerts(first) if a.kind == "over_temperature"]) == 1


@pytest.mark.parametrize("state", ["open", "closed", "all"])
def test_alert_list_accepts_each_state(gateway: GatewayContext, state: str) -> None:
    assert client(gateway).get("/api/alerts", params={"state": state}).status_code == 200
