"""Back up a gateway, and restore it, with everything it keeps (docs/deploy.md#backup).

``backup(settings, dest_dir)`` writes ONE archive, ``cacao-gateway-backup-<UTC time>.tar.gz``
(mode 0600), while the gateway keeps running:

- ``metadata/``: the metadata database (batches, thresholds, alerts, users, audit log). SQLite
  is copied with SQLite's online backup API (a consistent snapshot; the gateway goes on
  writing); PostgreSQL is dumped with ``pg_dump -Fc`` inside an exported snapshot, so the row
  counts in the manifest are those of the very dump.
- ``readings/``: the time series. The SQLite store is copied like the metadata; InfluxDB 1.x
  is saved with ``influxd backup -portable`` over its RPC port (``127.0.0.1:8088``). InfluxDB
  2.x is not backed up here (``influx backup``): the manifest says so.
- ``data/``: the rest of ``data_dir``: the spool of readings not yet in the database, the
  alert delays (``alerts-pending.json``), the webhook and notification queues (SQLite files,
  copied online too).
- ``config/``: the config file, and with ``include_secrets`` the password and token files it
  names (the archive is then as secret as they are).
- ``manifest.json``: versions, the metadata's Alembic revision, rows per metadata table,
  readings per node, and the sha256 of every file.

``restore(archive, settings)`` checks every sha256, refuses a target that already holds data
(unless ``force``), puts every part where ``settings`` says, then opens what it restored and
checks the manifest's counts (readings per node, rows per table, the Alembic revision). Stop
the gateway before restoring. Nothing is written where the archive is extracted but a
temporary folder.

Command line: ``cacao-dryer gateway backup|restore`` (``add_backup_parsers``) or
``python -m gateway.backup backup|restore``. Errors are ``BackupError`` with one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cacao_dryer.errors import CacaoDryerError
from gateway.config import (
    GatewaySettings,
    InfluxDB1Storage,
    InfluxDB2Storage,
    SqliteStorage,
    load_gateway_config,
)

FORMAT = 1
ARCHIVE_PREFIX = "cacao-gateway-backup-"
ARCHIVE_SUFFIX = ".tar.gz"
MANIFEST = "manifest.json"
INFLUXD_RPC_PORT = 8088
SQLITE_HEADER = b"SQLite format 3\x00"
# Files SQLite keeps beside a database while it is open: never copied on their own (the
# online backup reads through them).
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_CHUNK = 1 << 20


class BackupError(CacaoDryerError):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass
class RestoreReport:
    archive: Path
    created_at: str
    metadata_rows: dict[str, int]
    readings_per_node: dict[str, int]
    files: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        readings = sum(self.readings_per_node.values())
        lines = [f"restored {self.archive.name} (made {self.created_at}): "
                 f"{readings} readings of {len(self.readings_per_node)} nodes, "
                 f"{sum(self.metadata_rows.values())} metadata rows in "
                 f"{len(self.metadata_rows)} tables, {self.files} files; counts match the "
                 "manifest"]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# --- small helpers ----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except OSError:
        return False


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` metadata URL (None for PostgreSQL)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _run(command: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a tool; BackupError with its last line of output when it fails or is missing."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, env=env,
                              timeout=6 * 3600, check=False)
    except FileNotFoundError:
        raise BackupError(f"{what}: {command[0]} is not installed") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise BackupError(f"{what} failed (exit {done.returncode}): {output[-1][:300]}")
    return done.stdout


def _tool_version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=30,
                              check=False)
    except FileNotFoundError:
        return "not installed"
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0] if done.returncode \
        == 0 else "unknown"


def check_user(settings: GatewaySettings) -> None:
    """Refuse to run as root on a gateway whose data_dir belongs to its service user:
    opening its SQLite files as root could leave -wal/-shm files (or restored databases)
    that the gateway then cannot open."""
    root = Path(settings.data_dir)
    if os.geteuid() != 0 or not root.exists():
        return
    owner = root.stat().st_uid
    if owner != 0:
        import pwd

        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise BackupError(f"run this as the gateway's user, not root: sudo -u {name} "
                          f"cacao-dryer gateway ... ({root} belongs to {name})")


# --- SQLite -----------------------------------------------------------------------------------

def sqlite_snapshot(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API: one consistent snapshot, while
    other processes go on writing (WAL). The copy is a single self-contained file."""
    if not source.is_file():
        raise BackupError(f"{source}: no such database (has the gateway run yet?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        origin = sqlite3.connect(source, timeout=30)
        try:
            copy = sqlite3.connect(target)
            try:
                origin.backup(copy)  # every page in one step: a single read transaction
                copy.execute("PRAGMA journal_mode=DELETE")  # no -wal beside the copy
            finally:
                copy.close()
        finally:
            origin.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: cannot copy ({exc})") from None


def _sqlite_tables(path: Path) -> dict[str, int]:
    """Rows per table (Alembic's own table left out)."""
    with _readonly(path) as db:
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'alembic_version' ORDER BY name")]
        return {name: int(db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
                for name in names}


def _sqlite_revision(path: Path) -> str | None:
    with _readonly(path) as db:
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else str(row[0])


def _sqlite_readings(path: Path) -> dict[str, int]:
    with _readonly(path) as db:
        try:
            rows = db.execute("SELECT site_id, node_id, count(*) FROM readings "
                              "GROUP BY site_id, node_id ORDER BY site_id, node_id").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {f"{site}/{node}": int(count) for site, node, count in rows}


@contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        yield db
    finally:
        db.close()


def _sqlite_holds_data(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    try:
        return bool(_sqlite_tables(path))
    except sqlite3.Error:
        return True  # unreadable: not ours to overwrite without --force


def _put_file(source: Path, target: Path) -> None:
    """Copy into place atomically (temp file, fsync, rename), replacing any old SQLite side
    files so SQLite does not replay a stale WAL over the restored database."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.restoring")
    with open(source, "rb") as origin, open(temporary, "wb") as copy:
        shutil.copyfileobj(origin, copy, _CHUNK)
        copy.flush()
        os.fsync(copy.fileno())
    for suffix in _SQLITE_SIDE_FILES:
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    os.replace(temporary, target)


# --- PostgreSQL -------------------------------------------------------------------------------

def _metadata_url(settings: GatewaySettings) -> str:
    from gateway.runtime import metadata_url

    return metadata_url(settings)


def _libpq_env(url: str) -> dict[str, str]:
    """Connection settings for pg_dump/pg_restore in the environment (the password never
    appears on a command line that ``ps`` shows)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    env = dict(os.environ)
    for key, value in (("PGHOST", parsed.host), ("PGPORT", parsed.port),
                       ("PGUSER", parsed.username), ("PGPASSWORD", parsed.password),
                       ("PGDATABASE", parsed.database)):
        if value is not None:
            env[key] = str(value)
    return env


def _postgres_dump(url: str, target: Path) -> tuple[dict[str, int], str | None]:
    """``pg_dump -Fc`` of the database in a snapshot exported by a transaction that also
    counts every table's rows: the counts are exactly those of the dump."""
    from sqlalchemy import text

    from gateway.metadata.database import create_metadata_engine

    engine = create_metadata_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as db:
            snapshot = db.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            rows = _postgres_counts(db)
            revision = _postgres_revision(db)
            _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                  f"--snapshot={snapshot}", f"--file={target}"],
                 "pg_dump of the metadata database", env=_libpq_env(url))
            db.rollback()
    finally:
        engine.dispose()
    return rows, revision


def _postgres_counts(db: Any) -> dict[str, int]:
    from sqlalchemy import text

    names = db.execute(text(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        "current_schema() AND table_type = 'BASE TABLE' AND table_name != 'alembic_version' "
        "ORDER BY table_name")).scalars().all()
    return {str(name): int(db.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one())
            for name in names}


def _postgres_revision(db: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    revision = MigrationContext.configure(db).get_current_revision()
    return None if revision is None else str(revision)


def _postgres_state(url: str) -> tuple[dict[str, int], str | None]:
    from gateway.metadata.database import create_metadata_engine

    engine = create_metadata_engine(url)
    try:
        with engine.connect() as db:
            return _postgres_counts(db), _postgres_revision(db)
    except Exception as exc:
        raise BackupError(f"metadata database: cannot connect "
                          f"({str(exc).splitlines()[0][:200]})") from None
    finally:
        engine.dispose()


# --- InfluxDB 1.x -----------------------------------------------------------------------------

def _influx_rpc(storage: InfluxDB1Storage, rpc: str | None) -> str:
    return rpc or f"{urlsplit(storage.url).hostname or '127.0.0.1'}:{INFLUXD_RPC_PORT}"


def _influx_query(storage: InfluxDB1Storage, statement: str, *, use_db: bool = True
                  ) -> list[dict[str, Any]]:
    """One InfluxQL statement over HTTP; its series (name, tags, columns, values)."""
    import httpx

    password = (storage.password_file.read_text(encoding="utf-8").strip()
                if storage.password_file else None)
    auth = (storage.username, password or "") if storage.username else None
    params = {"q": statement, "epoch": "ns"} | ({"db": storage.database} if use_db else {})
    try:
        response = httpx.post(f"{storage.url.rstrip('/')}/query", data=params, auth=auth,
                              timeout=120)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BackupError(f"influxdb {storage.url}: {exc}") from None
    result = (answer.get("results") or [{}])[0]
    error = answer.get("error") or result.get("error")
    if response.status_code != 200 or error:
        raise BackupError(f"influxdb {storage.url}: {error or response.status_code}")
    return list(result.get("series", []))


def _influx_databases(storage: InfluxDB1Storage) -> set[str]:
    series = _influx_query(storage, "SHOW DATABASES", use_db=False)
    return {str(row[0]) for item in series for row in item.get("values", [])}


def _influx_readings(storage: InfluxDB1Storage) -> dict[str, int]:
    from gateway.stores.line_protocol import MEASUREMENT, NODE_TAG, SEQ_FIELD, SITE_TAG

    if storage.database not in _influx_databases(storage):
        return {}
    counts: dict[str, int] = {}
    for item in _influx_query(storage, f'SELECT count("{SEQ_FIELD}") FROM "{MEASUREMENT}" '
                                       f'GROUP BY "{SITE_TAG}", "{NODE_TAG}"'):
        tags = item.get("tags", {})
        counts[f"{tags.get(SITE_TAG)}/{tags.get(NODE_TAG)}"] = int(item["values"][0][1])
    return dict(sorted(counts.items()))


# --- what a gateway keeps ---------------------------------------------------------------------

def _readings_sqlite_path(settings: GatewaySettings) -> Path | None:
    storage = settings.storage
    return storage.path if isinstance(storage, SqliteStorage) else None


def _data_files(settings: GatewaySettings, skip: Sequence[Path]) -> Iterator[Path]:
    """Every file under data_dir that is not a database backed up on its own, not a SQLite
    side file and not inside ``skip`` (e.g. a backup folder kept in data_dir)."""
    root = Path(settings.data_dir)
    if not root.is_dir():
        return
    skipped = {path.resolve() for path in skip}
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(name for name in subfolders
                               if (here / name).resolve() not in skipped)
        for name in sorted(names):
            path = here / name
            if path.resolve() in skipped or name.endswith(_SQLITE_SIDE_FILES) \
                    or name.endswith(".restoring") or not path.is_file():
                continue
            yield path


def _secret_files(settings: GatewaySettings) -> list[Path]:
    """Password, token, secret and CA files the config names."""
    found: list[Path | None] = [settings.mqtt.password_file, settings.mqtt.tls_ca_file,
                                settings.metadata.password_file]
    storage = settings.storage
    if isinstance(storage, InfluxDB1Storage):
        found.append(storage.password_file)
    if isinstance(storage, InfluxDB2Storage):
        found.append(storage.token_file)
    found += [hook.secret_file for hook in settings.webhooks]
    notify = settings.notify
    if notify.email is not None:
        found += [notify.email.password_file, notify.email.tls_ca_file]
    if notify.telegram is not None:
        found.append(notify.telegram.token_file)
    return [path for path in found if path is not None]


# --- backup -----------------------------------------------------------------------------------

def backup(settings: GatewaySettings, dest_dir: Path, *, config_file: Path | None = None,
           include_secrets: bool = False, influx_rpc: str | None = None,
           now: datetime | None = None) -> Path:
    """Write one archive of the whole gateway into ``dest_dir``; returns its path. Safe while
    the gateway runs. The archive appears under its final name only once complete."""
    check_user(settings)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = f"{ARCHIVE_PREFIX}{moment:%Y%m%dT%H%M%SZ}"
    archive = dest_dir / f"{name}{ARCHIVE_SUFFIX}"
    if archive.exists():
        raise BackupError(f"{archive} already exists")
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=dest_dir) as work:
        stage = Path(work) / name
        stage.mkdir()
        manifest = _collect(settings, stage, config_file=config_file,
                            include_secrets=include_secrets, influx_rpc=influx_rpc,
                            skip=[dest_dir], moment=moment)
        files = {}
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            files[path.relative_to(stage).as_posix()] = {"sha256": _sha256(path),
                                                         "bytes": path.stat().st_size}
        manifest["files"] = files
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
        partial = Path(work) / archive.name
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                tar.add(stage, arcname=name)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, archive)
    return archive


