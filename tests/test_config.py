"""Node config files: valid ones load, invalid ones fail with one line naming file and key."""

from pathlib import Path

import pytest

from cacao_dryer.errors import ConfigError
from firmware.config import load_node_config, parse_broker_url

HEAD = 'node_id = "secador-01"\nsite_id = "acopagro"\n'
DHT = '[[sensors]]\ntype = "dht22"\nname = "aire"\nlocation = "inside"\npin = 4\n'


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(HEAD + body)
    return path


def error_for(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_node_config(write(tmp_path, body))
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "node.toml"))
    return message


def test_minimal_config_loads_with_defaults(tmp_path):
    settings = load_node_config(write(tmp_path, DHT))
    assert settings.node_id == "secador-01" and settings.sample_interval_s == 10.0
    assert settings.thresholds.air_temp_limit_c == 65.0


def test_relative_data_dir_is_relative_to_the_file(tmp_path):
    settings = load_node_config(write(tmp_path, 'data_dir = "data"\n'))
    assert settings.data_dir == tmp_path / "data"


def test_unknown_sensor_type(tmp_path):
    message = error_for(tmp_path, DHT.replace("dht22", "dht33"))
    assert "sensors[0]: unknown type 'dht33'" in message


def test_pin_used_twice(tmp_path):
    fan = '[[fans]]\nname = "v1"\ntype = "pwm"\npin = 4\n'
    assert "fan 'v1': pin 4 is already used by sensor 'aire'" in error_for(tmp_path, DHT + fan)


def test_pin_not_on_the_board(tmp_path):
    message = error_for(tmp_path, DHT.replace("pin = 4", "pin = 41"))
    assert "pin 41 is not a GPIO on the 40-pin header" in message


def test_i2c_pins_are_taken_by_the_moisture_probe(tmp_path):
    probe = ('[[sensors]]\ntype = "moisture_probe"\nname = "sonda"\n'
             'calibration = [[1.0, 10.0], [3.0, 60.0]]\n')
    message = error_for(tmp_path, probe + DHT.replace("pin = 4", "pin = 2"))
    assert "pin 2 is already used by I2C bus (ADS1115)" in message


def test_missing_calibration(tmp_path):
    probe = '[[sensors]]\ntype = "moisture_probe"\nname = "sonda"\n'
    assert "sensors[0].calibration: missing (required)" in error_for(tmp_path, probe)


def test_calibration_needs_increasing_volts(tmp_path):
    probe = ('[[sensors]]\ntype = "moisture_probe"\nname = "sonda"\n'
             'calibration = [[3.0, 10.0], [1.0, 60.0]]\n')
    assert "volts must be strictly increasing" in error_for(tmp_path, probe)


def test_missing_device_type(tmp_path):
    assert "missing 'type'" in error_for(tmp_path, '[[sensors]]\nname = "x"\npin = 4\n')


def test_misspelt_setting(tmp_path):
    assert "sample_intervall_s: unknown setting" in error_for(tmp_path,
                                                                "sample_intervall_s = 5\n")


def test_bad_threshold_in_config(tmp_path):
    message = error_for(tmp_path, "[thresholds]\nair_temp_limit_c = 99\n")
    assert "thresholds.air_temp_limit_c" in message


def test_not_toml(tmp_path):
    assert "not valid TOML" in error_for(tmp_path, "node_id = \n")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_node_config(tmp_path / "absent.toml")


def test_bad_broker_url(tmp_path):
    message = error_for(tmp_path, '[mqtt]\nbroker = "http://x"\n')
    assert "mqtt.broker" in message and "mqtt://host:port" in message


def test_broker_url_parsing():
    assert parse_broker_url("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884, False)
    assert parse_broker_url("mqtts://broker.local") == ("broker.local", 8883, True)


def test_two_inside_air_sensors_are_refused(tmp_path):
    second = DHT.replace('"aire"', '"aire-2"').replace("pin = 4", "pin = 5")
    assert "only one inside air sensor" in error_for(tmp_path, DHT + second)


def test_actuators_without_an_inside_air_sensor_are_refused(tmp_path):
    fan = '[[fans]]\nname = "v1"\ntype = "pwm"\npin = 18\n'
    outside = DHT.replace('"inside"', '"ambient"')
    assert "fans and vents need an inside air sensor" in error_for(tmp_path, outside + fan)


def test_dht_retries_that_would_stall_the_loop_are_refused(tmp_path):
    message = error_for(tmp_path, DHT.replace("pin = 4", "pin = 4\nretries = 3"))
    assert "DHT retries could block 6.3 s per sample" in message
