"""What bounds the gateway's memory, tested on the real parts (docs/scaling.md, "Memory").

- The receive window holds even when the broker does not: Mosquitto 2.0 sends a resumed
  session's whole offline queue at once, ignoring the Receive Maximum the gateway announced,
  so the receiver stops reading its socket while the window is full (the rest waits in the
  broker and the kernel's socket buffer, not in Python objects).
- Alembic is loaded only to migrate, and the gateway migrates in a child process.
- An ingest worker process imports what ingest needs, not the gateway's API, dashboard or
  metadata database.
"""

from __future__ import annotations

import json
import queue
import re
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.contract import Channel, Telemetry, encode, topic
from gateway.config import GatewayMqttConfig, parse_gateway_config
from gateway.ingest_workers import WorkerBatch, WorkerPool
from gateway.metadata.database import MIGRATIONS, migration_revisions, open_metadata
from gateway.mqtt_in import READ_CHUNK, MqttReceiver, Received
from gateway.timeseries import StoreUnavailable

TOPIC = "cacao/v1/coop/+/telemetry"
PAYLOAD = b"x" * 1000


def _publish_backlog(broker: MosquittoBroker, count: int) -> None:
    with Subscriber(broker, "unused/topic", "backlog-publisher", persistent=False) as client:
        for seq in range(count):
            client.publish("cacao/v1/coop/secador-01/telemetry", b"%06d" % seq + PAYLOAD)


def _take_until_quiet(arrived: queue.Queue[list[Received]], quiet_s: float = 0.3
                      ) -> list[Received]:
    """Everything handed over until nothing more comes for ``quiet_s``."""
    messages: list[Received] = []
    while True:
        try:
            messages += arrived.get(timeout=quiet_s)
        except queue.Empty:
            return messages


def test_a_resumed_session_never_holds_more_than_the_receive_maximum_unacknowledged(
        mosquitto: MosquittoBroker) -> None:
    window, backlog = 200, 2000
    settings = GatewayMqttConfig(broker=mosquitto.url, receive_maximum=window)
    arrived: queue.Queue[list[Received]] = queue.Queue()
    session = MqttReceiver(settings, "window-test", [TOPIC], arrived.put)
    session.start()
    wait_for(lambda: session.connected, 10, "the session to exist")
    session.stop()
    _publish_backlog(mosquitto, backlog)  # queued by the broker while the receiver is away
    assert READ_CHUNK // len(PAYLOAD) > window  # one socket read could overshoot the window

    client = MqttReceiver(settings, "window-test", [TOPIC], arrived.put)
    client.start()
    try:
        received: list[Received] = []
        rounds = 0
        while len(received) < backlog and rounds < 3 * backlog // window:
            rounds += 1
            held = _take_until_quiet(arrived)
            # Nothing acknowledged yet: never more than the window handed over, whatever
            # the broker sends (the rest waits in the broker and the socket buffer).
            assert 0 < len(held) <= window, f"round {rounds}: {len(held)} unacknowledged"
            assert client.window_full or len(received) + len(held) == backlog
            received += held
            assert client.ack(held) == len(held)
        assert [int(m.payload[:6]) for m in received] == list(range(backlog))
    finally:
        client.stop()


# --- the metadata database: Alembic only to migrate ----------------------------------------

_OPEN_AND_REPORT = """
import json, sys
from gateway.metadata.database import open_metadata
database = open_metadata(sys.stdin.read().strip(), migrate_in_subprocess=True)
print(json.dumps({"revision": database.revision(),
                  "alembic": sorted(m for m in sys.modules if m.split('.')[0] == 'alembic')}))
database.close()
"""


