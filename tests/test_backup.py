"""Gateway backup and restore (gateway/backup.py) against the real thing: a running gateway
(ingest from a private Mosquitto, SQLite or PostgreSQL metadata, SQLite or InfluxDB 1.x
readings) is backed up while nodes keep publishing; the archive is restored into an empty
gateway, which is then opened with the gateway's own code and compared: readings by node and
sequence number, batches and spot checks, users who log in over HTTP."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from support import wait_for
from support.auth import PASSWORD, QUICK_HASHING, add_user
from support.influxd import InfluxDaemon
from support.mosquitto import MosquittoBroker, free_port
from support.postgres import PostgresServer

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic
from gateway import batches
from gateway.auth import user_service
from gateway.auth.users import Verdict
from gateway.backup import BackupError, backup, read_manifest, restore
from gateway.config import GatewaySettings, parse_gateway_config
from gateway.context import GatewayContext
from gateway.metadata.database import open_metadata
from gateway.metadata.models import Batch, SpotCheck, User
from gateway.runtime import GatewayRuntime
from gateway.spool import Spool
from gateway.stores.influxdb1 import InfluxDB1Store
from gateway.stores.sqlite import SqliteStore
from gateway.timeseries import StoredReading

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent
SITE = "coop-norte"
NODES = ("secador-01", "secador-02")
LATE = "secador-03"  # keeps publishing while the backup runs
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def sqlite_settings(folder: Path, broker: MosquittoBroker, **extra: Any) -> GatewaySettings:
    return parse_gateway_config({
        "data_dir": str(folder), "sites": [SITE],
        "mqtt": {"broker": broker.url, "client_id": f"gw-{folder.name}"},
        "storage": {"kind": "sqlite", "path": "readings.sqlite3"},
        "metadata": {"url": "sqlite:///metadata.sqlite3"},
        "api": {"port": free_port(), **QUICK_HASHING}} | extra)


class Dryers:
    """Nodes publishing telemetry over MQTT, as the firmware does (QoS 1)."""

    def __init__(self, broker: MosquittoBroker, client_id: str = "dryers") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent: dict[str, int] = {}

    def publish(self, node: str, seqs: range | list[int]) -> None:
        info = None
        for seq in seqs:
            message = Telemetry(
                site_id=SITE, node_id=node, seq=seq,
                measured_at=START + timedelta(seconds=10 * seq),
                readings={"air_temp_c": 40 + seq % 17 / 4, "air_rh_pct": 55 - seq % 13 / 3,
                          "bean_moisture_pct_wb": 50 - seq / 1000},
                fan_speed_pct=60, vent_open_pct=35.5, mode=Mode.AUTO, config_version=0)
            info = self.client.publish(topic(SITE, node, Channel.TELEMETRY), encode(message),
                                       qos=1)
            self.sent[node] = max(self.sent.get(node, 0), seq)
        if info is not None:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def dryers(mosquitto: MosquittoBroker) -> Iterator[Dryers]:
    publisher = Dryers(mosquitto)
    yield publisher
    publisher.close()


@contextmanager
def running_gateway(settings: GatewaySettings) -> Iterator[GatewayContext]:
    """The gateway running on ``settings``, its ingest connected to the broker, until the
    block ends."""
    runtime = GatewayRuntime(settings)
    context = runtime.start()
    try:
        wait_for(lambda: runtime.ingest is not None and runtime.ingest.connected, 10,
                 "ingest connected")
        yield context
    finally:
        runtime.stop()


def stored(context: GatewayContext, node: str) -> int:
    return sum(last - first + 1 for first, last in context.store.seq_ranges(SITE, node))


def fill(context: GatewayContext, dryers: Dryers) -> str:
    """Readings (one node with a gap), users, a batch with a spot check, a spooled reading
    file in data_dir; returns the batch id."""
    dryers.publish(NODES[0], range(1, 401))
    dryers.publish(NODES[1], [*range(1, 101), *range(151, 251)])  # 50 lost on the way
    wait_for(lambda: stored(context, NODES[0]) == 400 and stored(context, NODES[1]) == 200,
             timeout=30, what="the readings stored")
    add_user(context, "olga", "operator")
    add_user(context, "admin", "admin")
    with context.metadata.session() as session:
        batch, _ = batches.start_batch(session, context.publisher, batches.NewBatch(
            site_id=SITE, node_id=NODES[0], lot_code="L-031", producer="Coop Alto Mayo",
            initial_mass_kg=400.0, initial_moisture_pct_wb=56.0), "olga", context.clock.now())
        batch_id = batch.batch_id
    with context.metadata.session() as session:
        batches.add_spot_check(session, batch_id, batches.NewSpotCheck(
            moisture_pct_wb=31.5, note="hand meter"), "olga", context.clock.now())
    # What a worker process spools while the database is down: data_dir's own files.
    Spool(Path(context.settings.data_dir) / "spool-w1.jsonl").append([StoredReading(
        site_id=SITE, node_id=NODES[1], seq=999, measured_at=START, fields={"air_temp_c": 41.0})])
    return batch_id


def rows(path: Path, node: str) -> dict[int, tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return {row[2]: row for row in db.execute(
            "SELECT * FROM readings WHERE site_id = ? AND node_id = ?", (SITE, node))}


def records(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Users, batches and spot checks as plain tuples, through the gateway's own models."""
    metadata = open_metadata(url, upgrade=False)
    try:
        with metadata.session() as session:
            return {
                "users": [(u.username, u.role, u.password_hash, u.disabled)
                          for u in session.scalars(select(User).order_by(User.username))],
                "batches": [(b.batch_id, b.site_id, b.node_id, b.lot_code, b.producer,
                             b.started_at, b.initial_mass_kg, b.initial_moisture_pct_wb)
                            for b in session.scalars(select(Batch).order_by(Batch.batch_id))],
                "spot_checks": [(s.batch_id, s.moisture_pct_wb, s.note) for s in
                                session.scalars(select(SpotCheck).order_by(SpotCheck.id))]}
    finally:
        metadata.close()


