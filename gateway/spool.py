"""The gateway's local spool: readings it acknowledged while the database was down.

An MQTT message is acknowledged only once its reading is durable — in the database, or, when
the database cannot take it, here: appended to a JSON-lines file and fsynced. When the database
is back the spool is written out in order (idempotent writes make a crash mid-flush harmless)
and emptied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from gateway.timeseries import StoredReading, TimeSeriesStore


def _encode(reading: StoredReading) -> str:
    return json.dumps({
        "site_id": reading.site_id, "node_id": reading.node_id, "seq": reading.seq,
        "measured_at": reading.measured_at.isoformat(), "fields": reading.fields,
        "raining": reading.raining, "mode": reading.mode, "alarms": list(reading.alarms),
        "batch_id": reading.batch_id}, separators=(",", ":"))


def _decode(line: str) -> StoredReading:
    raw = json.loads(line)
    return StoredReading(site_id=raw["site_id"], node_id=raw["node_id"], seq=raw["seq"],
                         measured_at=datetime.fromisoformat(raw["measured_at"]),
                         fields=raw["fields"], raining=raw["raining"], mode=raw["mode"],
                         alarms=tuple(raw["alarms"]), batch_id=raw["batch_id"])


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._count = self._count_lines()

    def _count_lines(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as handle:
            return sum(1 for line in handle if line.endswith(b"\n"))

    def __len__(self) -> int:
        return self._count

    def append(self, readings: Sequence[StoredReading]) -> None:
        """Durably add readings (fsync before returning: the caller acknowledges next)."""
        text = "".join(_encode(r) + "\n" for r in readings)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._count += len(readings)

    def flush_into(self, store: TimeSeriesStore, chunk: int = 5000) -> int:
        """Write everything spooled into ``store`` in order, then empty the spool; returns how
        many were new. Raises StoreUnavailable (spool kept) if the store is still down."""
        if not self._count:
            return 0
        new = 0
        batch: list[StoredReading] = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # a torn last line from a crash mid-append: never acknowledged
                batch.append(_decode(line))
                if len(batch) >= chunk:
                    new += store.write(batch)
                    batch = []
        if batch:
            new += store.write(batch)
        self.path.unlink()
        self._count = 0
        return new
