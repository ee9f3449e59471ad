"""Stored readings for the store tests: one node, one reading every 30 s from T0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.timeseries import StoredReading

SITE, NODE = "coop-norte", "secador-01"
T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)


def reading(seq: int, at: datetime | None = None, node: str = NODE, site: str = SITE,
            **fields: float) -> StoredReading:
    return StoredReading(
        site_id=site, node_id=node, seq=seq,
        measured_at=at if at is not None else T0 + timedelta(seconds=30 * seq),
        fields=fields or {"air_temp_c": 40.0 + seq, "air_rh_pct": 50.0},
        raining=False, mode="auto")


def readings(seqs: range | list[int], node: str = NODE) -> list[StoredReading]:
    return [reading(seq, node=node) for seq in seqs]
