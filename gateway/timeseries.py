"""Time-series storage of node readings behind one interface (SQLite, InfluxDB 1.x, 2.x).

Every store is idempotent by (site_id, node_id, seq): writing a reading again — a node's
replay after an outage, a gateway retry after a crash — stores it once. A store that cannot
write right now raises ``StoreUnavailable`` (retryable: the caller spools and retries);
anything else it raises is a bug or bad configuration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cacao_dryer.contract import Telemetry
from cacao_dryer.errors import CacaoDryerError

# Numeric fields stored besides the measurement table's readings (cacao_dryer/measurements.py).
STATE_FIELDS = ("fan_speed_pct", "vent_open_pct", "config_version")


class StoreUnavailable(CacaoDryerError, ConnectionError):
    """The database cannot take writes right now (down, overloaded, disk full): retry later."""


class StoreRejected(CacaoDryerError, ValueError):
    """The database refused the request and will refuse it again (bad credentials, missing
    permission, data it cannot store): retrying does not help; fix the configuration."""


@dataclass(slots=True)  # not frozen: its __init__ took a tenth of the gateway's CPU per reading
class StoredReading:
    """One telemetry message as stored: identity, time, numeric fields and a few labels."""

    site_id: str
    node_id: str
    seq: int
    measured_at: datetime
    fields: dict[str, float] = field(default_factory=dict)  # readings + STATE_FIELDS
    raining: bool | None = None
    mode: str = "auto"
    alarms: tuple[str, ...] = ()
    batch_id: str | None = None

    @classmethod
    def from_telemetry(cls, message: Telemetry) -> StoredReading:
        # The models' attributes straight from their __dict__ (pydantic keeps them there):
        # model_dump() was a third of the gateway's CPU per reading.
        fields = {key: float(value) for key, value in message.readings.__dict__.items()
                  if value is not None}
        fields["fan_speed_pct"] = message.fan_speed_pct
        fields["vent_open_pct"] = message.vent_open_pct
        fields["config_version"] = float(message.config_version)
        return cls(site_id=message.site_id, node_id=message.node_id, seq=message.seq,
                   measured_at=message.measured_at, fields=fields, raining=message.raining,
                   mode=message.mode.value, alarms=tuple(a.value for a in message.alarms),
                   batch_id=message.batch_id)


@dataclass(frozen=True)
class SeriesPoint:
    """One point of a (possibly downsampled) series: the mean of each field over the bucket
    starting at ``at`` (or the raw reading when not downsampled)."""

    at: datetime
    values: dict[str, float]


class TimeSeriesStore(Protocol):
    def write(self, readings: Sequence[StoredReading]) -> int:
        """Store a batch; returns how many were new (duplicates by site/node/seq are not).
        All or nothing: on StoreUnavailable none of the batch may be assumed stored."""
        ...

    def seq_ranges(self, site_id: str, node_id: str) -> list[tuple[int, int]]:
        """Stored sequence numbers of a node as sorted, contiguous (first, last) ranges."""
        ...

    def latest(self, site_id: str, node_id: str) -> StoredReading | None: ...

    def latest_many(self, nodes: Sequence[tuple[str, str]]
                    ) -> dict[tuple[str, str], StoredReading]:
        """``latest`` of several nodes at once (the overview of every dryer): (site, node) →
        its newest reading; nodes without readings are left out."""
        ...

    def series(self, site_id: str, node_id: str, start: datetime, end: datetime,
               fields: Sequence[str], every_s: float | None = None) -> list[SeriesPoint]:
        """Points in [start, end); with ``every_s`` averaged into buckets of that width."""
        ...

    def ping(self, timeout_s: float = 2.0) -> None:
        """Check the store answers (``/api/health``); raises StoreUnavailable if not, within
        about ``timeout_s``."""
        ...

    def close(self) -> None: ...


def bucket_us(every_s: float) -> int:
    """A series bucket of ``every_s`` seconds in whole microseconds (ValueError if not a
    positive duration of at least 1 µs); every store aligns buckets to the Unix epoch."""
    if not math.isfinite(every_s) or every_s <= 0:
        raise ValueError(f"every_s must be a positive number of seconds, not {every_s!r}")
    bucket = round(every_s * 1_000_000)
    if bucket < 1:
        raise ValueError(f"every_s {every_s!r} is shorter than the time resolution (1 µs)")
    return bucket


def missing_ranges(stored: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Gaps between stored ranges, from seq 1 up to the highest stored: lost data.

    >>> missing_ranges([(1, 10), (14, 20), (22, 22)])
    [(11, 13), (21, 21)]
    >>> missing_ranges([(3, 5)])
    [(1, 2)]
    """
    gaps: list[tuple[int, int]] = []
    expected = 1
    for first, last in sorted(stored):
        if first > expected:
            gaps.append((expected, first - 1))
        expected = max(expected, last + 1)
    return gaps
