"""Tables of the metadata database (time series live in the time-series store, not here).

Every timestamp is stored as UTC and read back timezone-aware (``UtcDateTime``), on SQLite and
PostgreSQL alike. Natural keys are used where the domain has them (site id, node id, per-node
event seq), so writes from several gateways or a replayed message stay idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

ID_LENGTH = 40          # contract Identifier: ^[a-z0-9][a-z0-9-]{0,39}$
# A node's event numbers go up to the contract's MAX_SEQ (2**53 - 1): BIGINT on PostgreSQL
# (a node outbox recreated after 2038 numbers above 2**31); SQLite's INTEGER is 64-bit already.
EventSeq = BigInteger().with_variant(Integer(), "sqlite")
BATCH_ID_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect
                             ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Stable constraint names so Alembic migrations work the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime,
                                                     dict[str, Any]: JSON}


class Site(Base):
    """A collection center."""

    __tablename__ = "sites"
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="America/Lima")
    created_at: Mapped[datetime]


class Node(Base):
    """A dryer and the node that runs it; created when the node is first heard of."""

    __tablename__ = "nodes"
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))  # "Secador 1 (módulo norte)"
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16), default="unknown")  # online/offline/unknown
    state_since: Mapped[datetime | None]
    status: Mapped[dict[str, Any] | None]  # the latest NodeStatus message as JSON
    firmware_version: Mapped[str | None] = mapped_column(String(40))
    applied_config_version: Mapped[int | None]
    applied_config_at: Mapped[datetime | None]
    last_event_seq: Mapped[int] = mapped_column(EventSeq, default=0)
    # How far the node's clock is off (gateway receive time − the status's sent_at, seconds;
    # positive: the node is behind) and when the gateway measured it (latest status).
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    clock_offset_at: Mapped[datetime | None]


class NodeEventRecord(Base):
    """Every event a node sent, once (idempotent by site, node and the event's own seq)."""

    __tablename__ = "node_events"
    __table_args__ = (
        ForeignKeyConstraint(["site_id", "node_id"], ["nodes.site_id", "nodes.node_id"]),
        Index("ix_node_events_time", "site_id", "node_id", "occurred_at"),
    )
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    seq: Mapped[int] = mapped_column(EventSeq, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]


class ThresholdProfile(Base):
    """Threshold overrides for a site, one dryer, and/or one batch stage.

    Effective thresholds of a node = built-in defaults, then the site-wide profile, then the
    site's profile for the batch's stage, then the dryer's, then the dryer's for the stage.
    """

    __tablename__ = "threshold_profiles"
    __table_args__ = (UniqueConstraint("site_id", "node_id", "stage",
                                       name="uq_threshold_profiles_scope"),)
    profile_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.site_id"))
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH), default="")  # "" = whole site
    stage: Mapped[str] = mapped_column(String(16), default="")  # "" = every stage
    created_at: Mapped[datetime]
    versions: Mapped[list[ThresholdProfileVersion]] = relationship(
        back_populates="profile", order_by="ThresholdProfileVersion.version")


class ThresholdProfileVersion(Base):
    """One saved state of a profile; never changed afterwards (history for the audit)."""

    __tablename__ = "threshold_profile_versions"
    __table_args__ = (UniqueConstraint("profile_id", "version",
                                       name="uq_threshold_profile_versions_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("threshold_profiles.profile_id"))
    version: Mapped[int]
    values: Mapped[dict[str, Any]]  # only the overridden Thresholds fields
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str] = mapped_column(String(500), default="")
    profile: Mapped[ThresholdProfile] = relationship(back_populates="versions")


class NodeConfigPush(Base):
    """A config version sent to a node (retained), and whether the node applied it."""

    __tablename__ = "node_config_pushes"
    __table_args__ = (
        ForeignKeyConstraint(["site_id", "node_id"], ["nodes.site_id", "nodes.node_id"]),
    )
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    thresholds: Mapped[dict[str, Any]]  # the full effective thresholds sent
    reason: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[datetime]
    issued_by: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str | None] = mapped_column(String(16))  # batch stage; null = no batch
    batch_id: Mapped[str | None] = mapped_column(String(BATCH_ID_LENGTH))
    published_at: Mapped[datetime | None]
    applied_at: Mapped[datetime | None]
    rejected_at: Mapped[datetime | None]
    node_message: Mapped[str | None] = mapped_column(String(500))


