"""Gateway config files: the examples load; mistakes fail in one line naming file and key."""

from pathlib import Path

import pytest

from cacao_dryer.errors import ConfigError
from gateway.config import InfluxDB1Storage, SqliteStorage, load_gateway_config

EXAMPLES = sorted((Path(__file__).parent.parent / "gateway" / "examples").glob("*.toml"))


def test_there_are_example_configs():
    assert {p.name for p in EXAMPLES} >= {"sqlite.toml", "influxdb1.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path):
    settings = load_gateway_config(path)
    assert settings.mqtt.client_id


def test_sqlite_path_is_relative_to_the_data_dir(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('data_dir = "state"\n[storage]\nkind = "sqlite"\npath = "r.sqlite3"\n')
    settings = load_gateway_config(path)
    assert isinstance(settings.storage, SqliteStorage)
    assert settings.storage.path == tmp_path / "state" / "r.sqlite3"


def test_default_storage_is_sqlite(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('sites = ["coop-a"]\n')
    assert isinstance(load_gateway_config(path).storage, SqliteStorage)


def test_influxdb1_storage(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[storage]\nkind = "influxdb1"\ndatabase = "secado"\n')
    storage = load_gateway_config(path).storage
    assert isinstance(storage, InfluxDB1Storage) and storage.database == "secado"


@pytest.mark.parametrize(("body", "message"), [
    ('[storage]\nkind = "mongodb"\n', "storage: unknown type 'mongodb'"),
    ('sites = ["Coop A"]\n', "sites[0]"),
    ('[mqtt]\nbroker = "tcp://x"\n', "mqtt.broker"),
    ("batch_max_latency_s = 0\n", "batch_max_latency_s"),
    ("colour = 1\n", "colour: unknown setting"),
])
def test_mistakes_fail_in_one_line(tmp_path, body, message):
    path = tmp_path / "gw.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_gateway_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(str(path))
