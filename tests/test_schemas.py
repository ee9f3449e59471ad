"""The committed JSON Schemas (docs/schemas) must match the code's contract."""

from pathlib import Path

from cacao_dryer.contract import Channel
from cacao_dryer.schemas import render_schemas

SCHEMAS = Path(__file__).parent.parent / "docs" / "schemas"


def test_one_schema_per_channel():
    assert sorted(render_schemas()) == sorted(f"{c.value}.schema.json" for c in Channel)


def test_committed_schemas_match_the_code():
    for name, text in render_schemas().items():
        committed = (SCHEMAS / name).read_text(encoding="utf-8")
        assert committed == text, f"{name} is stale: run `cacao-dryer schema export`"