def _collect(settings: GatewaySettings, stage: Path, *, config_file: Path | None,
             include_secrets: bool, influx_rpc: str | None, skip: list[Path],
             moment: datetime) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": FORMAT, "created_at": moment.isoformat().replace("+00:00", "Z"),
        "host": platform.node(),
        "versions": {"cacao-dryer": _version("cacao-dryer"), "python": platform.python_version(),
                     "sqlite": sqlite3.sqlite_version}}
    skip = list(skip)
    # Metadata.
    url = _metadata_url(settings)
    metadata_file = _sqlite_path(url)
    if metadata_file is not None:
        target = stage / "metadata" / "metadata.sqlite3"
        sqlite_snapshot(metadata_file, target)
        skip.append(metadata_file)
        manifest["metadata"] = {"kind": "sqlite", "file": "metadata/metadata.sqlite3",
                                "alembic_revision": _sqlite_revision(target),
                                "rows": _sqlite_tables(target)}
    else:
        target = stage / "metadata" / "metadata.pgdump"
        target.parent.mkdir(parents=True)
        rows, revision = _postgres_dump(url, target)
        manifest["versions"]["pg_dump"] = _tool_version(["pg_dump", "--version"])
        manifest["metadata"] = {"kind": "postgresql", "file": "metadata/metadata.pgdump",
                                "alembic_revision": revision, "rows": rows}
    # Readings.
    storage = settings.storage
    if isinstance(storage, SqliteStorage):
        target = stage / "readings" / "readings.sqlite3"
        sqlite_snapshot(storage.path, target)
        skip.append(storage.path)
        manifest["readings"] = {"kind": "sqlite", "file": "readings/readings.sqlite3",
                                "per_node": _sqlite_readings(target), "exact": True}
    elif isinstance(storage, InfluxDB1Storage):
        # Counted just before the backup: the gateway may store more meanwhile, so after a
        # restore each node has at least these many.
        counts = _influx_readings(storage)
        folder = stage / "readings" / "influxdb"
        folder.mkdir(parents=True)
        _run(["influxd", "backup", "-portable", "-db", storage.database, "-host",
              _influx_rpc(storage, influx_rpc), str(folder)], "influxd backup")
        manifest["versions"]["influxd"] = _tool_version(["influxd", "version"])
        manifest["readings"] = {"kind": "influxdb1", "database": storage.database,
                                "folder": "readings/influxdb", "per_node": counts,
                                "exact": False}
    else:
        manifest["readings"] = {"kind": storage.kind, "per_node": {}, "exact": False,
                                "note": "InfluxDB 2.x is not in this archive: back it up "
                                        "with `influx backup` (docs/deploy.md)"}
    # The rest of data_dir.
    data = []
    root = Path(settings.data_dir)
    for path in _data_files(settings, skip):
        relative = path.relative_to(root)
        target = stage / "data" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_sqlite(path):
            sqlite_snapshot(path, target)
        else:
            shutil.copy2(path, target)
        data.append(relative.as_posix())
    manifest["data_dir"] = {"source": str(root), "files": data}
    # Config and, on request, its secrets.
    config: dict[str, Any] = {"file": None, "secrets": {}}
    if config_file is not None:
        (stage / "config").mkdir()
        shutil.copy2(config_file, stage / "config" / config_file.name)
        config["file"] = f"config/{config_file.name}"
        config["source"] = str(config_file.resolve())
    if include_secrets:
        for index, secret in enumerate(_secret_files(settings)):
            if not secret.is_file():
                raise BackupError(f"{secret}: named in the config but cannot be read")
            target = stage / "config" / "secrets" / f"{index:02d}-{secret.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(secret, target)
            config["secrets"][target.relative_to(stage).as_posix()] = str(secret)
    manifest["config"] = config
    return manifest


