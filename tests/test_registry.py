"""The node registry records nodes, their state and every event exactly once, on SQLite and
PostgreSQL, and is what a real ingest calls before acknowledging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from support import wait_for
from support.mosquitto import MosquittoBroker
from support.readings import reading

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    Channel,
    EventType,
    NodeEvent,
    NodeState,
    NodeStatus,
    encode,
    topic,
)
from gateway.config import parse_gateway_config
from gateway.ingest import Ingest
from gateway.metadata.database import MetadataDB, open_metadata
from gateway.metadata.models import Node, NodeEventRecord, Site
from gateway.registry import NodeRegistry
from gateway.stores.sqlite import SqliteStore

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
SITE, NODE = "demo", "secador-01"


def status(state: NodeState, node: str = NODE, **extra: object) -> NodeStatus:
    return NodeStatus(site_id=SITE, node_id=node, state=state, **({"sent_at": T0} | extra))


def event(seq: int, kind: EventType = EventType.ALARM_RAISED, node: str = NODE) -> NodeEvent:
    return NodeEvent(site_id=SITE, node_id=node, seq=seq, occurred_at=T0 + timedelta(minutes=seq),
                     type=kind, message=f"event {seq}", data={"alarm": "air_temp_alarm"})


@pytest.fixture
def database(metadata_url: str) -> MetadataDB:
    database = open_metadata(metadata_url)
    yield database
    database.close()


def test_a_node_heard_for_the_first_time_is_created_with_its_site(
        database: MetadataDB, clock: ManualClock) -> None:
    registry = NodeRegistry(database, clock, timezone="America/Bogota")
    registry.batch_received([reading(1, node=NODE, site=SITE)], [], [])
    with database.session() as session:
        node = session.get(Node, (SITE, NODE))
        site = session.get(Site, SITE)
        assert node is not None and site is not None
        assert node.first_seen_at == clock.now() and node.state == "unknown"
        assert site.timezone == "America/Bogota"


def test_status_sets_state_and_last_will_marks_offline(database: MetadataDB,
                                                       clock: ManualClock) -> None:
    registry = NodeRegistry(database, clock)
    registry.batch_received([], [status(NodeState.ONLINE, firmware_version="0.1.0")], [])
    clock.advance(300)
    registry.batch_received([], [status(NodeState.OFFLINE)], [])
    with database.session() as session:
        node = session.get(Node, (SITE, NODE))
        assert node is not None
        assert node.state == "offline" and node.state_since == clock.now()
        assert node.firmware_version == "0.1.0"
        assert node.status is not None and node.status["state"] == "offline"


def test_each_status_measures_how_far_the_nodes_clock_is_off(database: MetadataDB,
                                                             clock: ManualClock) -> None:
    """received − sent_at: +2 h for a node whose clock is two hours behind, −1 day for one a
    day ahead; the Last Will (no sent_at) keeps the last measurement."""
    registry = NodeRegistry(database, clock)

    def offset() -> tuple[float | None, datetime | None]:
        with database.session() as session:
            node = session.get(Node, (SITE, NODE))
            assert node is not None
            return node.clock_offset_s, node.clock_offset_at

    registry.batch_received([reading(1, node=NODE, site=SITE)], [], [])
    assert offset() == (None, None)  # readings alone say nothing about the clock
    behind = clock.now() - timedelta(hours=2, seconds=0.25)
    registry.batch_received([], [status(NodeState.ONLINE, sent_at=behind)], [])
    assert offset() == (7200.25, clock.now())
    measured_at = clock.now()
    clock.advance(60)
    registry.batch_received([], [NodeStatus(site_id=SITE, node_id=NODE,
                                            state=NodeState.OFFLINE)], [])
    assert offset() == (7200.25, measured_at)
    registry.batch_received([], [status(NodeState.ONLINE,
                                        sent_at=clock.now() + timedelta(days=1))], [])
    assert offset() == (-86400.0, clock.now())


def test_last_seen_follows_any_message(database: MetadataDB, clock: ManualClock) -> None:
    registry = NodeRegistry(database, clock)
    registry.batch_received([reading(1, node=NODE, site=SITE)], [], [])
    clock.advance(30)
    registry.batch_received([], [], [event(1)])
    with database.session() as session:
        node = session.get(Node, (SITE, NODE))
        assert node is not None and node.last_seen_at == clock.now()


def test_readings_refresh_last_seen_at_most_every_few_seconds(database: MetadataDB,
                                                               clock: ManualClock) -> None:
    """A batch of readings every fraction of a second does not rewrite every node's row each
    time: last_seen_at lags by less than LAST_SEEN_EVERY (the offline alert counts minutes);
    a status or an event always updates it."""
    from gateway.registry import LAST_SEEN_EVERY

    def last_seen() -> object:
        with database.session() as session:
            node = session.get(Node, (SITE, NODE))
            assert node is not None
            return node.last_seen_at

    registry = NodeRegistry(database, clock)
    first = clock.now()
    registry.batch_received([reading(1, node=NODE, site=SITE)], [], [])
    clock.advance(LAST_SEEN_EVERY.total_seconds() - 1)
    registry.batch_received([reading(2, node=NODE, site=SITE)], [], [])
    assert last_seen() == first
    clock.advance(1)
    registry.batch_received([reading(3, node=NODE, site=SITE)], [], [])
    assert last_seen() == clock.now()
    clock.advance(1)
    registry.batch_received([reading(4, node=NODE, site=SITE)], [], [event(1)])
    assert last_seen() == clock.now()


def test_events_are_recorded_once_however_often_they_arrive(database: MetadataDB,
                                                           clock: ManualClock) -> None:
    registry = NodeRegistry(database, clock)
    registry.batch_received([], [], [event(1), event(2)])
    registry.batch_received([], [], [event(2), event(1), event(3)])  # replay + one new
    with database.session() as session:
        seqs = session.scalars(select(NodeEventRecord.seq).order_by(NodeEventRecord.seq)).all()
        node = session.get(Node, (SITE, NODE))
        assert seqs == [1, 2, 3]
        assert node is not None and node.last_event_seq == 3


def test_many_nodes_in_one_batch(database: MetadataDB, clock: ManualClock) -> None:
    registry = NodeRegistry(database, clock)
    nodes = [f"secador-{n:02d}" for n in range(40)]
    registry.batch_received([reading(1, node=n, site=SITE) for n in nodes],
                            [status(NodeState.ONLINE, node=n) for n in nodes[:10]],
                            [event(1, node=n) for n in nodes[5:15]])
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Node)) == 40
        assert session.scalar(select(func.count()).select_from(NodeEventRecord)) == 10
        online = session.scalar(select(func.count()).select_from(Node)
                                .where(Node.state == "online"))
        assert online == 10


@pytest.mark.integration
def test_real_ingest_records_status_and_events_before_acknowledging(
        tmp_path: Path, mosquitto: MosquittoBroker, clock: ManualClock) -> None:
    settings = parse_gateway_config({
        "data_dir": str(tmp_path), "sites": [SITE],
        "mqtt": {"broker": f"mqtt://127.0.0.1:{mosquitto.port}", "client_id": "gw-registry"}})
    database = open_metadata(f"sqlite:///{tmp_path / 'metadata.sqlite3'}")
    store = SqliteStore(tmp_path / "readings.sqlite3")
    ingest = Ingest(settings, store, NodeRegistry(database, clock))
    ingest.start()
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node", protocol=mqtt.MQTTv5)
    node.connect("127.0.0.1", mosquitto.port)
    node.loop_start()
    try:
        wait_for(lambda: ingest.connected, timeout=10, what="ingest connected")
        node.publish(topic(SITE, NODE, Channel.STATUS),
                     encode(status(NodeState.ONLINE)), qos=1, retain=True).wait_for_publish(5)
        for seq in (1, 2, 2):  # the second 2 is a redelivery
            node.publish(topic(SITE, NODE, Channel.EVENT), encode(event(seq)),
                         qos=1).wait_for_publish(5)

        def recorded() -> bool:
            with database.session() as session:
                node_row = session.get(Node, (SITE, NODE))
                count = session.scalar(select(func.count()).select_from(NodeEventRecord))
                return node_row is not None and node_row.state == "online" and count == 2
        wait_for(recorded, timeout=10, what="status and events in the metadata database")
    finally:
        node.loop_stop()
        node.disconnect()
        ingest.stop()
        store.close()
        database.close()
