"""The message contract between dryer nodes and the gateway: topics, payload models, versions.

This module is the ONE place both sides import. Change it only together with
``docs/protocol.md`` and the exported JSON Schemas (``cacao-dryer schema export``).

Topics: ``cacao/v1/<site_id>/<node_id>/<channel>``; every payload is UTF-8 JSON carrying
``schema_version``. Units are part of field names (``_c``, ``_pct``, ``_kg``, ``_s``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from cacao_dryer.calibration import MAX_POINTS, MIN_POINTS, check_curve
from cacao_dryer.errors import PayloadError, TopicError
from cacao_dryer.measurements import MEASUREMENTS

SCHEMA_VERSION = 1
TOPIC_PREFIX = "cacao/v1"
MAX_PAYLOAD_BYTES = 64 * 1024

# Site and node ids appear in MQTT topics: lowercase letters, digits and dashes only.
# Sequence numbers stay exact for every reader (JavaScript numbers are exact up to 2**53 - 1)
# and fit every store; a node numbering one reading a second needs 285 million years to get
# there. Config versions are the metadata database's 32-bit integers.
MAX_SEQ = 2**53 - 1
MAX_CONFIG_VERSION = 2**31 - 1
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN, examples=["secador-01"])]


class Channel(StrEnum):
    TELEMETRY = "telemetry"  # node → gateway, QoS 1, not retained, one per reading (has seq)
    STATUS = "status"        # node → gateway, QoS 1, retained; Last Will = offline status
    EVENT = "event"          # node → gateway, QoS 1, not retained (acks, alarms, faults)
    CONFIG = "config"        # gateway → node, QoS 1, retained (thresholds, versioned)
    COMMAND = "command"      # gateway → node, QoS 1, not retained (overrides, batches, tare)
    ALERT = "alert"          # gateway → dashboards, QoS 1, retained per (node, kind):
    #                          cacao/v1/<site>/<node>/alert/<kind> (see alert_topic)


QOS: dict[Channel, int] = {channel: 1 for channel in Channel}
RETAINED: dict[Channel, bool] = {
    Channel.TELEMETRY: False,
    Channel.STATUS: True,
    Channel.EVENT: False,
    Channel.CONFIG: True,
    Channel.COMMAND: False,
    Channel.ALERT: True,
}


def topic(site_id: str, node_id: str, channel: Channel) -> str:
    """``cacao/v1/<site>/<node>/<channel>``; ``+`` is allowed as a wildcard for subscriptions.

    Alert topics carry one more level, the alert kind: use ``alert_topic``."""
    if channel is Channel.ALERT:
        raise TopicError("alert topics end with /alert/<kind>: use alert_topic()")
    return f"{TOPIC_PREFIX}/{site_id}/{node_id}/{channel.value}"


def alert_topic(site_id: str, node_id: str, kind: str) -> str:
    """``cacao/v1/<site>/<node>/alert/<kind>``: one retained message per node and alert kind,
    so a dashboard connecting late receives every node's current alerts. ``+`` works as a
    wildcard for each level (``cacao/v1/<site>/+/alert/+``)."""
    return f"{TOPIC_PREFIX}/{site_id}/{node_id}/{Channel.ALERT.value}/{kind}"


@lru_cache(maxsize=4096)  # a gateway sees a few topics per node, thousands of times a second
def parse_topic(name: str) -> tuple[str, str, Channel]:
    """Split a contract topic into (site_id, node_id, channel); TopicError if it is not one.

    Alert topics (``.../alert/<kind>``) parse to ``Channel.ALERT``; ``parse_alert_topic`` also
    returns the kind."""
    parts = name.split("/")
    if len(parts) == 6 and parts[4] == Channel.ALERT.value and "/".join(parts[:2]) == TOPIC_PREFIX:
        _alert_kind(name, parts[5])
        return parts[2], parts[3], Channel.ALERT
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_PREFIX:
        raise TopicError(f"topic {name!r}: expected {TOPIC_PREFIX}/<site>/<node>/<channel>")
    site_id, node_id, channel = parts[2], parts[3], parts[4]
    try:
        parsed = Channel(channel)
    except ValueError:
        known = ", ".join(c.value for c in Channel)
        raise TopicError(f"topic {name!r}: unknown channel {channel!r} (one of {known})") from None
    if parsed is Channel.ALERT:
        raise TopicError(f"topic {name!r}: alert topics end with /alert/<kind>")
    return site_id, node_id, parsed


def parse_alert_topic(name: str) -> tuple[str, str, AlertKind]:
    """Split ``cacao/v1/<site>/<node>/alert/<kind>`` into (site_id, node_id, kind)."""
    site_id, node_id, channel = parse_topic(name)
    if channel is not Channel.ALERT:
        raise TopicError(f"topic {name!r}: not an alert topic ({channel.value})")
    return site_id, node_id, _alert_kind(name, name.rsplit("/", 1)[1])


def _alert_kind(name: str, kind: str) -> AlertKind:
    try:
        return AlertKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in AlertKind)
        raise TopicError(f"topic {name!r}: unknown alert kind {kind!r} (one of {known})"
                         ) from None


class _Message(BaseModel):
    # NaN and Infinity are not JSON, and no store keeps them: refused in every message.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION


class _NodeMessage(_Message):
    site_id: Identifier
    node_id: Identifier


# --- telemetry -------------------------------------------------------------------------------

def _readings_fields() -> dict[str, Any]:
    return {
        m.key: (
            float | None,
            Field(None, ge=m.minimum, le=m.maximum, description=f"{m.description} [{m.unit}]"),
        )
        for m in MEASUREMENTS
    }


Readings = create_model(  # type: ignore[call-overload]
    "Readings",
    __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False),
    __doc__="One set of measurements; a missing value means unavailable (see sensor_faults).",
    **_readings_fields(),
)


class Alarm(StrEnum):
    """Conditions a node raises locally; the gateway turns them into alerts."""

    AIR_TEMP_WARNING = "air_temp_warning"      # air ≥ warn threshold
    AIR_TEMP_ALARM = "air_temp_alarm"          # air ≥ alarm threshold
    AIR_TEMP_LIMIT = "air_temp_limit"          # air ≥ bean hard limit (65 °C, [ICCO])
    DRYING_TOO_FAST = "drying_too_fast"        # moisture falling faster than allowed
    REWETTING_RISK = "rewetting_risk"          # air humid enough to re-wet the beans
    CONDENSATION_RISK = "condensation_risk"    # air within a few K of its dew point
    RAIN = "rain"                              # rain sensor wet
    SENSOR_FAULT = "sensor_fault"              # a sensor failed repeatedly
    STALE_DATA = "stale_data"                  # control inputs too old to trust
    OVER_DRY = "over_dry"                      # beans below the over-dry limit
    TARGET_REACHED = "target_reached"          # beans at or below target moisture
    NODE_ERROR = "node_error"                  # the node could not decide or drive actuators


class Mode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Telemetry(_NodeMessage):
    """One reading of a node, published once per sample interval and stored exactly once."""

    seq: int = Field(ge=1, le=MAX_SEQ,
                     description="Per-node reading sequence number; survives restarts")
    measured_at: AwareDatetime = Field(description="When the reading was taken (node clock)")
    readings: Readings  # type: ignore[valid-type]
    sensor_faults: dict[str, str] = Field(
        default_factory=dict, description="Sensor name → one-line reason, for sensors at fault"
    )
    raining: bool | None = Field(None, description="Rain sensor state; null without a sensor")
    fan_speed_pct: float = Field(ge=0, le=100, description="Commanded fan speed [%]")
    vent_open_pct: float = Field(ge=0, le=100, description="Commanded vent opening [%]")
    mode: Mode
    alarms: list[Alarm] = Field(default_factory=list)
    config_version: int = Field(ge=0, le=MAX_CONFIG_VERSION,
                                description="Threshold config version in force (0 = the "
                                "node's built-in defaults)")
    batch_id: Identifier | None = None


# --- status ----------------------------------------------------------------------------------

class NodeState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class NodeStatus(_NodeMessage):
    """Retained health of a node. The Last Will is the same model with state=offline."""

    state: NodeState
    sent_at: AwareDatetime | None = None
    firmware_version: str | None = None
    boot_id: str | None = None
    uptime_s: float | None = Field(None, ge=0)
    simulated: bool | None = None
    mode: Mode | None = None
    config_version: int | None = Field(None, ge=0, le=MAX_CONFIG_VERSION)
    last_seq: int | None = Field(None, ge=0, le=MAX_SEQ)
    queue_depth: int | None = Field(None, ge=0, description="Messages waiting in the outbox")
    queue_dropped_total: int | None = Field(
        None, ge=0, description="Messages the outbox dropped when full, since installation"
    )
    sensor_faults: dict[str, str] = Field(default_factory=dict)
    errors_total: int | None = Field(
        None, ge=0, description="Errors the node loop survived since boot (disk, driver...)")
    last_error: str | None = Field(None, max_length=300, description="The latest such error")


# --- events ----------------------------------------------------------------------------------

class EventType(StrEnum):
    BOOT = "boot"
    CONFIG_APPLIED = "config_applied"
    CONFIG_REJECTED = "config_rejected"
    COMMAND_RESULT = "command_result"
    ALARM_RAISED = "alarm_raised"
    ALARM_CLEARED = "alarm_cleared"
    SENSOR_FAULT = "sensor_fault"
    SENSOR_RECOVERED = "sensor_recovered"
    QUEUE_OVERFLOW = "queue_overflow"
    BATCH_STARTED = "batch_started"
    BATCH_ENDED = "batch_ended"
    OVERRIDE_STARTED = "override_started"
    OVERRIDE_ENDED = "override_ended"
    STORAGE_RESET = "storage_reset"  # an unreadable file on the node was set aside


class NodeEvent(_NodeMessage):
    """Something that happened on a node. Sent through the same durable outbox as telemetry."""

    seq: int = Field(ge=1, le=MAX_SEQ,
                     description="Per-node event sequence number (separate from readings)")
    occurred_at: AwareDatetime
    type: EventType
    message: str = Field(max_length=500, description="One line for people")
    data: dict[str, Any] = Field(default_factory=dict)


# --- thresholds and config (gateway → node) --------------------------------------------------

def _t(default: float, lo: float, hi: float, unit: str, what: str, source: str) -> Any:
    return Field(default, ge=lo, le=hi, description=f"{what} [{unit}]",
                 json_schema_extra={"unit": unit, "source": source})


class Thresholds(BaseModel):
    """Drying thresholds a node controls with. Defaults: docs/references.md, 'Suggested defaults'.

    No air temperature setting may exceed 65 °C, the bean limit [ICCO]: a config from the
    gateway cannot make the node tolerate hotter air.

    Every field carries its unit, allowed range and source in the JSON Schema so the dashboard
    can explain it to technicians.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target_moisture_pct_wb: float = _t(7.0, 5.0, 12.0, "% w.b.", "Target bean moisture",
                                       "ICCO, CAOBISCO2016")
    over_dry_moisture_pct_wb: float = _t(6.0, 3.0, 8.0, "% w.b.",
                                         "Below this beans are over-dried (brittle)", "CRC, UWI")
    air_temp_warn_c: float = _t(55.0, 30.0, 65.0, "°C", "Air temperature warning", "ICCO")
    air_temp_alarm_c: float = _t(60.0, 30.0, 65.0, "°C", "Air temperature alarm", "ICCO")
    air_temp_limit_c: float = _t(65.0, 35.0, 65.0, "°C",
                                 "Hard limit: beans must not get hotter (flavour)", "ICCO")
    early_phase_h: float = _t(48.0, 0.0, 168.0, "h",
                              "First hours of a batch dried gently", "UWI")
    early_phase_moisture_pct_wb: float = _t(35.0, 10.0, 60.0, "% w.b.",
                                            "Beans wetter than this are in the early phase",
                                            "estimate from UWI, ICCO")
    early_phase_max_air_temp_c: float = _t(45.0, 30.0, 65.0, "°C",
                                           "Air temperature cap in the early phase",
                                           "estimate from ICCO, Jinap1994")
    # estimate: good-quality active drying in Peru averages ~2-2.5 %/h (55 → 7.5 % in 19-24 h
    # [APROCAM2021]); a greenhouse's first afternoon reaches ~1.5-2 %/h. Faster than 2.5 %/h
    # means too much heat or air for the beans [Jinap1994].
    max_drying_rate_pct_per_h: float = _t(2.5, 0.2, 10.0, "% w.b./h",
                                          "Faster drying than this makes beans acidic",
                                          "estimate from APROCAM2021, CET2017, Jinap1994")
    drying_rh_max_pct: float = _t(65.0, 30.0, 95.0, "%",
                                  "Inside humidity above which beans barely dry",
                                  "Sandoval2020, CargoHandbook")
    rewet_rh_pct: float = _t(80.0, 50.0, 100.0, "%",
                             "Humidity above which dry beans regain water", "Sandoval2020")
    close_vents_ambient_rh_pct: float = _t(85.0, 50.0, 100.0, "%",
                                           "Close vents when outside air is this humid",
                                           "estimate from Beckett")
    close_vents_below_moisture_pct_wb: float = _t(20.0, 5.0, 60.0, "% w.b.",
                                                  "...and the beans are already this dry",
                                                  "estimate from Beckett")
    fan_on_dew_point_diff_k: float = _t(3.0, 0.5, 15.0, "K",
                                        "Fan on when inside dew point exceeds outside by this",
                                        "Kellerklima")
    fan_off_dew_point_diff_k: float = _t(1.0, 0.0, 14.0, "K",
                                         "Fan off when the difference falls below this",
                                         "Kellerklima")
    fan_on_air_temp_c: float = _t(50.0, 30.0, 65.0, "°C",
                                  "Fan on to cool when air is hotter than this", "estimate")
    condensation_margin_k: float = _t(2.0, 0.5, 10.0, "K",
                                      "Alert when air is this close to its dew point", "estimate")
    fan_min_speed_pct: float = _t(30.0, 0.0, 100.0, "%",
                                  "Lowest PWM speed at which the fans still turn", "fan datasheet")
    fan_min_on_s: float = _t(300.0, 0.0, 3600.0, "s", "Minimum fan run time", "estimate")
    fan_min_off_s: float = _t(300.0, 0.0, 3600.0, "s", "Minimum fan rest time", "estimate")
    vent_min_interval_s: float = _t(600.0, 0.0, 7200.0, "s",
                                    "Minimum time between vent moves", "estimate")
    night_start_hour: int = Field(18, ge=0, le=23, description="Local hour night starts [h]")
    night_end_hour: int = Field(6, ge=0, le=23, description="Local hour night ends [h]")
    stale_after_s: float = _t(120.0, 10.0, 3600.0, "s",
                              "Readings older than this are stale (fail-safe)", "estimate")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.air_temp_warn_c <= self.air_temp_alarm_c <= self.air_temp_limit_c:
            raise ValueError("air_temp_warn_c <= air_temp_alarm_c <= air_temp_limit_c must hold")
        if self.early_phase_max_air_temp_c > self.air_temp_limit_c:
            raise ValueError("early_phase_max_air_temp_c must not exceed air_temp_limit_c")
        if self.fan_off_dew_point_diff_k >= self.fan_on_dew_point_diff_k:
            raise ValueError("fan_off_dew_point_diff_k must be below fan_on_dew_point_diff_k")
        if self.over_dry_moisture_pct_wb >= self.target_moisture_pct_wb:
            raise ValueError("over_dry_moisture_pct_wb must be below target_moisture_pct_wb")
        if self.drying_rh_max_pct > self.rewet_rh_pct:
            raise ValueError("drying_rh_max_pct must not exceed rewet_rh_pct")
        return self


