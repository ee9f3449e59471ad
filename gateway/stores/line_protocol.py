"""Readings as InfluxDB line protocol (pure: no I/O), shared by the InfluxDB 1.x and 2.x stores.

One reading is one point (schema in ``docs/storage.md``)::

    dryer_reading,node=secador-01,site=coop-norte air_temp_c=48.5,...,seq=1234i,mode="auto",
        alarms="",raining=false 1767268800000000234

- measurement ``dryer_reading``; tags ``node`` and ``site`` only (sorted, as InfluxDB
  recommends). The tag set plus the timestamp IS a point's identity in InfluxDB: writing the
  same measurement, tags and timestamp again overwrites the point instead of adding one. That
  is what makes a retried or replayed write store a reading once, so nothing that can differ
  between two writes of the same reading (the batch) is a tag.
- fields: every numeric field as a float; ``seq`` an integer; ``mode`` and ``alarms`` (comma-
  separated, "" when none) strings; ``raining`` a boolean and ``batch_id`` a string, both
  left out when unknown.
- timestamp (nanoseconds): ``measured_at`` in whole microseconds × 1000 + ``seq`` mod 1000.
  A replay of a reading gets the very same timestamp (so it overwrites itself), while two
  different readings of one node in the same microsecond — a node whose clock stepped back —
  get different ones instead of silently overwriting each other. Nothing is lost: Python
  datetimes have microsecond resolution, so ``measured_at_from_ns`` recovers ``measured_at``
  exactly.

Escaping follows the line-protocol reference: in the measurement ``,`` and space; in tag keys,
tag values and field keys ``,``, ``=`` and space; in string field values ``"`` and ``\\``.
What line protocol cannot carry faithfully is refused with ``ValueError`` before anything is
sent: a backslash in a name or tag value (InfluxDB 1.x keeps it literally, 2.x reads it as an
escape, and a trailing one breaks the line), a line break in a name or tag value (it would end
the line and turn the rest into a separate, bogus point), an empty tag value, the field name
``time`` (and the label fields' names for numeric fields), an alarm that is empty or has a
comma (alarms are stored comma-separated), a non-finite number, and times outside InfluxDB's
range (years 1677-2262).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from gateway.timeseries import StoredReading

MEASUREMENT = "dryer_reading"
SITE_TAG = "site"
NODE_TAG = "node"
SEQ_FIELD = "seq"
RAINING_FIELD = "raining"
MODE_FIELD = "mode"
ALARMS_FIELD = "alarms"
BATCH_FIELD = "batch_id"
# Fields that are not numeric readings; a reading's numeric fields may not use these names.
LABEL_FIELDS = (SEQ_FIELD, RAINING_FIELD, MODE_FIELD, ALARMS_FIELD, BATCH_FIELD)
_RESERVED_KEYS = frozenset((*LABEL_FIELDS, SITE_TAG, NODE_TAG, "time"))

# InfluxDB's valid timestamps (models.MinNanoTime / MaxNanoTime).
MIN_TIME_NS = -9_223_372_036_854_775_806
MAX_TIME_NS = 9_223_372_036_854_775_806
SEQ_SLOTS = 1000  # nanoseconds per microsecond: room to tell readings of one µs apart

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})


def epoch_us(moment: datetime, what: str = "time") -> int:
    """Exact microseconds since the Unix epoch of an aware datetime."""
    try:
        return (moment - _EPOCH) // _ONE_US
    except TypeError:  # a naive datetime cannot be subtracted from an aware one
        raise ValueError(f"{what} {moment.isoformat()} has no time zone (use UTC)") from None


def time_ns(moment: datetime, what: str = "time") -> int:
    """A datetime as InfluxDB nanoseconds (for query bounds)."""
    return epoch_us(moment, what) * SEQ_SLOTS


def point_time_ns(measured_at: datetime, seq: int) -> int:
    """The timestamp of a reading's point: unique per (node, seq) within a microsecond,
    identical every time the same reading is written."""
    nanos = epoch_us(measured_at, "measured_at") * SEQ_SLOTS + seq % SEQ_SLOTS
    if not MIN_TIME_NS <= nanos <= MAX_TIME_NS:
        raise ValueError(f"measured_at {measured_at.isoformat()} is outside "
                         f"InfluxDB's time range (1677-09-21 to 2262-04-11)")
    return nanos


def measured_at_from_ns(nanos: int) -> datetime:
    """``measured_at`` of a point written by ``point_time_ns`` (or a bucket start)."""
    return _EPOCH + timedelta(microseconds=nanos // SEQ_SLOTS)


def _check_name(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"{what} is empty")
    if "\\" in text or "\n" in text or "\r" in text:
        raise ValueError(f"{what} {text!r} has a backslash or line break, which line "
                         f"protocol cannot carry faithfully")


def escape_measurement(name: str) -> str:
    _check_name(name, "measurement name")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(key: str) -> str:
    """A tag key or field key."""
    _check_name(key, "key")
    return key.translate(_KEY_ESCAPES)


def escape_tag_value(value: str) -> str:
    _check_name(value, "tag value")
    return value.translate(_KEY_ESCAPES)


def string_field(value: str) -> str:
    """A string field value, quoted (any text, line breaks included)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# A gateway sees a few dozen nodes, field names and label combinations: their line-protocol
