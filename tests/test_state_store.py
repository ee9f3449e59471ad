"""What a node remembers across restarts (last good config, current batch)."""

from datetime import UTC, datetime

import pytest

from cacao_dryer.contract import NodeConfig, Thresholds
from cacao_dryer.errors import ConfigError
from firmware.state_store import BatchInfo, StateStore

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def test_config_survives_a_restart(tmp_path):
    config = NodeConfig(version=3, issued_at=NOW, thresholds=Thresholds(air_temp_warn_c=50))
    StateStore(tmp_path).save_config(config)
    assert StateStore(tmp_path).load_config() == config


def test_no_config_before_the_first_one(tmp_path):
    assert StateStore(tmp_path).load_config() is None


def test_corrupt_config_file_is_reported_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{half a fi")
    with pytest.raises(ConfigError, match="stored config is unreadable") as error:
        StateStore(tmp_path).load_config()
    assert "\n" not in str(error.value)


def test_batch_round_trips_and_clears(tmp_path):
    store = StateStore(tmp_path)
    batch = BatchInfo("lote-7", NOW, 56.0, 12.5)
    store.save_batch(batch)
    assert StateStore(tmp_path).load_batch() == batch
    store.save_batch(None)
    assert StateStore(tmp_path).load_batch() is None


def test_no_temporary_file_is_left_behind(tmp_path):
    StateStore(tmp_path).save_batch(BatchInfo("lote-7", NOW, 56.0, None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.json"]