class NodeConfig(_Message):
    """Retained on the node's config topic by the gateway; the node acknowledges with an event
    (config_applied / config_rejected) naming ``version``."""

    version: int = Field(ge=1, le=MAX_CONFIG_VERSION,
                         description="Monotonic config version; older ones are ignored")
    issued_at: AwareDatetime
    issued_by: str | None = Field(None, max_length=100)
    thresholds: Thresholds


# --- commands (gateway → node) ---------------------------------------------------------------

class OverrideAction(BaseModel):
    """Manual override of fans and/or vents for a limited time. Safety limits still apply:
    above the hard temperature limit the node ventilates whatever the override says."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["override"] = "override"
    fan_speed_pct: float | None = Field(None, ge=0, le=100)
    vent_open_pct: float | None = Field(None, ge=0, le=100)
    duration_s: float = Field(gt=0, le=12 * 3600, description="Override expires after this [s]")

    @model_validator(mode="after")
    def _something(self) -> OverrideAction:
        if self.fan_speed_pct is None and self.vent_open_pct is None:
            raise ValueError("override needs fan_speed_pct or vent_open_pct")
        return self


class ClearOverrideAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["clear_override"] = "clear_override"


class StartBatchAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["start_batch"] = "start_batch"
    batch_id: Identifier
    initial_moisture_pct_wb: float = Field(ge=10, le=80, description="Measured at loading [%]")
    initial_tray_mass_kg: float | None = Field(
        None, gt=0, le=200, description="Tray mass at loading; omitted = node weighs it now")


class EndBatchAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["end_batch"] = "end_batch"
    batch_id: Identifier


class TareTrayAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["tare_tray"] = "tare_tray"


class SetCalibrationAction(BaseModel):
    """A new calibration curve for the node's bean-moisture probe, used from the next reading
    on and kept across restarts (it then overrides the config file's curve for that probe).
    Checked like the config file's ``calibration``: 2..20 points, volts strictly increasing,
    moisture within 0..80 % w.b."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    type: Literal["set_calibration"] = "set_calibration"
    sensor: Identifier | None = Field(
        None, description="The probe's name in the node config; omitted = the node's probe "
        "(a node has at most one)")
    points: list[tuple[float, float]] = Field(
        min_length=MIN_POINTS, max_length=MAX_POINTS,
        description="[[volts, moisture_pct_wb], ...], volts strictly increasing [V, % w.b.]")

    @field_validator("points")
    @classmethod
    def _curve(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return check_curve(points)


CommandAction = Annotated[
    OverrideAction | ClearOverrideAction | StartBatchAction | EndBatchAction | TareTrayAction
    | SetCalibrationAction,
    Field(discriminator="type"),
]


class Command(_Message):
    command_id: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = Field(
        None, description="A command delivered after this is rejected, not executed")
    issued_by: str | None = Field(None, max_length=100)
    action: CommandAction


# --- alerts (gateway → dashboards and other subscribers) -------------------------------------

class AlertKind(StrEnum):
    """What the gateway alerts on (rules: gateway/alerting.py, docs/alerts.md)."""

    OVER_TEMPERATURE = "over_temperature"      # inside air at or above the alarm threshold
    HIGH_HUMIDITY = "high_humidity"            # humid air re-wetting dry beans
    SENSOR_FAULT = "sensor_fault"              # a sensor failed, or no readings from a live node
    NODE_OFFLINE = "node_offline"              # Last Will / offline status, or silence
    SEQUENCE_GAP = "sequence_gap"              # readings missing from the store (lost data)
    DRYING_STALLED = "drying_stalled"          # moisture not falling while above target
    TARGET_REACHED = "target_reached"          # beans at target moisture: ready to unload
    CONFIG_NOT_APPLIED = "config_not_applied"  # the node did not apply pushed thresholds
    CLOCK_WRONG = "clock_wrong"                # the node's clock is minutes or more off


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY_RANK: dict[AlertSeverity, int] = {
    AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}


class AlertState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class AlertNotice(_NodeMessage):
    """The current state of one alert of one node, retained on
    ``cacao/v1/<site>/<node>/alert/<kind>`` and POSTed to webhooks. A closed alert stays
    retained with ``state: closed`` until the next alert of that kind replaces it; an alert
    that occurs again later is a new alert (a new ``alert_id``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    alert_id: int = Field(ge=1, description="The gateway's id of this alert (one per opening)")
    kind: AlertKind
    severity: AlertSeverity
    state: AlertState
    opened_at: AwareDatetime
    updated_at: AwareDatetime = Field(description="Last change of severity, value or message")
    closed_at: AwareDatetime | None = Field(None, description="Set exactly when state is closed")
    message: str = Field(min_length=1, max_length=500, description="One line for people")
    value: float | None = Field(None, description="The number behind the alert, in the unit "
                                "the message names (e.g. highest air temperature [°C])")
    batch_id: Identifier | None = None
    acknowledged_by: str | None = Field(None, min_length=1, max_length=100)
    acknowledged_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AlertNotice:
        if (self.state is AlertState.CLOSED) != (self.closed_at is not None):
            raise ValueError("closed_at must be set exactly when state is closed")
        if (self.acknowledged_by is None) != (self.acknowledged_at is None):
            raise ValueError("acknowledged_by and acknowledged_at go together")
        if self.updated_at < self.opened_at:
            raise ValueError("updated_at must not be before opened_at")
        return self


# --- encoding and decoding -------------------------------------------------------------------

MODELS: dict[Channel, type[BaseModel]] = {
    Channel.TELEMETRY: Telemetry,
    Channel.STATUS: NodeStatus,
    Channel.EVENT: NodeEvent,
    Channel.CONFIG: NodeConfig,
    Channel.COMMAND: Command,
    Channel.ALERT: AlertNotice,
}


def encode(message: BaseModel) -> bytes:
    """Compact JSON, null fields left out."""
    return message.model_dump_json(exclude_none=True).encode()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    more = len(error.errors()) - 1
    extra = f"; and {more} more problem(s)" if more else ""
    return f"{where}: {first['msg']}{got_text}{extra}"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON escape of a surrogate half


def _has_lone_surrogate(data: object) -> bool:
    """Any text (key or value) holding half a surrogate pair (a JSON escape such as
    ``"\\ud800"`` on its own): valid JSON, but not text any database keeps."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def decode(channel: Channel, payload: bytes | str, *, where: str = "") -> BaseModel:
    """Parse and validate a payload; PayloadError with a one-line reason if it is not valid."""
    label = where or channel.value
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{label}: payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if isinstance(payload, bytes):
        # Strictly: json.loads(bytes) would let UTF-8-encoded surrogates (b"\xed\xa0\x80")
        # through, and no database can store the text they make.
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"{label}: not valid UTF-8 ({exc.reason} at byte "
                               f"{exc.start})") from None
    elif not payload.isascii():
        try:
            payload.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PayloadError(f"{label}: not valid Unicode ({exc.reason} at character "
                               f"{exc.start})") from None
    try:
        data = json.loads(payload)
    except RecursionError:
        raise PayloadError(f"{label}: JSON nested too deeply") from None
    except ValueError as exc:  # invalid JSON, integers beyond Python's digit limit
        raise PayloadError(f"{label}: not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(payload) and _has_lone_surrogate(data):
        raise PayloadError(f"{label}: a text holds a lone UTF-16 surrogate (\\ud800-\\udfff "
                           "without its pair), which is not Unicode")
    if not isinstance(data, dict):
        raise PayloadError(f"{label}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PayloadError(
            f"{label}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        return MODELS[channel].model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"{label}: {_describe(exc)}") from None
    except RecursionError:
        raise PayloadError(f"{label}: JSON nested too deeply") from None


def decode_message(topic_name: str, payload: bytes | str) -> tuple[str, str, BaseModel]:
    """Decode a message received on a contract topic: (site_id, node_id, model).

    Also checks that site/node inside node-sent payloads match the topic, so a node cannot
    speak for another by lying in its payload.
    """
    site_id, node_id, channel = parse_topic(topic_name)
    message = decode(channel, payload, where=topic_name)
    if isinstance(message, _NodeMessage) and (
        message.site_id != site_id or message.node_id != node_id
    ):
        raise PayloadError(
            f"{topic_name}: payload names {message.site_id}/{message.node_id}, "
            f"topic names {site_id}/{node_id}")
    if isinstance(message, AlertNotice) and message.kind.value != topic_name.rsplit("/", 1)[1]:
        raise PayloadError(f"{topic_name}: payload is a {message.kind.value} alert")
    return site_id, node_id, message


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each channel's payload, keyed by channel name."""
    return {channel.value: model.model_json_schema() for channel, model in MODELS.items()}


def utc_iso(moment: datetime) -> str:
    """ISO 8601 with a Z, as used in every payload."""
    return moment.isoformat().replace("+00:00", "Z")
