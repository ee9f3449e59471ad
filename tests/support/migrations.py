"""Rows written into an older metadata schema with plain SQL (the models describe only the
newest one), for the migration tests."""

from __future__ import annotations

from sqlalchemy import Connection

SITE_ROW = ("INSERT INTO sites (site_id, name, timezone, created_at) "
            "VALUES ('demo', 'Demo', 'America/Lima', '2026-03-01 12:00:00')")


def insert_site_and_node(connection: Connection, *, last_event_seq: int = 0,
                         firmware_version: str | None = None) -> None:
    """Site ``demo`` and its node ``secador-01``, online, as every schema since 0001 has
    them."""
    connection.exec_driver_sql(SITE_ROW)
    connection.exec_driver_sql(
        "INSERT INTO nodes (site_id, node_id, first_seen_at, last_seen_at, state, "
        "firmware_version, last_event_seq) VALUES ('demo', 'secador-01', "
        "'2026-03-01 12:00:00', '2026-03-01 12:00:00', 'online', ?, ?)"
        if connection.dialect.name == "sqlite" else
        "INSERT INTO nodes (site_id, node_id, first_seen_at, last_seen_at, state, "
        "firmware_version, last_event_seq) VALUES ('demo', 'secador-01', "
        "'2026-03-01 12:00:00', '2026-03-01 12:00:00', 'online', %s, %s)",
        (firmware_version, last_event_seq))
