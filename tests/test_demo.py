"""The README's demo: a broker, three simulated dryers and the live view, for real."""

from __future__ import annotations

import pytest

from cacao_dryer.demo import run_demo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("embedded_broker", [False, True], ids=["mosquitto", "amqtt"])
def test_demo_shows_three_dryers_reporting(tmp_path, embedded_broker, capsys):
    view = run_demo(nodes=3, speed=600, broker=None, duration_s=8, workdir=tmp_path,
                    embedded_broker=embedded_broker)
    assert sorted(view.nodes) == ["demo/secador-01", "demo/secador-02", "demo/secador-03"]
    for name, node in view.nodes.items():
        assert node.telemetry is not None, f"{name} sent no telemetry"
        assert node.readings_seen >= 3
        assert node.telemetry.readings.bean_moisture_pct_wb is not None
        assert node.status is not None and node.status.state.value == "online"
    assert view.invalid == 0
    assert any(": boot — node started" in line for line in view.events)
    assert "secador-01" in capsys.readouterr().out
    for index in (1, 2, 3):
        assert (tmp_path / f"secador-{index:02d}" / "outbox.sqlite3").exists()
