"""A small stand-in for the InfluxDB 2.x HTTP API, for testing the 2.x store at the HTTP level.

No InfluxDB 2.x server can be installed on our machines (no Debian, PyPI or npm package), so
the 2.x store is tested against this server, which CHECKS what the client sends and answers
as InfluxDB 2.x does, for just what the store uses:

- ``POST /api/v2/write?org=…&bucket=…&precision=ns`` with ``Authorization: Token …`` and
  ``Content-Type: text/plain`` (gzip optional): the token, org, bucket and precision must be
  the configured ones (401 / 404 / 400 otherwise, with InfluxDB's JSON error bodies). The
  line protocol is parsed strictly (measurement, escaped tags, typed fields, an integer
  timestamp); one malformed line rejects the whole request with 400, as InfluxDB does. A
  point is keyed by measurement + tag set + timestamp: writing it again overwrites (merges)
  its fields, exactly InfluxDB's rule. A field keeps its first type; a point that changes it
  is dropped and answered ``422 … partial write: field type conflict``.
- ``POST /api/v2/query?org=…`` with a JSON body (``type: flux``): only the few fixed Flux
  statement shapes the store issues are understood (``STATEMENT`` below: one per line,
  ``from |> range(start | -<seconds>s, stop | now()) |> filter(site, node[, fields]) [|>
  max() | |> last() | |> aggregateWindow(…)] |> keep |> yield``); anything else is a 400
  "compilation failed", so a store that changes its Flux fails these tests instead of being
  silently misread. ``now()`` (and a start relative to it) is the server's clock, or
  ``now_ns`` when a test sets it. Answers are annotated CSV as InfluxDB 2.x writes it
  (``#datatype``/``#group``/``#default`` rows, one table per field, RFC3339 times with
  nanoseconds, new annotations when a table's schema changes, aggregate windows clamped to
  the range's start).
- ``GET /health``.

What is NOT reproduced: Flux in general, retention, the storage engine's durability, sharding,
performance. ``fail()`` makes the next requests answer a chosen status (500, 503, 401, …),
optionally after storing the points; ``hang()`` holds requests until ``release()``.
"""

from __future__ import annotations

import csv
import gzip
import http.server
import io
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support.mosquitto import free_port

MIN_TIME_NS = -9_223_372_036_854_775_806
MAX_TIME_NS = 9_223_372_036_854_775_806
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_STR = r'"(?:[^"\\]|\\.)*"'
STATEMENT = re.compile(
    rf'from\(bucket: (?P<bucket>{_STR})\)'
    r' \|> range\(start: (?:time\(v: (?P<start>-?\d+)\)|-(?P<start_ago_s>\d+)s), '
    r'stop: (?:time\(v: (?P<stop>-?\d+)\)|(?P<stop_now>now\(\)))\)'
    rf' \|> filter\(fn: \(r\) => r\._measurement == (?P<measurement>{_STR})'
    rf' and r\.site == (?P<site>{_STR}) and r\.node == (?P<node>{_STR})'
    rf'(?: and \((?P<fields>r\._field == {_STR}(?: or r\._field == {_STR})*)\))?\)'
    r'(?P<op> \|> max\(\)| \|> last\(\)| \|> aggregateWindow\(every: (?P<every_us>[1-9]\d*)us, '
    r'fn: (?P<fn>mean|count|sum|min|max), createEmpty: false, timeSrc: "_start"\))?'
    r' \|> keep\(columns: \["_time", "_field", "_value"\]\)'
    rf' \|> yield\(name: (?P<name>{_STR})\)')
_FLUX_ESCAPES = {"\\": "\\", '"': '"', "$": "$", "n": "\n", "r": "\r", "t": "\t"}

_FLOAT = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_INT = re.compile(r"^[-+]?\d+i$")
_UINT = re.compile(r"^\d+u$")
_TRUE = {"t", "T", "true", "True", "TRUE"}
_FALSE = {"f", "F", "false", "False", "FALSE"}

_Tags = tuple[tuple[str, str], ...]
_Key = tuple[str, _Tags, int]  # measurement, sorted tags, time [ns]


class LineProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes  # decompressed


@dataclass
class _Fault:
    status: int
    times: int
    endpoint: str  # "write", "query" or "any"
    after_storing: bool


# --- line protocol ------------------------------------------------------------------------

def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split at separators not preceded by a backslash (escapes kept for later)."""
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index:index + 2])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str, escapable: str) -> str:
    out, index = [], 0
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text) and text[index + 1] in escapable:
            out.append(text[index + 1])
            index += 2
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def _field_value(raw: str) -> tuple[str, Any]:
    """(type, value) of a field value; raises LineProtocolError."""
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise LineProtocolError("unterminated string field")
        body = raw[1:-1]
        out, index = [], 0
        while index < len(body):
            if body[index] == "\\" and index + 1 < len(body) and body[index + 1] in '"\\':
                out.append(body[index + 1])
                index += 2
            elif body[index] == '"':
                raise LineProtocolError("unescaped quote in string field")
            else:
                out.append(body[index])
                index += 1
        return "string", "".join(out)
    if _INT.match(raw):
        value = int(raw[:-1])
        if not -2**63 <= value < 2**63:
            raise LineProtocolError(f"integer {raw} out of range")
        return "long", value
    if _UINT.match(raw):
        return "unsignedLong", int(raw[:-1])
    if raw in _TRUE:
        return "boolean", True
    if raw in _FALSE:
        return "boolean", False
    if _FLOAT.match(raw):
        return "double", float(raw)
    raise LineProtocolError(f"invalid field value {raw!r}")


def _fields_part(text: str) -> tuple[str, str]:
    """(fields, rest after the space that ends them), honouring quoted strings."""
    in_string, index = False, 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            in_string = not in_string
        elif char == " " and not in_string:
            return text[:index], text[index + 1:]
        index += 1
    if in_string:
        raise LineProtocolError("unterminated string field")
    return text, ""


def parse_line(line: str) -> tuple[str, _Tags, dict[str, tuple[str, Any]], int]:
    """One line of line protocol, strictly: (measurement, sorted tags, fields, time ns)."""
    head_end, index = None, 0
    while index < len(line):  # the series key ends at the first unescaped space
        if line[index] == "\\":
            index += 2
            continue
        if line[index] == " ":
            head_end = index
            break
        index += 1
    if head_end is None:
        raise LineProtocolError("missing fields")
    head, rest = line[:head_end], line[head_end + 1:]
    key_parts = _split_unescaped(head, ",")
    measurement = _unescape(key_parts[0], ", \\")
    if not measurement:
        raise LineProtocolError("missing measurement")
    tags: dict[str, str] = {}
    for part in key_parts[1:]:
        pieces = _split_unescaped(part, "=")
        if len(pieces) != 2 or not pieces[0] or not pieces[1]:
            raise LineProtocolError(f"invalid tag {part!r}")
        name, value = (_unescape(piece, ",= \\") for piece in pieces)
        if name in tags:
            raise LineProtocolError(f"duplicate tag {name!r}")
        tags[name] = value
    fields_text, time_text = _fields_part(rest)
    if not fields_text:
        raise LineProtocolError("missing fields")
    fields: dict[str, tuple[str, Any]] = {}
    for part in _split_fields(fields_text):
        name_raw, equals, value_raw = part.partition("=")
        while name_raw.endswith("\\") and equals:  # an escaped '=' in the field key
            more, equals, value_raw = value_raw.partition("=")
            name_raw = f"{name_raw}={more}"
        name = _unescape(name_raw, ",= \\")
        if not equals or not name or not value_raw:
            raise LineProtocolError(f"invalid field {part!r}")
        fields[name] = _field_value(value_raw)
    if not re.fullmatch(r"-?\d+", time_text):
        raise LineProtocolError(f"invalid or missing timestamp {time_text!r} (the test server "
                                f"expects every point to carry its nanosecond time)")
    at_ns = int(time_text)
    if not MIN_TIME_NS <= at_ns <= MAX_TIME_NS:
        raise LineProtocolError(f"timestamp {at_ns} out of range")
    return measurement, tuple(sorted(tags.items())), fields, at_ns


def _split_fields(text: str) -> list[str]:
    parts, start, in_string, index = [], 0, False, 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            in_string = not in_string
        elif char == "," and not in_string:
            parts.append(text[start:index])
            start = index + 1
        index += 1
    parts.append(text[start:])
    return parts


# --- annotated CSV --------------------------------------------------------------------------

def rfc3339_ns(nanos: int) -> str:
    seconds, fraction = divmod(nanos, 10**9)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def _csv_value(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "double":
        return format(Decimal(repr(value)), "f")  # Go's FormatFloat(v, 'f', -1, 64)
    return str(value)


def flux_unquote(literal: str) -> str:
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        if body[index] == "\\":
            out.append(_FLUX_ESCAPES[body[index + 1]])
            index += 2
        else:
            out.append(body[index])
            index += 1
    return "".join(out)


# --- the server ---------------------------------------------------------------------------

class Influx2TestServer:
    """The stand-in InfluxDB 2.x on 127.0.0.1:<free port>; ``url`` once started."""

    def __init__(self, org: str = "coop-norte", bucket: str = "cacao",
                 token: str = "test-token-3f9a") -> None:
        self.org, self.bucket, self.token = org, bucket, token
        self.points: dict[_Key, dict[str, tuple[str, Any]]] = {}
        self.field_types: dict[tuple[str, str], str] = {}
        self.requests: list[RecordedRequest] = []
        self.now_ns: int | None = None  # Flux's now(); None: the real clock
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._open_gate = threading.Event()
        self._open_gate.set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"influx": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True,
                         name="influx2-test-server").start()

    def stop(self) -> None:
        self._open_gate.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Influx2TestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls ----------------------------------------------------------------------

    def fail(self, status: int, times: int = 1, *, endpoint: str = "any",
             after_storing: bool = False) -> None:
        """Answer the next ``times`` requests to ``endpoint`` ("write", "query", "any") with
        ``status``; with ``after_storing`` a write stores its points first."""
        with self._lock:
            self._faults.append(_Fault(status, times, endpoint, after_storing))

    def hang(self) -> None:
        """Hold every request unanswered until ``release()``."""
        self._open_gate.clear()

    def release(self) -> None:
        self._open_gate.set()

    def seqs(self, node: str) -> list[int]:
        """The seq field of every stored point of a node, in time order."""
        with self._lock:
            return [fields["seq"][1] for (_, tags, _), fields in sorted(
                self.points.items(), key=lambda item: item[0][2])
                    if dict(tags).get("node") == node and "seq" in fields]

    def writes(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/v2/write"]

    def queries(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/v2/query"]

    # --- behaviour ----------------------------------------------------------------------------

    def take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in (endpoint, "any"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def store(self, lines: list[tuple[str, _Tags, dict[str, tuple[str, Any]], int]]) -> int:
        """Store parsed points; returns how many were dropped for a field type conflict."""
        dropped = 0
        with self._lock:
            for measurement, tags, fields, at_ns in lines:
                conflict = next((name for name, (kind, _) in fields.items()
                                 if self.field_types.get((measurement, name), kind) != kind), None)
                if conflict is not None:
                    dropped += 1
                    continue
                for name, (kind, _) in fields.items():
                    self.field_types[(measurement, name)] = kind
                self.points.setdefault((measurement, tags, at_ns), {}).update(fields)
        return dropped

    def run_statement(self, match: re.Match[str]) -> list[tuple[str, str, list[tuple[int, Any]]]]:
        """Tables (field, type, [(time, value)]) of one recognised statement."""
        now_ns = time.time_ns() if self.now_ns is None else self.now_ns
        if match["start_ago_s"]:
            start = now_ns - int(match["start_ago_s"]) * 10**9
        else:
            start = int(match["start"])
        stop = now_ns if match["stop_now"] else int(match["stop"])
        measurement = flux_unquote(match["measurement"])
        site, node = flux_unquote(match["site"]), flux_unquote(match["node"])
        wanted = ({flux_unquote(s) for s in re.findall(_STR, match["fields"])}
                  if match["fields"] else None)
        series: dict[str, list[tuple[int, Any]]] = {}
        kinds: dict[str, str] = {}
        with self._lock:
            for (point_measurement, tags, at_ns), fields in sorted(
                    self.points.items(), key=lambda item: item[0][2]):
                tag_map = dict(tags)
                if (point_measurement != measurement or tag_map.get("site") != site
                        or tag_map.get("node") != node or not start <= at_ns < stop):
                    continue
                for name, (kind, value) in fields.items():
                    if wanted is None or name in wanted:
                        series.setdefault(name, []).append((at_ns, value))
                        kinds[name] = kind
        tables = []
        for name in sorted(series):
            rows, kind = series[name], kinds[name]
            if match["op"] and "max()" in match["op"]:
                best = max(rows, key=lambda row: row[1])  # first of equal maxima
                tables.append((name, kind, [best]))
            elif match["op"] and "last()" in match["op"]:
                tables.append((name, kind, [rows[-1]]))  # rows are in time order
            elif match["fn"]:
                tables.append(_windowed(name, kind, rows, int(match["every_us"]) * 1000,
                                        match["fn"], start))
            else:
                tables.append((name, kind, rows))
        return tables


def _windowed(name: str, kind: str, rows: list[tuple[int, Any]], every_ns: int, fn: str,
              range_start: int) -> tuple[str, str, list[tuple[int, Any]]]:
    windows: dict[int, list[Any]] = {}
    for at_ns, value in rows:
        windows.setdefault(at_ns // every_ns * every_ns, []).append(value)
    out = []
    for window, values in sorted(windows.items()):
        at = max(window, range_start)  # Flux clamps window bounds to the range
        if fn == "mean":
            out.append((at, sum(values) / len(values)))
        elif fn == "count":
            out.append((at, len(values)))
        else:
            out.append((at, {"sum": sum, "min": min, "max": max}[fn](values)))
    out_kind = {"mean": "double", "count": "long"}.get(fn, kind)
    return name, out_kind, out


class _Handler(http.server.BaseHTTPRequestHandler):
    influx: Influx2TestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"", content_type: str = "application/json"
                ) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Influxdb-Version", "v2.7.11 (test server)")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._answer(status, json.dumps({"code": code, "message": message}).encode())

    def _record(self) -> tuple[RecordedRequest, str | None]:
        """The request, recorded; the second item an error already answered, if any."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        error = None
        encoding = (self.headers.get("Content-Encoding") or "identity").lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except OSError:
                error = "gzip body is not valid"
        elif encoding != "identity":
            error = f"Content-Encoding {encoding} not supported"
        parts = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        request = RecordedRequest(self.command, parts.path, params,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
        with self.influx._lock:
            self.influx.requests.append(request)
        self.influx._open_gate.wait(60)
        if error:
            self._error(415, "unsupported media type", error)
            return request, error
        return request, None

    def _authorized(self, request: RecordedRequest) -> bool:
        if request.headers.get("authorization") != f"Token {self.influx.token}":
            self._error(401, "unauthorized", "unauthorized access")
            return False
        return True

    def _org_ok(self, request: RecordedRequest) -> bool:
        org = request.params.get("org")
        if org is None:
            self._error(400, "invalid", "Please provide either orgID or org")
            return False
        if org != self.influx.org:
            self._error(404, "not found", f'organization name "{org}" not found')
            return False
        return True

    def do_GET(self) -> None:
        request, error = self._record()
        if error:
            return
        if request.path == "/health":
            self._answer(200, json.dumps({"name": "influxdb", "message": "ready for queries "
                                          "and writes", "status": "pass",
                                          "version": "v2.7.11"}).encode())
        else:
            self._error(404, "not found", "path not found")

    def do_POST(self) -> None:
        request, error = self._record()
        if error:
            return
        if request.path == "/api/v2/write":
            self._write(request)
        elif request.path == "/api/v2/query":
            self._query(request)
        else:
            self._error(404, "not found", "path not found")

    def _fault(self, endpoint: str) -> _Fault | None:
        fault = self.influx.take_fault(endpoint)
        if fault is not None and not fault.after_storing:
            self._fault_answer(fault.status)
        return fault

    def _fault_answer(self, status: int) -> None:
        code = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}.get(
            status, "internal error" if status >= 500 else "invalid")
        self._error(status, code, f"test fault {status}")

    def _write(self, request: RecordedRequest) -> None:
        fault = self._fault("write")
        if fault is not None and not fault.after_storing:
            return
        if not (self._authorized(request) and self._org_ok(request)):
            return
        bucket = request.params.get("bucket")
        if not bucket:
            self._error(400, "invalid", "bucket is required")
            return
        if bucket != self.influx.bucket:
            self._error(404, "not found", f'bucket "{bucket}" not found')
            return
        precision = request.params.get("precision")
        if precision != "ns":
            self._error(400, "invalid", f"test server expects precision=ns, got {precision!r}")
            return
        if not request.headers.get("content-type", "").startswith("text/plain"):
            self._error(400, "invalid", "test server expects Content-Type: text/plain")
            return
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            self._error(400, "invalid", "body is not UTF-8")
            return
        parsed = []
        for line in text.split("\n"):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                parsed.append(parse_line(line))
            except LineProtocolError as exc:
                self._error(400, "invalid", f"unable to parse '{line[:200]}': {exc}")
                return
        dropped = self.influx.store(parsed)
        if fault is not None:  # after storing
            self._fault_answer(fault.status)
        elif dropped:
            self._error(422, "unprocessable entity", "failure writing points to database: "
                        f"partial write: field type conflict dropped={dropped}")
        else:
            self._answer(204)

    def _query(self, request: RecordedRequest) -> None:
        fault = self._fault("query")
        if fault is not None:
            if fault.after_storing:
                self._fault_answer(fault.status)
            return
        if not (self._authorized(request) and self._org_ok(request)):
            return
        if not request.headers.get("content-type", "").startswith("application/json"):
            self._error(400, "invalid", "test server expects Content-Type: application/json")
            return
        try:
            spec = json.loads(request.body)
        except ValueError:
            self._error(400, "invalid", "body is not JSON")
            return
        if spec.get("type", "flux") != "flux" or not isinstance(spec.get("query"), str):
            self._error(400, "invalid", "expected a flux query")
            return
        annotations = (spec.get("dialect") or {}).get("annotations") or []
        if sorted(annotations) != ["datatype", "default", "group"]:
            self._error(400, "invalid", "test server answers only annotated CSV with the "
                        "datatype, group and default annotations")
            return
        results = []
        for line in spec["query"].splitlines():
            statement = line.strip()
            if not statement or statement.startswith("//"):
                continue
            match = STATEMENT.fullmatch(statement)
            if match is None:
                self._error(400, "invalid", f"compilation failed: test server does not "
                            f"understand {statement[:300]!r}")
                return
            if flux_unquote(match["bucket"]) != self.influx.bucket:
                self._error(404, "not found", f"failed to initialize execute state: could not "
                            f"find bucket {flux_unquote(match['bucket'])!r}")
                return
            results.append((flux_unquote(match["name"]), self.influx.run_statement(match)))
        self._answer(200, _annotated_csv(results).encode(), "text/csv; charset=utf-8")


def _annotated_csv(results: list[tuple[str, list[tuple[str, str, list[tuple[int, Any]]]]]]
                   ) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    previous_schema = None
    table_id = 0
    for name, tables in results:
        for field_name, kind, rows in tables:
            schema = (name, kind)
            if schema != previous_schema:
                if previous_schema is not None:
                    out.write("\r\n")
                writer.writerow(["#datatype", "string", "long", "dateTime:RFC3339", kind,
                                 "string"])
                writer.writerow(["#group", "false", "false", "false", "false", "true"])
                writer.writerow(["#default", name, "", "", "", ""])
                writer.writerow(["", "result", "table", "_time", "_value", "_field"])
                previous_schema = schema
            for at_ns, value in rows:
                writer.writerow(["", "", table_id, rfc3339_ns(at_ns), _csv_value(kind, value),
                                 field_name])
            table_id += 1
    return out.getvalue() or "\r\n"
