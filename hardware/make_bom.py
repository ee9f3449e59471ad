"""Write hardware/BOM.md (readable tables and totals) from hardware/bom.csv.

    python hardware/make_bom.py            # (re)write BOM.md
    python hardware/make_bom.py --check    # exit 1 if BOM.md is out of date or the CSV is wrong

The CSV is the source: one row per item, the quantity per dryer of each hardware setup
(columns qty_<setup>, one per setup of hardware/pinmap.toml) and per gateway, and the unit price
in US dollars and Peruvian soles. Items with every quantity 0 are alternatives: listed, not
counted. A wrong row is a one-line error naming the line and the column.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from cacao_dryer.errors import ConfigError  # noqa: E402

BOM_CSV = ROOT / "hardware" / "bom.csv"
BOM_MD = ROOT / "hardware" / "BOM.md"
# Prices are estimates of retail prices in Peru (not quotes), December 2026; soles at this rate.
PRICES_AS_OF = "December 2026"
PEN_PER_USD = 3.75
ROLES = ("node", "gateway", "both")
FIXED_COLUMNS = ("role", "item", "spec")
TAIL_COLUMNS = ("qty_gateway", "unit_usd", "unit_pen", "where_to_buy", "notes")


@dataclass(frozen=True)
class Item:
    role: str
    item: str
    spec: str
    quantities: dict[str, float]     # setup name or "gateway" → quantity
    unit_usd: float
    unit_pen: float
    where_to_buy: str
    notes: str

    @property
    def counted(self) -> bool:
        return any(self.quantities.values())


@dataclass(frozen=True)
class Bom:
    setups: tuple[str, ...]
    items: tuple[Item, ...]

    def total(self, column: str) -> tuple[float, float]:
        """(USD, PEN) for one dryer of setup ``column``, or one gateway (``"gateway"``)."""
        usd = sum(item.quantities[column] * item.unit_usd for item in self.items)
        pen = sum(item.quantities[column] * item.unit_pen for item in self.items)
        return usd, pen


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not value >= 0:
        raise ConfigError(f"{where}: {text} must be 0 or more")
    return value


def parse_bom(text: str, source: str = "bom.csv") -> Bom:
    """The checked BOM, or ConfigError '<source> line N, <column>: <what is wrong>'."""
    reader = csv.DictReader(text.splitlines())
    columns = tuple(reader.fieldnames or ())
    setups = tuple(c.removeprefix("qty_") for c in columns
                   if c.startswith("qty_") and c != "qty_gateway")
    expected = (*FIXED_COLUMNS, *(f"qty_{s}" for s in setups), *TAIL_COLUMNS)
    if columns != expected or not setups:
        raise ConfigError(f"{source}: columns must be {', '.join(expected)} "
                          "(with one qty_<setup> column per setup)")
    items: list[Item] = []
    names: set[str] = set()
    for line, row in enumerate(reader, start=2):
        def where(column: str, line: int = line) -> str:
            return f"{source} line {line}, {column}"
        if None in row or any(value is None for value in row.values()):
            raise ConfigError(f"{source} line {line}: wrong number of fields")
        if row["role"] not in ROLES:
            raise ConfigError(f"{where('role')}: {row['role']!r} is not one of {', '.join(ROLES)}")
        if not row["item"].strip() or row["item"] in names:
            raise ConfigError(f"{where('item')}: {row['item']!r} is empty or listed twice")
        names.add(row["item"])
        quantities = {s: _number(row[f"qty_{s}"], where(f"qty_{s}")) for s in setups}
        quantities["gateway"] = _number(row["qty_gateway"], where("qty_gateway"))
        if row["role"] == "node" and quantities["gateway"]:
            raise ConfigError(f"{where('qty_gateway')}: a node item has no gateway quantity")
        if row["role"] == "gateway" and any(quantities[s] for s in setups):
            raise ConfigError(f"{where('role')}: a gateway item has no dryer quantities")
        usd = _number(row["unit_usd"], where("unit_usd"))
        pen = _number(row["unit_pen"], where("unit_pen"))
        if usd <= 0 or abs(pen - usd * PEN_PER_USD) > max(1.0, 0.02 * pen):
            raise ConfigError(f"{where('unit_pen')}: {pen:g} PEN does not match {usd:g} USD "
                              f"at {PEN_PER_USD} PEN/USD")
        if not row["where_to_buy"].strip():
            raise ConfigError(f"{where('where_to_buy')}: say where to buy it")
        items.append(Item(row["role"], row["item"], row["spec"], quantities, usd, pen,
                          row["where_to_buy"], row["notes"]))
    if not items:
        raise ConfigError(f"{source}: no items")
    return Bom(setups, tuple(items))


def load_bom(path: Path = BOM_CSV) -> Bom:
    return parse_bom(path.read_text(encoding="utf-8"), str(path.name))


def _qty(value: float) -> str:
    return f"{value:g}" if value else "–"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_bom_md(bom: Bom) -> str:
    setups = bom.setups
    lines = [
        "# Bill of materials / Lista de materiales",
        "",
        "<!-- Generated from bom.csv by `python hardware/make_bom.py`: edit the CSV, not this "
        "file. -->",
        "",
        f"Approximate retail prices in Peru, **estimates as of {PRICES_AS_OF}** (not quotes: "
        f"check before buying), soles at {PEN_PER_USD} PEN per USD. Quantities are per dryer "
        "for each hardware setup (the wiring of each is in [`wiring/`](wiring/), its node "
        "config in [`../firmware/examples/`](../firmware/examples/)) and per gateway (one per "
        "collection centre). Items with no quantity are alternatives or options: listed, not "
        "counted. Precios aproximados en Perú (estimaciones, no cotizaciones); cantidades por "
        "secador según el montaje y por gateway.",
        "",
        "Setups / montajes: " + ", ".join(
            f"`{s}` ([wiring](wiring/{s}.svg))" for s in setups) + ".",
        "",
        "## Totals / totales",
        "",
        "| per | USD | PEN |",
        "| --- | ---: | ---: |",
    ]
    for column in (*setups, "gateway"):
        usd, pen = bom.total(column)
        label = f"one dryer `{column}`" if column != "gateway" else "one gateway"
        lines.append(f"| {label} | {usd:,.2f} | {pen:,.2f} |")
    for role, heading in (("node", "Dryer node / nodo del secador"),
                          ("both", "Node and gateway / nodo y gateway"),
                          ("gateway", "Gateway (collection centre / centro de acopio)")):
        rows = [item for item in bom.items if item.role == role]
        if not rows:
            continue
        qty_columns = ("gateway",) if role == "gateway" else \
            (*setups, "gateway") if role == "both" else setups
        lines += ["", f"## {heading}", "",
                  "| item | spec | " + " | ".join(f"qty `{c}`" for c in qty_columns)
                  + " | unit USD | unit PEN | where to buy | notes |",
                  "| --- | --- | " + " | ".join("---:" for _ in qty_columns)
                  + " | ---: | ---: | --- | --- |"]
        for item in rows:
            name = item.item if item.counted else f"*{item.item}* (alternative)"
            lines.append(
                f"| {_cell(name)} | {_cell(item.spec)} | "
                + " | ".join(_qty(item.quantities[c]) for c in qty_columns)
                + f" | {item.unit_usd:g} | {item.unit_pen:g} | {_cell(item.where_to_buy)} | "
                f"{_cell(item.notes)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if BOM.md is out of date")
    args = parser.parse_args(argv)
    try:
        text = render_bom_md(load_bom())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    current = BOM_MD.read_text(encoding="utf-8") if BOM_MD.exists() else None
    if args.check:
        if current != text:
            print("out of date: BOM.md (run python hardware/make_bom.py)")
            return 1
        print("BOM.md is up to date")
    elif current != text:
        BOM_MD.write_text(text, encoding="utf-8")
        print(f"written {BOM_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
