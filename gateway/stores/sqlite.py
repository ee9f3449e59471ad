"""The zero-setup time-series store: one SQLite file on the gateway's disk.

Schema (``docs/storage.md``): one table ``readings``, one row per telemetry message, keyed by
``(site_id, node_id, seq)`` (a ``WITHOUT ROWID`` table, so a node's readings lie together in
sequence order), with an index on ``(site_id, node_id, measured_at_us)`` for time ranges.
Time is INTEGER microseconds since the Unix epoch, UTC: exact (a stored reading comes back
with the very datetime it was written with, and range bounds compare exactly), 6 bytes a
row like milliseconds would be, and integer bucket arithmetic for downsampling. Each numeric
field of ``cacao_dryer.measurements.MEASUREMENTS`` and ``STATE_FIELDS`` is a REAL column
generated from that table: opening a database written by an older gateway adds the columns
of measurements added since (``ALTER TABLE ADD COLUMN``; old rows read NULL = not measured).
A second table, ``seq_runs``, holds each node's stored sequence numbers as (first, last) runs,
updated in the same transaction as the readings, so gap detection costs one row per gap
instead of a pass over every reading (rebuilt with window functions if it is missing).

Guarantees:

- ``write()`` is one ``BEGIN IMMEDIATE ... COMMIT`` transaction of ``INSERT ... ON CONFLICT
  DO NOTHING``: a batch is stored completely or not at all, a reading already stored is not
  stored again (the first write wins), and the count returned is of new readings only.
- WAL journal with ``synchronous=FULL``: the WAL is fsynced at every commit, so a batch whose
  ``write()`` returned survives a power cut (the ingest acknowledges MQTT messages only after
  that).
- Anything SQLite reports while writing (database locked by another process beyond the busy
  timeout, disk or ``max_bytes`` full, I/O error, a damaged file) raises ``StoreUnavailable``
  with one line naming the file and SQLite's error code, after rolling back: the ingest
  spools and retries. Invalid input (unknown field, naive datetime) raises ``ValueError``
  before anything is written: a bug upstream, not a reason to retry.

Threads: writes are serialized by a lock on one write connection (the ingest thread; SQLite
allows one writer at a time anyway). Reads (``latest``, ``series``, ``seq_ranges``) use a
small pool of read-only connections, so API threads read concurrently with each other and,
thanks to WAL, with the writer: a reader sees the database as of its statement's start and
never blocks or is blocked by the ingest. Any thread may call any method.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cacao_dryer.errors import ConfigError
from cacao_dryer.measurements import MEASUREMENTS
from gateway.timeseries import (
    STATE_FIELDS,
    SeriesPoint,
    StoredReading,
    StoreUnavailable,
    bucket_us,
)

SCHEMA_VERSION = 1  # PRAGMA user_version; new field columns are added without a new version
MIN_SQLITE = (3, 25, 0)  # window functions (3.25), ON CONFLICT ... DO NOTHING (3.24)
TABLE = "readings"
FIELD_COLUMNS: tuple[str, ...] = (*(m.key for m in MEASUREMENTS), *STATE_FIELDS)
# Columns that are not numeric fields; every other column of the table is one.
_LABEL_COLUMNS = ("site_id", "node_id", "seq", "measured_at_us", "raining", "mode", "alarms",
                  "batch_id")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
WAL_LIMIT_BYTES = 16 * 1024 * 1024  # WAL truncated back to this after a burst
# A commit appends every page it changed to the WAL, and readings arriving interleaved from
# many nodes change a few pages each (the node's rows and index entries lie together): small
# pages halve the bytes written per reading (SD-card wear) at no measured query cost
# (docs/storage.md, bench/bench_store_sqlite.py).
PAGE_SIZE_BYTES = 1024

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS readings (
    site_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    measured_at_us INTEGER NOT NULL,  -- microseconds since 1970-01-01T00:00:00Z
    raining INTEGER CHECK (raining IN (0, 1)),  -- NULL: the node has no rain sensor
    mode TEXT NOT NULL,
    alarms TEXT NOT NULL DEFAULT '',  -- comma-separated Alarm values
    batch_id TEXT,
{fields},
    PRIMARY KEY (site_id, node_id, seq)
) WITHOUT ROWID
"""
_IN_SPAN = "site_id = ? AND node_id = ? AND measured_at_us >= ? AND measured_at_us < ?"
_CREATE_INDEX = ("CREATE INDEX IF NOT EXISTS readings_by_time "
                 "ON readings (site_id, node_id, measured_at_us)")
