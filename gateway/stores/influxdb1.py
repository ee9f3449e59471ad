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
- ``latest``/``latest_many`` never read a node's whole history: the newest point stamped in
  the last day up to ``now()`` (``ORDER BY time DESC LIMIT 1``), then ``max(seq)`` from six
  hours before it on and before 2020, then the winner at its exact time
  (``influx_common.InfluxStore.latest_many``).

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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from cacao_dryer.errors import ConfigError
from gateway.stores.influx_common import (
    MAX_LINES_PER_REQUEST,
    NUMERIC_FIELDS,
    InfluxStore,
    Row,
    check_timeout,
    checked_url,
    seq_ranges_from,
    split_buckets,
    stored_reading,
)
from gateway.stores.line_protocol import (
    MEASUREMENT,
    NODE_TAG,
    SEQ_FIELD,
    SITE_TAG,
    measured_at_from_ns,
)
from gateway.timeseries import SeriesPoint, StoredReading, StoreUnavailable

__all__ = [  # MAX_LINES_PER_REQUEST and NUMERIC_FIELDS live in influx_common, kept here too
    "CHUNK_ROWS", "MAX_LINES_PER_REQUEST", "NUMERIC_FIELDS", "SEQ_BUCKETS_MAX",
    "SEQ_BUCKET_MIN_S", "InfluxDB1Store", "quote_identifier", "quote_string"]

log = logging.getLogger("cacao_dryer.gateway.influxdb1")

CHUNK_ROWS = 10_000                 # rows per chunk of a chunked query response
SEQ_BUCKET_MIN_S = 86_400           # seq_ranges summarizes a node's readings per day ...
SEQ_BUCKETS_MAX = 2_000             # ... or in at most this many buckets
_DURATION = re.compile(r"^(INF|(\d+(ns|u|µ|ms|s|m|h|d|w))+)$")
_RETENTION_DROP = re.compile(r"^partial write: points beyond retention policy dropped=(\d+)$")

_T = TypeVar("_T")


