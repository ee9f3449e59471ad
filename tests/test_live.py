"""The live hub (bounded queues, drop-oldest + resync, replay by Last-Event-ID, a publisher
that never waits) and GET /api/live as Server-Sent Events over real HTTP: a reading ingested
through a real Mosquitto reaches an open stream, and so does an alert the alert job opens."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.auth import PASSWORD, QUICK_HASHING, add_user
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.contract import (
    Channel,
    EventType,
    Mode,
    NodeEvent,
    NodeState,
    NodeStatus,
    Telemetry,
    encode,
    topic,
)
from gateway.api.app import LOCAL_ADMIN, create_app
from gateway.api.deps import Role
from gateway.config import parse_gateway_config
from gateway.context import GatewayContext
from gateway.http_server import ApiServer
from gateway.live import FanOutListener, LiveHub, ResyncReason, parse_event_id
from gateway.registry import NodeRegistry
from gateway.runtime import GatewayRuntime
from gateway.timeseries import StoredReading

SITE, NODE = "demo", "secador-01"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def reading(seq: int, node: str = NODE, air_temp_c: float = 40.0) -> StoredReading:
    return StoredReading(site_id=SITE, node_id=node, seq=seq, measured_at=T0,
                         fields={"air_temp_c": air_temp_c, "bean_moisture_pct_wb": 30.0,
                                 "fan_speed_pct": 50.0, "vent_open_pct": 100.0,
                                 "config_version": 0.0})


# --- the hub --------------------------------------------------------------------------------

def test_a_new_subscriber_first_gets_a_resync_then_what_is_published() -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    assert subscription is not None
    hub.publish("reading", SITE, NODE, {"seq": 1})
    reason, messages = subscription.take()
    assert reason == ResyncReason.NEW
    assert [(m.kind, json.loads(m.json_data)["seq"]) for m in messages] == [("reading", 1)]
    assert subscription.take() == (None, [])


def test_a_full_queue_drops_the_oldest_and_asks_for_a_resync() -> None:
    hub = LiveHub(queue_size=3)
    subscription = hub.subscribe()
    assert subscription is not None
    subscription.take()  # the "new" resync
    for seq in range(1, 6):
        hub.publish("reading", SITE, NODE, {"seq": seq})
    reason, messages = subscription.take()
    assert reason == ResyncReason.OVERFLOW
    assert [json.loads(m.json_data)["seq"] for m in messages] == [3, 4, 5]
    assert subscription.dropped == 2 and hub.dropped == 2


def test_a_stalled_subscriber_never_blocks_the_publisher() -> None:
    """A subscriber that never reads (a phone gone silent) costs the publisher nothing: every
    publish returns, the queue stays at its bound, and a fast subscriber gets everything."""
    hub = LiveHub(queue_size=10)
    stalled = hub.subscribe()
    fast = hub.subscribe()
    assert stalled is not None and fast is not None
    received: list[int] = []
    for seq in range(1, 5001):
        hub.publish("reading", SITE, NODE, {"seq": seq})
        if seq % 5 == 0:
            received += [m.seq for m in fast.take()[1]]
    assert received == list(range(1, 5001))
    reason, messages = stalled.take()
    assert reason == ResyncReason.OVERFLOW
    assert [m.seq for m in messages] == list(range(4991, 5001))


def test_a_wake_up_that_fails_does_not_reach_the_publisher() -> None:
    hub = LiveHub()

    def broken_wake() -> None:
        raise RuntimeError("event loop is closed")

    subscription = hub.subscribe(wake=broken_wake)
    assert subscription is not None
    hub.publish("reading", SITE, NODE, {"seq": 1})
    assert len(subscription.take()[1]) == 1


def test_publishing_wakes_the_subscriber_from_another_thread() -> None:
    hub = LiveHub()
    woken = threading.Event()
    subscription = hub.subscribe(wake=woken.set)
    assert subscription is not None
    threading.Thread(target=hub.publish, args=("status", SITE, NODE, {"state": "online"})).start()
    assert woken.wait(5)
    assert subscription.take()[1][0].kind == "status"


def test_subscribers_may_follow_one_node() -> None:
    hub = LiveHub()
    one = hub.subscribe(site_id=SITE, node_id="secador-02")
    assert one is not None
    hub.publish("reading", SITE, NODE, {"seq": 1})
    hub.publish("reading", SITE, "secador-02", {"seq": 7})
    assert [m.node_id for m in one.take()[1]] == ["secador-02"]


def test_a_reconnecting_client_gets_what_it_missed_from_the_replay_buffer() -> None:
    hub = LiveHub(replay_size=100)
    first = hub.publish("reading", SITE, NODE, {"seq": 1})
    hub.publish("reading", SITE, NODE, {"seq": 2})
    hub.publish("event", SITE, NODE, {"seq": 1})
    again = hub.subscribe(last_event_id=first.event_id(hub.epoch))
    assert again is not None
    reason, messages = again.take()
    assert reason is None
    assert [m.kind for m in messages] == ["reading", "event"]


def test_a_client_up_to_date_gets_no_resync() -> None:
    hub = LiveHub()
    hub.publish("reading", SITE, NODE, {"seq": 1})
    again = hub.subscribe(last_event_id=hub.last_event_id)
    assert again is not None and again.take() == (None, [])


def test_a_client_behind_the_replay_buffer_must_resync() -> None:
    hub = LiveHub(replay_size=2)
    first = hub.publish("reading", SITE, NODE, {"seq": 1})
    for seq in range(2, 6):
        hub.publish("reading", SITE, NODE, {"seq": seq})
    late = hub.subscribe(last_event_id=first.event_id(hub.epoch))
    assert late is not None and late.take()[0] == ResyncReason.GAP


def test_an_id_from_before_a_gateway_restart_means_resync() -> None:
    before = LiveHub()
    message = before.publish("reading", SITE, NODE, {"seq": 1})
    after = LiveHub()  # a restarted gateway: a new epoch
    subscription = after.subscribe(last_event_id=message.event_id(before.epoch))
    assert subscription is not None and subscription.take()[0] == ResyncReason.RESTART
    junk = after.subscribe(last_event_id="not-an-id")
    assert junk is not None and junk.take()[0] == ResyncReason.NEW


def test_event_ids_parse() -> None:
    assert parse_event_id("ab12-7") == ("ab12", 7)
    assert parse_event_id("ab12-x") is None
    assert parse_event_id(None) is None


def test_too_many_subscribers_are_refused_and_closing_frees_a_place() -> None:
    hub = LiveHub(max_subscribers=1)
    first = hub.subscribe()
    assert first is not None
    assert hub.subscribe() is None
    first.close()
    assert hub.subscribe() is not None


def test_closing_the_hub_marks_and_wakes_every_subscriber() -> None:
    hub = LiveHub()
    woken = threading.Event()
    subscription = hub.subscribe(wake=woken.set)
    assert subscription is not None
    hub.close()
    assert subscription.closed and woken.is_set()
    assert hub.subscribe() is None and hub.subscriber_count == 0


def test_an_ingest_batch_becomes_newest_reading_per_node_statuses_and_events() -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    assert subscription is not None
    status = NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE, queue_depth=0)
    event = NodeEvent(site_id=SITE, node_id=NODE, seq=3, occurred_at=T0,
                      type=EventType.BATCH_STARTED, message="batch started",
                      data={"batch_id": "b1"})
    hub.batch_received([reading(2), reading(5, air_temp_c=47.5), reading(4),
                        reading(1, node="secador-02")], [status], [event])
    _reason, messages = subscription.take()
    data = [(m.kind, m.node_id, json.loads(m.json_data)) for m in messages]
    assert [(kind, node) for kind, node, _ in data] == [
        ("reading", NODE), ("reading", "secador-02"), ("status", NODE), ("event", NODE)]
    newest = data[0][2]
    assert newest["seq"] == 5 and newest["readings"] == {"air_temp_c": 47.5,
                                                         "bean_moisture_pct_wb": 30.0}
    assert newest["fan_speed_pct"] == 50.0 and newest["measured_at"] == "2026-03-01T12:00:00Z"
    assert data[2][2]["state"] == "online" and data[2][2]["queue_depth"] == 0
    assert data[3][2]["type"] == "batch_started" and data[3][2]["data"] == {"batch_id": "b1"}


class BrokenListener:
    """A best-effort listener that always fails (stands in for any fault in live updates)."""

    def batch_received(self, readings: Sequence[StoredReading], statuses: Sequence[NodeStatus],
                       events: Sequence[NodeEvent]) -> None:
        raise RuntimeError("cannot push")


def test_fan_out_records_durably_even_when_the_live_side_fails(gateway: GatewayContext) -> None:
    registry = NodeRegistry(gateway.metadata, gateway.clock)
    fan_out = FanOutListener(registry, BrokenListener())
    status = NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)
    fan_out.batch_received([reading(1)], [status], [])  # does not raise
    assert fan_out.failures == 1
    from gateway.metadata.models import Node

    with gateway.metadata.session() as session:
        node = session.get(Node, (SITE, NODE))
        assert node is not None and node.state == "online"


def test_fan_out_does_not_push_what_the_registry_failed_to_record(
        gateway: GatewayContext) -> None:
    hub = LiveHub()
    subscription = hub.subscribe()
    assert subscription is not None
    subscription.take()
    fan_out = FanOutListener(BrokenListener(), hub)
    with pytest.raises(RuntimeError):
        fan_out.batch_received([reading(1)], [], [])  # the ingest retries the whole batch
    assert subscription.take() == (None, [])


# --- over HTTP ------------------------------------------------------------------------------

class SseReader:
    """Reads a text/event-stream over real HTTP in a thread, parsed into events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, str]] = []
        self.status_code: int | None = None
        self.response_headers: httpx.Headers | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=60))
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}),
                                        daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status_code = response.status_code
                self.response_headers = response.headers
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:
                        if fields:
                            self.events.append(fields)
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
        except (httpx.HTTPError, RuntimeError):
            return  # closed by the test

    def named(self, kind: str) -> list[dict[str, str]]:
        return [e for e in self.events if e.get("event") == kind]

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def api_server(gateway: GatewayContext) -> Iterator[tuple[ApiServer, LiveHub]]:
    hub = LiveHub(heartbeat_s=0.2, replay_size=50)
    gateway.live = hub
    server = ApiServer(create_app(gateway, local_actor=LOCAL_ADMIN), "127.0.0.1", free_port())
    server.start()
    yield server, hub
    hub.close()
    server.stop()