def _open_in_fresh_process(url: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", _OPEN_AND_REPORT], input=url, text=True,
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_revisions_read_without_alembic_are_alembics() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    head, known = migration_revisions()
    assert head == script.get_current_head()
    assert known == {s.revision for s in script.walk_revisions()}


def test_the_gateway_migrates_in_a_child_process_and_never_imports_alembic(
        metadata_url: str) -> None:
    head, _ = migration_revisions()
    first = _open_in_fresh_process(metadata_url)  # empty database: migrated by the child
    assert first == {"revision": head, "alembic": []}
    again = _open_in_fresh_process(metadata_url)  # already current: nothing to do
    assert again == {"revision": head, "alembic": []}
    database = open_metadata(metadata_url, upgrade=False)  # the schema is complete
    database.close()


def test_a_migration_failing_in_the_child_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    url = f"sqlite:///{path}"
    open_metadata(url).close()
    with sqlite3.connect(path) as db:  # says 0001, but the tables of 0002 exist: 0002 fails
        db.execute("UPDATE alembic_version SET version_num = '0001'")
    with pytest.raises(StoreUnavailable) as raised:
        open_metadata(url, migrate_in_subprocess=True)
    assert "table api_tokens already exists" in str(raised.value)
    assert "\n" not in str(raised.value)


# --- ingest worker processes: only what ingest needs --------------------------------------

NOT_FOR_WORKERS = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "jinja2",
                   "argon2", "prometheus_client", "paho", "gateway.api", "gateway.metadata",
                   "gateway.runtime", "dashboard")


def test_a_worker_process_imports_only_what_ingest_needs(
        tmp_path: Path, mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    settings = parse_gateway_config({
        "sites": ["coop"], "data_dir": str(tmp_path / "gw"), "ingest_workers": 1,
        "mqtt": {"broker": mosquitto.url, "client_id": "gw-imports"},
        "storage": {"kind": "sqlite", "path": str(tmp_path / "gw" / "readings.sqlite3")},
        "batch_max_latency_s": 0.05})
    # Every Python process started from here on lists each module it imports on stderr.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    batches: list[WorkerBatch] = []
    stored = threading.Event()

    def on_batch(batch: WorkerBatch) -> None:
        batches.append(batch)
        if sum(b.stored for b in batches) >= 20:
            stored.set()

    pool = WorkerPool(settings, on_batch)
    pool.start()
    try:
        wait_for(pool.all_connected, 60, "the worker to connect")
        t0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
        with Subscriber(mosquitto, "unused/topic", "node", persistent=False) as node:
            for seq in range(1, 21):
                node.publish(topic("coop", "secador-01", Channel.TELEMETRY), encode(Telemetry(
                    site_id="coop", node_id="secador-01", seq=seq,
                    measured_at=t0 + timedelta(seconds=30 * seq),
                    readings={"air_temp_c": 41.0}, fan_speed_pct=30, vent_open_pct=100,
                    mode="auto", config_version=1)))
            assert stored.wait(30), "the worker stored the readings"
    finally:
        pool.stop()
    assert not pool.all_connected()
    assert [r.seq for b in batches for r in b.readings][-1] == 20  # the newest, handed up
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$",
                              capfd.readouterr().err, re.MULTILINE))
    assert {"gateway.ingest", "gateway.stores.sqlite"} <= imported  # it was a worker
    assert "multiprocessing.spawn" not in imported  # a plain interpreter, not a spawn child
    unwanted = sorted(m for m in imported if m.startswith(NOT_FOR_WORKERS))
    assert unwanted == []


def test_gateways_starting_together_on_a_new_postgresql_migrate_it_once(
        postgres_server) -> None:
    url = postgres_server.create_database()
    outcomes: list[object] = []

    def start_gateway() -> None:
        try:
            open_metadata(url, migrate_in_subprocess=True).close()
            outcomes.append("ok")
        except Exception as exc:  # collected: the assertion below shows it
            outcomes.append(exc)

    gateways = [threading.Thread(target=start_gateway) for _ in range(3)]
    for gateway in gateways:
        gateway.start()
    for gateway in gateways:
        gateway.join(120)
    assert outcomes == ["ok", "ok", "ok"]
    assert _open_in_fresh_process(url)["revision"] == migration_revisions()[0]
