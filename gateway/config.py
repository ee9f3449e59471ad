"""Gateway configuration file (TOML): which sites, which broker, which time-series store.

``load_gateway_config(path)`` returns validated ``GatewaySettings`` or raises ``ConfigError``
with one line naming the file and the key (same rules and formatting as node configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cacao_dryer.contract import AlertKind, Identifier
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
    count_duplicates: bool = Field(True, description="Ask InfluxDB which readings it already "
                                   "has, to count replays as duplicates; false: ~1/3 faster "
                                   "ingest, every reading counted as new (still stored once)")


class InfluxDB2Storage(_Section):
    kind: Literal["influxdb2"]
    url: str = "http://127.0.0.1:8086"
    org: str
    bucket: str = "cacao"
    token_file: Path
    count_duplicates: bool = Field(True, description="As for influxdb1")


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
    # Logins (docs/security.md). No secret key anywhere: sessions are random tokens kept
    # (hashed) in the metadata database.
    secure_cookies: bool = Field(
        False, description="Mark the session cookie Secure even on plain-HTTP requests (a TLS "
        "proxy in front of the gateway); https requests always get a Secure cookie")
    session_idle_h: float = Field(12, gt=0, le=7 * 24,
                                  description="A session ends this long after its last request")
    session_max_days: float = Field(7, gt=0, le=90,
                                    description="A session ends this long after login anyway")
    login_max_failures: int = Field(5, ge=1, le=100,
                                    description="Failed logins per username within the window")
    login_max_failures_per_ip: int = Field(
        20, ge=1, le=10_000, description="Failed logins per client address within the window "
        "(higher: an office PC is shared)")
    login_window_min: float = Field(15, gt=0, le=24 * 60)
    trusted_origins: list[str] = Field(
        default_factory=list, description="Other origins (https://host[:port]) allowed to send "
        "changes, e.g. the dashboard behind a proxy under another name")
    password_time_cost: int = Field(3, ge=2, le=20, description="argon2id iterations")
    password_memory_kib: int = Field(65_536, ge=19_456, le=1_048_576,
                                     description="argon2id memory per hash (KiB)")
    password_parallelism: int = Field(4, ge=1, le=16, description="argon2id lanes")

    @field_validator("trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or \
                    parts.path not in ("", "/") or parts.query:
                raise ValueError(f"{origin!r} is not an origin like https://host[:port]")
        return [origin.rstrip("/") for origin in value]


class WebhookConfig(_Section):
    """An HTTP endpoint that receives alert notices (docs/alerts.md: payload, signature)."""

    name: str = Field(min_length=1, max_length=64, description="Keys its delivery queue")
    url: str = Field(description="http(s)://host/path")
    secret_file: Path = Field(description="Signing secret (16+ characters), kept out of the "
                              "config file")
    kinds: list[AlertKind] | None = Field(None, description="Alert kinds to send; omitted = "
                                          "all")
    min_severity: Literal["info", "warning", "critical"] = "info"


# --- notifications: e-mail, Telegram, SMS (docs/alerts.md#notifications-e-mail-telegram-sms) --

class NotifyEmailConfig(_Section):
    """An SMTP server that sends the alert e-mails."""

    host: str = Field(min_length=1, description="SMTP server, e.g. smtp.gmail.com")
    port: int = Field(587, ge=1, le=65535, description="587 starttls, 465 ssl, 25 plain")
    security: Literal["starttls", "ssl", "plain"] = "starttls"
    sender: str = Field(min_length=3, description='From, e.g. "Secadores <alertas@coop.pe>"')
    username: str | None = None
    password_file: Path | None = Field(None, description="SMTP password, kept out of the "
                                       "config file")
    tls_ca_file: Path | None = Field(None, description="CA certificate of a server with its "
                                     "own certificate authority")
    timeout_s: float = Field(20, gt=0, le=120)


class NotifyTelegramConfig(_Section):
    """A Telegram bot (create it with @BotFather) that writes to people's chats."""

    token_file: Path = Field(description="The bot token, kept out of the config file")
    api_url: str = Field("https://api.telegram.org", description="Bot API base URL")
    timeout_s: float = Field(10, gt=0, le=120)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return value


class NotifySmsConfig(_Section):
    """SMS through a GSM modem: gammu-smsd (files backend) sends what appears in its outbox."""

    outbox: Path = Field(description="gammu-smsd's OutboxPath, e.g. /var/spool/gammu/outbox")
    max_parts: int = Field(3, ge=1, le=3, description="Longer messages are cut")


