"""Node readings in InfluxDB 1.x over its v1 HTTP API (line protocol in, InfluxQL out).

This is what ``apt install influxdb`` gives on Debian and Raspberry Pi OS (1.6.7). Schema
(measurement ``dryer_reading``, tags ``site`` and ``node``, timestamps unique per reading) in
``gateway/stores/line_protocol.py`` and ``docs/storage.md``.

Guarantees and how:

- Idempotent: a reading is one point whose tags and timestamp depend only on the reading, so
  writing it again — a node's replay, the gateway's retry after an error or a crash, a second
  gateway — overwrites that point with the same values instead of adding one.
- One ``POST /write`` per batch (up to ``MAX_LINES_PER_REQUEST`` readings; a bigger batch is
  sent in several requests). Connection errors, timeouts and 5xx answers raise
  ``StoreUnavailable``: retry. InfluxDB 1.6 answers ``500 engine: error syncing wal`` under
  load and has often stored the points anyway; since writes are idempotent the retry is
  harmless. 4xx answers (bad credentials, missing privilege, a field stored with another
  type) raise ``StoreRejected``: retrying cannot help. The one exception is a point older
  than the database's retention period: InfluxDB drops it (400 "points beyond retention
  policy") and stores the rest; that is logged and counted as not new, not an error.
- ``write()`` returns how many readings were new. InfluxDB does not say, so before writing,
  one query per node and stretch of time (all in one ``/query`` request) asks which of the
  batch's points already exist. Readings of a write that failed with ``StoreUnavailable``
  are remembered (in memory, bounded): when they are written again they count as new even if
  the failed write had stored them, as the caller, told that nothing was stored, expects. The
  count is exact for one writer; two gateways writing the same reading at the same moment
  may both count it (it is still stored once).
- The database is created on first use if missing (with ``retention`` as its default
  retention policy's duration; ``None`` keeps data forever). The constructor does no I/O,
  so a gateway starts while InfluxDB is down and spools until it is back.
- Queries use chunked responses (never cut off by the server's ``max-row-limit``) and never
  put caller text into InfluxQL unquoted; field names are checked against the known fields.

Credentials go in HTTP Basic auth. The user needs READ and WRITE on the database (``GRANT
ALL ON cacao TO gateway``), and admin only if the gateway must create the database. Proxy
environment variables are ignored: InfluxDB runs on the gateway or its LAN.

Threads: any thread may call any method (httpx's client is thread-safe; the little state
kept here is under a lock).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from cacao_dryer.errors import ConfigError
from cacao_dryer.measurements import MEASUREMENTS
from gateway.stores.line_protocol import (
    ALARMS_FIELD,
    BATCH_FIELD,
    LABEL_FIELDS,
    MEASUREMENT,
    MODE_FIELD,
    NODE_TAG,
    RAINING_FIELD,
    SEQ_FIELD,
    SITE_TAG,
    encode_reading,
    measured_at_from_ns,
    time_ns,
)
from gateway.timeseries import (
    STATE_FIELDS,
    SeriesPoint,
    StoredReading,
    StoreRejected,
    StoreUnavailable,
)

log = logging.getLogger("cacao_dryer.gateway.influxdb1")

NUMERIC_FIELDS: tuple[str, ...] = (*(m.key for m in MEASUREMENTS), *STATE_FIELDS)
_KNOWN_FIELDS = frozenset(NUMERIC_FIELDS)
MAX_LINES_PER_REQUEST = 10_000      # ~3 MB of line protocol; influxd's max-body-size is 25 MB
MAX_STATEMENTS_PER_QUERY = 200      # InfluxQL statements sent in one /query request
CHUNK_ROWS = 10_000                 # rows per chunk of a chunked query response
EXISTING_GAP_NS = 3600 * 10**9      # a batch's points further apart are looked up separately
SEQ_BUCKET_MIN_S = 86_400           # seq_ranges summarizes a node's readings per day ...
SEQ_BUCKETS_MAX = 2_000             # ... or in at most this many buckets
UNCONFIRMED_MAX = 1_000_000         # failed-write readings remembered for counting
_DURATION = re.compile(r"^(INF|(\d+(ns|u|µ|ms|s|m|h|d|w))+)$")
_RETENTION_DROP = re.compile(r"^partial write: points beyond retention policy dropped=(\d+)$")
_TRANSIENT_QUERY_ERRORS = ("timeout", "limit exceeded", "interrupted", "killed")

_Key = tuple[str, str, int, int]  # site, node, seq, point time [ns]
_Row = dict[str, Any]
_T = TypeVar("_T")


def quote_identifier(name: str) -> str:
    """An InfluxQL identifier (database, measurement, field or tag name), double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _DatabaseMissing(Exception):
    """The database vanished (dropped while the gateway runs): create it again."""


