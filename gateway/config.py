"""Gateway configuration file (TOML): which sites, which broker, which time-series store.

``load_gateway_config(path)`` returns validated ``GatewaySettings`` or raises ``ConfigError``
with one line naming the file and the key (same rules and formatting as node configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cacao_dryer.contract import Identifier
from firmware.config import parse_broker_url, read_toml, validate_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayMqttConfig(_Section):
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    client_id: str = Field("cacao-gateway", min_length=1, max_length=64,
                           description="Stable: the broker keeps this session's queue")
    shared_group: Identifier | None = Field(
        None, description="Several gateways share a site's messages ($share/<group>/...)")
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, description="How long the broker queues messages for a stopped "
        "gateway (MQTT v5 persistent session)")
    receive_maximum: int = Field(1000, ge=1, le=65535,
                                 description="Unacknowledged messages the broker may send")
    keepalive_s: int = Field(30, ge=5, le=600)

    @field_validator("broker")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_broker_url(value)
        return value


class SqliteStorage(_Section):
    kind: Literal["sqlite"]
    path: Path = Path("readings.sqlite3")


class InfluxDB1Storage(_Section):
    kind: Literal["influxdb1"]
    url: str = "http://127.0.0.1:8086"
    database: str = "cacao"
    username: str | None = None
    password_file: Path | None = None


class InfluxDB2Storage(_Section):
    kind: Literal["influxdb2"]
    url: str = "http://127.0.0.1:8086"
    org: str
    bucket: str = "cacao"
    token_file: Path


class MetadataConfig(_Section):
    """Where batches, thresholds, alerts, users and the audit log live (SQLAlchemy URL)."""

    url: str = Field("sqlite:///metadata.sqlite3", description=(
        "sqlite:///<path> (relative to data_dir) or postgresql+psycopg://user@host/db"))
    password_file: Path | None = Field(
        None, description="PostgreSQL password, kept out of the config file")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql")
        return value


class ApiConfig(_Section):
    """The gateway's HTTP API (and, later, the dashboard)."""

    host: str = Field("127.0.0.1", description="0.0.0.0 to serve the collection center's LAN")
    port: int = Field(8080, ge=1, le=65535)


Storage = Annotated[SqliteStorage | InfluxDB1Storage | InfluxDB2Storage,
                    Field(discriminator="kind")]


class GatewaySettings(_Section):
    sites: list[Identifier | Literal["+"]] = Field(
        default_factory=lambda: ["+"], description="Site ids to ingest; + = every site")
    data_dir: Path = Field(Path("/var/lib/cacao-gateway"),
                           description="Spool (readings kept while the database is down)")
    mqtt: GatewayMqttConfig = GatewayMqttConfig()
    storage: Storage = SqliteStorage(kind="sqlite")
    metadata: MetadataConfig = MetadataConfig()
    api: ApiConfig = ApiConfig()
    timezone: str = Field("America/Lima", description="Local time zone of the site(s): nights, "
                          "daily reports")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. America/Lima)") from None
        return value
    batch_max_readings: int = Field(5000, ge=1, le=100_000)
    batch_max_latency_s: float = Field(
        0.2, gt=0, le=10, description="A reading is written at most this long after arrival")


def parse_gateway_config(data: dict[str, object], source: str = "gateway config"
                         ) -> GatewaySettings:
    return validate_config(GatewaySettings, data, source)


def load_gateway_config(path: Path) -> GatewaySettings:
    """Read and validate a gateway TOML file; ``data_dir`` is relative to the file, the
    SQLite files (readings, metadata) relative to ``data_dir``."""
    settings = parse_gateway_config(read_toml(path), str(path))
    updates: dict[str, object] = {}
    if not settings.data_dir.is_absolute():
        updates["data_dir"] = path.parent / settings.data_dir
    base = Path(str(updates.get("data_dir", settings.data_dir)))
    storage = settings.storage
    if isinstance(storage, SqliteStorage) and not storage.path.is_absolute():
        updates["storage"] = storage.model_copy(update={"path": base / storage.path})
    metadata_url = settings.metadata.url
    if metadata_url.startswith("sqlite:///") and not metadata_url.startswith("sqlite:////"):
        relative = metadata_url.removeprefix("sqlite:///")
        updates["metadata"] = settings.metadata.model_copy(
            update={"url": f"sqlite:///{(base / relative).resolve()}"})
    return settings.model_copy(update=updates) if updates else settings
