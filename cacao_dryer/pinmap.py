"""The Raspberry Pi 40-pin header and the hardware pin map (hardware/pinmap.toml).

``load_pinmap(path)`` reads and checks the pin map; any problem is a ``ConfigError`` with one
line naming the file, the setup, the part and the wire. ``config_mismatches(setup, settings)``
lists, one line each, where a setup's wiring differs from its node config
(``expected_gpio_use(settings)`` is what a node config needs on the header). Pure: no I/O
except reading the file, nothing imported from the Pi's hardware libraries.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cacao_dryer.errors import ConfigError
from firmware.config import (
    HEADER_GPIO_PINS,
    I2C_PINS,
    DhtSensorConfig,
    LoadCellTrayConfig,
    MoistureProbeConfig,
    NodeSettings,
    RainSensorConfig,
    ServoVentConfig,
)

PinKind = Literal["gpio", "3V3", "5V", "GND", "ID_SD", "ID_SC"]


@dataclass(frozen=True)
class HeaderPin:
    """One pin of the 40-pin header: ``physical`` 1..40, what it is, and its BCM GPIO number."""

    physical: int
    kind: PinKind
    gpio: int | None = None
    special: str = ""   # alternative function worth knowing when wiring (SDA1, PWM0, TXD, ...)

    @property
    def label(self) -> str:
        return f"GPIO{self.gpio}" if self.kind == "gpio" else self.kind


def _header() -> dict[int, HeaderPin]:
    power: dict[int, PinKind] = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V", 27: "ID_SD", 28: "ID_SC"}
    power |= dict.fromkeys((6, 9, 14, 20, 25, 30, 34, 39), "GND")
    gpio = {3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
            19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
            36: 16, 37: 26, 38: 20, 40: 21}
    special = {2: "SDA1", 3: "SCL1", 4: "GPCLK0", 14: "TXD", 15: "RXD", 10: "MOSI", 9: "MISO",
               11: "SCLK", 8: "CE0", 7: "CE1", 12: "PWM0", 18: "PWM0", 13: "PWM1", 19: "PWM1"}
    pins: dict[int, HeaderPin] = {}
    for physical in range(1, 41):
        if physical in power:
            pins[physical] = HeaderPin(physical, power[physical],
                                       {27: 0, 28: 1}.get(physical))
        else:
            bcm = gpio[physical]
            pins[physical] = HeaderPin(physical, "gpio", bcm, special.get(bcm, ""))
    return pins


# Physical pin → what it is, for every Pi with a 40-pin header (B+ and later, Zero 2 W, Pi 5).
HEADER: dict[int, HeaderPin] = _header()
PHYSICAL_PIN_OF_GPIO: dict[int, int] = {p.gpio: p.physical for p in HEADER.values()
                                        if p.kind == "gpio" and p.gpio is not None}
# The two PWM channels of the Pi; each is brought out on two GPIOs.
HARDWARE_PWM_CHANNEL: dict[int, int] = {12: 0, 18: 0, 13: 1, 19: 1}
SERIAL_CONSOLE_GPIOS = frozenset({14, 15})
I2C_SDA_GPIO, I2C_SCL_GPIO = sorted(I2C_PINS)
assert {p.gpio for p in HEADER.values() if p.kind == "gpio"} == HEADER_GPIO_PINS

PartType = Literal["dht22", "dht11", "ads1115", "moisture_probe", "hx711", "load_cell", "rain",
                   "mosfet_module", "relay_board", "servo", "fan", "linear_actuator",
                   "power_supply"]
Use = Literal["io", "input", "output", "pwm", "i2c_sda", "i2c_scl"]
# Parts whose signal goes INTO a GPIO: powered from 5 V they would put 5 V on the Pi's pins.
_DRIVES_GPIO: frozenset[str] = frozenset({"io", "input", "i2c_sda", "i2c_scl"})


# --- the file's structure ---------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Wire(_Model):
    """One wire from a header pin to a part's terminal."""

    terminal: str = Field(min_length=1)
    pin: int = Field(description="physical header pin 1..40")
    gpio: int | None = Field(None, description="BCM GPIO number (signal wires)")
    power: Literal["3V3", "5V", "GND"] | None = None
    use: Use | None = None
    config: str | None = Field(None, description="node-config setting holding this GPIO")
    colour: str = Field(min_length=1)
    software_pwm: bool = False
    note: str = ""


