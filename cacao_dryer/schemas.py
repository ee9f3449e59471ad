"""Export the message contract as JSON Schema files (committed under docs/schemas/, checked by
a test so they never drift from the code)."""

from __future__ import annotations

import json
from pathlib import Path

from cacao_dryer.contract import json_schemas


def render_schemas() -> dict[str, str]:
    """File name → JSON text, deterministic (sorted keys, trailing newline)."""
    return {f"{channel}.schema.json": json.dumps(schema, indent=2, sort_keys=True,
                                                 ensure_ascii=False) + "\n"
            for channel, schema in json_schemas().items()}


def export_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