class InfluxDB1Store:
    """Node readings in an InfluxDB 1.x database (``TimeSeriesStore``)."""

    def __init__(self, url: str, database: str, username: str | None = None,
                 password: str | None = None, *, timeout_s: float = 10.0,
                 retention: str | None = None) -> None:
        """``url``: the HTTP API, e.g. ``http://127.0.0.1:8086``. ``timeout_s``: for each
        request (connect, send, each read). ``retention``: InfluxQL duration (``104w``,
        ``INF``) of the database's default retention policy, used only when this store
        creates the database; older readings are deleted by InfluxDB."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"influxdb1 store: url {url!r} is not http(s)://host:port")
        if not database:
            raise ConfigError("influxdb1 store: database name is empty")
        if password is not None and username is None:
            raise ConfigError("influxdb1 store: a password needs a username")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"influxdb1 store: timeout_s must be positive, not {timeout_s!r}")
        if retention is not None and not _DURATION.match(retention):
            raise ConfigError(f"influxdb1 store: retention {retention!r} is not an InfluxQL "
                              f"duration such as 104w, 365d or INF")
        self.url = url.rstrip("/")
        self.database = database
        self.timeout_s = timeout_s
        self._retention = retention
        self._where = f"influxdb {self.url} database {database}"
        auth = (username, password or "") if username is not None else None
        self._client = httpx.Client(
            base_url=self.url, auth=auth, timeout=timeout_s, trust_env=False,
            headers={"User-Agent": "cacao-dryer-gateway"})
        self._lock = threading.Lock()
        self._database_ready = False
        self._closed = False
        self._unconfirmed: dict[_Key, None] = {}  # insertion-ordered set

    # --- the TimeSeriesStore interface ----------------------------------------------------

    def write(self, readings: Sequence[StoredReading]) -> int:
        """Store a batch; returns how many readings were new (see the module docstring)."""
        self._check_open()
        body_lines, keys = [], []
        for reading in readings:  # ValueError for unstorable input, before any I/O
            if not _KNOWN_FIELDS.issuperset(reading.fields):
                unknown = set(reading.fields) - _KNOWN_FIELDS
                raise ValueError(f"reading {reading.site_id}/{reading.node_id} seq "
                                 f"{reading.seq}: unknown field(s) {', '.join(sorted(unknown))}")
            line, at_ns = encode_reading(reading)
            body_lines.append(line)
            keys.append((reading.site_id, reading.node_id, reading.seq, at_ns))
        if not body_lines:
            return 0
        return self._database_retry(lambda: self._write_lines(body_lines, keys))

    def seq_ranges(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Stored sequence numbers of a node as sorted, contiguous (first, last) ranges.

        InfluxDB sums up each day (or longer bucket) of the node's readings as count, sum,
        min and max of seq; a bucket whose count and sum are those of every number from min
        to max is one whole range. Only the other buckets are read seq by seq: a year of
        readings every 10 s comes back as ~365 rows instead of 3 million (InfluxDB still
        scans them: about 1 s per 100 days on a 2-core machine). Count and sum are used, not
        count(distinct()), which is 4x slower: they could only be fooled if a node had both
        reused seq numbers (at different times) and lost readings in the same day, in
        numbers that cancel out in count and in sum."""
        self._check_open()
        where = self._node_filter(site_id, node_id)
        first, last = self._read([
            f"SELECT first({SEQ_FIELD}) FROM {MEASUREMENT} WHERE {where}",
            f"SELECT last({SEQ_FIELD}) FROM {MEASUREMENT} WHERE {where}"])
        if not first or not last:
            return []
        start_ns, end_ns = first[0]["time"], last[0]["time"]
        bucket_s = max(SEQ_BUCKET_MIN_S,
                       math.ceil((end_ns - start_ns + 1) / SEQ_BUCKETS_MAX / 1e9))
        bucket_ns = bucket_s * 10**9
        span = f"time >= {start_ns} AND time <= {end_ns}"
        buckets = self._read([
            f"SELECT count({SEQ_FIELD}) AS n, sum({SEQ_FIELD}) AS total, "
            f"min({SEQ_FIELD}) AS lo, max({SEQ_FIELD}) AS hi FROM {MEASUREMENT} "
            f"WHERE {where} AND {span} GROUP BY time({bucket_s}s) fill(none)"])[0]
        ranges: list[tuple[int, int]] = []
        gappy: list[str] = []
        for row in buckets:
            low, high = int(row["lo"]), int(row["hi"])
            count = high - low + 1
            if row["n"] == count and row["total"] == (low + high) * count // 2:
                ranges.append((low, high))
            else:
                gappy.append(
                    f"SELECT {SEQ_FIELD} FROM {MEASUREMENT} WHERE {where} AND {span} "
                    f"AND time >= {row['time']} AND time < {row['time'] + bucket_ns}")
        if gappy:
            seqs = sorted({int(row[SEQ_FIELD]) for rows in self._read(gappy) for row in rows})
            ranges.extend(_runs(seqs))
        return _merged(ranges)

    def latest(self, site_id: str, node_id: str) -> StoredReading | None:
        """The node's reading with the highest sequence number (its newest: a node numbers
        readings in the order it takes them, whatever its clock says)."""
        self._check_open()
        rows = self._read([f"SELECT max({SEQ_FIELD}), * FROM {MEASUREMENT} "
                            f"WHERE {self._node_filter(site_id, node_id)}"])[0]
        return self._reading(rows[0], site_id, node_id) if rows else None

    def series(self, site_id: str, node_id: str, start: datetime, end: datetime,
               fields: Sequence[str], every_s: float | None = None) -> list[SeriesPoint]:
        """Readings of a node in [start, end), oldest first, with the requested fields.

        Without ``every_s``: one point per reading. With it: one point per bucket of
        ``every_s`` seconds that holds readings, ``at`` = the bucket's start, each value the
        mean of the field in it; buckets are aligned to the Unix epoch (InfluxDB's ``GROUP BY
        time()``), not to ``start``. A missing value is left out of ``values``; a point with
        none of the fields is left out."""
        names = _validated_fields(fields)
        bucket_us = None if every_s is None else _bucket_us(every_s)
        start_ns, end_ns = time_ns(start, "start"), time_ns(end, "end")
        self._check_open()
        where = (f"{self._node_filter(site_id, node_id)} AND time >= {start_ns} "
                 f"AND time < {end_ns}")
        if bucket_us is None:
            columns = ", ".join(quote_identifier(name) for name in names)
            statement = f"SELECT {columns} FROM {MEASUREMENT} WHERE {where}"
        else:
            means = ", ".join(f"mean({quote_identifier(name)}) AS {quote_identifier(name)}"
                              for name in names)
            statement = (f"SELECT {means} FROM {MEASUREMENT} WHERE {where} "
                         f"GROUP BY time({bucket_us}u) fill(none)")
        points = []
        for row in self._read([statement])[0]:
            values = {name: float(row[name]) for name in names if row.get(name) is not None}
            if values:
                points.append(SeriesPoint(at=measured_at_from_ns(row["time"]), values=values))
        return points

    def close(self) -> None:
        """Close the HTTP connections (idempotent); later calls raise ``StoreUnavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    def __enter__(self) -> InfluxDB1Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def _write_lines(self, body_lines: list[str], keys: list[_Key]) -> int:
        stored_before = self._existing(keys)
        with self._lock:
            new = {key for key in keys
                   if key not in stored_before or key in self._unconfirmed}
        try:
            dropped = self._send(body_lines)
        except (StoreUnavailable, _DatabaseMissing):
            with self._lock:  # maybe stored, maybe not: the retry tells, and counts them new
                for key in new:
                    self._unconfirmed[key] = None
                while len(self._unconfirmed) > UNCONFIRMED_MAX:
                    del self._unconfirmed[next(iter(self._unconfirmed))]
            raise
        with self._lock:
            for key in keys:
                self._unconfirmed.pop(key, None)
        return max(0, len(new) - dropped)

    def _send(self, body_lines: list[str]) -> int:
        """POST the lines (one request per MAX_LINES_PER_REQUEST); returns how many points
        InfluxDB dropped as older than the retention period."""
        dropped = 0
        for first in range(0, len(body_lines), MAX_LINES_PER_REQUEST):
            body = "\n".join(body_lines[first:first + MAX_LINES_PER_REQUEST]).encode()
            dropped += self._post_write(body, len(body_lines))
        return dropped

    def _post_write(self, body: bytes, batch_size: int) -> int:
        try:
            response = self._client.post(
                "/write", params={"db": self.database, "precision": "ns"}, content=body)
        except httpx.TimeoutException:
            raise StoreUnavailable(f"{self._where}: write of {batch_size} readings timed out "
                                   f"after {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self._where}: cannot write ({type(exc).__name__}: "
                                   f"{exc})") from None
        if response.is_success:
            return 0
        error = _error_text(response)
        if response.status_code == 404 and "database not found" in error:
            raise _DatabaseMissing
        self._raise_for(response.status_code, error, f"write of {batch_size} readings")
        dropped = _RETENTION_DROP.match(error)
        if dropped is None:
            raise StoreRejected(f"{self._where}: write of {batch_size} readings rejected "
                                f"({response.status_code}: {error})")
        count = int(dropped.group(1))
        log.warning("%s: %d readings older than the retention period were dropped by InfluxDB",
                    self._where, count)
        return count

    def _existing(self, keys: Iterable[_Key]) -> set[_Key]:
        """Which of these points are already stored: one query per node and stretch of time
        (points further apart than EXISTING_GAP_NS are looked up separately, so a replay of
        last month does not read everything in between)."""
        times: dict[tuple[str, str], set[int]] = defaultdict(set)
        for site_id, node_id, _, at_ns in keys:
            times[(site_id, node_id)].add(at_ns)
        statements: list[str] = []
        owners: list[tuple[str, str]] = []
        for (site_id, node_id), node_times in times.items():
            where = self._node_filter(site_id, node_id)
            ordered = sorted(node_times)
            low = previous = ordered[0]
            for at_ns in [*ordered[1:], None]:
                if at_ns is None or at_ns - previous > EXISTING_GAP_NS:
                    statements.append(f"SELECT {SEQ_FIELD} FROM {MEASUREMENT} WHERE {where} "
                                      f"AND time >= {low} AND time <= {previous}")
                    owners.append((site_id, node_id))
                    if at_ns is not None:
                        low = at_ns
                if at_ns is not None:
                    previous = at_ns
        found: set[_Key] = set()
        for rows, (site_id, node_id) in zip(self._query(statements), owners, strict=True):
            found.update((site_id, node_id, int(row[SEQ_FIELD]), row["time"]) for row in rows)
        return found

    # --- querying -----------------------------------------------------------------------

    def _database_retry(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` with the database in place; if it vanished meanwhile (dropped by
        someone while the gateway runs), create it again and run ``action`` once more."""
        self._ensure_database()
        try:
            return action()
        except _DatabaseMissing:
            self._database_ready = False
            self._ensure_database()
            try:
                return action()
            except _DatabaseMissing:
                raise StoreUnavailable(f"{self._where}: the database disappeared again "
                                       f"right after it was created") from None

    def _read(self, statements: Sequence[str]) -> list[list[_Row]]:
        return self._database_retry(lambda: self._query(statements))

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        names = {row.get("name") for row in self._query(["SHOW DATABASES"], use_db=False)[0]}
        if self.database not in names:
            statement = f"CREATE DATABASE {quote_identifier(self.database)}"
            if self._retention is not None:
                statement += f" WITH DURATION {self._retention}"
            self._query([statement], use_db=False)
            log.info("%s: created the database (retention %s)", self._where,
                     self._retention or "INF")
        self._database_ready = True

    def _query(self, statements: Sequence[str], *, use_db: bool = True) -> list[list[_Row]]:
        """Run InfluxQL statements (MAX_STATEMENTS_PER_QUERY per request); one list of rows
        (column → value, times as integer ns) per statement."""
        results: list[list[_Row]] = []
        for first in range(0, len(statements), MAX_STATEMENTS_PER_QUERY):
            results.extend(self._query_once(
                statements[first:first + MAX_STATEMENTS_PER_QUERY], use_db))
        return results

    def _query_once(self, statements: Sequence[str], use_db: bool) -> list[list[_Row]]:
        form = {"q": ";\n".join(statements), "epoch": "ns", "chunked": "true",
                "chunk_size": str(CHUNK_ROWS)}
        if use_db:
            form["db"] = self.database
        results: list[list[_Row]] = [[] for _ in statements]
        what = "query" if len(statements) == 1 else f"query of {len(statements)} statements"
        try:
            with self._client.stream("POST", "/query", data=form) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response.status_code, _error_text(response), what)
                    raise StoreRejected(f"{self._where}: {what} rejected "
                                        f"({response.status_code}: {_error_text(response)})")
                for line in response.iter_lines():
                    if line.strip():
                        self._collect(json.loads(line), statements, results)
        except httpx.TimeoutException:
            raise StoreUnavailable(f"{self._where}: {what} timed out after "
                                   f"{self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self._where}: cannot {what} ({type(exc).__name__}: "
                                   f"{exc})") from None
        except json.JSONDecodeError as exc:
            raise StoreUnavailable(f"{self._where}: {what} answer is not JSON ({exc})") from None
        return results

    def _collect(self, chunk: dict[str, Any], statements: Sequence[str],
                 results: list[list[_Row]]) -> None:
        if "error" in chunk:
            self._statement_failed(chunk["error"], statements[0])
        for result in chunk.get("results", []):
            index = result.get("statement_id", 0)
            if "error" in result:
                self._statement_failed(result["error"], statements[index])
            for series in result.get("series", []):
                columns, tags = series["columns"], series.get("tags", {})
                results[index].extend({**tags, **dict(zip(columns, values, strict=True))}
                                      for values in series.get("values", []))

    def _statement_failed(self, error: str, statement: str) -> None:
        if "database not found" in error:
            raise _DatabaseMissing
        if any(word in error for word in _TRANSIENT_QUERY_ERRORS):
            raise StoreUnavailable(f"{self._where}: {error} ({statement[:120]})")
        raise StoreRejected(f"{self._where}: {error} ({statement[:120]})")

    def _raise_for(self, status: int, error: str, what: str) -> None:
        """StoreUnavailable for answers worth retrying, StoreRejected for refusals."""
        if status >= 500 or status in (408, 429):
            raise StoreUnavailable(f"{self._where}: {what} failed ({status}: {error})")
        if status in (401, 403):
            raise StoreRejected(f"{self._where}: {what} refused ({status}: {error}); check "
                                f"the username, password and the user's privileges")

    def _node_filter(self, site_id: str, node_id: str) -> str:
        return (f"{quote_identifier(SITE_TAG)} = {quote_string(site_id)} AND "
                f"{quote_identifier(NODE_TAG)} = {quote_string(node_id)}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"{self._where}: store closed")

    @staticmethod
    def _reading(row: _Row, site_id: str, node_id: str) -> StoredReading:
        skip = {"time", "max", SITE_TAG, NODE_TAG, *LABEL_FIELDS}
        fields = {name: float(value) for name, value in row.items()
                  if name not in skip and isinstance(value, int | float)
                  and not isinstance(value, bool)}
        alarms = row.get(ALARMS_FIELD) or ""
        raining = row.get(RAINING_FIELD)
        return StoredReading(
            site_id=site_id, node_id=node_id, seq=int(row[SEQ_FIELD]),
            measured_at=measured_at_from_ns(row["time"]), fields=fields,
            raining=None if raining is None else bool(raining),
            mode=row.get(MODE_FIELD) or "auto",
            alarms=tuple(alarms.split(",")) if alarms else (),
            batch_id=row.get(BATCH_FIELD))


def _error_text(response: httpx.Response) -> str:
    """InfluxDB's one-line error (its JSON ``error``), else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) else response.text
    return " ".join(text.split())[:300] or response.reason_phrase


def _validated_fields(fields: Sequence[str]) -> list[str]:
    if isinstance(fields, str):
        raise ValueError(f"fields must be a list of field names, not the string {fields!r}")
    names = list(dict.fromkeys(fields))
    if not names:
        raise ValueError("series needs at least one field")
    for name in names:
        if name not in NUMERIC_FIELDS:
            raise ValueError(f"unknown field {name!r} (known: {', '.join(NUMERIC_FIELDS)})")
    return names


def _bucket_us(every_s: float) -> int:
    if not math.isfinite(every_s) or every_s <= 0:
        raise ValueError(f"every_s must be a positive number of seconds, not {every_s!r}")
    bucket_us = round(every_s * 1_000_000)
    if bucket_us < 1:
        raise ValueError(f"every_s {every_s!r} is shorter than the time resolution (1 µs)")
    return bucket_us


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct numbers as contiguous (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent ranges joined, sorted."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
