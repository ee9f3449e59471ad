"""What a node remembers across restarts besides its outbox: the last good threshold config,
the batch in the dryer, the tray's tare and the probe calibration sent by the gateway. Small
JSON files, written atomically (temp file, fsync, rename), so a power cut leaves either the old
or the new file, never half of one. A file that is unreadable anyway (a damaged SD card) is
moved aside and reported, never a reason not to run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from cacao_dryer.calibration import check_curve
from cacao_dryer.contract import NodeConfig


@dataclass(frozen=True)
class StoredCalibration:
    """A moisture-probe curve the gateway sent (``set_calibration``): it overrides the config
    file's curve of the probe named ``sensor``, and only of that one."""

    sensor: str
    points: list[tuple[float, float]]
    command_id: str
    applied_at: datetime


@dataclass(frozen=True)
class BatchInfo:
    """The batch of beans currently in the dryer, as the node needs it for control and for
    tray-based moisture (mass balance needs the initial mass and moisture)."""

    batch_id: str
    started_at: datetime
    initial_moisture_pct_wb: float
    initial_tray_mass_kg: float | None


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateStore:
    """Files under the node's data_dir: ``config.json`` (last applied NodeConfig),
    ``batch.json`` (current batch, absent when the dryer is empty), ``tray.json`` (the
    load-cell tare taken on site, which overrides the config file's offset) and
    ``calibration.json`` (the moisture-probe curve the gateway sent, which overrides the
    config file's curve of the same probe)."""

    def __init__(self, data_dir: Path) -> None:
        self.set_aside: list[str] = []  # one line per unreadable file moved out of the way
        self._config_path = data_dir / "config.json"
        self._batch_path = data_dir / "batch.json"
        self._tray_path = data_dir / "tray.json"
        self._calibration_path = data_dir / "calibration.json"
        self._sim_time_path = data_dir / "simulated-time.txt"

    def load_simulated_time(self) -> datetime | None:
        """Where a simulated node's clock was when it last ran (so a restart continues)."""
        try:
            return datetime.fromisoformat(self._sim_time_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def save_simulated_time(self, moment: datetime) -> None:
        # Simulation only (a developer's disk, not a Pi's SD card): no fsync needed.
        self._sim_time_path.write_text(moment.isoformat())

    def load_tare_offset(self) -> float | None:
        if not self._tray_path.exists():
            return None
        try:
            return float(json.loads(self._tray_path.read_text())["tare_offset_counts"])
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(self._tray_path, "stored tare", exc)
            return None

    def save_tare_offset(self, counts: float) -> None:
        write_atomically(self._tray_path, json.dumps({"tare_offset_counts": counts}).encode())

    def load_calibration(self) -> StoredCalibration | None:
        if not self._calibration_path.exists():
            return None
        try:
            raw = json.loads(self._calibration_path.read_text())
            return StoredCalibration(
                sensor=str(raw["sensor"]),
                points=check_curve([(float(v), float(m)) for v, m in raw["points"]]),
                command_id=str(raw["command_id"]),
                applied_at=datetime.fromisoformat(raw["applied_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(self._calibration_path, "stored probe calibration", exc)
            return None

    def save_calibration(self, calibration: StoredCalibration) -> None:
        raw = asdict(calibration) | {"applied_at": calibration.applied_at.isoformat(),
                                     "points": [list(p) for p in calibration.points]}
        write_atomically(self._calibration_path, json.dumps(raw, indent=1).encode())

    def _set_aside(self, path: Path, what: str, error: Exception) -> None:
        """An unreadable file (SD card damaged by a power cut) must not stop the node from
        controlling the dryer: move it aside for a technician and carry on without it."""
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.set_aside.append(f"{what} {path.name} was unreadable ({reason[:120]}); "
                              f"moved to {aside.name}, continuing without it")

    def load_config(self) -> NodeConfig | None:
        if not self._config_path.exists():
            return None
        try:
            return NodeConfig.model_validate_json(self._config_path.read_bytes())
        except (ValidationError, ValueError) as exc:
            self._set_aside(self._config_path, "stored config", exc)
            return None

    def save_config(self, config: NodeConfig) -> None:
        write_atomically(self._config_path, config.model_dump_json(indent=1).encode())

    def load_batch(self) -> BatchInfo | None:
        if not self._batch_path.exists():
            return None
        try:
            raw = json.loads(self._batch_path.read_text())
            return BatchInfo(
                batch_id=raw["batch_id"],
                started_at=datetime.fromisoformat(raw["started_at"]),
                initial_moisture_pct_wb=float(raw["initial_moisture_pct_wb"]),
                initial_tray_mass_kg=(None if raw.get("initial_tray_mass_kg") is None
                                      else float(raw["initial_tray_mass_kg"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(self._batch_path, "stored batch", exc)
            return None

    def save_batch(self, batch: BatchInfo | None) -> None:
        if batch is None:
            self._batch_path.unlink(missing_ok=True)
            return
        raw = asdict(batch) | {"started_at": batch.started_at.isoformat()}
        write_atomically(self._batch_path, json.dumps(raw, indent=1).encode())
