"""What the InfluxDB 1.x and 2.x stores share: the write flow and the pure helpers.

``InfluxStore`` is the common base of ``InfluxDB1Store`` (``influxdb1.py``) and
``InfluxDB2Store`` (``influxdb2.py``): checking and encoding a batch (the line protocol of
``line_protocol.py``), asking which of its points already exist, remembering the readings of a
failed write so their retry counts them as new, posting in requests of at most
``MAX_LINES_PER_REQUEST`` lines, mapping HTTP answers and errors to ``StoreUnavailable``
(retry) or ``StoreRejected`` (retrying cannot help), and finding each node's latest reading
without reading its whole history (``latest_many``). Each store adds only what differs: its
endpoints and credentials, its query language (InfluxQL or Flux) and how it reads answers.
The guarantees themselves are described in ``influxdb1.py`` and ``docs/storage.md``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from cacao_dryer.errors import ConfigError
from cacao_dryer.measurements import MEASUREMENTS
from gateway.stores.line_protocol import (
    ALARMS_FIELD,
    BATCH_FIELD,
    LABEL_FIELDS,
    MIN_TIME_NS,
    MODE_FIELD,
    RAINING_FIELD,
    SEQ_FIELD,
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
    bucket_us,
)

NUMERIC_FIELDS: tuple[str, ...] = (*(m.key for m in MEASUREMENTS), *STATE_FIELDS)
KNOWN_FIELDS = frozenset(NUMERIC_FIELDS)
MAX_LINES_PER_REQUEST = 10_000      # ~3 MB of line protocol; influxd's max-body-size is 25 MB
MAX_STATEMENTS_PER_QUERY = 200      # statements sent in one query request
EXISTING_GAP_NS = 3600 * 10**9      # a batch's points further apart are looked up separately
UNCONFIRMED_MAX = 1_000_000         # failed-write readings remembered for counting
# latest() (docs/storage.md, "latest without reading the history"): a node's newest reading
# is first looked for in the last RECENT_S; its highest seq from LATEST_LOOKBACK_NS before
# that newest reading on, and among the readings stamped before CLOCK_LOST_BEFORE_NS (a
# clock that lost the time: 1970 without a clock source, 2000-01-01 from a real-time-clock
# chip whose battery died).
RECENT_S = 86_400
LATEST_LOOKBACK_NS = 6 * 3600 * 10**9
CLOCK_LOST_BEFORE_NS = time_ns(datetime(2020, 1, 1, tzinfo=UTC))

Key = tuple[str, str, int, int]  # site, node, seq, point time [ns]
Row = dict[str, Any]
_T = TypeVar("_T")
_K = TypeVar("_K")


# --- pure helpers -------------------------------------------------------------------------

def checked_url(kind: str, url: str) -> str:
    """The HTTP API's base URL without a trailing slash; ConfigError if not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{kind} store: url {url!r} is not http(s)://host:port")
    return url.rstrip("/")


def check_timeout(kind: str, timeout_s: float) -> None:
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"{kind} store: timeout_s must be positive, not {timeout_s!r}")


def encoded_batch(readings: Sequence[StoredReading]) -> tuple[list[str], list[Key]]:
    """The readings as line-protocol lines and their point keys; ValueError for unstorable
    input (unknown fields, or what ``encode_reading`` refuses), before any I/O."""
    body_lines, keys = [], []
    for reading in readings:
        if not KNOWN_FIELDS.issuperset(reading.fields):
            unknown = set(reading.fields) - KNOWN_FIELDS
            raise ValueError(f"reading {reading.site_id}/{reading.node_id} seq "
                             f"{reading.seq}: unknown field(s) {', '.join(sorted(unknown))}")
        line, at_ns = encode_reading(reading)
        body_lines.append(line)
        keys.append((reading.site_id, reading.node_id, reading.seq, at_ns))
    return body_lines, keys


def validated_fields(fields: Sequence[str]) -> list[str]:
    """The requested field names, deduplicated in order; ValueError for unknown ones."""
    if isinstance(fields, str):
        raise ValueError(f"fields must be a list of field names, not the string {fields!r}")
    names = list(dict.fromkeys(fields))
    if not names:
        raise ValueError("series needs at least one field")
    for name in names:
        if name not in NUMERIC_FIELDS:
            raise ValueError(f"unknown field {name!r} (known: {', '.join(NUMERIC_FIELDS)})")
    return names


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct numbers as contiguous (first, last) runs."""
    found: list[tuple[int, int]] = []
    for seq in seqs:
        if found and seq == found[-1][1] + 1:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent ranges joined, sorted."""
    joined: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if joined and low <= joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], max(joined[-1][1], high))
        else:
            joined.append((low, high))
    return joined


