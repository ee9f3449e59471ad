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
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import httpx

from cacao_dryer.errors import ConfigError
from gateway.stores.influx_common import (
    InfluxStore,
    Row,
    check_timeout,
    checked_url,
    seq_ranges_from,
    split_buckets,
    stored_reading,
)
from gateway.stores.line_protocol import (
    MAX_TIME_NS,
    MEASUREMENT,
    MIN_TIME_NS,
    NODE_TAG,
    SEQ_FIELD,
    SITE_TAG,
    measured_at_from_ns,
    time_ns,
)
from gateway.timeseries import SeriesPoint, StoredReading, StoreRejected, StoreUnavailable

log = logging.getLogger("cacao_dryer.gateway.influxdb2")

SEQ_WINDOW_US = 86_400 * 10**6  # seq_ranges sums up a node's readings per day
_KEEP = ' |> keep(columns: ["_time", "_field", "_value"])'
_RETENTION_DROP = re.compile(r"points beyond retention policy dropped=(\d+)")
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
_DIALECT = {"header": True, "delimiter": ",", "commentPrefix": "#",
            "annotations": ["datatype", "group", "default"], "dateTimeFormat": "RFC3339Nano"}


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


class InfluxDB2Store(InfluxStore):
    """Node readings in an InfluxDB 2.x bucket (``TimeSeriesStore``)."""

    _log = log
    _ERROR_KEY = "message"
    _AUTH_HINT = "check the token and its read/write permission on the bucket"
    _RETENTION = "the bucket's retention"
    _TRANSIENT_QUERY_ERRORS = ("timeout", "limit exceeded", "interrupted", "killed", "canceled")
    _PING_PATH = "/health"  # 200 {"status": "pass"}
    _TIME_COLUMN = "_time"
    _SEQ_COLUMN = "_value"

    def __init__(self, url: str, org: str, bucket: str, token: str, *,
                 timeout_s: float = 10.0, count_duplicates: bool = True) -> None:
        """``url``: the HTTP API, e.g. ``http://127.0.0.1:8086``; ``org``: the organization's
        name; ``token``: an API token with read and write permission on ``bucket``. No I/O
        here: the gateway starts while InfluxDB is down and spools."""
        base_url = checked_url("influxdb2", url)
        if not org:
            raise ConfigError("influxdb2 store: org is empty")
        if not bucket:
            raise ConfigError("influxdb2 store: bucket name is empty")
        if not token or token != token.strip() or "\n" in token:
            raise ConfigError("influxdb2 store: token is empty or has spaces/line breaks")
        check_timeout("influxdb2", timeout_s)
        super().__init__(base_url, f"influxdb2 {base_url} org {org} bucket {bucket}",
                         timeout_s, headers={"Authorization": f"Token {token}"},
                         count_duplicates=count_duplicates)
        self.org = org
        self.bucket = bucket

    # --- the TimeSeriesStore interface ----------------------------------------------------

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
        whole, gappy = split_buckets(
            (day, count, stats["sum"][day], stats["min"][day], stats["max"][day])
            for day, count in stats["count"].items())
        seqs: list[int] = []
        if gappy:
            rows = self._query([self._statement(max(day, MIN_TIME_NS), day + day_ns, site_id,
                                                 node_id, [SEQ_FIELD]) for day in gappy])
            seqs = [int(row["_value"]) for day_rows in rows for row in day_rows]
        return seq_ranges_from(whole, seqs)

    # --- writing ------------------------------------------------------------------------

    def _post_lines(self, body: bytes) -> httpx.Response:
        return self._client.post(
            "/api/v2/write",
            params={"org": self.org, "bucket": self.bucket, "precision": "ns"},
            content=body, headers={"Content-Type": "text/plain; charset=utf-8"})

    def _retention_dropped(self, status: int, error: str) -> int | None:
        dropped = _RETENTION_DROP.search(error)
        if dropped is None or "type conflict" in error:
            return None
        return int(dropped.group(1))

    def _seq_statement(self, site_id: str, node_id: str, first_ns: int, last_ns: int) -> str:
        return self._statement(first_ns, last_ns + 1, site_id, node_id, [SEQ_FIELD])

    # --- latest (the flow is InfluxStore.latest_many's) ---------------------------------

    def _newest_statement(self, site_id: str, node_id: str, *, within_s: int | None,
                          up_to_now: bool) -> str:
        """The seq field's ``last()`` only: ``last()`` of every field would take each field
        from the newest point that has it, mixing readings."""
        return self._statement(MIN_TIME_NS, None if up_to_now else MAX_TIME_NS + 1, site_id,
                               node_id, [SEQ_FIELD], " |> last()", within_s=within_s)

    def _highest_seq_statement(self, site_id: str, node_id: str, start_ns: int | None,
                               stop_ns: int | None) -> str:
        return self._statement(MIN_TIME_NS if start_ns is None else start_ns,
                               MAX_TIME_NS + 1 if stop_ns is None else stop_ns,
                               site_id, node_id, [SEQ_FIELD], " |> max()")

    def _reading_statement(self, site_id: str, node_id: str, at_ns: int) -> str:
        return self._statement(at_ns, at_ns + 1, site_id, node_id, None)

    def _reading_from(self, site_id: str, node_id: str, at_ns: int,
                      rows: list[Row]) -> StoredReading | None:
        values = {row["_field"]: row["_value"] for row in rows}
        if SEQ_FIELD not in values:
            return None
        return stored_reading(site_id, node_id, at_ns, values)

    # --- querying -----------------------------------------------------------------------

    def _series(self, site_id: str, node_id: str, start_ns: int, end_ns: int,
                names: list[str], bucket: int | None) -> list[SeriesPoint]:
        """With a bucket, ``at`` is the epoch-aligned bucket's start even when that is
        before ``start``: Flux clamps the first window to the range, this does not."""
        if end_ns <= start_ns:
            return []
        window = ("" if bucket is None else
                  f" |> aggregateWindow(every: {bucket}us, fn: mean, createEmpty: false, "
                  f'timeSrc: "_start")')
        rows = self._query([self._statement(start_ns, end_ns, site_id, node_id, names,
                                            window)])[0]
        by_time: dict[int, dict[str, float]] = defaultdict(dict)
        for row in rows:
            if row["_value"] is None:
                continue
            at_ns = row["_time"] if bucket is None else _window_start(row["_time"],
                                                                     bucket * 1000)
            by_time[at_ns][row["_field"]] = float(row["_value"])
        return [SeriesPoint(at=measured_at_from_ns(at_ns), values=by_time[at_ns])
                for at_ns in sorted(by_time)]

    def _statement(self, start_ns: int, stop_ns: int | None, site_id: str, node_id: str,
                   fields: Sequence[str] | None, operation: str = "", *,
                   within_s: int | None = None) -> str:
        """One Flux statement on one line (without its ``yield``): the node's points in
        [start, stop) [of these fields] [, aggregated], as rows of _time, _field, _value;
        ``stop_ns`` None: up to the server's present (``now()``); ``within_s``: start that
        many seconds before the present instead of at ``start_ns``."""
        start = f"time(v: {start_ns})" if within_s is None else f"-{within_s}s"
        stop = "now()" if stop_ns is None else f"time(v: {stop_ns})"
        condition = (f"r._measurement == {flux_string(MEASUREMENT)} and "
                     f"r.{SITE_TAG} == {flux_string(site_id)} and "
                     f"r.{NODE_TAG} == {flux_string(node_id)}")
        if fields:
            condition += " and (" + " or ".join(
                f"r._field == {flux_string(name)}" for name in fields) + ")"
        return (f"from(bucket: {flux_string(self.bucket)})"
                f" |> range(start: {start}, stop: {stop})"
                f" |> filter(fn: (r) => {condition}){operation}{_KEEP}")

    def _query_once(self, statements: Sequence[str]) -> list[list[Row]]:
        """Run Flux statements in one request, each its own ``yield``; one list of rows
        (times as integer ns, values typed) per statement."""
        script = "\n".join(f'{statement} |> yield(name: "q{index}")'
                           for index, statement in enumerate(statements))
        what = "query" if len(statements) == 1 else f"query of {len(statements)} statements"
        with self._http_errors(what, what):
            response = self._client.post(
                "/api/v2/query", params={"org": self.org},
                json={"query": script, "type": "flux", "dialect": _DIALECT},
                headers={"Accept": "application/csv"})
        if not response.is_success:
            self._refuse(response.status_code, self._error_text(response), what)
        by_name: dict[str, list[Row]] = defaultdict(list)
        try:
            for row in parse_annotated_csv(response.text):
                by_name[row.get("result") or ""].append(row)
        except _QueryError as exc:
            raise self._query_failed(f"{self._where}: {what} failed: {exc}", str(exc)) from None
        except (ValueError, KeyError) as exc:
            raise StoreUnavailable(f"{self._where}: {what} answer is not annotated CSV "
                                   f"({exc})") from None
        return [by_name.get(f"q{index}", []) for index in range(len(statements))]

    def _raise_for(self, status: int, error: str, what: str) -> None:
        """As the 1.x store's, and a 404 (no such org or bucket) is StoreRejected."""
        super()._raise_for(status, error, what)
        if status == 404:
            raise StoreRejected(f"{self._where}: {what} refused ({status}: {error}); create "
                                f"the bucket (influx bucket create) or fix org/bucket")


class _QueryError(Exception):
    """An error table inside a 200 query answer."""


_TYPES = {
    "long": int, "unsignedLong": int, "double": float, "string": str,
    "boolean": lambda text: text == "true",
    "dateTime:RFC3339": rfc3339_to_ns, "dateTime:RFC3339Nano": rfc3339_to_ns,
}


def parse_annotated_csv(text: str) -> list[Row]:
    """Rows of InfluxDB 2.x annotated CSV (``#datatype``, ``#group``, ``#default`` rows
    before each block's header; blocks separated by blank lines), values typed: times as
    integer ns, empty cells as the block's default or None."""
    rows: list[Row] = []
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
        row: Row = {}
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

