"""The node's durable on-disk outbox: messages wait here until the broker acknowledges them.

Every reading is written here BEFORE it is published, and is removed only after the broker's
PUBACK. A crash, a power cut (with ``sync="full"``) or SIGKILL therefore loses nothing; the
worst case is a message sent twice, which the gateway drops by node + sequence number.

Storage is one SQLite database (stdlib ``sqlite3``):

- WAL journal, ``synchronous=FULL`` for ``sync="full"`` (the WAL is fsynced at every commit:
  survives power cuts) or ``NORMAL`` for ``sync="normal"`` (fsync only at checkpoints:
  survives process crashes, not power cuts, fewer SD-card writes).
- ``page_size=1024``: a commit writes whole pages to the WAL, so small pages mean fewer bytes
  per message.
- ``locking_mode=EXCLUSIVE``: one process owns the outbox (a second node on the same data_dir
  fails loudly instead of interleaving sequence numbers), and SQLite keeps the WAL index in
  memory instead of a memory-mapped ``-shm`` file that the kernel would keep writing back.
- ``add()`` is ONE transaction: bump the sequence counter, build the payload with that number,
  insert. A sequence number is therefore never reused and never skipped, even across SIGKILL.
- ``remove()`` after PUBACK is lazy: acknowledged ids are remembered in memory and deleted in
  the next ``add()`` transaction (or in a batch once many are waiting, or at ``close()``). At
  one reading per 10 s that is one commit per reading instead of two. A crash before the
  delete only means those messages are sent again (duplicates are allowed, loss is not).
- Disk bound: ``max_bytes`` bounds the queued messages (topic + payload + a fixed per-row
  overhead). When a new message does not fit, the OLDEST messages are dropped in the same
  transaction (those of ``drop_last`` counters only when nothing else is left), counted
  persistently (``dropped_total()``) and remembered as sequence ranges until the node asks
  for them (``take_dropped()``) to report a queue_overflow event.

Thread-safe: the node loop adds while the MQTT thread acknowledges.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cacao_dryer.errors import OutboxError

SYNC_MODES = {"full": "FULL", "normal": "NORMAL"}
PAGE_SIZE_BYTES = 1024
ROW_OVERHEAD_BYTES = 40  # estimate: SQLite record header, rowid, qos/retain/seq, cell pointer
REMOVE_BATCH = 500  # acknowledged ids waiting in memory before they are deleted on their own
WAL_LIMIT_BYTES = 2 * 1024 * 1024  # WAL is truncated back to this after a checkpoint
DROPPED_TOTAL = "outbox.dropped_total"  # reserved counter name
_COUNTER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INT NOT NULL,
    retain INT NOT NULL,
    counter TEXT NOT NULL,
    seq INT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INT NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (
    id INTEGER PRIMARY KEY,
    counter TEXT NOT NULL,
    first_seq INT NOT NULL,
    last_seq INT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int  # strictly increasing in the order messages were added (within one open Outbox)
    topic: str
    payload: bytes
    qos: int
    retain: bool
    counter: str
    seq: int


class OutboxCorrupt(OutboxError):
    """The outbox file exists but is not a readable outbox database (e.g. after SD-card
    corruption); distinct from "in use by another process", which must stop the node."""


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Messages of one counter dropped because the outbox was full: seq first..last inclusive."""

    counter: str
    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


def _row_bytes(topic_len: int, payload_len: int) -> int:
    return topic_len + payload_len + ROW_OVERHEAD_BYTES