def log_in(port: int, username: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
    response = client.post("/api/auth/login", json={"username": username,
                                                    "password": password})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def test_backup_of_a_running_sqlite_gateway_restores_everything(
        tmp_path: Path, mosquitto: MosquittoBroker, dryers: Dryers) -> None:
    source = sqlite_settings(tmp_path / "gateway", mosquitto)
    keep_publishing = threading.Event()
    with running_gateway(source) as context:
        batch_id = fill(context, dryers)
        # A third dryer publishes all through the backup: the archive holds a consistent
        # snapshot of its readings, whatever moment that is.
        late = Dryers(mosquitto, "late-dryer")

        def publish_late() -> None:
            seq = 1
            while not keep_publishing.is_set():
                late.publish(LATE, range(seq, seq + 20))
                seq += 20

        publisher = threading.Thread(target=publish_late)
        publisher.start()
        try:
            wait_for(lambda: stored(context, LATE) > 0, 10, "the late dryer's first readings")
            archive = backup(source, tmp_path / "backups",
                             config_file=ROOT / "gateway" / "examples" / "sqlite.toml")
            wait_for(lambda: stored(context, LATE) > read_manifest(archive)["readings"]
                     ["per_node"][f"{SITE}/{LATE}"], 10, "readings stored after the backup")
        finally:
            keep_publishing.set()
            publisher.join()
            late.close()

    assert archive.name.startswith("cacao-gateway-backup-") and archive.suffixes[-2:] == \
        [".tar", ".gz"]
    assert archive.stat().st_mode & 0o777 == 0o600
    manifest = read_manifest(archive)
    assert manifest["metadata"]["kind"] == "sqlite"
    assert manifest["metadata"]["alembic_revision"] is not None
    assert manifest["metadata"]["rows"]["users"] == 2
    assert manifest["metadata"]["rows"]["batches"] == 1
    per_node = manifest["readings"]["per_node"]
    assert per_node[f"{SITE}/{NODES[0]}"] == 400 and per_node[f"{SITE}/{NODES[1]}"] == 200
    assert "spool-w1.jsonl" in manifest["data_dir"]["files"]
    assert set(manifest["files"]) >= {"metadata/metadata.sqlite3", "readings/readings.sqlite3",
                                      "data/spool-w1.jsonl", "config/sqlite.toml"}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())

    target = sqlite_settings(tmp_path / "restored", mosquitto)
    report = restore(archive, target)
    assert report.readings_per_node == per_node

    # Readings: every restored row is the original row with the same node and seq.
    for node in (*NODES, LATE):
        original = rows(source.storage.path, node)
        restored = rows(target.storage.path, node)
        assert len(restored) == per_node[f"{SITE}/{node}"]
        assert all(original[seq] == row for seq, row in restored.items())
    with SqliteStore(target.storage.path) as store:
        assert store.seq_ranges(SITE, NODES[1]) == [(1, 100), (151, 250)]
        assert store.latest(SITE, NODES[0]).seq == 400  # type: ignore[union-attr]
    # Metadata: the same users (hashes), batches and spot checks.
    assert records(target.metadata.url) == records(source.metadata.url)
    # The data_dir's own files.
    assert (target.data_dir / "spool-w1.jsonl").read_bytes() == \
        (source.data_dir / "spool-w1.jsonl").read_bytes()

    # The restored gateway runs: the operator logs in and finds the batch.
    with running_gateway(target), closing(log_in(target.api.port, "olga")) as client:
        page = client.get("/api/batches").json()
        assert [item["batch_id"] for item in page["items"]] == [batch_id]
        response = client.get(f"/api/batches/{batch_id}/spot-checks")
        assert [check["moisture_pct_wb"] for check in response.json()] == [31.5]