class Batch(Base):
    """One load of beans in one dryer."""

    __tablename__ = "batches"
    __table_args__ = (
        ForeignKeyConstraint(["site_id", "node_id"], ["nodes.site_id", "nodes.node_id"]),
        Index("ix_batches_node_time", "site_id", "node_id", "started_at"),
        # At most one running batch per dryer, enforced by the database itself.
        Index("uq_batches_running", "site_id", "node_id", unique=True,
              sqlite_where=text("ended_at IS NULL"),
              postgresql_where=text("ended_at IS NULL")),
    )
    batch_id: Mapped[str] = mapped_column(String(BATCH_ID_LENGTH), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    lot_code: Mapped[str] = mapped_column(String(64))
    producer: Mapped[str] = mapped_column(String(200), default="")
    crop: Mapped[str] = mapped_column(String(16), default="cacao")
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    initial_mass_kg: Mapped[float | None] = mapped_column(Float)
    initial_moisture_pct_wb: Mapped[float | None] = mapped_column(Float)
    final_mass_kg: Mapped[float | None] = mapped_column(Float)
    final_moisture_pct_wb: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[str] = mapped_column(Text, default="")
    started_by: Mapped[str] = mapped_column(String(100))
    ended_by: Mapped[str | None] = mapped_column(String(100))
    spot_checks: Mapped[list[SpotCheck]] = relationship(
        back_populates="batch", order_by="SpotCheck.measured_at")


class SpotCheck(Base):
    """A hand-meter (or oven) moisture measurement of a batch's beans."""

    __tablename__ = "spot_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.batch_id"), index=True)
    measured_at: Mapped[datetime]
    moisture_pct_wb: Mapped[float] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(40), default="hand_meter")
    note: Mapped[str] = mapped_column(String(500), default="")
    recorded_by: Mapped[str] = mapped_column(String(100))
    batch: Mapped[Batch] = relationship(back_populates="spot_checks")


class AlertRecord(Base):
    """An alert: opened once, updated, closed; at most one open per node and kind."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_open", "site_id", "node_id", "kind", unique=True,
              sqlite_where=text("closed_at IS NULL"),
              postgresql_where=text("closed_at IS NULL")),
        Index("ix_alerts_time", "site_id", "opened_at"),
    )
    alert_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(500))
    value: Mapped[float | None] = mapped_column(Float)
    batch_id: Mapped[str | None] = mapped_column(String(BATCH_ID_LENGTH))
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None]


class User(Base):
    __tablename__ = "users"
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # operator/technician/manager/admin
    language: Mapped[str] = mapped_column(String(8), default="es")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """Who changed what, when: old → new. Written in the same transaction as the change."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_time", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))     # e.g. thresholds.update, batch.start
    target: Mapped[str] = mapped_column(String(200))    # e.g. demo/secador-01
    old: Mapped[dict[str, Any] | None]
    new: Mapped[dict[str, Any] | None]
    detail: Mapped[str] = mapped_column(String(500), default="")


class LoginSession(Base):
    """A logged-in browser (gateway/auth/sessions.py). Only the SHA-256 of the cookie's token
    is kept, so a copy of the database does not let anyone in."""

    __tablename__ = "login_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.user_id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)  # sliding; <= absolute
    absolute_expires_at: Mapped[datetime]
    client_ip: Mapped[str] = mapped_column(String(45), default="")
    user_agent: Mapped[str] = mapped_column(String(200), default="")


class ApiToken(Base):
    """A machine's credential (Grafana, an ERP), acting as its user; stored as SHA-256."""

    __tablename__ = "api_tokens"
    token_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.user_id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Calibration(Base):
    """A moisture-probe calibration fitted from hand-meter readings and sent to a node
    (gateway/calibration.py); ``applied`` is the node's answer: null = no answer yet."""

    __tablename__ = "calibrations"
    __table_args__ = (
        ForeignKeyConstraint(["site_id", "node_id"], ["nodes.site_id", "nodes.node_id"]),
        Index("ix_calibrations_node_time", "site_id", "node_id", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    node_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    sensor: Mapped[str | None] = mapped_column(String(ID_LENGTH))  # null: the node's probe
    points: Mapped[list[Any]] = mapped_column(JSON)   # [[volts, moisture_pct_wb], ...] sent
    pairs: Mapped[list[Any]] = mapped_column(JSON)    # the readings it was fitted from
    comment: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    command_id: Mapped[str] = mapped_column(String(64), unique=True)
    delivered_to_broker: Mapped[bool] = mapped_column(Boolean, default=False)
    applied: Mapped[bool | None] = mapped_column(Boolean)
    applied_at: Mapped[datetime | None]   # when the node answered (applied or rejected)
    node_message: Mapped[str | None] = mapped_column(String(500))