# --- restore ----------------------------------------------------------------------------------

def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of an archive, without extracting the rest."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.count("/") == 1 and \
                        member.name.endswith("/" + MANIFEST):
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return dict(json.load(extracted))
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise BackupError(f"{archive}: not a readable backup archive ({exc})") from None
    raise BackupError(f"{archive}: no {MANIFEST} inside: not a cacao-dryer gateway backup")


def _extract(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts or not (
                        member.isfile() or member.isdir()):
                    raise BackupError(f"{archive}: unexpected entry {member.name!r}: not a "
                                      "backup this gateway wrote")
            tops = {member.name.split("/")[0] for member in members}
            if len(tops) != 1:
                raise BackupError(f"{archive}: expected one top folder, found {len(tops)}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:  # Python before 3.11.4: the names were checked above
                tar.extractall(into)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: cannot extract ({exc})") from None
    return into / tops.pop()


def _verify_files(stage: Path, manifest: dict[str, Any]) -> None:
    listed: dict[str, dict[str, Any]] = manifest.get("files", {})
    present = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    present.discard(MANIFEST)
    if missing := sorted(set(listed) - present):
        raise BackupError(f"archive is incomplete: {missing[0]} is missing "
                          f"({len(missing)} files)")
    if extra := sorted(present - set(listed)):
        raise BackupError(f"archive holds {extra[0]}, which its manifest does not list")
    for name, entry in listed.items():
        if _sha256(stage / name) != entry["sha256"]:
            raise BackupError(f"archive is damaged: {name} does not match its sha256")


def restore(archive: Path, settings: GatewaySettings, *, force: bool = False,
            influx_rpc: str | None = None) -> RestoreReport:
    """Restore an archive into the stores and data_dir ``settings`` name; they must be empty
    (``force`` replaces what is there). Stop the gateway first."""
    check_user(settings)
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    manifest = read_manifest(archive)
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: backup format {manifest.get('format')!r}, this gateway "
                          f"reads format {FORMAT}")
    with tempfile.TemporaryDirectory(prefix="cacao-restore-") as work:
        stage = _extract(archive, Path(work))
        _verify_files(stage, manifest)
        plan = _RestorePlan(settings, manifest, stage, influx_rpc)
        occupied = plan.occupied()
        if occupied and not force:
            raise BackupError(f"restore needs an empty target: {occupied[0]} already holds "
                              "data (stop the gateway; --force replaces it)")
        plan.apply()
        report = plan.verify(archive)
    return report


class _RestorePlan:
    def __init__(self, settings: GatewaySettings, manifest: dict[str, Any], stage: Path,
                 influx_rpc: str | None) -> None:
        self.settings = settings
        self.manifest = manifest
        self.stage = stage
        self.influx_rpc = influx_rpc
        self.metadata_url = _metadata_url(settings)
        self.notes: list[str] = []
        kind = manifest["metadata"]["kind"]
        wanted = "sqlite" if _sqlite_path(self.metadata_url) is not None else "postgresql"
        if kind != wanted:
            raise BackupError(f"the archive's metadata is {kind}, the config's metadata.url "
                              f"is {wanted}: restore into a gateway configured like the "
                              "one backed up")
        readings_kind = manifest["readings"]["kind"]
        if readings_kind in ("sqlite", "influxdb1") and readings_kind != settings.storage.kind:
            raise BackupError(f"the archive's readings are {readings_kind}, the config's "
                              f"storage.kind is {settings.storage.kind}")

    # Where each part goes.
    def _data_targets(self) -> list[tuple[Path, Path]]:
        root = Path(self.settings.data_dir)
        return [(self.stage / "data" / name, root / name)
                for name in self.manifest["data_dir"]["files"]]

    def occupied(self) -> list[str]:
        """What in the target already holds data."""
        found: list[str] = []
        metadata_file = _sqlite_path(self.metadata_url)
        if metadata_file is not None:
            if _sqlite_holds_data(metadata_file):
                found.append(f"metadata database {metadata_file}")
        elif _postgres_state(self.metadata_url)[0]:
            found.append("the PostgreSQL metadata database")
        storage = self.settings.storage
        if isinstance(storage, SqliteStorage) and _sqlite_holds_data(storage.path):
            found.append(f"readings database {storage.path}")
        if isinstance(storage, InfluxDB1Storage) and \
                self.manifest["readings"]["kind"] == "influxdb1" and _influx_readings(storage):
            found.append(f"InfluxDB database {storage.database}")
        found += [str(target) for _source, target in self._data_targets() if target.exists()]
        return found

    def apply(self) -> None:
        metadata = self.manifest["metadata"]
        metadata_file = _sqlite_path(self.metadata_url)
        if metadata_file is not None:
            _put_file(self.stage / metadata["file"], metadata_file)
        else:
            _run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                  "--single-transaction", "--clean", "--if-exists",
                  f"--dbname={_libpq_env(self.metadata_url)['PGDATABASE']}",
                  str(self.stage / metadata["file"])],
                 "pg_restore of the metadata database", env=_libpq_env(self.metadata_url))
        readings = self.manifest["readings"]
        storage = self.settings.storage
        if isinstance(storage, SqliteStorage):
            _put_file(self.stage / readings["file"], storage.path)
        elif isinstance(storage, InfluxDB1Storage) and readings["kind"] == "influxdb1":
            self._restore_influx(storage, readings)
        elif readings["kind"] == "influxdb2":
            self.notes.append(readings["note"])
        for source, target in self._data_targets():
            _put_file(source, target)

    def _restore_influx(self, storage: InfluxDB1Storage, readings: dict[str, Any]) -> None:
        from gateway.stores.influxdb1 import quote_identifier

        # influxd restore creates the database and refuses one that exists: drop the
        # (empty, or --force) database the gateway may have created on start.
        if storage.database in _influx_databases(storage):
            _influx_query(storage, f"DROP DATABASE {quote_identifier(storage.database)}",
                          use_db=False)
        _run(["influxd", "restore", "-portable", "-db", readings["database"], "-newdb",
              storage.database, "-host", _influx_rpc(storage, self.influx_rpc),
              str(self.stage / readings["folder"])], "influxd restore")

    def verify(self, archive: Path) -> RestoreReport:
        """Open what was restored and compare it with the manifest."""
        metadata = self.manifest["metadata"]
        metadata_file = _sqlite_path(self.metadata_url)
        if metadata_file is not None:
            rows, revision = _sqlite_tables(metadata_file), _sqlite_revision(metadata_file)
        else:
            rows, revision = _postgres_state(self.metadata_url)
        if revision != metadata["alembic_revision"]:
            raise BackupError(f"restored metadata is at revision {revision}, the manifest "
                              f"says {metadata['alembic_revision']}")
        if rows != metadata["rows"]:
            wrong = sorted(name for name in set(rows) | set(metadata["rows"])
                           if rows.get(name) != metadata["rows"].get(name))
            raise BackupError(f"restored metadata table {wrong[0]} has "
                              f"{rows.get(wrong[0])} rows, the manifest says "
                              f"{metadata['rows'].get(wrong[0])}")
        readings = self.manifest["readings"]
        storage = self.settings.storage
        counts: dict[str, int] = {}
        if isinstance(storage, SqliteStorage):
            counts = _sqlite_readings(storage.path)
        elif isinstance(storage, InfluxDB1Storage) and readings["kind"] == "influxdb1":
            counts = _influx_readings(storage)
        expected: dict[str, int] = readings["per_node"]
        for node in sorted(set(expected) | set(counts)):
            have, want = counts.get(node, 0), expected.get(node, 0)
            if have != want and (readings["exact"] or have < want):
                raise BackupError(f"restored readings of {node}: {have}, the manifest says "
                                  f"{want}")
        return RestoreReport(archive=archive, created_at=self.manifest["created_at"],
                             metadata_rows=rows, readings_per_node=counts,
                             files=len(self.manifest["data_dir"]["files"]), notes=self.notes)