def test_the_stream_starts_with_retry_and_resync_then_sends_heartbeats(
        api_server: tuple[ApiServer, LiveHub]) -> None:
    server, _hub = api_server
    stream = SseReader(f"http://127.0.0.1:{server.port}/api/live")
    try:
        wait_for(lambda: len(stream.named("heartbeat")) >= 2, 10, "two heartbeats")
        assert stream.status_code == 200 and stream.response_headers is not None
        assert stream.response_headers["content-type"].startswith("text/event-stream")
        assert stream.events[0] == {"retry": "3000"}
        assert json.loads(stream.events[1]["data"]) == {"reason": "new"}
        assert stream.events[1]["event"] == "resync" and "id" not in stream.events[1]
        assert json.loads(stream.named("heartbeat")[0]["data"])["at"] == "2026-03-01T12:00:00Z"
    finally:
        stream.close()


def test_a_reconnect_with_last_event_id_replays_missed_messages_over_http(
        api_server: tuple[ApiServer, LiveHub]) -> None:
    server, hub = api_server
    first = hub.publish("reading", SITE, NODE, {"seq": 1})
    hub.publish("reading", SITE, NODE, {"seq": 2})
    stream = SseReader(f"http://127.0.0.1:{server.port}/api/live",
                       {"Last-Event-ID": first.event_id(hub.epoch)})
    try:
        wait_for(lambda: bool(stream.named("reading")), 10, "the missed reading")
        assert not stream.named("resync")
        missed = stream.named("reading")[0]
        assert json.loads(missed["data"])["seq"] == 2
        assert missed["id"] == f"{hub.epoch}-2"
    finally:
        stream.close()