class Part(_Model):
    id: str = Field(min_length=1)
    type: PartType
    name: str = Field(min_length=1)
    name_es: str = Field(min_length=1)
    bom: str = Field(min_length=1, description="item name in hardware/bom.csv")
    config: str | None = None
    i2c_address: int | None = Field(None, ge=0x03, le=0x77)
    adc: str | None = None
    adc_channel: int | None = Field(None, ge=0, le=3)
    wires: list[Wire] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class Setup(_Model):
    title: str = Field(min_length=1)
    title_es: str = Field(min_length=1)
    config: str = Field(description="the example node config, relative to the repository")
    parts: list[Part] = Field(min_length=1)

    def wires(self) -> Iterable[tuple[Part, Wire]]:
        for part in self.parts:
            for wire in part.wires:
                yield part, wire


class PinMap(_Model):
    schema_: int = Field(alias="schema")
    setups: dict[str, Setup] = Field(min_length=1)


# --- loading and checking ---------------------------------------------------------------------

def load_pinmap(path: Path) -> PinMap:
    """Read and check ``path``; ConfigError '<path>: <where>: <what is wrong>' otherwise."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_pinmap(data, str(path))


def parse_pinmap(data: dict[str, object], source: str = "pin map") -> PinMap:
    try:
        pinmap = PinMap.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        message = {"missing": "missing (required)",
                   "extra_forbidden": "unknown field (check the spelling)"}.get(
                       first["type"], first["msg"])
        raise ConfigError(f"{source}: {where.lstrip('.')}: {message}") from None
    if pinmap.schema_ != 1:
        raise ConfigError(f"{source}: schema {pinmap.schema_} is not supported (expected 1)")
    for name, setup in pinmap.setups.items():
        problem = setup_problem(setup)
        if problem:
            raise ConfigError(f"{source}: setup {name!r}: {problem}")
    return pinmap


def _wire_problem(wire: Wire) -> str | None:
    header = HEADER.get(wire.pin)
    if header is None:
        return f"pin {wire.pin} does not exist on the 40-pin header (1..40)"
    if header.kind in ("ID_SD", "ID_SC"):
        return f"pin {wire.pin} is {header.kind} (HAT EEPROM): keep it free"
    if (wire.gpio is None) == (wire.power is None):
        return "give either gpio (a signal wire) or power (3V3, 5V or GND)"
    if wire.power is not None:
        if wire.use is not None or wire.config is not None:
            return "a power wire has no use or config"
        if header.kind != wire.power:
            return f"pin {wire.pin} is {header.label}, not {wire.power}"
        return None
    if header.kind != "gpio":
        return f"pin {wire.pin} is {header.label}, not a GPIO"
    if header.gpio != wire.gpio:
        return (f"GPIO{wire.gpio} is on pin {PHYSICAL_PIN_OF_GPIO.get(wire.gpio, '(none)')}, "
                f"pin {wire.pin} is GPIO{header.gpio}")
    gpio = header.gpio
    if wire.use is None:
        return f"GPIO{gpio}: say what it is used for (use = io, input, output, pwm, i2c_...)"
    if wire.gpio in SERIAL_CONSOLE_GPIOS:
        return f"GPIO{gpio} is the serial console (TXD/RXD): keep it free"
    if wire.use == "i2c_sda" and gpio != I2C_SDA_GPIO:
        return f"I2C SDA must be GPIO{I2C_SDA_GPIO} (pin 3), not GPIO{gpio}"
    if wire.use == "i2c_scl" and gpio != I2C_SCL_GPIO:
        return f"I2C SCL must be GPIO{I2C_SCL_GPIO} (pin 5), not GPIO{gpio}"
    if gpio in I2C_PINS and wire.use not in ("i2c_sda", "i2c_scl"):
        return f"GPIO{gpio} is the I2C bus (fixed 1.8 kΩ pull-up): use it only for I2C"
    if wire.use == "pwm" and gpio not in HARDWARE_PWM_CHANNEL:
        if not wire.software_pwm:
            return (f"GPIO{gpio} has no hardware PWM: use GPIO12/13/18/19, or set "
                    "software_pwm = true with a note")
        if not wire.note:
            return f"GPIO{gpio}: software_pwm needs a note saying why"
    if wire.use not in ("i2c_sda", "i2c_scl") and not wire.config:
        return f"GPIO{gpio}: name the node-config setting it belongs to (config = ...)"
    return None


def setup_problem(setup: Setup) -> str | None:
    """The first wiring problem of one setup as '<part> <terminal>: <what>', or None."""
    ids: set[str] = set()
    for part in setup.parts:
        if part.id in ids:
            return f"part id {part.id!r} is used twice"
        ids.add(part.id)
    gpio_owner: dict[int, tuple[str, str]] = {}
    pwm_owner: dict[int, str] = {}
    config_owner: dict[str, str] = {}
    i2c_addresses: dict[int, str] = {}
    for part in setup.parts:
        where = part.id
        terminals = [w.terminal for w in part.wires]
        if len(set(terminals)) != len(terminals):
            return f"{where}: a terminal is wired twice"
        for wire in part.wires:
            here = f"{where} {wire.terminal}"
            problem = _wire_problem(wire)
            if problem:
                return f"{here}: {problem}"
            if wire.gpio is None or wire.use is None:
                continue
            if wire.gpio in gpio_owner:
                other_use, other = gpio_owner[wire.gpio]
                if not (wire.use == other_use and wire.use in ("i2c_sda", "i2c_scl")):
                    return f"{here}: GPIO{wire.gpio} is already used by {other}"
            gpio_owner[wire.gpio] = (wire.use, here)
            if wire.use == "pwm" and wire.gpio in HARDWARE_PWM_CHANNEL:
                channel = HARDWARE_PWM_CHANNEL[wire.gpio]
                if channel in pwm_owner:
                    return (f"{here}: GPIO{wire.gpio} shares hardware PWM channel {channel} "
                            f"with {pwm_owner[channel]}")
                pwm_owner[channel] = here
            if wire.config:
                if wire.config in config_owner:
                    return f"{here}: config {wire.config} is already wired to " \
                           f"{config_owner[wire.config]}"
                config_owner[wire.config] = here
        signals = [w for w in part.wires if w.gpio is not None]
        uses = {w.use for w in signals}
        if signals and not any(w.power == "GND" for w in part.wires):
            return f"{where}: has signal wires but no GND wire to the Pi (join the grounds)"
        if uses & _DRIVES_GPIO and any(w.power == "5V" for w in part.wires):
            return (f"{where}: sends signals into the Pi but is powered from 5 V: power it from "
                    "3V3 (the GPIOs are not 5 V tolerant)")
        i2c = uses & {"i2c_sda", "i2c_scl"}
        if i2c and i2c != {"i2c_sda", "i2c_scl"}:
            return f"{where}: an I2C device needs both SDA and SCL"
        if i2c:
            if part.i2c_address is None:
                return f"{where}: an I2C device needs its i2c_address"
            if part.i2c_address in i2c_addresses:
                return (f"{where}: I2C address {part.i2c_address:#04x} is already used by "
                        f"{i2c_addresses[part.i2c_address]}")
            i2c_addresses[part.i2c_address] = where
        if part.adc is not None:
            adc = next((p for p in setup.parts if p.id == part.adc), None)
            if adc is None or adc.type != "ads1115":
                return f"{where}: adc {part.adc!r} is not an ADS1115 part of this setup"
            if part.adc_channel is None:
                return f"{where}: say which ADC input it is on (adc_channel = 0..3)"
    return None


# --- what a node config needs on the header ---------------------------------------------------

@dataclass(frozen=True)
class GpioUse:
    """A GPIO a node config uses: the setting holding it, and the part that belongs there."""

    setting: str          # e.g. "sensors.dryer-air.pin"
    gpio: int
    use: Use
    part_types: tuple[str, ...]


@dataclass(frozen=True)
class AdcUse:
    """A moisture probe read through an ADS1115 on the I2C bus (GPIO2/3)."""

    device: str           # e.g. "sensors.bean-probe"
    i2c_address: int
    channel: int


def expected_gpio_use(settings: NodeSettings) -> list[GpioUse]:
    """Every GPIO the node config drives or reads, as the firmware uses it."""
    uses: list[GpioUse] = []
    for sensor in settings.sensors:
        base = f"sensors.{sensor.name}"
        if isinstance(sensor, DhtSensorConfig):
            uses.append(GpioUse(f"{base}.pin", sensor.pin, "io", (sensor.type,)))
        elif isinstance(sensor, RainSensorConfig):
            uses.append(GpioUse(f"{base}.pin", sensor.pin, "input", ("rain",)))
        elif isinstance(sensor, LoadCellTrayConfig):
            uses.append(GpioUse(f"{base}.data_pin", sensor.data_pin, "input", ("hx711",)))
            uses.append(GpioUse(f"{base}.clock_pin", sensor.clock_pin, "output", ("hx711",)))
    for fan in settings.fans:
        if fan.type == "pwm":
            uses.append(GpioUse(f"fans.{fan.name}.pin", fan.pin, "pwm", ("mosfet_module",)))
        else:
            uses.append(GpioUse(f"fans.{fan.name}.pin", fan.pin, "output", ("relay_board",)))
    for vent in settings.vents:
        base = f"vents.{vent.name}"
        if isinstance(vent, ServoVentConfig):
            uses.append(GpioUse(f"{base}.pin", vent.pin, "pwm", ("servo",)))
        else:
            uses.append(GpioUse(f"{base}.open_pin", vent.open_pin, "output", ("relay_board",)))
            uses.append(GpioUse(f"{base}.close_pin", vent.close_pin, "output",
                                ("relay_board",)))
    return uses


def expected_adc_use(settings: NodeSettings) -> list[AdcUse]:
    return [AdcUse(f"sensors.{s.name}", s.i2c_address, s.channel) for s in settings.sensors
            if isinstance(s, MoistureProbeConfig)]


def config_mismatches(setup: Setup, settings: NodeSettings) -> list[str]:
    """Where the setup's wiring and the node config disagree, one line each ([] = they match)."""
    problems: list[str] = []
    wired = {wire.config: (part, wire) for part, wire in setup.wires() if wire.config}
    expected = expected_gpio_use(settings)
    for use in expected:
        if use.setting not in wired:
            problems.append(f"{use.setting} = {use.gpio} is not wired in the pin map")
            continue
        part, wire = wired[use.setting]
        here = f"{part.id} {wire.terminal}"
        if wire.gpio != use.gpio:
            problems.append(f"{use.setting}: the config says GPIO{use.gpio}, the pin map wires "
                            f"GPIO{wire.gpio} ({here})")
        if wire.use != use.use:
            problems.append(f"{use.setting}: the firmware uses it as {use.use}, the pin map says "
                            f"{wire.use} ({here})")
        if part.type not in use.part_types:
            problems.append(f"{use.setting}: wired to a {part.type} ({part.id}), expected "
                            f"{' or '.join(use.part_types)}")
    settings_known = {use.setting for use in expected}
    problems += [f"{part.id} {wire.terminal}: config {setting} is not in the node config"
                 for setting, (part, wire) in wired.items() if setting not in settings_known]
    devices = {f"sensors.{s.name}" for s in settings.sensors} | \
        {f"fans.{f.name}" for f in settings.fans} | {f"vents.{v.name}" for v in settings.vents}
    problems += [f"{part.id}: config {part.config} is not in the node config"
                 for part in setup.parts if part.config and part.config not in devices]
    adc_uses = expected_adc_use(settings)
    i2c_wired = {wire.gpio for _, wire in setup.wires() if wire.use in ("i2c_sda", "i2c_scl")}
    if adc_uses and i2c_wired != I2C_PINS:
        problems.append("the node config has a moisture probe (I2C) but the pin map does not "
                        "wire SDA/SCL")
    if not adc_uses and i2c_wired:
        problems.append("the pin map wires the I2C bus but the node config has no I2C device")
    parts = {part.id: part for part in setup.parts}
    for adc_use in adc_uses:
        probe = next((p for p in setup.parts if p.config == adc_use.device), None)
        if probe is None or probe.type != "moisture_probe":
            problems.append(f"{adc_use.device}: no moisture_probe part with this config")
            continue
        adc = parts.get(probe.adc or "")
        if adc is None:
            problems.append(f"{probe.id}: names no ADS1115 (adc = ...)")
            continue
        if adc.i2c_address != adc_use.i2c_address:
            wired_address = "none" if adc.i2c_address is None else f"{adc.i2c_address:#04x}"
            problems.append(f"{adc_use.device}: the config says I2C address "
                            f"{adc_use.i2c_address:#04x}, the pin map's {adc.id} has "
                            f"{wired_address}")
        if probe.adc_channel != adc_use.channel:
            problems.append(f"{adc_use.device}: the config says ADS1115 channel "
                            f"A{adc_use.channel}, the pin map wires A{probe.adc_channel}")
    return problems