def test_restore_refuses_a_gateway_that_holds_data_unless_forced(
        tmp_path: Path, mosquitto: MosquittoBroker, dryers: Dryers) -> None:
    settings = sqlite_settings(tmp_path / "gateway", mosquitto)
    with running_gateway(settings) as context:
        fill(context, dryers)
        archive = backup(settings, tmp_path / "backups")
        # Later readings and a user the backup does not have.
        dryers.publish(NODES[0], range(401, 451))
        wait_for(lambda: stored(context, NODES[0]) == 450, 30, "later readings stored")
        add_user(context, "pedro", "technician")

    with pytest.raises(BackupError, match=r"restore needs an empty target: metadata database "
                                          r".*metadata.sqlite3 already holds data"):
        restore(archive, settings)
    report = restore(archive, settings, force=True)  # back to the backup's moment
    assert report.readings_per_node[f"{SITE}/{NODES[0]}"] == 400
    with SqliteStore(settings.storage.path) as store:
        assert store.seq_ranges(SITE, NODES[0]) == [(1, 400)]
    usernames = [user[0] for user in records(settings.metadata.url)["users"]]
    assert usernames == ["admin", "olga"]


def test_a_damaged_or_foreign_archive_is_refused_with_one_line(
        tmp_path: Path, mosquitto: MosquittoBroker, dryers: Dryers) -> None:
    settings = sqlite_settings(tmp_path / "gateway", mosquitto)
    with running_gateway(settings) as context:
        fill(context, dryers)
        archive = backup(settings, tmp_path / "backups")
    # One byte changed in the readings, the manifest left as it was.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    top = next(unpacked.iterdir())
    readings = top / "readings" / "readings.sqlite3"
    data = bytearray(readings.read_bytes())
    data[-100] ^= 0xFF
    readings.write_bytes(bytes(data))
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(damaged, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    target = sqlite_settings(tmp_path / "restored", mosquitto)
    with pytest.raises(BackupError, match=r"archive is damaged: readings/readings.sqlite3 does "
                                          r"not match its sha256"):
        restore(damaged, target)
    assert not target.storage.path.exists() and not (target.data_dir / "metadata.sqlite3"
                                                     ).exists()
    not_a_backup = tmp_path / "photo.tar.gz"
    not_a_backup.write_bytes(b"not a tar file at all")
    with pytest.raises(BackupError, match=r"photo.tar.gz: not a readable backup archive"):
        restore(not_a_backup, target)


def test_command_line_backs_up_and_restores(tmp_path: Path, mosquitto: MosquittoBroker,
                                            dryers: Dryers) -> None:
    """``cacao-dryer gateway backup|restore`` as the backup timer runs it, with a
    config file as in the field, keeping the newest archives only."""
    settings = sqlite_settings(tmp_path / "gateway", mosquitto)
    with running_gateway(settings) as context:
        fill(context, dryers)
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{settings.data_dir}"\nsites = ["{SITE}"]\n'
                      '[storage]\nkind = "sqlite"\n')
    backups = tmp_path / "backups"
    old = backups / "cacao-gateway-backup-20200101T000000Z.tar.gz"
    backups.mkdir()
    old.write_bytes(b"")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cacao_dryer.cli", "gateway", *args],
                              cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    made = cli("backup", "--config", str(config), "--to", str(backups), "--keep", "1")
    assert made.returncode == 0, made.stderr
    assert "600 readings of 2 nodes" in made.stdout
    assert f"deleted old backup {old.name}" in made.stdout and not old.exists()
    archive = next(backups.glob("cacao-gateway-backup-*.tar.gz"))
    assert json.loads(json.dumps(read_manifest(archive)))["config"]["file"] == \
        "config/gateway.toml"

    refused = cli("restore", str(archive), "--config", str(config))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(
        "error: restore needs an empty target")
    target = tmp_path / "restored.toml"
    target.write_text(f'data_dir = "{tmp_path / "restored"}"\n[storage]\nkind = "sqlite"\n')
    done = cli("restore", str(archive), "--config", str(target))
    assert done.returncode == 0, done.stderr
    assert "600 readings of 2 nodes" in done.stdout and "counts match the manifest" in done.stdout
    missing = cli("restore", str(tmp_path / "nope.tar.gz"), "--config", str(target))
    assert missing.returncode == 2 and "nope.tar.gz: no such file" in missing.stderr