class Outbox:
    """Durable FIFO of outgoing MQTT messages with per-counter sequence numbers."""

    def __init__(self, path: Path, max_bytes: int, sync: str = "full",
                 drop_last: tuple[str, ...] = ()) -> None:
        """``drop_last``: counters whose messages are dropped only when nothing else is left
        (the node protects its events: they are few, carry alarms and the record of what the
        outbox dropped)."""
        if sync not in SYNC_MODES:
            raise OutboxError(f"outbox {path}: sync must be 'full' or 'normal', not {sync!r}")
        if max_bytes <= 0:
            raise OutboxError(f"outbox {path}: max_bytes must be positive, not {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self._drop_last = drop_last
        self._lock = threading.Lock()
        self._acked: set[int] = set()  # removed by the caller, not yet deleted on disk
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=0.2, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"outbox {path}: cannot open ({exc})") from None
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")  # only before creation
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise OutboxError(f"outbox {path}: cannot use WAL journal (got {mode!r})")
            self._db.execute(f"PRAGMA synchronous={SYNC_MODES[sync]}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.executescript(_SCHEMA)
            self._stored_bytes, self._last_id = self._db.execute(
                "SELECT coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)), 0) "
                "+ count(*) * ?, coalesce(max(id), 0) FROM outbox",
                (ROW_OVERHEAD_BYTES,)).fetchall()[0]
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise OutboxError(f"outbox {path}: in use by another process (is another "
                                  f"node running on the same data_dir?)") from None
            raise OutboxError(f"outbox {path}: cannot open ({exc})") from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OutboxCorrupt(f"outbox {path}: not a usable outbox database ({exc})") from None
        except OutboxError:
            self._db.close()
            raise

    # --- writing -------------------------------------------------------------------------

    def add(self, topic: str, make_payload: Callable[[int], bytes], counter: str, *,
            qos: int = 1, retain: bool = False) -> int:
        """Give the next sequence number of ``counter`` to ``make_payload(seq)`` and store the
        message, all in one transaction; returns the sequence number (1, 2, 3, ...).

        If ``make_payload`` raises, nothing is stored and the number is not used up.
        """
        if not _COUNTER_NAME.match(counter):
            raise OutboxError(f"outbox {self.path}: counter name {counter!r} is not a short "
                              f"lowercase identifier")
        # Checked here, not at publish time: a stored message that can never be published
        # would block everything queued behind it.
        if not topic or any(c in topic for c in "+#\0") or len(topic.encode()) > 65_535:
            raise OutboxError(f"outbox {self.path}: {topic!r} is not a topic one can publish to")
        if qos not in (0, 1, 2):
            raise OutboxError(f"outbox {self.path}: qos must be 0, 1 or 2, not {qos}")
        with self._lock:
            self._begin()
            try:
                freed = self._delete_acked()
                seq = self._bump(counter, 1)
                payload = make_payload(seq)
                if not isinstance(payload, bytes):
                    raise OutboxError(f"outbox {self.path}: payload for {topic} seq {seq} "
                                      f"is {type(payload).__name__}, not bytes")
                size = _row_bytes(len(topic.encode()), len(payload))
                if size > self.max_bytes:
                    raise OutboxError(f"outbox {self.path}: message on {topic} is {size} bytes, "
                                      f"larger than the whole outbox ({self.max_bytes} bytes)")
                freed += self._drop_oldest(self._stored_bytes - freed + size - self.max_bytes)
                # Explicit ids: SQLite would reuse id 1 once the table is empty, and the
                # forwarder's cursor relies on ids only growing while the process runs.
                self._db.execute(
                    "INSERT INTO outbox (id, topic, payload, qos, retain, counter, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self._last_id + 1, topic, payload, qos, int(retain), counter, seq))
                self._commit()
            except BaseException:
                self._rollback()
                raise
            self._last_id += 1
            self._acked.clear()
            self._stored_bytes += size - freed
            return seq

    def remove(self, ids: Iterable[int]) -> None:
        """Forget messages the broker acknowledged. Lazy: deleted on disk in the next ``add``
        transaction, or on their own once ``REMOVE_BATCH`` are waiting, or at ``flush``/``close``.
        Unknown or already removed ids are ignored."""
        with self._lock:
            self._acked.update(ids)
            if len(self._acked) >= REMOVE_BATCH:
                self._flush_locked()

    def flush(self) -> None:
        """Delete acknowledged messages on disk now."""
        with self._lock:
            self._flush_locked()

    def take_dropped(self) -> list[DroppedRange]:
        """Sequence ranges dropped because the outbox was full since the last call (oldest
        first), and forget them. Kept on disk, so a restart does not lose the report."""
        with self._lock:
            rows = self._query("SELECT counter, first_seq, last_seq FROM dropped ORDER BY id")
            if rows:
                self._begin()
                try:
                    self._db.execute("DELETE FROM dropped")
                    self._commit()
                except BaseException:
                    self._rollback()
                    raise
        return [DroppedRange(counter, first, last) for counter, first, last in rows]

    # --- reading -------------------------------------------------------------------------

    def peek(self, limit: int, after_id: int = 0) -> list[OutboxMessage]:
        """Up to ``limit`` waiting messages with id > ``after_id``, oldest first."""
        result: list[OutboxMessage] = []
        with self._lock:
            cursor = after_id
            while len(result) < limit:
                rows = self._query(
                    "SELECT id, topic, payload, qos, retain, counter, seq FROM outbox "
                    "WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit + len(self._acked)))
                if not rows:
                    break
                for row in rows:
                    if row[0] not in self._acked:
                        result.append(OutboxMessage(row[0], row[1], bytes(row[2]), row[3],
                                                    bool(row[4]), row[5], row[6]))
                        if len(result) == limit:
                            break
                cursor = rows[-1][0]
        return result

    def depth(self) -> int:
        """Messages waiting for an acknowledgement."""
        with self._lock:
            waiting = self._query("SELECT count(*) FROM outbox")[0][0]
            if self._acked:
                marks = ",".join("?" * len(self._acked))
                waiting -= self._query(f"SELECT count(*) FROM outbox WHERE id IN ({marks})",
                                       tuple(self._acked))[0][0]
            return waiting

    def stored_bytes(self) -> int:
        """Bytes counted against ``max_bytes`` (includes acknowledged rows not yet deleted)."""
        with self._lock:
            return self._stored_bytes

    def dropped_total(self) -> int:
        """Messages dropped because the outbox was full, ever (survives restarts)."""
        return self.counter(DROPPED_TOTAL)

    def raise_counter(self, name: str, at_least: int) -> None:
        """Make counter ``name`` continue above ``at_least`` (after the outbox had to be
        recreated, so that no sequence number the gateway already has is given out again)."""
        with self._lock:
            self._begin()
            try:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                    "DO UPDATE SET value = max(value, excluded.value)", (name, at_least))
                self._commit()
            except BaseException:
                self._rollback()
                raise

    def counter(self, name: str) -> int:
        """The last sequence number given out by counter ``name`` (0 if none yet)."""
        with self._lock:
            rows = self._query("SELECT value FROM counters WHERE name = ?", (name,))
            return rows[0][0] if rows else 0

    def close(self) -> None:
        """Delete acknowledged messages on disk and close the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_locked()
            finally:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals (lock held) -----------------------------------------------------------

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: read failed ({exc})") from None

    def _begin(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: cannot start a write ({exc})") from None

    def _commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: write failed ({exc})") from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _bump(self, name: str, by: int) -> int:
        return self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
            (name, by)).fetchall()[0][0]  # fetchall: finish the statement before COMMIT

    def _delete_acked(self) -> int:
        """Delete the acknowledged rows inside the caller's transaction; returns bytes freed."""
        freed = 0
        ids = sorted(self._acked)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            freed += self._db.execute(
                f"SELECT coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)), 0) "
                f"+ count(*) * ? FROM outbox WHERE id IN ({marks})",
                (ROW_OVERHEAD_BYTES, *chunk)).fetchall()[0][0]
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
        return freed

    def _flush_locked(self) -> None:
        if not self._acked or self._closed:
            return
        self._begin()
        try:
            freed = self._delete_acked()
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._acked.clear()
        self._stored_bytes -= freed

    def _drop_oldest(self, excess_bytes: int) -> int:
        """Delete the oldest rows until ``excess_bytes`` are freed, count them and record their
        sequence ranges (inside the caller's transaction); returns bytes freed."""
        freed = 0
        dropped: list[tuple[str, int]] = []
        columns = "id, counter, seq, length(CAST(topic AS BLOB)) + length(payload)"
        protected = ",".join("?" * len(self._drop_last))
        while freed < excess_bytes:
            # Walks the primary key in id order, skipping the few protected rows.
            rows = self._db.execute(
                f"SELECT {columns} FROM outbox WHERE counter NOT IN ({protected}) "
                "ORDER BY id LIMIT 64", self._drop_last).fetchall() or self._db.execute(
                f"SELECT {columns} FROM outbox ORDER BY id LIMIT 64").fetchall()
            if not rows:
                break
            ids = []
            for row_id, counter, seq, size in rows:
                ids.append(row_id)
                dropped.append((counter, seq))
                freed += size + ROW_OVERHEAD_BYTES
                if freed >= excess_bytes:
                    break
            marks = ",".join("?" * len(ids))
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        if dropped:
            self._bump(DROPPED_TOTAL, len(dropped))
            self._record_dropped(dropped)
        return freed

    def _record_dropped(self, dropped: list[tuple[str, int]]) -> None:
        """Store dropped (counter, seq) as ranges, extending the last range of that counter
        when it continues it (drops are oldest-first, so ranges stay few)."""
        for counter, seq in dropped:
            last = self._db.execute(
                "SELECT id, last_seq FROM dropped WHERE counter = ? ORDER BY id DESC LIMIT 1",
                (counter,)).fetchall()
            if last and last[0][1] + 1 == seq:
                self._db.execute("UPDATE dropped SET last_seq = ? WHERE id = ?",
                                 (seq, last[0][0]))
            else:
                self._db.execute(
                    "INSERT INTO dropped (counter, first_seq, last_seq) VALUES (?, ?, ?)",
                    (counter, seq, seq))