def split_buckets(buckets: Iterable[tuple[_K, float, float, int, int]],
                  ) -> tuple[list[tuple[int, int]], list[_K]]:
    """Summaries of a node's seq per time bucket — (bucket, count, sum, min, max) — as the
    whole (min, max) ranges of the buckets whose count and sum are those of every number
    from min to max, and the buckets that must be read seq by seq."""
    whole: list[tuple[int, int]] = []
    gappy: list[_K] = []
    for bucket, count, total, low, high in buckets:
        span = high - low + 1
        if count == span and total == (low + high) * span // 2:
            whole.append((low, high))
        else:
            gappy.append(bucket)
    return whole, gappy


def seq_ranges_from(whole: list[tuple[int, int]], seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Whole ranges and single sequence numbers joined into sorted, contiguous ranges."""
    return merged([*whole, *runs(sorted(set(seqs)))])


def stored_reading(site_id: str, node_id: str, at_ns: int, values: Mapping[str, Any],
                   ignore: Iterable[str] = ()) -> StoredReading:
    """A reading from a point's values by field name (numbers are measurement fields,
    except the label fields and the names in ``ignore``)."""
    skip = {*LABEL_FIELDS, *ignore}
    alarms = values.get(ALARMS_FIELD) or ""
    raining = values.get(RAINING_FIELD)
    return StoredReading(
        site_id=site_id, node_id=node_id, seq=int(values[SEQ_FIELD]),
        measured_at=measured_at_from_ns(at_ns),
        fields={name: float(value) for name, value in values.items()
                if name not in skip and isinstance(value, int | float)
                and not isinstance(value, bool)},
        raining=None if raining is None else bool(raining),
        mode=values.get(MODE_FIELD) or "auto",
        alarms=tuple(alarms.split(",")) if alarms else (),
        batch_id=values.get(BATCH_FIELD))


@dataclass(frozen=True)
class SeqAt:
    """A stored point's seq and time [ns]: a candidate for a node's latest reading."""

    seq: int
    at_ns: int


def lookback_start_ns(newest_ns: int) -> int:
    """Where ``latest`` looks for a node's highest seq: LATEST_LOOKBACK_NS before its newest
    reading stamped at or before the present (clamped to InfluxDB's earliest time)."""
    return max(MIN_TIME_NS, newest_ns - LATEST_LOOKBACK_NS)


def highest_seq(candidates: Iterable[SeqAt | None]) -> SeqAt | None:
    """The candidate with the highest seq (of equal seqs, the newest-stamped); None if none.

    >>> highest_seq([SeqAt(7, 100), None, SeqAt(9, 50), SeqAt(9, 60)])
    SeqAt(seq=9, at_ns=60)
    """
    return max((c for c in candidates if c is not None), key=lambda c: (c.seq, c.at_ns),
               default=None)


def error_text(response: httpx.Response, key: str) -> str:
    """InfluxDB's one-line error (the ``key`` of its JSON answer), else the start of the
    body."""
    try:
        error = response.json().get(key)
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) else response.text
    return " ".join(text.split())[:300] or response.reason_phrase


# --- the shared store -------------------------------------------------------------------

