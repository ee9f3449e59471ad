"""The metadata database opens, migrates and round-trips on SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, inspect, select, update
from sqlalchemy.exc import IntegrityError
from support.migrations import insert_site_and_node

from cacao_dryer.errors import ConfigError
from gateway.metadata.database import open_metadata
from gateway.metadata.models import AlertRecord, Base, Batch, Node, NodeEventRecord, Site
from gateway.timeseries import StoreUnavailable

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def _site_and_node(session) -> None:
    session.add(Site(site_id="demo", name="Demo", created_at=T0))
    session.flush()
    session.add(Node(site_id="demo", node_id="secador-01", first_seen_at=T0, last_seen_at=T0))
    session.flush()  # no ORM relationships: the parent rows go first


def test_open_migrates_an_empty_database_to_the_newest_schema(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    try:
        from alembic.script import ScriptDirectory

        from gateway.metadata.database import MIGRATIONS

        assert database.revision() == ScriptDirectory(str(MIGRATIONS)).get_current_head()
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection),
                                           Base.metadata)
        assert differences == [], "models and migrations disagree; add a migration"
    finally:
        database.close()


def test_opening_twice_keeps_the_data(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    with database.session() as session:
        _site_and_node(session)
    database.close()
    database = open_metadata(metadata_url)
    with database.session() as session:
        assert session.scalars(select(Node.node_id)).all() == ["secador-01"]
    database.close()


def test_times_come_back_aware_utc_whatever_zone_went_in(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    lima = timezone(timedelta(hours=-5))
    with database.session() as session:
        _site_and_node(session)
        session.add(Batch(batch_id="lote-1", site_id="demo", node_id="secador-01",
                          lot_code="L-1", started_at=T0.astimezone(lima), started_by="ana"))
    with database.session() as session:
        batch = session.get(Batch, "lote-1")
        assert batch is not None
        assert batch.started_at == T0 and batch.started_at.tzinfo is not None
        assert batch.started_at.utcoffset() == timedelta(0)
    database.close()


def test_naive_times_are_refused(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    with pytest.raises(Exception, match="naive datetime"), database.session() as session:
        session.add(Site(site_id="demo", name="Demo", created_at=datetime(2026, 1, 1)))
    database.close()


def test_a_dryer_has_at_most_one_running_batch(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    with database.session() as session:
        _site_and_node(session)
        session.add(Batch(batch_id="lote-1", site_id="demo", node_id="secador-01",
                          lot_code="L-1", started_at=T0, started_by="ana"))
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Batch(batch_id="lote-2", site_id="demo", node_id="secador-01",
                          lot_code="L-2", started_at=T0, started_by="ana"))
    with database.session() as session:  # once the first ended, a new one may start
        first = session.get(Batch, "lote-1")
        assert first is not None
        first.ended_at = T0 + timedelta(days=5)
        session.flush()
        session.add(Batch(batch_id="lote-2", site_id="demo", node_id="secador-01",
                          lot_code="L-2", started_at=T0 + timedelta(days=5), started_by="ana"))
    database.close()


def test_at_most_one_open_alert_per_node_and_kind(metadata_url: str) -> None:
    database = open_metadata(metadata_url)

    def alert(closed_at: datetime | None = None) -> AlertRecord:
        return AlertRecord(site_id="demo", node_id="secador-01", kind="over_temperature",
                           severity="critical", message="air 66 °C", opened_at=T0,
                           updated_at=T0, closed_at=closed_at)

    with database.session() as session:
        session.add(alert(closed_at=T0))
        session.add(alert())
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(alert())
    database.close()


def test_migration_0005_adds_the_clock_offset_to_a_0004_database(metadata_url: str) -> None:
    """An installed gateway upgrades: its nodes keep their data and have no offset until
    their next status; a rollback to 0004 drops the two columns and keeps the nodes."""
    from alembic import command as alembic

    from gateway.metadata.database import _alembic_config, create_metadata_engine

    engine = create_metadata_engine(metadata_url)
    alembic.upgrade(_alembic_config(engine), "0004")
    with engine.begin() as connection:
        insert_site_and_node(connection, last_event_seq=7, firmware_version="0.1.0")
        connection.exec_driver_sql(  # a row that refers to the node (foreign key)
            "INSERT INTO batches (batch_id, site_id, node_id, lot_code, producer, crop, "
            "started_at, notes, started_by) VALUES ('lote-1', 'demo', 'secador-01', 'L-1', "
            "'', 'cacao', '2026-03-01 12:00:00', '', 'luis')")
    engine.dispose()
    database = open_metadata(metadata_url)
    try:
        assert database.revision() >= "0005"
        with database.session() as session:
            node = session.get(Node, ("demo", "secador-01"))
            assert node is not None and (node.firmware_version, node.last_event_seq) == \
                ("0.1.0", 7)
            assert (node.clock_offset_s, node.clock_offset_at) == (None, None)
            node.clock_offset_s, node.clock_offset_at = -7200.5, T0
        with database.session() as session:
            node = session.get(Node, ("demo", "secador-01"))
            assert node is not None and (node.clock_offset_s, node.clock_offset_at) == \
                (-7200.5, T0)
    finally:
        database.close()
    engine = create_metadata_engine(metadata_url)
    alembic.downgrade(_alembic_config(engine), "0004")
    with engine.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT firmware_version FROM nodes").scalar() == "0.1.0"
        assert connection.exec_driver_sql("SELECT count(*) FROM batches").scalar() == 1
        columns = {column["name"] for column in inspect(connection).get_columns("nodes")}
        assert "clock_offset_s" not in columns and "clock_offset_at" not in columns
    engine.dispose()


def test_migration_0006_lets_event_numbers_pass_32_bits(metadata_url: str) -> None:
    """An installed gateway upgrades: its events stay, and a node's events numbered above
    2**31 (an outbox recreated after 2038) up to the contract's MAX_SEQ are kept; back to
    0005 while the numbers still fit."""
    from alembic import command as alembic

    from cacao_dryer.contract import MAX_SEQ
    from gateway.metadata.database import _alembic_config, create_metadata_engine

    engine = create_metadata_engine(metadata_url)
    alembic.upgrade(_alembic_config(engine), "0005")
    with engine.begin() as connection:
        insert_site_and_node(connection, last_event_seq=7)
        connection.exec_driver_sql(
            "INSERT INTO node_events (site_id, node_id, seq, occurred_at, type, message, data, "
            "received_at) VALUES ('demo', 'secador-01', 7, '2026-03-01 12:00:00', 'boot', "
            "'arranque', '{}', '2026-03-01 12:00:00')")
    engine.dispose()
    database = open_metadata(metadata_url)
    try:
        assert database.revision() == "0006"
        with database.session() as session:
            session.add(NodeEventRecord(site_id="demo", node_id="secador-01", seq=MAX_SEQ,
                                        occurred_at=T0, type="boot", message="arranque",
                                        data={}, received_at=T0))
            node = session.get(Node, ("demo", "secador-01"))
            assert node is not None and node.last_event_seq == 7
            node.last_event_seq = MAX_SEQ
        with database.session() as session:
            assert sorted(session.scalars(select(NodeEventRecord.seq))) == [7, MAX_SEQ]
            assert session.scalar(select(Node.last_event_seq)) == MAX_SEQ
            session.execute(delete(NodeEventRecord).where(NodeEventRecord.seq == MAX_SEQ))
            session.execute(update(Node).values(last_event_seq=7))
    finally:
        database.close()
    engine = create_metadata_engine(metadata_url)
    alembic.downgrade(_alembic_config(engine), "0005")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT seq FROM node_events").scalar() == 7
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused(metadata_url: str) -> None:
    database = open_metadata(metadata_url)
    with database.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    database.close()
    with pytest.raises(ConfigError, match="newer than this gateway knows"):
        open_metadata(metadata_url)


def test_unsupported_database_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="only sqlite and postgresql"):
        open_metadata("mssql://sa@127.0.0.1/test")


def test_unreachable_postgresql_is_store_unavailable_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as raised:
        open_metadata("postgresql+psycopg://gw:s3cret@127.0.0.1:1/cacao?connect_timeout=2")
    assert "s3cret" not in str(raised.value)
    assert "\n" not in str(raised.value)