# text is computed once (encoding is most of the gateway's CPU per reading).
@lru_cache(maxsize=4096)
def _series_key(site_id: str, node_id: str) -> str:
    return (f"{MEASUREMENT},{NODE_TAG}={escape_tag_value(node_id)},"
            f"{SITE_TAG}={escape_tag_value(site_id)} ")


@lru_cache(maxsize=1024)
def _field_key(name: str) -> str:
    if name in _RESERVED_KEYS:
        raise ValueError(f"field name {name!r} is reserved")
    return escape_key(name) + "="


@lru_cache(maxsize=4096)
def _label_fields(mode: str, alarms: tuple[str, ...], raining: bool | None,
                  batch_id: str | None) -> str:
    bad_alarm = next((a for a in alarms if not a or "," in a), None)
    if bad_alarm is not None:
        raise ValueError(f"alarm {bad_alarm!r} cannot be stored (empty or has ',')")
    labels = [f"{MODE_FIELD}={string_field(mode)}",
              f"{ALARMS_FIELD}={string_field(','.join(alarms))}"]
    if raining is not None:
        labels.append(f"{RAINING_FIELD}={'true' if raining else 'false'}")
    if batch_id is not None:
        labels.append(f"{BATCH_FIELD}={string_field(batch_id)}")
    return ",".join(labels)


def reading_line(reading: StoredReading) -> str:
    """One reading as one line of line protocol (no trailing newline)."""
    return encode_reading(reading)[0]


def encode_reading(reading: StoredReading) -> tuple[str, int]:
    """(line, its timestamp in ns): the line as ``reading_line``, and the point's time."""
    try:
        parts = [_series_key(reading.site_id, reading.node_id)]
        for name, value in reading.fields.items():
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"field {name} is {number!r}: line protocol has no NaN or "
                                 f"infinity")
            # repr: 1.0, never 1, which InfluxDB 2 would take for an integer: a field's type
            # never changes
            parts.append(f"{_field_key(name)}{number!r},")
        seq = int(reading.seq)
        parts.append(f"{SEQ_FIELD}={seq}i,")
        parts.append(_label_fields(reading.mode, tuple(reading.alarms), reading.raining,
                                   reading.batch_id))
        timestamp = point_time_ns(reading.measured_at, seq)
    except ValueError as exc:
        raise ValueError(f"reading {reading.site_id}/{reading.node_id} seq {reading.seq}: "
                         f"{exc}") from None
    parts.append(f" {timestamp}")
    return "".join(parts), timestamp


def lines(readings: Iterable[StoredReading]) -> bytes:
    """A request body: one line per reading, UTF-8."""
    return "\n".join(reading_line(reading) for reading in readings).encode("utf-8")