def test_postgresql_metadata_and_influxdb_readings_restore_into_new_servers(
        tmp_path: Path, mosquitto: MosquittoBroker, dryers: Dryers,
        postgres_server: PostgresServer, influxd: InfluxDaemon) -> None:
    """pg_dump/pg_restore of the metadata and influxd backup/restore -portable of the readings,
    from a running gateway into a new PostgreSQL database and a new influxd."""
    def settings_for(folder: Path, metadata: str, server: InfluxDaemon) -> GatewaySettings:
        return parse_gateway_config({
            "data_dir": str(folder), "sites": [SITE],
            "mqtt": {"broker": mosquitto.url, "client_id": f"gw-{folder.name}"},
            "storage": {"kind": "influxdb1", "url": server.url, "database": "cacao"},
            "metadata": {"url": metadata}, "api": {"port": free_port(), **QUICK_HASHING}})

    source = settings_for(tmp_path / "gateway", postgres_server.create_database(), influxd)
    with running_gateway(source) as context:
        batch_id = fill(context, dryers)
        archive = backup(source, tmp_path / "backups",
                         influx_rpc=f"127.0.0.1:{influxd.rpc_port}")
    manifest = read_manifest(archive)
    assert manifest["metadata"]["kind"] == "postgresql"
    assert manifest["versions"]["pg_dump"].startswith("pg_dump (PostgreSQL)")
    assert manifest["readings"]["kind"] == "influxdb1"
    assert manifest["readings"]["per_node"] == {f"{SITE}/{NODES[0]}": 400,
                                                f"{SITE}/{NODES[1]}": 200}

    second = InfluxDaemon(tmp_path / "influxd-new")
    second.start()
    try:
        target = settings_for(tmp_path / "restored", postgres_server.create_database(), second)
        report = restore(archive, target, influx_rpc=f"127.0.0.1:{second.rpc_port}")
        assert report.metadata_rows == manifest["metadata"]["rows"]
        assert records(target.metadata.url) == records(source.metadata.url)
        original = InfluxDB1Store(influxd.url, "cacao")
        restored = InfluxDB1Store(second.url, "cacao")
        try:
            for node in NODES:
                assert restored.seq_ranges(SITE, node) == original.seq_ranges(SITE, node)
                span = (START, START + timedelta(days=1))
                assert restored.series(SITE, node, *span, ["air_temp_c", "air_rh_pct"]) == \
                    original.series(SITE, node, *span, ["air_temp_c", "air_rh_pct"])
        finally:
            original.close()
            restored.close()
        with pytest.raises(BackupError, match="restore needs an empty target"):
            restore(archive, target, influx_rpc=f"127.0.0.1:{second.rpc_port}")
        users = user_service(target.api, context.clock)
        metadata = open_metadata(target.metadata.url)
        try:
            with metadata.session() as session:
                verdict, _user = users.authenticate(session, "olga", PASSWORD)
                assert verdict is Verdict.OK
                assert batches.get_batch(session, batch_id).lot_code == "L-031"
        finally:
            metadata.close()
    finally:
        second.kill()
