"""The node registry: what the gateway knows of each dryer node, kept in the metadata DB.

It is the ingest's listener (``gateway.ingest.IngestListener``): for every durable batch of
messages it records, in one transaction and before the messages are acknowledged,

- sites and nodes the first time they are heard of,
- when each node was last heard from (from readings at most every ``LAST_SEEN_EVERY``: the
  offline alert counts minutes, and rewriting 100 rows per batch of readings was the
  gateway's largest CPU cost after decoding), and its state (online/offline, from the
  retained status and the Last Will), health and firmware, and how far its clock is off
  (each status's ``sent_at`` against the gateway's receive time: ``clock_offset_s``),
- every event exactly once (by site, node and the event's own ``seq``; a replay or a
  redelivery inserts nothing), and hands new config acks, batch events and command results
  to the thresholds, batches and calibration services.

A failure raises, so the ingest retries the whole batch: nothing is acknowledged that is not
recorded. Several gateways may record into one PostgreSQL at the same time; inserts are
``ON CONFLICT DO NOTHING`` so they never trip over each other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cacao_dryer.clock import Clock
from cacao_dryer.contract import EventType, NodeEvent, NodeState, NodeStatus
from gateway.metadata.database import MetadataDB
from gateway.metadata.models import Node, NodeEventRecord, Site
from gateway.timeseries import StoredReading

log = logging.getLogger("cacao_dryer.gateway")

CONFIG_EVENTS = {EventType.CONFIG_APPLIED, EventType.CONFIG_REJECTED}
BATCH_EVENTS = {EventType.BATCH_STARTED, EventType.BATCH_ENDED}
LAST_SEEN_EVERY = timedelta(seconds=5)


def _insert(session: Session, model: type[Any]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the session's database."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model)


class NodeRegistry:
    def __init__(self, metadata: MetadataDB, clock: Clock,
                 timezone: str = "America/Lima") -> None:
        self.metadata = metadata
        self.clock = clock
        self.timezone = timezone  # given to sites created on first contact
        # What this gateway has recorded (kept only once a transaction committed): nodes it
        # knows exist (nodes are never deleted), and when it last wrote each last_seen_at.
        self._known: set[tuple[str, str]] = set()
        self._seen_written: dict[tuple[str, str], datetime] = {}

    # --- IngestListener -----------------------------------------------------------------------

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None:
        now = self.clock.now()
        spoke = {(m.site_id, m.node_id) for m in (*statuses, *events)}
        heard = spoke | {(r.site_id, r.node_id) for r in readings}
        if not heard:
            return
        due = spoke | {key for key in heard - spoke if self._last_seen_due(key, now)}
        with self.metadata.session() as session:
            if heard - self._known:
                ensure_nodes(session, heard - self._known, now, self.timezone)
            for site_id, node_ids in _by_site(due):
                session.execute(update(Node).where(Node.site_id == site_id,
                                                   Node.node_id.in_(node_ids))
                                .values(last_seen_at=now))
            for status in statuses:
                self._status(session, status, now)
            for event in events:
                self._event(session, event, now)
        self._known |= heard  # committed
        self._seen_written.update(dict.fromkeys(due, now))

    def _last_seen_due(self, key: tuple[str, str], now: datetime) -> bool:
        written = self._seen_written.get(key)
        return written is None or not written <= now < written + LAST_SEEN_EVERY

    # --- parts --------------------------------------------------------------------------------

    def _status(self, session: Session, status: NodeStatus, now: datetime) -> None:
        node = session.get(Node, (status.site_id, status.node_id))
        if node is None:  # ensured above; another gateway cannot delete nodes
            return
        state = status.state.value
        if node.state != state:
            log.info("%s/%s is %s", status.site_id, status.node_id, state)
            node.state = state
            node.state_since = now
        node.status = status.model_dump(mode="json", exclude_none=True)
        if status.state is NodeState.ONLINE and status.firmware_version:
            node.firmware_version = status.firmware_version
        if status.sent_at is not None:  # the Last Will has none: keep the last offset
            node.clock_offset_s = clock_offset_s(status.sent_at, now)
            node.clock_offset_at = now

    def _event(self, session: Session, event: NodeEvent, now: datetime) -> None:
        result = session.execute(
            _insert(session, NodeEventRecord).values(
                site_id=event.site_id, node_id=event.node_id, seq=event.seq,
                occurred_at=event.occurred_at, type=event.type.value,
                message=event.message, data=event.data, received_at=now,
            ).on_conflict_do_nothing())
        if not result.rowcount:
            return  # already recorded: a replay or a redelivery
        session.execute(update(Node).where(Node.site_id == event.site_id,
                                           Node.node_id == event.node_id,
                                           Node.last_event_seq < event.seq)
                        .values(last_event_seq=event.seq))
        if event.type in CONFIG_EVENTS:
            from gateway.thresholds import record_config_event

            version = event.data.get("version")
            record_config_event(session, event.site_id, event.node_id, event.type.value,
                                version if isinstance(version, int) else None,
                                event.occurred_at, event.message)
        elif event.type in BATCH_EVENTS:
            from gateway.batches import record_batch_event

            batch_id = event.data.get("batch_id")
            record_batch_event(session, event.site_id, event.node_id, event.type.value,
                               batch_id if isinstance(batch_id, str) else None, event.data,
                               event.occurred_at)
        elif event.type is EventType.COMMAND_RESULT:
            from gateway.calibration import record_command_result

            record_command_result(session, event.site_id, event.node_id, event.data,
                                  event.message, event.occurred_at)


def clock_offset_s(sent_at: datetime, received_at: datetime) -> float:
    """How far the node's clock is off, in seconds to add to its times to get the gateway's
    (positive: the node's clock is behind), from one status: the gateway's receive time minus
    the node's ``sent_at``.

    The latest status alone is the estimate, not a filter over several: a node republishes
    its status every 60 s straight to the broker (not through its outbox), so a sample that
    is wrong — a retained status delivered when the gateway (re)subscribes carries its age,
    up to one status interval; a status handled late adds that delay — is replaced within a
    minute, and the ``clock_wrong`` alert's 5-minute open and close delays absorb it. A filter
    (say the smallest of the last five) would need more stored per node and would follow a
    clock that jumped back late by the length of its window.
    """
    return round((received_at - sent_at).total_seconds(), 3)


def ensure_nodes(session: Session, keys: set[tuple[str, str]], now: datetime,
                 timezone: str = "America/Lima") -> None:
    """Create the sites and nodes not known yet (idempotent, safe under concurrency)."""
    known: set[tuple[str, str]] = set()
    for site_id, node_ids in _by_site(keys):
        known.update((site, node) for site, node in session.execute(
            select(Node.site_id, Node.node_id).where(Node.site_id == site_id,
                                                      Node.node_id.in_(node_ids))))
    missing = keys - known
    if not missing:
        return
    for site_id in sorted({site for site, _node in missing}):
        session.execute(_insert(session, Site).values(
            site_id=site_id, name=site_id, timezone=timezone, created_at=now,
        ).on_conflict_do_nothing())
    for site_id, node_id in sorted(missing):
        session.execute(_insert(session, Node).values(
            site_id=site_id, node_id=node_id, first_seen_at=now, last_seen_at=now,
            state="unknown", last_event_seq=0,
        ).on_conflict_do_nothing())
        log.info("new node %s/%s", site_id, node_id)


def _by_site(keys: set[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(site, its node ids) for ``WHERE site_id = :site AND node_id IN (:ids)`` (a statement
    SQLAlchemy compiles once, where one OR term per node was rebuilt for every batch)."""
    return [(site_id, [node for _site, node in group])
            for site_id, group in groupby(sorted(keys), key=lambda key: key[0])]