# --- command line -----------------------------------------------------------------------------

def add_backup_parsers(gateway_subparsers: argparse._SubParsersAction) -> None:
    """Add ``backup`` and ``restore`` to ``cacao-dryer gateway``'s subcommands."""
    help_backup = ("Write one archive of the gateway (metadata, readings, spool and queues, "
                   "config, manifest) into a folder, while it runs.")
    parser = gateway_subparsers.add_parser("backup", help=help_backup, description=help_backup)
    parser.add_argument("--config", "-c", type=Path, required=True,
                        help="gateway config file (TOML)")
    parser.add_argument("--to", type=Path, required=True, dest="dest_dir", metavar="FOLDER",
                        help="folder for the archive, e.g. /var/backups/cacao-dryer")
    parser.add_argument("--include-secrets", action="store_true",
                        help="also archive the password, token and CA files the config names")
    parser.add_argument("--keep", type=int, default=0, metavar="N",
                        help="then delete all but the newest N archives in the folder "
                        "(0: keep all)")
    parser.add_argument("--influx-rpc", metavar="HOST:PORT",
                        help="influxd's backup (RPC) address (default: the storage url's "
                        f"host, port {INFLUXD_RPC_PORT})")
    parser.set_defaults(handler=run_backup)

    help_restore = ("Restore an archive into the stores and data_dir the config names "
                    "(empty, unless --force); stop the gateway first.")
    parser = gateway_subparsers.add_parser("restore", help=help_restore,
                                           description=help_restore)
    parser.add_argument("archive", type=Path, help="a cacao-gateway-backup-*.tar.gz")
    parser.add_argument("--config", "-c", type=Path, required=True,
                        help="gateway config file (TOML) of the gateway to restore into")
    parser.add_argument("--force", action="store_true",
                        help="replace what the target already holds")
    parser.add_argument("--influx-rpc", metavar="HOST:PORT",
                        help="influxd's restore (RPC) address")
    parser.set_defaults(handler=run_restore)


