"""Node readings in InfluxDB 2.x over its v2 HTTP API (line protocol in, Flux out).

Same schema and the same guarantees as the 1.x store (``gateway/stores/influxdb1.py``,
``docs/storage.md``): the very same line protocol (``gateway/stores/line_protocol.py``), so a
reading is one point whose tags and timestamp depend only on the reading and a rewrite
overwrites it; ``write()`` asks which points exist first and returns how many readings were
new, remembering the readings of a failed write so their retry counts them as new; 5xx,
408/429, timeouts and connection errors raise ``StoreUnavailable``; 401/403 and other 4xx
raise ``StoreRejected``; readings dropped as older than the bucket's retention are logged and
not counted. Field names are checked against the known fields and every caller string is a
quoted Flux string literal, so no caller text is ever read as Flux.

Differences from 1.x: the bucket is NOT created by the store (creating one needs the org's ID
and a token allowed to manage buckets; an operator creates it with its retention, see the
docs): a missing bucket or org is ``StoreRejected``. The token is sent as ``Authorization:
Token …``; it needs read and write permission on the bucket.

Why plain httpx and not ``influxdb-client``: the official client parses ``_time`` into Python
datetimes (microseconds), losing the nanoseconds that keep two readings of one microsecond
apart (``line_protocol.point_time_ns``), wraps errors in its own exception types with its own
retries, and would add a second HTTP stack; the two endpoints used here (``/api/v2/write``
and ``/api/v2/query``) are a few lines each, and the error mapping is then the 1.x store's.

Tested at the HTTP level only, against our own stand-in server
(``tests/support/influx2_server.py``), which checks what is sent; no real InfluxDB 2.x runs in
our tests (none can be installed on our machines).

Threads: any thread may call any method.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from cacao_dryer.errors import ConfigError
from gateway.stores.influxdb1 import (
    EXISTING_GAP_NS,
    MAX_LINES_PER_REQUEST,
    MAX_STATEMENTS_PER_QUERY,
    NUMERIC_FIELDS,
    UNCONFIRMED_MAX,
    _bucket_us,
    _merged,
    _runs,
    _validated_fields,
)
from gateway.stores.line_protocol import (
    ALARMS_FIELD,
    BATCH_FIELD,
    MAX_TIME_NS,
    MEASUREMENT,
    MIN_TIME_NS,
    MODE_FIELD,
    NODE_TAG,
    RAINING_FIELD,
    SEQ_FIELD,
    SITE_TAG,
    encode_reading,
    measured_at_from_ns,
    time_ns,
)
from gateway.timeseries import SeriesPoint, StoredReading, StoreRejected, StoreUnavailable

log = logging.getLogger("cacao_dryer.gateway.influxdb2")

SEQ_WINDOW_US = 86_400 * 10**6  # seq_ranges sums up a node's readings per day
_KNOWN_FIELDS = frozenset(NUMERIC_FIELDS)
_KEEP = ' |> keep(columns: ["_time", "_field", "_value"])'
_RETENTION_DROP = re.compile(r"points beyond retention policy dropped=(\d+)")
_TRANSIENT_QUERY_ERRORS = ("timeout", "limit exceeded", "interrupted", "killed", "canceled")
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
_DIALECT = {"header": True, "delimiter": ",", "commentPrefix": "#",
            "annotations": ["datatype", "group", "default"], "dateTimeFormat": "RFC3339Nano"}

_Key = tuple[str, str, int, int]  # site, node, seq, point time [ns]
_Row = dict[str, Any]


def flux_string(text: str) -> str:
    """A Flux string literal: any text, never read as Flux (quotes, backslashes, ``${``
    interpolation and line breaks escaped)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def rfc3339_to_ns(text: str) -> int:
    """An RFC3339 UTC time as InfluxDB writes it (up to nanoseconds) → integer ns."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC3339 UTC time: {text!r}")
    whole = datetime.fromisoformat(match[1] + "+00:00")
    return time_ns(whole) + int((match[2] or "").ljust(9, "0"))


class InfluxDB2Store:
    """Node readings in an InfluxDB 2.x bucket (``TimeSeriesStore``)."""

    def __init__(self, url: str, org: str, bucket: str, token: str, *,
                 timeout_s: float = 10.0) -> None:
        """``url``: the HTTP API, e.g. ``http://127.0.0.1:8086``; ``org``: the organization's
        name; ``token``: an API token with read and write permission on ``bucket``. No I/O
        here: the gateway starts while InfluxDB is down and spools."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"influxdb2 store: url {url!r} is not http(s)://host:port")
        if not org:
            raise ConfigError("influxdb2 store: org is empty")
        if not bucket:
            raise ConfigError("influxdb2 store: bucket name is empty")
        if not token or token != token.strip() or "\n" in token:
            raise ConfigError("influxdb2 store: token is empty or has spaces/line breaks")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"influxdb2 store: timeout_s must be positive, not {timeout_s!r}")
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self._where = f"influxdb2 {self.url} org {org} bucket {bucket}"
        self._client = httpx.Client(
            base_url=self.url, timeout=timeout_s, trust_env=False,
            headers={"User-Agent": "cacao-dryer-gateway", "Authorization": f"Token {token}"})
        self._lock = threading.Lock()
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
        stored_before = self._existing(keys)
        with self._lock:
            new = {key for key in keys if key not in stored_before or key in self._unconfirmed}
        try:
            dropped = 0
            for first in range(0, len(body_lines), MAX_LINES_PER_REQUEST):
                body = "\n".join(body_lines[first:first + MAX_LINES_PER_REQUEST]).encode()
                dropped += self._post_write(body, len(body_lines))
        except StoreUnavailable:
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

    def seq_ranges(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Stored sequence numbers of a node as sorted, contiguous (first, last) ranges.

        As in the 1.x store: InfluxDB sums up each day of the node's readings as count, sum,
        min and max of seq; a day whose count and sum are those of every number from min to
        max is one whole range, and only the other days are read seq by seq."""
        self._check_open()
        day_ns = SEQ_WINDOW_US * 1000
        stats: dict[str, dict[int, int]] = {}
        results = self._query([
            self._statement(MIN_TIME_NS, MAX_TIME_NS + 1, site_id, node_id, [SEQ_FIELD],
                            f" |> aggregateWindow(every: {SEQ_WINDOW_US}us, fn: {fn}, "
                            f'createEmpty: false, timeSrc: "_start")')
            for fn in ("count", "sum", "min", "max")])
        for fn, rows in zip(("count", "sum", "min", "max"), results, strict=True):
            stats[fn] = {_window_start(row["_time"], day_ns): int(row["_value"]) for row in rows}
        ranges: list[tuple[int, int]] = []
        gappy: list[int] = []
        for day, count in stats["count"].items():
            low, high = stats["min"][day], stats["max"][day]
            span = high - low + 1
            if count == span and stats["sum"][day] == (low + high) * span // 2:
                ranges.append((low, high))
            else:
                gappy.append(day)
        if gappy:
            rows = self._query([self._statement(max(day, MIN_TIME_NS), day + day_ns, site_id,
                                                 node_id, [SEQ_FIELD]) for day in gappy])
            ranges.extend(_runs(sorted({int(row["_value"]) for day in rows for row in day})))
        return _merged(ranges)

    def latest(self, site_id: str, node_id: str) -> StoredReading | None:
        """The node's reading with the highest sequence number (its newest: a node numbers
        readings in the order it takes them, whatever its clock says)."""
        self._check_open()
        highest = self._query([self._statement(MIN_TIME_NS, MAX_TIME_NS + 1, site_id, node_id,
                                               [SEQ_FIELD], " |> max()")])[0]
        if not highest:
            return None
        at_ns = highest[0]["_time"]
        rows = self._query([self._statement(at_ns, at_ns + 1, site_id, node_id, None)])[0]
        values = {row["_field"]: row["_value"] for row in rows}
        if SEQ_FIELD not in values:
            return None  # deleted between the two queries
        alarms = values.get(ALARMS_FIELD) or ""
        raining = values.get(RAINING_FIELD)
        label_names = {SEQ_FIELD, RAINING_FIELD, MODE_FIELD, ALARMS_FIELD, BATCH_FIELD}
        return StoredReading(
            site_id=site_id, node_id=node_id, seq=int(values[SEQ_FIELD]),
            measured_at=measured_at_from_ns(at_ns),
            fields={name: float(value) for name, value in values.items()
                    if name not in label_names and isinstance(value, int | float)
                    and not isinstance(value, bool)},
            raining=None if raining is None else bool(raining),
            mode=values.get(MODE_FIELD) or "auto",
            alarms=tuple(alarms.split(",")) if alarms else (),
            batch_id=values.get(BATCH_FIELD))

    def series(self, site_id: str, node_id: str, start: datetime, end: datetime,
               fields: Sequence[str], every_s: float | None = None) -> list[SeriesPoint]:
        """Readings of a node in [start, end), oldest first, with the requested fields; with
        ``every_s`` the mean per epoch-aligned bucket (``at`` = the bucket's start, even when
        that is before ``start``: Flux clamps the first window to the range, this does not).
        A missing value is left out of ``values``; a point with none of the fields is left
        out."""
        names = _validated_fields(fields)
        bucket_us = None if every_s is None else _bucket_us(every_s)
        start_ns, end_ns = time_ns(start, "start"), time_ns(end, "end")
        self._check_open()
        if end_ns <= start_ns:
            return []
        window = ("" if bucket_us is None else
                  f" |> aggregateWindow(every: {bucket_us}us, fn: mean, createEmpty: false, "
                  f'timeSrc: "_start")')
        rows = self._query([self._statement(start_ns, end_ns, site_id, node_id, names,
                                            window)])[0]
        by_time: dict[int, dict[str, float]] = defaultdict(dict)
        for row in rows:
            if row["_value"] is None:
                continue
            at_ns = row["_time"] if bucket_us is None else _window_start(row["_time"],
                                                                        bucket_us * 1000)
            by_time[at_ns][row["_field"]] = float(row["_value"])
        return [SeriesPoint(at=measured_at_from_ns(at_ns), values=by_time[at_ns])
                for at_ns in sorted(by_time)]

    def close(self) -> None:
        """Close the HTTP connections (idempotent); later calls raise ``StoreUnavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    def __enter__(self) -> InfluxDB2Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def _post_write(self, body: bytes, batch_size: int) -> int:
        """One POST /api/v2/write; returns how many points InfluxDB dropped as older than the
        bucket's retention."""
        what = f"write of {batch_size} readings"
        try:
            response = self._client.post(
                "/api/v2/write",
                params={"org": self.org, "bucket": self.bucket, "precision": "ns"},
                content=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        except httpx.TimeoutException:
            raise StoreUnavailable(f"{self._where}: {what} timed out after "
                                   f"{self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self._where}: cannot write ({type(exc).__name__}: "
                                   f"{exc})") from None
        if response.is_success:
            return 0
        error = _error_text(response)
        self._raise_for(response.status_code, error, what)
        dropped = _RETENTION_DROP.search(error)
        if dropped is None or "type conflict" in error:
            raise StoreRejected(f"{self._where}: {what} rejected ({response.status_code}: "
                                f"{error})")
        count = int(dropped.group(1))
        log.warning("%s: %d readings older than the bucket's retention were dropped by "
                    "InfluxDB", self._where, count)
        return count

    def _existing(self, keys: Iterable[_Key]) -> set[_Key]:
        """Which of these points are already stored: one Flux statement per node and stretch
        of time (points further apart than EXISTING_GAP_NS are looked up separately)."""
        times: dict[tuple[str, str], set[int]] = defaultdict(set)
        for site_id, node_id, _, at_ns in keys:
            times[(site_id, node_id)].add(at_ns)
        statements: list[str] = []
        owners: list[tuple[str, str]] = []
        for (site_id, node_id), node_times in times.items():
            ordered = sorted(node_times)
            low = previous = ordered[0]
            for at_ns in [*ordered[1:], None]:
                if at_ns is None or at_ns - previous > EXISTING_GAP_NS:
                    statements.append(self._statement(low, previous + 1, site_id, node_id,
                                                      [SEQ_FIELD]))
                    owners.append((site_id, node_id))
                    if at_ns is not None:
                        low = at_ns
                if at_ns is not None:
                    previous = at_ns
        found: set[_Key] = set()
        for rows, (site_id, node_id) in zip(self._query(statements), owners, strict=True):
            found.update((site_id, node_id, int(row["_value"]), row["_time"]) for row in rows)
        return found

    # --- querying -----------------------------------------------------------------------

    def _statement(self, start_ns: int, stop_ns: int, site_id: str, node_id: str,
                   fields: Sequence[str] | None, operation: str = "") -> str:
        """One Flux statement on one line (without its ``yield``): the node's points in
        [start, stop) [of these fields] [, aggregated], as rows of _time, _field, _value."""
        condition = (f"r._measurement == {flux_string(MEASUREMENT)} and "
                     f"r.{SITE_TAG} == {flux_string(site_id)} and "
                     f"r.{NODE_TAG} == {flux_string(node_id)}")
        if fields:
            condition += " and (" + " or ".join(
                f"r._field == {flux_string(name)}" for name in fields) + ")"
        return (f"from(bucket: {flux_string(self.bucket)})"
                f" |> range(start: time(v: {start_ns}), stop: time(v: {stop_ns}))"
                f" |> filter(fn: (r) => {condition}){operation}{_KEEP}")

    def _query(self, statements: Sequence[str]) -> list[list[_Row]]:
        """Run Flux statements (MAX_STATEMENTS_PER_QUERY per request, each its own
        ``yield``); one list of rows (times as integer ns, values typed) per statement."""
        results: list[list[_Row]] = []
        for first in range(0, len(statements), MAX_STATEMENTS_PER_QUERY):
            results.extend(self._query_once(statements[first:first + MAX_STATEMENTS_PER_QUERY]))
        return results

    def _query_once(self, statements: Sequence[str]) -> list[list[_Row]]:
        script = "\n".join(f'{statement} |> yield(name: "q{index}")'
                           for index, statement in enumerate(statements))
        what = "query" if len(statements) == 1 else f"query of {len(statements)} statements"
        try:
            response = self._client.post(
                "/api/v2/query", params={"org": self.org},
                json={"query": script, "type": "flux", "dialect": _DIALECT},
                headers={"Accept": "application/csv"})
        except httpx.TimeoutException:
            raise StoreUnavailable(f"{self._where}: {what} timed out after "
                                   f"{self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self._where}: cannot {what} ({type(exc).__name__}: "
                                   f"{exc})") from None
        if not response.is_success:
            error = _error_text(response)
            self._raise_for(response.status_code, error, what)
            raise StoreRejected(f"{self._where}: {what} rejected ({response.status_code}: "
                                f"{error})")
        by_name: dict[str, list[_Row]] = defaultdict(list)
        try:
            for row in parse_annotated_csv(response.text):
                by_name[row.get("result") or ""].append(row)
        except _QueryError as exc:
            message = f"{self._where}: {what} failed: {exc}"
            if any(word in str(exc) for word in _TRANSIENT_QUERY_ERRORS):
                raise StoreUnavailable(message) from None
            raise StoreRejected(message) from None
        except (ValueError, KeyError) as exc:
            raise StoreUnavailable(f"{self._where}: {what} answer is not annotated CSV "
                                   f"({exc})") from None
        return [by_name.get(f"q{index}", []) for index in range(len(statements))]

    def _raise_for(self, status: int, error: str, what: str) -> None:
        """StoreUnavailable for answers worth retrying, StoreRejected for refusals."""
        if status >= 500 or status in (408, 429):
            raise StoreUnavailable(f"{self._where}: {what} failed ({status}: {error})")
        if status in (401, 403):
            raise StoreRejected(f"{self._where}: {what} refused ({status}: {error}); check "
                                f"the token and its read/write permission on the bucket")
        if status == 404:
            raise StoreRejected(f"{self._where}: {what} refused ({status}: {error}); create "
                                f"the bucket (influx bucket create) or fix org/bucket")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"{self._where}: store closed")