class InfluxStore:
    """The part of a ``TimeSeriesStore`` on InfluxDB that does not depend on its version.

    Subclasses set the class attributes and implement ``_post_lines``, ``_retention_dropped``,
    ``_seq_statement``, ``_query_once``, ``_series``, ``seq_ranges`` and the statements of
    ``latest_many`` (``_newest_statement``, ``_highest_seq_statement``,
    ``_reading_statement``, ``_reading_from``).
    """

    _log: logging.Logger
    _ERROR_KEY: str                  # where the JSON error answer holds its message
    _AUTH_HINT: str                  # what to check when InfluxDB answers 401/403
    _RETENTION: str                  # what dropped points were older than, for the log
    _TRANSIENT_QUERY_ERRORS: tuple[str, ...]  # words of query errors worth retrying
    _PING_PATH: str                  # answers 2xx while the server runs (no login needed)
    _TIME_COLUMN: str                # a query row's point time [ns] ...
    _SEQ_COLUMN: str                 # ... and seq, in rows of ``_seq_statement``,
    # ``_newest_statement`` and ``_highest_seq_statement``
    _MAYBE_STORED: tuple[type[Exception], ...] = (StoreUnavailable,)  # write errors after
    # which some of the batch may be stored

    def __init__(self, url: str, where: str, timeout_s: float, *,
                 auth: tuple[str, str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 count_duplicates: bool = True) -> None:
        """No I/O: the gateway starts while InfluxDB is down and spools.

        ``count_duplicates=False`` skips the query that tells new readings from ones already
        stored: writes stay idempotent (a duplicate overwrites the same point with the same
        values), ``write`` then reports every reading as new, and ingest throughput rises by
        about a third (docs/storage.md)."""
        self.url = url
        self.count_duplicates = count_duplicates
        self.timeout_s = timeout_s
        self._where = where
        self._client = httpx.Client(
            base_url=url, auth=auth, timeout=timeout_s, trust_env=False,
            headers={"User-Agent": "cacao-dryer-gateway", **(headers or {})})
        self._lock = threading.Lock()
        self._closed = False
        self._unconfirmed: dict[Key, None] = {}  # insertion-ordered set

    # --- the TimeSeriesStore interface ----------------------------------------------------

    def write(self, readings: Sequence[StoredReading]) -> int:
        """Store a batch; returns how many readings were new (see the module docstring)."""
        self._check_open()
        body_lines, keys = encoded_batch(readings)
        if not body_lines:
            return 0
        return self._with_storage(lambda: self._write_lines(body_lines, keys))

    def latest(self, site_id: str, node_id: str) -> StoredReading | None:
        """The node's reading with the highest sequence number (its newest: a node numbers
        readings in the order it takes them, whatever its clock says), looked for where a
        clock fault can put it, never in the whole history (``latest_many``)."""
        return self.latest_many([(site_id, node_id)]).get((site_id, node_id))

    def latest_many(self, nodes: Sequence[tuple[str, str]]
                    ) -> dict[tuple[str, str], StoredReading]:
        """Every node's ``latest`` in three requests whatever the number of nodes (up to
        MAX_STATEMENTS_PER_QUERY statements each; one or two more for nodes silent for a
        day), at a cost that does not grow with the nodes' history.

        The highest seq is looked for among the readings stamped from LATEST_LOOKBACK_NS
        before the node's newest reading stamped at or before the present (InfluxDB's clock)
        onwards — future-stamped ones included: a node whose clock ran ahead, corrected or
        not — and among the readings stamped before CLOCK_LOST_BEFORE_NS (a clock that lost
        the time). That is the highest seq of all (the SQLite store's answer) unless the
        node's clock stepped back by more than LATEST_LOOKBACK_NS to a time after 2020:
        then, until the node's clock passes its earlier readings again, it is the newest
        reading from before the step. A node with no reading stamped at or before the
        present (a clock far ahead since its first reading) is looked at from its newest
        reading instead.

        Each look-up is bounded in time, so InfluxDB opens only the shards (a week each)
        and blocks (1,000 values) it needs; only for a node without a reading stamped in
        the last RECENT_S does finding its newest one read a block per shard of its
        history (seq only)."""
        self._check_open()
        keys = list(dict.fromkeys(nodes))
        if not keys:
            return {}
        return self._with_storage(lambda: self._latest_many(keys))

    def _latest_many(self, keys: list[tuple[str, str]]
                     ) -> dict[tuple[str, str], StoredReading]:
        # 1. each node's newest reading stamped in the last RECENT_S up to the present, and
        #    its highest seq stamped before CLOCK_LOST_BEFORE_NS (normally none)
        answers = self._query([statement for site_id, node_id in keys for statement in (
            self._newest_statement(site_id, node_id, within_s=RECENT_S, up_to_now=True),
            self._highest_seq_statement(site_id, node_id, None, CLOCK_LOST_BEFORE_NS))])
        newest = {key: self._seq_at(rows) for key, rows in zip(keys, answers[0::2], strict=True)}
        clock_lost = {key: self._seq_at(rows)
                      for key, rows in zip(keys, answers[1::2], strict=True)}
        # 1b. nodes silent for RECENT_S: their newest reading up to the present, else (a
        #     clock ahead since its first reading) their newest of all
        for up_to_now in (True, False):
            silent = [key for key, found in newest.items() if found is None]
            answers = self._query([self._newest_statement(*key, within_s=None,
                                                          up_to_now=up_to_now)
                                   for key in silent])
            newest.update((key, self._seq_at(rows))
                          for key, rows in zip(silent, answers, strict=True))
        # 2. the highest seq from LATEST_LOOKBACK_NS before each newest reading onwards
        anchors = {key: found for key, found in newest.items() if found is not None}
        recent = dict(zip(anchors, self._query([
            self._highest_seq_statement(*key, lookback_start_ns(anchor.at_ns), None)
            for key, anchor in anchors.items()]), strict=True))
        best = {key: winner for key in keys if (winner := highest_seq(
            (newest[key], clock_lost[key], self._seq_at(recent.get(key, [])))))}
        # 3. the winners' whole readings, each at its exact time
        fetched = self._query([self._reading_statement(*key, winner.at_ns)
                               for key, winner in best.items()])
        found = ((key, self._reading_from(*key, winner.at_ns, rows))
                 for (key, winner), rows in zip(best.items(), fetched, strict=True))
        return {key: reading for key, reading in found
                if reading is not None}  # None: deleted meanwhile

    def _seq_at(self, rows: list[Row]) -> SeqAt | None:
        """The seq and time of the first row of a ``latest`` look-up, if any."""
        if not rows or rows[0].get(self._SEQ_COLUMN) is None:
            return None
        return SeqAt(int(rows[0][self._SEQ_COLUMN]), int(rows[0][self._TIME_COLUMN]))

    def series(self, site_id: str, node_id: str, start: datetime, end: datetime,
               fields: Sequence[str], every_s: float | None = None) -> list[SeriesPoint]:
        """Readings of a node in [start, end), oldest first, with the requested fields.

        Without ``every_s``: one point per reading. With it: one point per bucket of
        ``every_s`` seconds that holds readings, ``at`` = the bucket's start, each value the
        mean of the field in it; buckets are aligned to the Unix epoch, not to ``start``. A
        missing value is left out of ``values``; a point with none of the fields is left
        out."""
        names = validated_fields(fields)
        bucket = None if every_s is None else bucket_us(every_s)
        start_ns, end_ns = time_ns(start, "start"), time_ns(end, "end")
        self._check_open()
        return self._series(site_id, node_id, start_ns, end_ns, names, bucket)

    def ping(self, timeout_s: float = 2.0) -> None:
        self._check_open()
        with self._http_errors("ping", "reach InfluxDB", timeout_s):
            response = self._client.get(self._PING_PATH, timeout=timeout_s)
        if not response.is_success:
            raise StoreUnavailable(f"{self._where}: ping answered {response.status_code}")

    def close(self) -> None:
        """Close the HTTP connections (idempotent); later calls raise ``StoreUnavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what each version does its own way ---------------------------------------------

    def _with_storage(self, action: Callable[[], _T]) -> _T:
        """Run ``action`` with the place the points go to in place."""
        return action()

    def _post_lines(self, body: bytes) -> httpx.Response:
        """POST one request of line protocol to the write endpoint."""
        raise NotImplementedError

    def _retention_dropped(self, status: int, error: str) -> int | None:
        """How many points a refused write says were dropped as older than the retention
        (the rest is stored); None if the write was refused for another reason."""
        raise NotImplementedError

    def _seq_statement(self, site_id: str, node_id: str, first_ns: int, last_ns: int) -> str:
        """A statement whose rows are the seq and time of the node's points in
        [first_ns, last_ns]."""
        raise NotImplementedError

    def _query_once(self, statements: Sequence[str]) -> list[list[Row]]:
        """Run statements in one request; one list of rows per statement."""
        raise NotImplementedError

    def _series(self, site_id: str, node_id: str, start_ns: int, end_ns: int,
                names: list[str], bucket: int | None) -> list[SeriesPoint]:
        raise NotImplementedError

    def _newest_statement(self, site_id: str, node_id: str, *, within_s: int | None,
                          up_to_now: bool) -> str:
        """A statement whose one row (or none) is the time and seq of the node's
        newest-stamped point [stamped after InfluxDB's present minus ``within_s``] [and at
        or before the present]."""
        raise NotImplementedError

    def _highest_seq_statement(self, site_id: str, node_id: str, start_ns: int | None,
                               stop_ns: int | None) -> str:
        """A statement whose one row (or none) is the time and seq of the node's point with
        the highest seq stamped in [start_ns, stop_ns) (None: unbounded)."""
        raise NotImplementedError

    def _reading_statement(self, site_id: str, node_id: str, at_ns: int) -> str:
        """A statement whose rows are the node's point stamped ``at_ns``, all fields."""
        raise NotImplementedError

    def _reading_from(self, site_id: str, node_id: str, at_ns: int,
                      rows: list[Row]) -> StoredReading | None:
        """The reading in the rows of ``_reading_statement``; None if there is none."""
        raise NotImplementedError

    # --- writing ------------------------------------------------------------------------

    def _write_lines(self, body_lines: list[str], keys: list[Key]) -> int:
        if not self.count_duplicates:
            return max(0, len(set(keys)) - self._send(body_lines))
        stored_before = self._existing(keys)
        with self._lock:
            new = {key for key in keys
                   if key not in stored_before or key in self._unconfirmed}
        try:
            dropped = self._send(body_lines)
        except self._MAYBE_STORED:
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
        what = f"write of {batch_size} readings"
        with self._http_errors(what, "write"):
            response = self._post_lines(body)
        if response.is_success:
            return 0
        error = self._error_text(response)
        self._raise_for(response.status_code, error, what)
        count = self._retention_dropped(response.status_code, error)
        if count is None:
            self._refuse(response.status_code, error, what)
        self._log.warning("%s: %d readings older than %s were dropped by InfluxDB",
                          self._where, count, self._RETENTION)
        return count

    def _existing(self, keys: Iterable[Key]) -> set[Key]:
        """Which of these points are already stored: one statement per node and stretch of
        time (points further apart than EXISTING_GAP_NS are looked up separately, so a
        replay of last month does not read everything in between)."""
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
                    statements.append(self._seq_statement(site_id, node_id, low, previous))
                    owners.append((site_id, node_id))
                    if at_ns is not None:
                        low = at_ns
                if at_ns is not None:
                    previous = at_ns
        found: set[Key] = set()
        for rows, (site_id, node_id) in zip(self._query(statements), owners, strict=True):
            found.update((site_id, node_id, int(row[self._SEQ_COLUMN]), row[self._TIME_COLUMN])
                         for row in rows)
        return found

    # --- querying and errors ------------------------------------------------------------

    def _query(self, statements: Sequence[str]) -> list[list[Row]]:
        """Run statements (MAX_STATEMENTS_PER_QUERY per request); one list of rows (column →
        value, times as integer ns) per statement."""
        results: list[list[Row]] = []
        for first in range(0, len(statements), MAX_STATEMENTS_PER_QUERY):
            results.extend(self._query_once(statements[first:first + MAX_STATEMENTS_PER_QUERY]))
        return results

    @contextmanager
    def _http_errors(self, what: str, verb: str,
                     timeout_s: float | None = None) -> Iterator[None]:
        """Timeouts and connection errors inside as ``StoreUnavailable``."""
        try:
            yield
        except httpx.TimeoutException:
            raise StoreUnavailable(f"{self._where}: {what} timed out after "
                                   f"{timeout_s or self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{self._where}: cannot {verb} ({type(exc).__name__}: "
                                   f"{exc})") from None

    def _error_text(self, response: httpx.Response) -> str:
        return error_text(response, self._ERROR_KEY)

    def _raise_for(self, status: int, error: str, what: str) -> None:
        """StoreUnavailable for answers worth retrying, StoreRejected for refusals."""
        if status >= 500 or status in (408, 429):
            raise StoreUnavailable(f"{self._where}: {what} failed ({status}: {error})")
        if status in (401, 403):
            raise StoreRejected(f"{self._where}: {what} refused ({status}: {error}); "
                                f"{self._AUTH_HINT}")

    def _refuse(self, status: int, error: str, what: str) -> NoReturn:
        """Raise for an unsuccessful answer: ``_raise_for``'s, else StoreRejected."""
        self._raise_for(status, error, what)
        raise StoreRejected(f"{self._where}: {what} rejected ({status}: {error})")

    def _query_failed(self, message: str, error: str) -> StoreUnavailable | StoreRejected:
        """The exception for a query error InfluxDB reported in its answer."""
        if any(word in error for word in self._TRANSIENT_QUERY_ERRORS):
            return StoreUnavailable(message)
        return StoreRejected(message)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"{self._where}: store closed")