def prune(dest_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` archives (by name: UTC time); returns the deleted."""
    archives = sorted(dest_dir.glob(f"{ARCHIVE_PREFIX}*{ARCHIVE_SUFFIX}"))
    old = archives[:-keep] if keep > 0 else []
    for path in old:
        path.unlink()
    return old


def run_backup(args: argparse.Namespace) -> None:
    if args.keep < 0:
        raise BackupError("--keep must be 0 (keep all) or more")
    settings = load_gateway_config(args.config)
    archive = backup(settings, args.dest_dir, config_file=args.config,
                     include_secrets=args.include_secrets, influx_rpc=args.influx_rpc)
    manifest = read_manifest(archive)
    readings = sum(manifest["readings"]["per_node"].values())
    print(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB): {readings} readings of "
          f"{len(manifest['readings']['per_node'])} nodes, metadata at revision "
          f"{manifest['metadata']['alembic_revision']}, {len(manifest['data_dir']['files'])} "
          "data files")
    if note := manifest["readings"].get("note"):
        print(f"note: {note}")
    for path in prune(args.dest_dir, args.keep):
        print(f"deleted old backup {path.name}")


def run_restore(args: argparse.Namespace) -> None:
    settings = load_gateway_config(args.config)
    print(restore(args.archive, settings, force=args.force,
                  influx_rpc=args.influx_rpc).summary())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.backup backup|restore ...``"""
    parser = argparse.ArgumentParser(prog="python -m gateway.backup",
                                     description="Back up or restore a cacao-dryer gateway.")
    add_backup_parsers(parser.add_subparsers(title="commands", required=True,
                                             metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except CacaoDryerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