class NotifyRecipientConfig(_Section):
    """A person (or a group chat) who receives alerts, in their language."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^/\s]+$",
                      description="Keys the recipient's queue and history")
    language: Literal["es", "en"] = "es"
    email: str | None = None
    telegram_chat_id: str | None = Field(None, description="Numeric chat id, or @channel")
    phone: str | None = Field(None, description="E.164, e.g. +51987654321")
    kinds: list[AlertKind] | None = Field(None, description="Alert kinds; omitted = all")
    min_severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="info also sends target_reached (beans ready to unload)")
    sites: list[Identifier] | None = Field(None, description="Only these sites; omitted = all")
    nodes: list[str] | None = Field(None, description="Only these dryers (node id or "
                                    "site/node); omitted = all")
    notify_closed: bool = Field(True, description="Also say when an alert is resolved")
    quiet_hours: str | None = Field(None, description="\"21:00-06:00\" in the gateway's time "
                                    "zone: only critical alerts then; the rest waits and "
                                    "comes as one digest when quiet hours end")
    max_messages_per_hour: int = Field(6, ge=1, le=60, description="Per channel; beyond "
                                       "it alerts wait and come as one digest")

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: str | None) -> str | None:
        from gateway.notify.rules import QuietHours

        return None if value is None else str(QuietHours.parse(value))

    @field_validator("email", "telegram_chat_id", "phone")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        from gateway.notify.channels import ChannelName, check_address

        channel = {"email": ChannelName.EMAIL, "telegram_chat_id": ChannelName.TELEGRAM,
                   "phone": ChannelName.SMS}[str(info.field_name)]
        return None if value is None else check_address(channel, value.strip())


class NotifyConfig(_Section):
    """``[notify]``: channels, then ``[[notify.recipients]]``."""

    email: NotifyEmailConfig | None = None
    telegram: NotifyTelegramConfig | None = None
    sms: NotifySmsConfig | None = None
    recipients: list[NotifyRecipientConfig] = Field(default_factory=list)
    flap_after: int = Field(3, ge=2, le=20, description="Openings of one alert kind on one "
                            "dryer within flap_window_min that make it 'flapping' (summarised)")
    flap_window_min: float = Field(60, ge=5, le=24 * 60)
    give_up_after_h: float = Field(12, gt=0, le=72, description="Stop retrying a message "
                                   "(logged, counted as failed)")

    @model_validator(mode="after")
    def _recipients(self) -> NotifyConfig:
        names = [recipient.name for recipient in self.recipients]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"recipient {name!r} is configured twice")
        for recipient in self.recipients:
            wanted = {("email", "email"): (recipient.email, self.email),
                      ("telegram_chat_id", "telegram"): (recipient.telegram_chat_id,
                                                         self.telegram),
                      ("phone", "sms"): (recipient.phone, self.sms)}
            if not any(address for address, _ in wanted.values()):
                raise ValueError(f"recipient {recipient.name!r} has no email, "
                                 f"telegram_chat_id or phone")
            for (key, channel), (address, section) in wanted.items():
                if address and section is None:
                    raise ValueError(f"recipient {recipient.name!r}: {key} is set but "
                                     f"[notify.{channel}] is not configured")
        return self


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
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    notify: NotifyConfig = NotifyConfig()
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
    ingest_workers: int = Field(
        0, ge=0, le=16, description="Processes that ingest telemetry beside the main one "
        "(0: all in the main process). Each is its own MQTT client on a shared subscription "
        "with its own store connection; 2 reach ~20,000 readings/s on 2 cores "
        "(docs/scaling.md)")


def parse_gateway_config(data: dict[str, object], source: str = "gateway config",
                         base_dir: Path | None = None) -> GatewaySettings:
    """Validate settings. A relative ``data_dir`` is relative to ``base_dir`` (the config
    file's folder; the working directory when None); the SQLite files (readings, metadata)
    are relative to ``data_dir``, never to wherever the gateway happens to be started."""
    settings = validate_config(GatewaySettings, data, source)
    updates: dict[str, object] = {}
    if base_dir is not None and not settings.data_dir.is_absolute():
        updates["data_dir"] = base_dir / settings.data_dir
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


def load_gateway_config(path: Path) -> GatewaySettings:
    """Read and validate a gateway TOML file (paths as ``parse_gateway_config`` says)."""
    return parse_gateway_config(read_toml(path), str(path), base_dir=path.parent)