def test_a_client_that_goes_away_frees_its_place(
        api_server: tuple[ApiServer, LiveHub]) -> None:
    server, hub = api_server
    stream = SseReader(f"http://127.0.0.1:{server.port}/api/live")
    wait_for(lambda: bool(stream.named("resync")), 10, "the stream open")
    assert hub.subscriber_count == 1
    stream.close()  # the next heartbeat cannot be written: the server lets go
    wait_for(lambda: hub.subscriber_count == 0, 10, "the subscription closed")


def test_the_stream_needs_a_login(gateway: GatewayContext) -> None:
    from fastapi.testclient import TestClient

    gateway.live = LiveHub()
    with TestClient(create_app(gateway, local_actor=None)) as client:
        assert client.get("/api/live").status_code == 401


def test_without_a_hub_the_stream_is_unavailable(gateway: GatewayContext) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(gateway, local_actor=LOCAL_ADMIN)) as client:
        answer = client.get("/api/live")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert answer.json()["detail"] == "live updates are not running in this process"


@pytest.mark.integration
def test_a_reading_published_to_mosquitto_reaches_an_open_stream(
        tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    port = free_port()
    settings = parse_gateway_config({
        "data_dir": str(tmp_path), "sites": [SITE],
        "mqtt": {"broker": f"mqtt://127.0.0.1:{mosquitto.port}", "client_id": "gw-live"},
        "metadata": {"url": f"sqlite:///{tmp_path / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "readings.sqlite3")},
        "api": {"port": port, **QUICK_HASHING}})
    runtime = GatewayRuntime(settings)
    context = runtime.start()
    add_user(context, "olga", Role.OPERATOR)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    assert api.post("/api/auth/login", json={"username": "olga", "password": PASSWORD}
                    ).status_code == 200
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    stream = SseReader(f"http://127.0.0.1:{port}/api/live?site_id={SITE}",
                       {"Cookie": f"cacao_session={api.cookies['cacao_session']}"})
    try:
        wait_for(lambda: runtime.ingest is not None and runtime.ingest.connected, 10,
                 "ingest connected")
        wait_for(lambda: bool(stream.named("resync")), 10, "the stream open")
        node.publish(topic(SITE, NODE, Channel.TELEMETRY), encode(Telemetry(
            site_id=SITE, node_id=NODE, seq=1, measured_at=datetime.now(UTC),
            readings={"air_temp_c": 47.5}, fan_speed_pct=0, vent_open_pct=100,
            mode=Mode.AUTO, config_version=0)), qos=1).wait_for_publish(5)
        wait_for(lambda: bool(stream.named("reading")), 10, "the reading on the stream")
        pushed = stream.named("reading")[0]
        data = json.loads(pushed["data"])
        assert (data["site_id"], data["node_id"], data["seq"]) == (SITE, NODE, 1)
        assert data["readings"] == {"air_temp_c": 47.5}
        assert pushed["id"] == f"{runtime.live.epoch}-1"
        # the pushed reading is stored too: a resyncing client finds it in /api/nodes
        nodes = api.get("/api/nodes").json()
        assert nodes[0]["latest"]["seq"] == 1
    finally:
        api.close()
        node.loop_stop()
        node.disconnect()
        runtime.stop()  # ends the open stream (the hub closes first)
        stream.close()


def test_alerts_the_alert_job_opens_and_people_acknowledge_arrive_as_alert_events(
        api_server: tuple[ApiServer, LiveHub], gateway: GatewayContext) -> None:
    """The alert job's notices go to open dashboards too: the alert as GET /api/alerts
    lists it, once when it opens and again when someone acknowledges it."""
    from gateway.alert_service import AlertService
    from gateway.registry import ensure_nodes

    server, hub = api_server
    with gateway.metadata.session() as session:
        ensure_nodes(session, {(SITE, NODE)}, gateway.clock.now())
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(
        [], [NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)], [])
    stream = SseReader(f"http://127.0.0.1:{server.port}/api/live?site_id={SITE}"
                       f"&node_id={NODE}")
    try:
        wait_for(lambda: bool(stream.named("resync")), 10, "the stream open")
        gateway.clock.advance(11 * 60)  # the dryer says nothing for 11 minutes
        service = AlertService(gateway)
        assert service.run_round().opened == 1
        wait_for(lambda: bool(stream.named("alert")), 10, "the alert on the stream")
        opened = stream.named("alert")[0]
        alert = json.loads(opened["data"])
        assert opened["id"].startswith(f"{hub.epoch}-")
        assert (alert["site_id"], alert["node_id"], alert["kind"], alert["state"]) == (
            SITE, NODE, "node_offline", "open")
        assert alert["severity"] == "warning" and alert["acknowledged_by"] is None
        assert "schema_version" not in alert
        listed = httpx.get(f"http://127.0.0.1:{server.port}/api/alerts").json()
        assert set(alert) == set(listed[0])  # the same shape the page fetches

        service.acknowledge(alert["alert_id"], "olga", "voy")
        wait_for(lambda: len(stream.named("alert")) == 2, 10, "the acknowledgement")
        acknowledged = json.loads(stream.named("alert")[1]["data"])
        assert acknowledged["alert_id"] == alert["alert_id"]
        assert acknowledged["acknowledged_by"] == "olga" and acknowledged["state"] == "open"
    finally:
        stream.close()