# The stored sequence numbers of each node as disjoint, non-adjacent runs, kept up to date in
# every write transaction: gap detection reads a few rows instead of every reading.
_CREATE_RUNS = """
CREATE TABLE seq_runs (
    site_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (site_id, node_id, first_seq)
) WITHOUT ROWID
"""
# The runs recomputed from the readings themselves in one pass: consecutive numbers share
# ``seq - row_number()``. Used to build seq_runs for a database that has none.
_RUNS_FROM_READINGS = """
SELECT site_id, node_id, min(seq), max(seq) FROM (
    SELECT site_id, node_id, seq,
           seq - row_number() OVER (PARTITION BY site_id, node_id ORDER BY seq) AS run
    FROM readings
) GROUP BY site_id, node_id, run
"""


def _quoted(column: str) -> str:
    """A column name for SQL text. Only names matching a plain lowercase identifier are ever
    put into SQL, and quoted on top, so no name can change a statement's meaning."""
    if not _IDENTIFIER.match(column):
        raise ValueError(f"{column!r} is not a valid field name (lowercase letters, digits, _)")
    return f'"{column}"'


def to_epoch_us(moment: datetime, what: str = "time") -> int:
    """Exact microseconds since the Unix epoch of an aware datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} {moment.isoformat()} has no time zone (use UTC)")
    return (moment - _EPOCH) // _ONE_US


def from_epoch_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _error_name(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", None) or type(exc).__name__


class SqliteStore:
    """Node readings in one SQLite file (``TimeSeriesStore``)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0,
                 max_bytes: int | None = None, readers: int = 4) -> None:
        """Open (creating or migrating) the database at ``path``.

        ``busy_timeout_s``: how long a write waits for another process's lock (a backup, a
        second gateway, someone's ``sqlite3`` shell) before raising ``StoreUnavailable``.
        ``max_bytes``: refuse writes (``StoreUnavailable``, SQLITE_FULL) once the database
        would grow past this, so a full store never fills the disk the OS, the broker and the
        spool live on; ``None`` = up to the disk's size. ``readers``: read connections at most
        (concurrent readers beyond that wait for one).
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(f"sqlite store {path}: SQLite {sqlite3.sqlite_version} is too old "
                              f"(need {'.'.join(map(str, MIN_SQLITE))} or later)")
        if readers < 1:
            raise ValueError(f"sqlite store {path}: readers must be at least 1, not {readers}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"sqlite store {path}: max_bytes must be positive, not {max_bytes}")
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._reader_slots = threading.BoundedSemaphore(readers)
        self._idle_readers: list[sqlite3.Connection] = []
        self._writer = self._open_writer(max_bytes)
        try:
            self._fields = self._migrate()
        except BaseException:
            self._writer.close()
            raise
        self._field_set = frozenset(self._fields)
        columns = (*_LABEL_COLUMNS, *self._fields)
        self._select = ", ".join(_quoted(c) for c in columns)
        self._insert = (
            f"INSERT INTO {TABLE} ({self._select}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT (site_id, node_id, seq) DO NOTHING")

    # --- the TimeSeriesStore interface ----------------------------------------------------

    def write(self, readings: Sequence[StoredReading]) -> int:
        """Store a batch in one transaction; returns how many readings were new."""
        rows = [self._row(reading) for reading in readings]  # ValueError before any writing
        with self._write_lock:
            if self._closed:
                raise StoreUnavailable(f"sqlite store {self.path}: closed")
            if not rows:
                return 0
            db = self._writer
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany(self._insert, rows)
                new = db.total_changes - before
                self._record_runs(rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                    raise  # a bug in this module, not a database condition
                raise StoreUnavailable(f"sqlite store {self.path}: write of {len(rows)} "
                                       f"readings failed ({_error_name(exc)}: {exc})") from None
            except BaseException:
                self._rollback()
                raise
            return new

    def seq_ranges(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Stored sequence numbers of a node as sorted, contiguous (first, last) ranges.

        Read from ``seq_runs``, which every write keeps up to date: as fast with millions of
        readings as with ten (one row per gap, not per reading)."""
        rows = self._read("SELECT first_seq, last_seq FROM seq_runs "
                          "WHERE site_id = ? AND node_id = ? ORDER BY first_seq",
                          (site_id, node_id))
        return [(first, last) for first, last in rows]

    def latest(self, site_id: str, node_id: str) -> StoredReading | None:
        """The node's reading with the highest sequence number (its newest: a node numbers
        readings in the order it takes them, whatever its clock says)."""
        rows = self._read(
            f"SELECT {self._select} FROM {TABLE} WHERE site_id = ? AND node_id = ? "
            f"ORDER BY seq DESC LIMIT 1", (site_id, node_id))
        return self._reading(rows[0]) if rows else None

    def latest_many(self, nodes: Sequence[tuple[str, str]]
                    ) -> dict[tuple[str, str], StoredReading]:
        """One indexed look-up per node (~0.05 ms each)."""
        found = ((key, self.latest(*key)) for key in nodes)
        return {key: reading for key, reading in found if reading is not None}

    def series(self, site_id: str, node_id: str, start: datetime, end: datetime,
               fields: Sequence[str], every_s: float | None = None) -> list[SeriesPoint]:
        """Readings of a node in [start, end), oldest first, with the requested fields.

        Without ``every_s``: one point per reading. With it: one point per bucket of
        ``every_s`` seconds that holds readings, ``at`` = the bucket's start, each value the
        mean of the field's non-missing readings in it. Buckets are aligned to the Unix epoch
        (600 s buckets start at :00, :10, ...; as InfluxDB's GROUP BY time()), not to
        ``start``. A missing value is left out of ``values``; a point with none of the
        fields is left out."""
        names = self._validated_fields(fields)
        span = (site_id, node_id, to_epoch_us(start, "start"), to_epoch_us(end, "end"))
        # The time index gives the range of seq of the readings in [start, end) (a covering
        # scan); the rows are then read in primary-key order, i.e. neighbouring pages, instead
        # of one look-up per reading: about twice as fast for a week. Rows of that seq range
        # outside [start, end) (a node's clock stepped) are filtered out again.
        where = (f"FROM {TABLE}, (SELECT min(seq) AS first_seq, max(seq) AS last_seq "
                 f"FROM {TABLE} INDEXED BY readings_by_time WHERE {_IN_SPAN}) AS span "
                 f"WHERE {_IN_SPAN} AND seq BETWEEN span.first_seq AND span.last_seq")
        args: tuple[object, ...] = (*span, *span)
        if every_s is None:
            sql = f"SELECT measured_at_us, {', '.join(map(_quoted, names))} {where} " \
                  f"ORDER BY measured_at_us, seq"
        else:
            bucket = bucket_us(every_s)
            averages = ", ".join(f"avg({_quoted(name)})" for name in names)
            # Floor division also for times before 1970 (SQLite's % truncates toward zero).
            sql = f"SELECT measured_at_us - ((measured_at_us % ?) + ?) % ? AS bucket, " \
                  f"{averages} {where} GROUP BY bucket ORDER BY bucket"
            args = (bucket, bucket, bucket, *args)
        points = []
        for at_us, *values in self._read(sql, args):
            present = {name: value for name, value in zip(names, values, strict=True)
                       if value is not None}
            if present:
                points.append(SeriesPoint(at=from_epoch_us(at_us), values=present))
        return points

    def ping(self, timeout_s: float = 2.0) -> None:
        """Reads the schema page (the file is there and readable); ``timeout_s`` is not
        needed: a reader never waits for the writer in WAL mode."""
        self._read("SELECT count(*) FROM sqlite_master", ())

    def close(self) -> None:
        """Close every connection (idempotent). A write in progress finishes first; later
        calls raise ``StoreUnavailable``."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        with self._pool_lock:
            idle, self._idle_readers = self._idle_readers, []
        for connection in idle:
            connection.close()

    # --- extras -------------------------------------------------------------------------

    @property
    def field_names(self) -> tuple[str, ...]:
        """Numeric fields ``series()`` accepts: the measurement table's and the state fields,
        plus columns of measurements an older version stored and this one no longer has."""
        return self._fields

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- opening and migrating ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=self._busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self.path}: cannot open "
                                   f"({_error_name(exc)}: {exc})") from None

    def _open_writer(self, max_bytes: int | None) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"sqlite store {self.path}: cannot create its folder "
                                   f"({exc})") from None
        db = self._connect()
        try:
            db.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")  # only for a new database
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"sqlite store {self.path}: cannot use a WAL journal here "
                                  f"(got {mode!r}; a network file system?)")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            if max_bytes is not None:
                page_size = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise self._opening_error(exc, "cannot open") from None
        except BaseException:
            db.close()
            raise
        return db

    def _opening_error(self, exc: sqlite3.Error, doing: str) -> Exception:
        """Busy/locked/I-O trouble is retryable; anything else means this file is not ours."""
        detail = f"({_error_name(exc)}: {exc})"
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable(f"sqlite store {self.path}: {doing} {detail}")
        return ConfigError(f"sqlite store {self.path}: not a usable database {detail}")

    def _migrate(self) -> tuple[str, ...]:
        """Create the table and index, or add the field columns missing from an older one;
        returns every field column. One transaction: a failed migration changes nothing."""
        db = self._writer
        try:
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"sqlite store {self.path}: schema version {version} was "
                                  f"written by a newer gateway (this one knows "
                                  f"{SCHEMA_VERSION}); upgrade the gateway")
            field_sql = ",\n".join(f"    {_quoted(name)} REAL" for name in FIELD_COLUMNS)
            db.execute(_CREATE_TABLE.format(fields=field_sql))
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                              "AND name = 'seq_runs'").fetchall():
                db.execute(_CREATE_RUNS)  # new database, or one from before seq_runs existed
                db.execute(f"INSERT INTO seq_runs {_RUNS_FROM_READINGS}")
            existing = [row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")]
            missing_labels = [c for c in _LABEL_COLUMNS if c not in existing]
            if missing_labels:
                raise ConfigError(f"sqlite store {self.path}: table {TABLE} lacks columns "
                                  f"{', '.join(missing_labels)}: not a cacao-dryer database")
            for name in FIELD_COLUMNS:
                if name not in existing:
                    db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {_quoted(name)} REAL")
            db.execute(_CREATE_INDEX)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._opening_error(exc, "cannot prepare the schema") from None
        except BaseException:
            self._rollback()
            raise
        retired = [c for c in existing if c not in _LABEL_COLUMNS and c not in FIELD_COLUMNS
                   and _IDENTIFIER.match(c)]
        return (*FIELD_COLUMNS, *retired)

    def _record_runs(self, rows: list[tuple[object, ...]]) -> None:
        """Merge the batch's sequence numbers into seq_runs (inside the write transaction).

        A union of ranges: numbers already stored (duplicates) change nothing, so the batch
        is merged whole, whichever of its readings turned out to be new."""
        by_node: dict[tuple[object, object], set[int]] = {}
        for row in rows:
            by_node.setdefault((row[0], row[1]), set()).add(row[2])  # type: ignore[arg-type]
        for (site_id, node_id), seqs in by_node.items():
            for first, last in _runs(sorted(seqs)):
                self._merge_run(site_id, node_id, first, last)

    def _merge_run(self, site_id: object, node_id: object, first: int, last: int) -> None:
        """Add [first, last] to the node's runs, joining every run it overlaps or touches
        (runs stay disjoint and non-adjacent, so at most one starts before ``first``)."""
        db, node = self._writer, (site_id, node_id)
        before = db.execute("SELECT first_seq, last_seq FROM seq_runs WHERE site_id = ? "
                            "AND node_id = ? AND first_seq < ? ORDER BY first_seq DESC LIMIT 1",
                            (*node, first)).fetchall()
        if before and before[0][1] >= first - 1:
            first, last = before[0][0], max(last, before[0][1])
        absorbed = db.execute("SELECT max(last_seq) FROM seq_runs WHERE site_id = ? "
                              "AND node_id = ? AND first_seq BETWEEN ? AND ?",
                              (*node, first, last + 1)).fetchall()[0][0]
        if absorbed is not None:
            last = max(last, absorbed)
        db.execute("DELETE FROM seq_runs WHERE site_id = ? AND node_id = ? "
                   "AND first_seq BETWEEN ? AND ?", (*node, first, last))
        db.execute("INSERT INTO seq_runs (site_id, node_id, first_seq, last_seq) "
                   "VALUES (?, ?, ?, ?)", (*node, first, last))

    def _rollback(self) -> None:
        try:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (it does after some I/O and disk-full errors)

    # --- reading ------------------------------------------------------------------------

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection from the pool (waits while all are in use)."""
        with self._reader_slots:
            with self._pool_lock:
                if self._closed:
                    raise StoreUnavailable(f"sqlite store {self.path}: closed")
                connection = self._idle_readers.pop() if self._idle_readers else None
            if connection is None:
                connection = self._connect()
                try:
                    connection.execute("PRAGMA query_only=1")
                except sqlite3.Error as exc:
                    connection.close()
                    raise StoreUnavailable(f"sqlite store {self.path}: cannot open "
                                           f"({_error_name(exc)}: {exc})") from None
            try:
                yield connection
            finally:
                with self._pool_lock:
                    if self._closed:
                        connection.close()
                    else:
                        self._idle_readers.append(connection)

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple]:
        with self._reader() as connection:
            try:
                return connection.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
                    raise
                raise StoreUnavailable(f"sqlite store {self.path}: read failed "
                                       f"({_error_name(exc)}: {exc})") from None

    def _validated_fields(self, fields: Sequence[str]) -> list[str]:
        if isinstance(fields, str):
            raise ValueError(f"fields must be a list of field names, not the string {fields!r}")
        names = list(dict.fromkeys(fields))
        if not names:
            raise ValueError("series needs at least one field")
        for name in names:
            if name not in self._field_set:
                raise ValueError(f"unknown field {name!r} (known: {', '.join(self._fields)})")
        return names

    # --- rows <-> readings --------------------------------------------------------------

    def _row(self, reading: StoredReading) -> tuple[object, ...]:
        where = f"reading {reading.site_id}/{reading.node_id} seq {reading.seq}"
        unknown = reading.fields.keys() - self._field_set
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for name, value in reading.fields.items():
            if not math.isfinite(value):
                raise ValueError(f"{where}: field {name} is {value!r}, not a finite number")
        bad_alarm = next((a for a in reading.alarms if not a or "," in a), None)
        if bad_alarm is not None:
            raise ValueError(f"{where}: alarm {bad_alarm!r} cannot be stored (empty or has ',')")
        raining = None if reading.raining is None else int(reading.raining)
        return (reading.site_id, reading.node_id, reading.seq,
                to_epoch_us(reading.measured_at, f"{where}: measured_at"), raining,
                reading.mode, ",".join(reading.alarms), reading.batch_id,
                *(reading.fields.get(name) for name in self._fields))

    def _reading(self, row: tuple) -> StoredReading:
        site_id, node_id, seq, at_us, raining, mode, alarms, batch_id, *values = row
        return StoredReading(
            site_id=site_id, node_id=node_id, seq=seq, measured_at=from_epoch_us(at_us),
            fields={name: value for name, value in zip(self._fields, values, strict=True)
                    if value is not None},
            raining=None if raining is None else bool(raining), mode=mode,
            alarms=tuple(alarms.split(",")) if alarms else (), batch_id=batch_id)


def _runs(sorted_seqs: list[int]) -> Iterator[tuple[int, int]]:
    """Contiguous (first, last) runs of sorted, distinct numbers."""
    first = last = sorted_seqs[0]
    for seq in sorted_seqs[1:]:
        if seq != last + 1:
            yield first, last
            first = seq
        last = seq
    yield first, last
