"""What a node remembers across restarts (last good config, current batch)."""

from datetime import UTC, datetime

import pytest

from cacao_dryer.contract import NodeConfig, Thresholds
from firmware.state_store import BatchInfo, StateStore

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def test_config_survives_a_restart(tmp_path):
    config = NodeConfig(version=3, issued_at=NOW, thresholds=Thresholds(air_temp_warn_c=50))
    StateStore(tmp_path).save_config(config)
    assert StateStore(tmp_path).load_config() == config


def test_no_config_before_the_first_one(tmp_path):
    assert StateStore(tmp_path).load_config() is None


@pytest.mark.parametrize(("name", "load"), [("config.json", StateStore.load_config),
                                            ("batch.json", StateStore.load_batch),
                                            ("tray.json", StateStore.load_tare_offset)])
def test_a_corrupt_file_is_set_aside_and_reported_not_fatal(tmp_path, name, load):
    (tmp_path / name).write_text("{half a fi")
    store = StateStore(tmp_path)
    assert load(store) is None
    assert not (tmp_path / name).exists()
    assert [p.name.startswith(f"{name}.corrupt-") for p in tmp_path.iterdir()] == [True]
    assert len(store.set_aside) == 1 and "unreadable" in store.set_aside[0]
    assert "\n" not in store.set_aside[0]


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