class _QueryError(Exception):
    """An error table inside a 200 query answer."""


_TYPES = {
    "long": int, "unsignedLong": int, "double": float, "string": str,
    "boolean": lambda text: text == "true",
    "dateTime:RFC3339": rfc3339_to_ns, "dateTime:RFC3339Nano": rfc3339_to_ns,
}


def parse_annotated_csv(text: str) -> list[_Row]:
    """Rows of InfluxDB 2.x annotated CSV (``#datatype``, ``#group``, ``#default`` rows
    before each block's header; blocks separated by blank lines), values typed: times as
    integer ns, empty cells as the block's default or None."""
    rows: list[_Row] = []
    datatypes: list[str] = []
    defaults: list[str] = []
    header: list[str] | None = None
    for record in csv.reader(io.StringIO(text)):
        if not any(record):
            header, datatypes, defaults = None, [], []
            continue
        if record[0].startswith("#"):
            if header is not None:  # annotations right after data: a new block
                header, datatypes, defaults = None, [], []
            if record[0] == "#datatype":
                datatypes = record[1:]
            elif record[0] == "#default":
                defaults = record[1:]
            continue
        if header is None:
            header = record[1:]
            continue
        values = record[1:]
        if header[:2] == ["error", "reference"] or header == ["error"]:
            raise _QueryError(values[0] if values else "unknown error")
        row: _Row = {}
        for index, name in enumerate(header):
            raw = values[index] if index < len(values) else ""
            if raw == "" and index < len(defaults):
                raw = defaults[index]
            kind = datatypes[index] if index < len(datatypes) else "string"
            row[name] = None if raw == "" and kind != "string" else _TYPES.get(kind, str)(raw)
        rows.append(row)
    return rows


def _window_start(at_ns: int, every_ns: int) -> int:
    """The epoch-aligned start of the window holding ``at_ns`` (Flux reports the first
    window's start clamped to the range's start)."""
    return at_ns // every_ns * every_ns


def _error_text(response: httpx.Response) -> str:
    """InfluxDB 2's one-line error (its JSON ``message``), else the start of the body."""
    try:
        error = response.json().get("message")
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) else response.text
    return " ".join(text.split())[:300] or response.reason_phrase