def quote_identifier(name: str) -> str:
    """An InfluxQL identifier (database, measurement, field or tag name), double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _DatabaseMissing(Exception):
    """The database vanished (dropped while the gateway runs): create it again."""


class InfluxDB1Store(InfluxStore):
    """Node readings in an InfluxDB 1.x database (``TimeSeriesStore``)."""

    _log = log
    _ERROR_KEY = "error"
    _AUTH_HINT = "check the username, password and the user's privileges"
    _RETENTION = "the retention period"
    _TRANSIENT_QUERY_ERRORS = ("timeout", "limit exceeded", "interrupted", "killed")
    _PING_PATH = "/ping"  # 204 while influxd runs
    _TIME_COLUMN = "time"
    _SEQ_COLUMN = SEQ_FIELD
    _MAYBE_STORED = (StoreUnavailable, _DatabaseMissing)

    def __init__(self, url: str, database: str, username: str | None = None,
                 password: str | None = None, *, timeout_s: float = 10.0,
                 retention: str | None = None, count_duplicates: bool = True) -> None:
        """``url``: the HTTP API, e.g. ``http://127.0.0.1:8086``. ``timeout_s``: for each
        request (connect, send, each read). ``retention``: InfluxQL duration (``104w``,
        ``INF``) of the database's default retention policy, used only when this store
        creates the database; older readings are deleted by InfluxDB."""
        base_url = checked_url("influxdb1", url)
        if not database:
            raise ConfigError("influxdb1 store: database name is empty")
        if password is not None and username is None:
            raise ConfigError("influxdb1 store: a password needs a username")
        check_timeout("influxdb1", timeout_s)
        if retention is not None and not _DURATION.match(retention):
            raise ConfigError(f"influxdb1 store: retention {retention!r} is not an InfluxQL "
                              f"duration such as 104w, 365d or INF")
        auth = (username, password or "") if username is not None else None
        super().__init__(base_url, f"influxdb {base_url} database {database}", timeout_s,
                         auth=auth, count_duplicates=count_duplicates)
        self.database = database
        self._retention = retention
        self._database_ready = False

    # --- the TimeSeriesStore interface ----------------------------------------------------

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
        whole, gappy = split_buckets((row["time"], row["n"], row["total"], int(row["lo"]),
                                      int(row["hi"])) for row in buckets)
        seqs: list[int] = []
        if gappy:
            rows = self._read([f"SELECT {SEQ_FIELD} FROM {MEASUREMENT} WHERE {where} AND "
                               f"{span} AND time >= {at_ns} AND time < {at_ns + bucket_ns}"
                               for at_ns in gappy])
            seqs = [int(row[SEQ_FIELD]) for bucket_rows in rows for row in bucket_rows]
        return seq_ranges_from(whole, seqs)

    # --- writing ------------------------------------------------------------------------

    def _post_lines(self, body: bytes) -> httpx.Response:
        return self._client.post(
            "/write", params={"db": self.database, "precision": "ns"}, content=body)

    def _retention_dropped(self, status: int, error: str) -> int | None:
        if status == 404 and "database not found" in error:
            raise _DatabaseMissing
        dropped = _RETENTION_DROP.match(error)
        return None if dropped is None else int(dropped.group(1))

    def _seq_statement(self, site_id: str, node_id: str, first_ns: int, last_ns: int) -> str:
        return (f"SELECT {SEQ_FIELD} FROM {MEASUREMENT} WHERE "
                f"{self._node_filter(site_id, node_id)} "
                f"AND time >= {first_ns} AND time <= {last_ns}")

    # --- latest (the flow is InfluxStore.latest_many's) ---------------------------------

    def _newest_statement(self, site_id: str, node_id: str, *, within_s: int | None,
                          up_to_now: bool) -> str:
        """``seq`` only: a descending cursor reads the newest block of each field in each
        shard of the time range (``SELECT *`` would read 15 blocks per shard)."""
        where = self._node_filter(site_id, node_id)
        if up_to_now:
            where += " AND time <= now()"
        if within_s is not None:
            where += f" AND time > now() - {within_s}s"
        return (f"SELECT {SEQ_FIELD} FROM {MEASUREMENT} WHERE {where} "
                f"ORDER BY time DESC LIMIT 1")

    def _highest_seq_statement(self, site_id: str, node_id: str, start_ns: int | None,
                               stop_ns: int | None) -> str:
        """``max(seq)`` alone: with ``*`` beside it InfluxDB would read every field of every
        point in the range (10x slower)."""
        where = self._node_filter(site_id, node_id)
        if start_ns is not None:
            where += f" AND time >= {start_ns}"
        if stop_ns is not None:
            where += f" AND time < {stop_ns}"
        return f"SELECT max({SEQ_FIELD}) AS {SEQ_FIELD} FROM {MEASUREMENT} WHERE {where}"

    def _reading_statement(self, site_id: str, node_id: str, at_ns: int) -> str:
        return (f"SELECT * FROM {MEASUREMENT} WHERE {self._node_filter(site_id, node_id)} "
                f"AND time = {at_ns}")

    def _reading_from(self, site_id: str, node_id: str, at_ns: int,
                      rows: list[Row]) -> StoredReading | None:
        return self._reading(rows[0], site_id, node_id) if rows else None

    # --- querying -----------------------------------------------------------------------

    def _series(self, site_id: str, node_id: str, start_ns: int, end_ns: int,
                names: list[str], bucket: int | None) -> list[SeriesPoint]:
        """Buckets are those of InfluxDB's ``GROUP BY time()``."""
        where = (f"{self._node_filter(site_id, node_id)} AND time >= {start_ns} "
                 f"AND time < {end_ns}")
        if bucket is None:
            columns = ", ".join(quote_identifier(name) for name in names)
            statement = f"SELECT {columns} FROM {MEASUREMENT} WHERE {where}"
        else:
            means = ", ".join(f"mean({quote_identifier(name)}) AS {quote_identifier(name)}"
                              for name in names)
            statement = (f"SELECT {means} FROM {MEASUREMENT} WHERE {where} "
                         f"GROUP BY time({bucket}u) fill(none)")
        points = []
        for row in self._read([statement])[0]:
            values = {name: float(row[name]) for name in names if row.get(name) is not None}
            if values:
                points.append(SeriesPoint(at=measured_at_from_ns(row["time"]), values=values))
        return points

    def _with_storage(self, action: Callable[[], _T]) -> _T:
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

    def _read(self, statements: Sequence[str]) -> list[list[Row]]:
        return self._with_storage(lambda: self._query(statements))

    def _ensure_database(self) -> None:
        if self._database_ready:
            return
        shown = self._query_once(["SHOW DATABASES"], use_db=False)[0]
        if self.database not in {row.get("name") for row in shown}:
            statement = f"CREATE DATABASE {quote_identifier(self.database)}"
            if self._retention is not None:
                statement += f" WITH DURATION {self._retention}"
            self._query_once([statement], use_db=False)
            log.info("%s: created the database (retention %s)", self._where,
                     self._retention or "INF")
        self._database_ready = True

    def _query_once(self, statements: Sequence[str], use_db: bool = True) -> list[list[Row]]:
        """Run InfluxQL statements in one request (chunked answer); one list of rows (column
        → value, times as integer ns) per statement."""
        form = {"q": ";\n".join(statements), "epoch": "ns", "chunked": "true",
                "chunk_size": str(CHUNK_ROWS)}
        if use_db:
            form["db"] = self.database
        results: list[list[Row]] = [[] for _ in statements]
        what = "query" if len(statements) == 1 else f"query of {len(statements)} statements"
        with (self._http_errors(what, what),
              self._client.stream("POST", "/query", data=form) as response):
            if not response.is_success:
                response.read()
                self._refuse(response.status_code, self._error_text(response), what)
            try:
                for line in response.iter_lines():
                    if line.strip():
                        self._collect(json.loads(line), statements, results)
            except json.JSONDecodeError as exc:
                raise StoreUnavailable(f"{self._where}: {what} answer is not JSON "
                                       f"({exc})") from None
        return results

    def _collect(self, chunk: dict[str, Any], statements: Sequence[str],
                 results: list[list[Row]]) -> None:
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
        raise self._query_failed(f"{self._where}: {error} ({statement[:120]})", error)

    def _node_filter(self, site_id: str, node_id: str) -> str:
        return (f"{quote_identifier(SITE_TAG)} = {quote_string(site_id)} AND "
                f"{quote_identifier(NODE_TAG)} = {quote_string(node_id)}")

    @staticmethod
    def _reading(row: Row, site_id: str, node_id: str) -> StoredReading:
        return stored_reading(site_id, node_id, row["time"], row,
                              ignore=("time", SITE_TAG, NODE_TAG))
