"""The bill of materials: hardware/bom.csv is complete for every wired part, BOM.md is generated
from it with the right totals, and a wrong CSV row is refused in one line."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from cacao_dryer.errors import ConfigError
from cacao_dryer.pinmap import load_pinmap

ROOT = Path(__file__).parent.parent
BOM_CSV = ROOT / "hardware" / "bom.csv"
BOM_MD = ROOT / "hardware" / "BOM.md"
PINMAP = load_pinmap(ROOT / "hardware" / "pinmap.toml")


def load_make_bom() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_bom", ROOT / "hardware" / "make_bom.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_bom"] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_bom = load_make_bom()


def csv_rows() -> list[dict[str, str]]:
    with BOM_CSV.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_bom_has_a_quantity_column_per_setup_of_the_pin_map() -> None:
    bom = make_bom.load_bom(BOM_CSV)
    assert sorted(bom.setups) == sorted(PINMAP.setups)


def test_every_wired_part_is_in_the_bom_in_enough_quantity() -> None:
    rows = {row["item"]: row for row in csv_rows()}
    for name, setup in PINMAP.setups.items():
        needed = Counter(part.bom for part in setup.parts)
        for item, count in needed.items():
            assert item in rows, f"{name}: {item!r} is not in bom.csv"
            assert float(rows[item][f"qty_{name}"]) >= count, f"{name}: {item}"


@pytest.mark.parametrize(("role", "words"), [
    ("node", "Raspberry Pi Zero 2"), ("gateway", "Raspberry Pi 4"), ("gateway", "Raspberry Pi 5"),
    ("node", "DHT22"), ("node", "SHT31"), ("node", "Radiation shield"), ("node", "ADS1115"),
    ("node", "moisture probe"), ("node", "Load cell 50 kg"), ("node", "HX711"),
    ("node", "relay module, opto-isolated"), ("node", "IRLZ44N"), ("node", "12 V DC fan"),
    ("node", "linear actuator"), ("node", "servo"), ("node", "Rain sensor"),
    ("node", "12 V 5 A power supply"), ("node", "buck"), ("node", "battery"),
    ("node", "Solar panel"), ("gateway", "UPS"), ("node", "IP65 enclosure"),
    ("node", "Cable gland"), ("node", "Shielded cable"), ("both", "microSD"), ("node", "fuse"),
])
def test_the_parts_the_issue_asks_for_are_listed(role: str, words: str) -> None:
    assert any(words.lower() in row["item"].lower() and row["role"] == role
               for row in csv_rows()), words


def test_prices_in_soles_follow_the_dollar_prices() -> None:
    for row in csv_rows():
        usd, pen = float(row["unit_usd"]), float(row["unit_pen"])
        assert usd > 0 and abs(pen - usd * make_bom.PEN_PER_USD) <= max(1.0, 0.02 * pen)
        assert row["where_to_buy"].strip()


def test_committed_bom_md_is_generated_from_the_csv() -> None:
    expected = make_bom.render_bom_md(make_bom.load_bom(BOM_CSV))
    assert BOM_MD.read_text(encoding="utf-8") == expected, \
        "hardware/BOM.md is stale: run python hardware/make_bom.py"


def test_bom_md_totals_are_the_sums_of_the_csv() -> None:
    text = BOM_MD.read_text(encoding="utf-8")
    shown: dict[str, tuple[float, float]] = {}
    for label, usd_text, pen_text in re.findall(
            r"^\| one (dryer `[\w-]+`|gateway) \| ([\d,.]+) \| ([\d,.]+) \|$", text,
            flags=re.MULTILINE):
        column = label.removeprefix("dryer ").strip("`")
        shown[column] = (float(usd_text.replace(",", "")), float(pen_text.replace(",", "")))
    assert sorted(shown) == sorted([*PINMAP.setups, "gateway"])
    for column, (usd, pen) in shown.items():
        rows = csv_rows()
        want_usd = sum(float(r[f"qty_{column}"]) * float(r["unit_usd"]) for r in rows)
        want_pen = sum(float(r[f"qty_{column}"]) * float(r["unit_pen"]) for r in rows)
        assert usd == pytest.approx(want_usd, abs=0.005)
        assert pen == pytest.approx(want_pen, abs=0.005)
        assert usd > 0
    # The low-cost setup is the cheapest dryer.
    assert shown["pi-dht11-servo"][0] == min(v[0] for k, v in shown.items() if k != "gateway")


def test_alternatives_are_listed_but_not_counted() -> None:
    text = BOM_MD.read_text(encoding="utf-8")
    alternatives = [row["item"] for row in csv_rows()
                    if not any(float(v) for k, v in row.items() if k.startswith("qty_"))]
    assert "SHT31/SHT35 air sensor in a filter housing" in alternatives
    for item in alternatives:
        assert f"*{item}* (alternative)" in text


def _csv_with(change: str) -> str:
    lines = BOM_CSV.read_text(encoding="utf-8").splitlines()
    header, first, *rest = lines
    if change == "role":
        first = first.replace("node,", "dryer,", 1)
    elif change == "quantity":
        first = first.replace(",1,1,1,0,28,", ",1,-1,1,0,28,", 1)
    elif change == "pen":
        first = first.replace(",28,105,", ",28,150,", 1)
    elif change == "duplicate":
        rest.append(first)
    elif change == "column":
        header = header.replace("unit_pen", "pen")
    elif change == "gateway_on_node":
        first = first.replace(",1,1,1,0,28,", ",1,1,1,1,28,", 1)
    return "\n".join([header, first, *rest]) + "\n"


@pytest.mark.parametrize(("change", "message"), [
    ("role", "bom.csv line 2, role: 'dryer' is not one of node, gateway, both"),
    ("quantity", "bom.csv line 2, qty_pi-loadcell-relay: -1 must be 0 or more"),
    ("pen", "bom.csv line 2, unit_pen: 150 PEN does not match 28 USD at 3.75 PEN/USD"),
    ("duplicate", "line 43, item: 'Raspberry Pi Zero 2 WH' is empty or listed twice"),
    ("column", "bom.csv: columns must be role, item, spec, qty_"),
    ("gateway_on_node", "bom.csv line 2, qty_gateway: a node item has no gateway quantity"),
])
def test_a_wrong_bom_row_is_refused_in_one_line(change: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_bom.parse_bom(_csv_with(change), "bom.csv")
    assert "\n" not in str(caught.value)
    assert message in str(caught.value)


def test_make_bom_script_checks_from_the_command_line() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hardware" / "make_bom.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BOM.md is up to date" in result.stdout
