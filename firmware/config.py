"""Node configuration file (TOML): which node this is, its sensors, pins, calibration, broker.

``load_node_config(path)`` returns a validated ``NodeSettings`` or raises ``ConfigError`` with
one line naming the file, the key and what is wrong. Pins are BCM GPIO numbers of the
Raspberry Pi 40-pin header.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cacao_dryer.calibration import check_curve
from cacao_dryer.contract import Identifier, Thresholds
from cacao_dryer.errors import ConfigError

# BCM GPIO numbers brought out on the 40-pin header of every Pi since the B+ (incl. Zero 2 W).
HEADER_GPIO_PINS = frozenset(range(2, 28))
I2C_PINS = frozenset({2, 3})
# adafruit_dht takes a new measurement at most every 2 s (DHT22 datasheet); a retry waits that.
DHT_RETRY_WAIT_S = 2.1  # SDA, SCL: taken as soon as an I2C device (ADS1115) is configured

Pin = Annotated[int, Field(description="BCM GPIO number on the 40-pin header")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sensors ---------------------------------------------------------------------------------

class DhtSensorConfig(_Section):
    """Air temperature/humidity, DHT22 (AM2302) or DHT11, on one GPIO data pin."""

    type: Literal["dht22", "dht11"]
    name: Identifier
    location: Literal["inside", "ambient"] = Field(
        description="inside = dryer air above the beans; ambient = outside reference, in shade")
    pin: Pin
    retries: int = Field(1, ge=0, le=10, description="Extra reads after a checksum failure; "
                         "each waits ~2 s (the DHT's minimum interval) and blocks the loop")
    median_window: int = Field(5, ge=1, le=15, description="Median of this many recent reads")
    fault_after: int = Field(3, ge=1, le=100,
                             description="Consecutive failed samples before reporting a fault")


class MoistureProbeConfig(_Section):
    """Capacitive/resistive bean-moisture probe read through an ADS1115 ADC on I2C.

    ``calibration`` maps probe volts to moisture % wet basis, piecewise linear between points
    (at least two, volts strictly increasing); fit it per lot against a reference meter.
    """

    type: Literal["moisture_probe"]
    name: Identifier
    i2c_address: int = Field(0x48, ge=0x48, le=0x4B)
    channel: int = Field(0, ge=0, le=3)
    gain: float = Field(1.0, description="ADS1115 amplifier gain: 2/3, 1, 2, 4, 8 or 16")
    calibration: list[tuple[float, float]] = Field(
        description="[[volts, moisture_pct_wb], ...] at least two points")
    fault_after: int = Field(3, ge=1, le=100)

    @field_validator("gain")
    @classmethod
    def _gain(cls, value: float) -> float:
        if not any(abs(value - g) < 1e-3 for g in (2 / 3, 1, 2, 4, 8, 16)):
            raise ValueError(f"gain {value} is not one of 2/3, 1, 2, 4, 8, 16")
        return value

    @field_validator("calibration")
    @classmethod
    def _curve(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return check_curve(points)  # the same rules as a set_calibration command


class LoadCellTrayConfig(_Section):
    """Sample tray on a load cell through an HX711; moisture by mass loss [IIETA2025]."""

    type: Literal["load_cell_tray"]
    name: Identifier
    data_pin: Pin
    clock_pin: Pin
    counts_per_kg: float = Field(description="Calibration: HX711 counts per kilogram (non-zero)")
    tare_offset_counts: float = Field(0.0, description="Counts with the empty tray")
    samples: int = Field(5, ge=1, le=50, description="Raw reads averaged (median) per reading")
    fault_after: int = Field(3, ge=1, le=100)

    @field_validator("counts_per_kg")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("counts_per_kg must not be 0 (calibrate with a known mass)")
        return value


class RainSensorConfig(_Section):
    """Digital rain sensor (e.g. YL-83 comparator board) on one GPIO input."""

    type: Literal["rain"]
    name: Identifier = "rain"
    pin: Pin
    wet_when_low: bool = Field(True, description="Most comparator boards pull low when wet")


SensorConfig = Annotated[
    DhtSensorConfig | MoistureProbeConfig | LoadCellTrayConfig | RainSensorConfig,
    Field(discriminator="type"),
]

# --- actuators -------------------------------------------------------------------------------

class FanConfig(_Section):
    """A fan: PWM speed control (MOSFET/driver) or on/off through a relay."""

    name: Identifier
    type: Literal["pwm", "relay"]
    pin: Pin
    active_high: bool = True
    pwm_frequency_hz: float = Field(100.0, gt=0, le=40_000)


class ServoVentConfig(_Section):
    """A vent flap moved by a hobby servo (angle proportional to opening)."""

    name: Identifier
    type: Literal["servo"]
    pin: Pin
    closed_angle_deg: float = 0.0
    open_angle_deg: float = 90.0


class RelayVentConfig(_Section):
    """A vent driven by a motor/linear actuator through two relays (open, close) with end stops;
    position is estimated from travel time."""

    name: Identifier
    type: Literal["relay"]
    open_pin: Pin
    close_pin: Pin
    active_high: bool = True
    travel_time_s: float = Field(gt=0, le=600, description="Full close→open travel time [s]")


VentConfig = Annotated[ServoVentConfig | RelayVentConfig, Field(discriminator="type")]

# --- the rest --------------------------------------------------------------------------------

class MqttConfig(_Section):
    broker: str = Field("mqtt://127.0.0.1:1883",
                        description="mqtt://host:port or mqtts://host:port (TLS)")
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password_file: Path | None = Field(
        None, description="File holding the password (keep secrets out of this config)")
    tls_ca_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=600)
    max_inflight: int = Field(100, ge=1, le=1000,
                              description="QoS 1 messages sent but not yet acknowledged")

    @field_validator("broker")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_broker_url(value)
        return value


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` → (host, port, tls); ValueError with one line if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker {url!r} must look like mqtt://host:port or mqtts://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker {url!r} has an invalid port") from None
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


class OutboxConfig(_Section):
    """The durable on-disk queue of messages not yet acknowledged by the broker. Every reading
    is fsynced before it is published (survives power cuts); there is deliberately no option
    to relax that: after a power cut a relaxed outbox could hand out a sequence number again
    that the gateway already stored, and the new reading would be dropped as a duplicate."""

    max_mb: float = Field(64.0, gt=0, le=4096,
                          description="Disk bound; when full the OLDEST messages are dropped "
                          "and counted (queue_dropped_total, queue_overflow event)")



class SimulationConfig(_Section):
    """Only read when ``simulated = true``: the dryer physics replace the hardware."""

    seed: int = 1
    speed: float = Field(1.0, gt=0, le=100_000, description="Simulated seconds per real second")
    start: str | None = Field(None, description="ISO start time of simulated time (default now)")
    dryer: Literal["greenhouse", "open"] = "greenhouse"
    load_kg: float = Field(400.0, gt=0, le=2000)
    initial_moisture_pct_wb: float = Field(56.0, ge=10, le=80)
    start_batch: bool = Field(True, description="Start a batch at boot (demo)")
    clock_offset_file: Path | None = Field(
        None, description="File saying how far this node's clock is off true time (+6h, "
        "-3h, -10800; missing or empty: 0). Read twice a second while running: writing it "
        "steps the clock under way, as NTP or a wrong manual setting steps a Pi's "
        "(docs/simulator.md). Relative to the config file's folder")


class NodeSettings(_Section):
    node_id: Identifier
    site_id: Identifier
    simulated: bool = False
    sample_interval_s: float = Field(10.0, ge=1, le=3600)
    status_interval_s: float = Field(60.0, ge=5, le=3600)
    utc_offset_h: float = Field(-5.0, ge=-12, le=14, description="Local time offset (Peru: -5)")
    data_dir: Path = Field(Path("/var/lib/cacao-dryer"),
                           description="Outbox, sequence numbers and last good config live here")
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    sensors: list[SensorConfig] = Field(default_factory=list)
    fans: list[FanConfig] = Field(default_factory=list)
    vents: list[VentConfig] = Field(default_factory=list)
    thresholds: Thresholds = Field(
        default_factory=Thresholds,
        description="Used until the gateway sends a config (built-in defaults otherwise)")
    simulation: SimulationConfig = SimulationConfig()

    @model_validator(mode="after")
    def _pins(self) -> NodeSettings:
        used: dict[int, str] = {}

        def claim(pin: int, owner: str) -> None:
            if pin not in HEADER_GPIO_PINS:
                raise ValueError(f"{owner}: pin {pin} is not a GPIO on the 40-pin header "
                                 f"(BCM 2..27)")
            if pin in used:
                raise ValueError(f"{owner}: pin {pin} is already used by {used[pin]}")
            used[pin] = owner

        names: set[str] = set()
        for sensor in self.sensors:
            if sensor.name in names:
                raise ValueError(f"sensor name {sensor.name!r} is used twice")
            names.add(sensor.name)
            owner = f"sensor {sensor.name!r}"
            if isinstance(sensor, DhtSensorConfig | RainSensorConfig):
                claim(sensor.pin, owner)
            elif isinstance(sensor, LoadCellTrayConfig):
                claim(sensor.data_pin, owner)
                claim(sensor.clock_pin, owner)
            elif isinstance(sensor, MoistureProbeConfig) and 2 not in used:
                for pin in sorted(I2C_PINS):
                    claim(pin, "I2C bus (ADS1115)")
        for fan in self.fans:
            claim(fan.pin, f"fan {fan.name!r}")
        for vent in self.vents:
            if isinstance(vent, ServoVentConfig):
                claim(vent.pin, f"vent {vent.name!r}")
            else:
                claim(vent.open_pin, f"vent {vent.name!r}")
                claim(vent.close_pin, f"vent {vent.name!r}")
        if not self.simulated and self.simulation.clock_offset_file is not None:
            raise ValueError("simulation.clock_offset_file steps a simulated node's clock; this "
                             "node is not simulated (a real node keeps the system clock)")
        dhts = [s for s in self.sensors if isinstance(s, DhtSensorConfig)]
        locations = [s.location for s in dhts]
        for location in ("inside", "ambient"):
            if locations.count(location) > 1:
                raise ValueError(f"only one {location} air sensor is supported")
        if (self.fans or self.vents) and "inside" not in locations:
            raise ValueError("fans and vents need an inside air sensor (a dht22/dht11 with "
                             "location = \"inside\") to be controlled safely")
        # A real DHT needs ~2 s between measurements, so each retry blocks the loop that long
        # (a simulated one does not wait).
        worst_s = sum(DHT_RETRY_WAIT_S * s.retries for s in dhts)
        if not self.simulated and worst_s > self.sample_interval_s / 2:
            raise ValueError(f"DHT retries could block {worst_s:.1f} s per sample "
                             f"(~{DHT_RETRY_WAIT_S} s each), more than half of sample_interval_s "
                             f"= {self.sample_interval_s:g} s: lower retries or sample less often")
        return self


# Discriminator tags pydantic puts in error locations; left out of "where" in messages.
_DEVICE_TAGS = {"dht22", "dht11", "moisture_probe", "load_cell_tray", "rain", "pwm", "relay",
                "servo", "sqlite", "influxdb1", "influxdb2"}


def _location(loc: tuple[int | str, ...]) -> str:
    """('sensors', 0, 'moisture_probe', 'calibration') → 'sensors[0].calibration'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in _DEVICE_TAGS:
            text += f".{part}" if text else part
    return text


