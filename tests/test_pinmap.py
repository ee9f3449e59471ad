"""The hardware pin map (hardware/pinmap.toml) against the 40-pin header, the firmware's rules and
the example node configs, and the wiring diagrams drawn from it."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import pytest

from cacao_dryer.errors import ConfigError
from cacao_dryer.pinmap import (
    HARDWARE_PWM_CHANNEL,
    HEADER,
    PinMap,
    config_mismatches,
    expected_gpio_use,
    load_pinmap,
    parse_pinmap,
)
from firmware.config import (
    HEADER_GPIO_PINS,
    I2C_PINS,
    MoistureProbeConfig,
    load_node_config,
    parse_node_config,
)

ROOT = Path(__file__).parent.parent
PINMAP = ROOT / "hardware" / "pinmap.toml"
EXAMPLES = ROOT / "firmware" / "examples"
HARDWARE_SETUPS = sorted(path.stem for path in EXAMPLES.glob("pi-*.toml"))


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "hardware" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pinmap() -> PinMap:
    return load_pinmap(PINMAP)


@pytest.fixture
def raw() -> dict[str, Any]:
    return tomllib.loads(PINMAP.read_text(encoding="utf-8"))


def part(data: dict[str, Any], setup: str, part_id: str) -> dict[str, Any]:
    return next(p for p in data["setups"][setup]["parts"] if p["id"] == part_id)


def wire(data: dict[str, Any], setup: str, part_id: str, terminal: str) -> dict[str, Any]:
    return next(w for w in part(data, setup, part_id)["wires"] if w["terminal"] == terminal)


# --- the header table ---------------------------------------------------------------------------

def test_header_has_forty_pins_with_the_firmwares_gpios() -> None:
    assert sorted(HEADER) == list(range(1, 41))
    kinds = Counter(pin.kind for pin in HEADER.values())
    assert kinds == {"gpio": 26, "GND": 8, "3V3": 2, "5V": 2, "ID_SD": 1, "ID_SC": 1}
    assert {pin.gpio for pin in HEADER.values() if pin.kind == "gpio"} == HEADER_GPIO_PINS


@pytest.mark.parametrize(("physical", "label"), [
    (1, "3V3"), (2, "5V"), (3, "GPIO2"), (5, "GPIO3"), (6, "GND"), (7, "GPIO4"), (8, "GPIO14"),
    (11, "GPIO17"), (12, "GPIO18"), (13, "GPIO27"), (17, "3V3"), (27, "ID_SD"), (28, "ID_SC"),
    (29, "GPIO5"), (31, "GPIO6"), (32, "GPIO12"), (33, "GPIO13"), (35, "GPIO19"), (37, "GPIO26"),
    (39, "GND"), (40, "GPIO21"),
])
def test_header_pins_are_the_raspberry_pi_pinout(physical: int, label: str) -> None:
    assert HEADER[physical].label == label


def test_hardware_pwm_pins_and_i2c_bus() -> None:
    pwm = {pin.gpio: pin.special for pin in HEADER.values() if pin.special.startswith("PWM")}
    assert pwm == {12: "PWM0", 18: "PWM0", 13: "PWM1", 19: "PWM1"}
    assert HARDWARE_PWM_CHANNEL == {12: 0, 18: 0, 13: 1, 19: 1}
    assert (HEADER[3].gpio, HEADER[5].gpio) == (2, 3) and {2, 3} == I2C_PINS


# --- the committed pin map ----------------------------------------------------------------------

def test_one_setup_per_hardware_example_config(pinmap: PinMap) -> None:
    assert sorted(pinmap.setups) == HARDWARE_SETUPS
    for name, setup in pinmap.setups.items():
        assert setup.config == f"firmware/examples/{name}.toml"


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_setup_matches_its_example_config(pinmap: PinMap, name: str) -> None:
    setup = pinmap.setups[name]
    settings = load_node_config(ROOT / setup.config)
    assert config_mismatches(setup, settings) == []
    # Independently of the module: the same GPIO for the same setting, and nothing more.
    wired = {w.config: w.gpio for _, w in setup.wires() if w.config}
    assert wired == {use.setting: use.gpio for use in expected_gpio_use(settings)}


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_no_gpio_is_used_twice_except_the_shared_i2c_bus(pinmap: PinMap, name: str) -> None:
    signals = [w for _, w in pinmap.setups[name].wires() if w.gpio is not None]
    counts = Counter(w.gpio for w in signals)
    for gpio, count in counts.items():
        if count > 1:
            assert gpio in I2C_PINS
            assert {w.use for w in signals if w.gpio == gpio} <= {"i2c_sda", "i2c_scl"}


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_every_wire_goes_to_a_pin_of_its_kind(pinmap: PinMap, name: str) -> None:
    for _, w in pinmap.setups[name].wires():
        header = HEADER[w.pin]
        if w.gpio is not None:
            assert header.kind == "gpio" and header.gpio == w.gpio
            assert w.gpio in HEADER_GPIO_PINS and w.gpio not in (14, 15)  # serial console
        else:
            assert header.kind == w.power


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_fans_and_servos_use_separate_hardware_pwm_channels(pinmap: PinMap, name: str) -> None:
    pwm = [w.gpio for _, w in pinmap.setups[name].wires() if w.use == "pwm"]
    assert all(gpio in HARDWARE_PWM_CHANNEL for gpio in pwm)
    channels = [HARDWARE_PWM_CHANNEL[gpio] for gpio in pwm if gpio is not None]
    assert len(channels) == len(set(channels))


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_parts_that_talk_to_gpios_are_powered_from_3v3_and_share_ground(pinmap: PinMap,
                                                                         name: str) -> None:
    for p in pinmap.setups[name].parts:
        uses = {w.use for w in p.wires if w.gpio is not None}
        if uses:
            assert any(w.power == "GND" for w in p.wires), p.id
        if uses & {"io", "input", "i2c_sda", "i2c_scl"}:
            assert {w.power for w in p.wires if w.power and w.power != "GND"} == {"3V3"}, p.id


def test_pin_map_uses_the_firmware_defaults(pinmap: PinMap) -> None:
    """No pin has a default in firmware/config.py; the I2C bus and the probe's ADS1115 address
    and input do, and the pin map keeps to them."""
    fields = MoistureProbeConfig.model_fields
    for setup in pinmap.setups.values():
        i2c = {w.use: w.gpio for _, w in setup.wires() if w.use in ("i2c_sda", "i2c_scl")}
        assert not i2c or set(i2c.values()) == I2C_PINS
        for p in setup.parts:
            if p.type == "ads1115":
                assert p.i2c_address == fields["i2c_address"].default
            if p.type == "moisture_probe":
                assert p.adc_channel == fields["channel"].default


def test_a_second_i2c_device_may_share_the_bus(raw: dict[str, Any]) -> None:
    parts = raw["setups"]["pi-dht22-probe-pwm"]["parts"]
    second = copy.deepcopy(part(raw, "pi-dht22-probe-pwm", "adc"))
    second.update(id="adc-2", i2c_address=0x49)
    parts.append(second)
    assert len(parse_pinmap(raw).setups["pi-dht22-probe-pwm"].parts) == len(parts)


# --- broken copies are refused with one line ----------------------------------------------------

def _broken(change: str) -> Any:
    def apply(data: dict[str, Any]) -> None:
        s = "pi-dht22-probe-pwm"
        if change == "pin_of_gpio":
            wire(data, s, "air-inside", "DATA")["pin"] = 8
        elif change == "gpio_twice":
            wire(data, s, "air-outside", "DATA").update(pin=7, gpio=4)
        elif change == "power_kind":
            wire(data, s, "air-inside", "VCC")["pin"] = 2
        elif change == "no_such_pin":
            wire(data, s, "air-inside", "GND")["pin"] = 41
        elif change == "gpio_on_power_pin":
            wire(data, s, "air-inside", "DATA").update(pin=9, gpio=4)
        elif change == "software_pwm":
            wire(data, s, "fan-driver", "SIG").update(pin=16, gpio=23)
        elif change == "pwm_channel":
            wire(data, s, "vent-servo", "SIG").update(pin=32, gpio=12)
        elif change == "i2c_pin":
            wire(data, s, "adc", "SDA").update(pin=13, gpio=27)
        elif change == "i2c_for_other":
            wire(data, s, "air-inside", "DATA").update(pin=3, gpio=2)
        elif change == "serial":
            wire(data, s, "air-inside", "DATA").update(pin=8, gpio=14)
        elif change == "eeprom":
            wire(data, s, "air-inside", "GND")["pin"] = 27
        elif change == "sensor_on_5v":
            wire(data, s, "air-outside", "VCC").update(pin=4, power="5V")
        elif change == "no_ground":
            servo = part(data, s, "vent-servo")
            servo["wires"] = [w for w in servo["wires"] if w["terminal"] != "GND"]
        elif change == "no_config":
            del wire(data, s, "fan-driver", "SIG")["config"]
        elif change == "i2c_address_twice":
            second = copy.deepcopy(part(data, s, "adc"))
            second["id"] = "adc-2"
            data["setups"][s]["parts"].append(second)
        elif change == "typo":
            wire(data, s, "air-inside", "DATA")["colur"] = "red"
        elif change == "unknown_type":
            part(data, s, "air-inside")["type"] = "dht21"
    return apply


@pytest.mark.parametrize(("change", "message"), [
    ("pin_of_gpio", "air-inside DATA: GPIO4 is on pin 7, pin 8 is GPIO14"),
    ("gpio_twice", "air-outside DATA: GPIO4 is already used by air-inside DATA"),
    ("power_kind", "air-inside VCC: pin 2 is 5V, not 3V3"),
    ("no_such_pin", "air-inside GND: pin 41 does not exist on the 40-pin header"),
    ("gpio_on_power_pin", "air-inside DATA: pin 9 is GND, not a GPIO"),
    ("software_pwm", "fan-driver SIG: GPIO23 has no hardware PWM"),
    ("pwm_channel", "vent-servo SIG: GPIO12 shares hardware PWM channel 0 with fan-driver SIG"),
    ("i2c_pin", "adc SDA: I2C SDA must be GPIO2 (pin 3), not GPIO27"),
    ("i2c_for_other", "air-inside DATA: GPIO2 is the I2C bus"),
    ("serial", "air-inside DATA: GPIO14 is the serial console"),
    ("eeprom", "air-inside GND: pin 27 is ID_SD (HAT EEPROM): keep it free"),
    ("sensor_on_5v", "air-outside: sends signals into the Pi but is powered from 5 V"),
    ("no_ground", "vent-servo: has signal wires but no GND wire to the Pi"),
    ("no_config", "fan-driver SIG: GPIO18: name the node-config setting"),
    ("i2c_address_twice", "adc-2: I2C address 0x48 is already used by adc"),
    ("typo", "colur: unknown field"),
    ("unknown_type", "parts[0].type: Input should be"),
])
def test_a_broken_pin_map_is_refused_in_one_line(raw: dict[str, Any], change: str,
                                                 message: str) -> None:
    _broken(change)(raw)
    with pytest.raises(ConfigError) as caught:
        parse_pinmap(raw, "pinmap.toml")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("pinmap.toml: ")
    assert message in text


def test_a_broken_pin_map_file_names_the_file_and_the_wire(tmp_path: Path) -> None:
    text = PINMAP.read_text(encoding="utf-8")
    good = '{ terminal = "DATA", pin = 11, gpio = 17,'
    assert good in text
    broken = tmp_path / "pinmap.toml"
    broken.write_text(text.replace(good, '{ terminal = "DATA", pin = 7, gpio = 4,', 1),
                      encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^.*pinmap\.toml: setup 'pi-dht22-probe-pwm': "
                       r"air-outside DATA: GPIO4 is already used by air-inside DATA$"):
        load_pinmap(broken)
    (tmp_path / "bad.toml").write_text("schema = 1\n[setups\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_pinmap(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match=r"missing\.toml: file not found"):
        load_pinmap(tmp_path / "missing.toml")


# --- a pin map and a node config that disagree ------------------------------------------------

def test_a_pin_map_wired_differently_from_its_config_is_caught(raw: dict[str, Any]) -> None:
    wire(raw, "pi-loadcell-relay", "rain", "DO").update(pin=13, gpio=27)
    wire(raw, "pi-loadcell-relay", "tray-adc", "SCK")["use"] = "input"
    setup = parse_pinmap(raw).setups["pi-loadcell-relay"]
    settings = load_node_config(EXAMPLES / "pi-loadcell-relay.toml")
    assert config_mismatches(setup, settings) == [
        "sensors.sample-tray.clock_pin: the firmware uses it as output, the pin map says input "
        "(tray-adc SCK)",
        "sensors.rain.pin: the config says GPIO26, the pin map wires GPIO27 (rain DO)",
    ]


def test_a_config_changed_without_the_pin_map_is_caught(pinmap: PinMap) -> None:
    data = tomllib.loads((EXAMPLES / "pi-dht22-probe-pwm.toml").read_text(encoding="utf-8"))
    data["fans"][0]["pin"] = 19
    data["sensors"][2].update(i2c_address=0x49, channel=2)
    data["sensors"].append({"type": "rain", "name": "rain", "pin": 26})
    problems = config_mismatches(pinmap.setups["pi-dht22-probe-pwm"], parse_node_config(data))
    assert problems == [
        "sensors.rain.pin = 26 is not wired in the pin map",
        "fans.circulation.pin: the config says GPIO19, the pin map wires GPIO18 "
        "(fan-driver SIG)",
        "sensors.bean-probe: the config says I2C address 0x49, the pin map's adc has 0x48",
        "sensors.bean-probe: the config says ADS1115 channel A2, the pin map wires A0",
    ]


def test_wiring_a_part_of_the_wrong_kind_is_caught(raw: dict[str, Any]) -> None:
    part(raw, "pi-dht11-servo", "air-outside")["type"] = "dht22"
    setup = parse_pinmap(raw).setups["pi-dht11-servo"]
    settings = load_node_config(EXAMPLES / "pi-dht11-servo.toml")
    assert config_mismatches(setup, settings) == [
        "sensors.outside-air.pin: wired to a dht22 (air-outside), expected dht11"]


# --- wiring diagrams ----------------------------------------------------------------------------

def test_committed_wiring_diagrams_are_up_to_date(pinmap: PinMap) -> None:
    drawings = load_script("draw_wiring").render_all(pinmap)
    committed = {path.name for path in (ROOT / "hardware" / "wiring").glob("*.svg")}
    assert committed == {f"{name}.svg" for name in HARDWARE_SETUPS}
    for file_name, text in drawings.items():
        on_disk = (ROOT / "hardware" / "wiring" / file_name).read_text(encoding="utf-8")
        assert on_disk == text, f"{file_name} is stale: run python hardware/draw_wiring.py"


@pytest.mark.parametrize("name", HARDWARE_SETUPS)
def test_diagram_is_self_contained_and_labels_every_wire(pinmap: PinMap, name: str) -> None:
    text = (ROOT / "hardware" / "wiring" / f"{name}.svg").read_text(encoding="utf-8")
    root = ElementTree.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # No external font, image, stylesheet or link: the only URL is the SVG namespace.
    assert text.count("http") == 1 and "href" not in text and "@import" not in text
    words = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    setup = pinmap.setups[name]
    for p in setup.parts:
        assert p.name in words and p.name_es in words
    for _, w in setup.wires():
        label = f"GPIO{w.gpio}" if w.gpio is not None else str(w.power)
        assert label in words
        if w.config:
            assert w.config in words
    for phrase in ("Legend / leyenda", "Power rails / rieles de alimentación", "3.3 V"):
        assert phrase in words
    polylines = root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(polylines) == 2 * len(list(setup.wires()))   # outline + colour per wire


def test_draw_wiring_script_checks_from_the_command_line() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hardware" / "draw_wiring.py"),
                             "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(HARDWARE_SETUPS)} diagrams checked" in result.stdout