def one_line_error(error: ValidationError) -> str:
    """The first problem of a config ValidationError as ' key: what is wrong'."""
    first = error.errors()[0]
    location = _location(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        message = (f"unknown type {first['ctx']['tag']!r} "
                   f"(expected one of {first['ctx']['expected_tags']})")
    elif first["type"] == "union_tag_not_found":
        message = (f"missing {first['ctx']['discriminator']} (which kind of "
                   f"{'storage' if 'kind' in first['ctx']['discriminator'] else 'device'} "
                   "is this?)")
    elif first["type"] == "missing":
        message = "missing (required)"
    elif first["type"] == "extra_forbidden":
        message = "unknown setting (check the spelling)"
    where = f" {location}:" if location else ""
    return f"{where} {message}"


_Model = TypeVar("_Model", bound=BaseModel)


def validate_config(model: type[_Model], data: dict[str, object], source: str) -> _Model:
    """``model`` from ``data``, or ConfigError: '<source>: <key>: <what is wrong>'."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}:{one_line_error(exc)}") from None


def read_toml(path: Path) -> dict[str, object]:
    """A TOML file's contents, or ConfigError naming the file and the problem in one line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def parse_node_config(data: dict[str, object], source: str = "node config") -> NodeSettings:
    return validate_config(NodeSettings, data, source)


def load_node_config(path: Path) -> NodeSettings:
    """Read and validate a node TOML file. Relative ``data_dir`` and
    ``simulation.clock_offset_file`` are relative to the file's folder."""
    settings = parse_node_config(read_toml(path), str(path))
    if not settings.data_dir.is_absolute():
        settings = settings.model_copy(update={"data_dir": path.parent / settings.data_dir})
    offset_file = settings.simulation.clock_offset_file
    if offset_file is not None and not offset_file.is_absolute():
        simulation = settings.simulation.model_copy(
            update={"clock_offset_file": path.parent / offset_file})
        settings = settings.model_copy(update={"simulation": simulation})
    return settings
