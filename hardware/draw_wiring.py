"""Draw the wiring diagrams hardware/wiring/<setup>.svg from the pin map hardware/pinmap.toml.

    python hardware/draw_wiring.py            # (re)write every diagram
    python hardware/draw_wiring.py --check    # exit 1 if a committed diagram is out of date

Each diagram: the 40-pin header seen from above (pin 1 square) with the used pins highlighted,
every wire in its suggested colour from its pin to the part's terminal, the parts with their
other connections and notes, the power rails (which part hangs on 3V3, 5V, GND), a wire list and
a legend, in English and Spanish. Plain SVG: generic font family, no external file or URL.
Deterministic output, so tests/test_pinmap.py can check the committed files are up to date.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from cacao_dryer.pinmap import HEADER, PinMap, Setup, Wire, load_pinmap  # noqa: E402

PINMAP = ROOT / "hardware" / "pinmap.toml"
WIRING = ROOT / "hardware" / "wiring"

COLOURS = {  # suggested wire colour → (stroke, Spanish name)
    "red": ("#d62728", "rojo"), "orange": ("#ff8c00", "naranja"), "black": ("#222222", "negro"),
    "yellow": ("#f2c200", "amarillo"), "green": ("#2ca02c", "verde"),
    "blue": ("#1f77b4", "azul"), "white": ("#fafafa", "blanco"),
    "purple": ("#8e44ad", "morado"), "brown": ("#8c564b", "marrón"), "grey": ("#8a8a8a", "gris"),
}
PIN_FILL = {"3V3": "#ff8c00", "5V": "#d62728", "GND": "#222222", "ID_SD": "#dddddd",
            "ID_SC": "#dddddd"}
USED_GPIO_FILL, FREE_GPIO_FILL = "#2ca02c", "#ffffff"

MARGIN = 30
PITCH = 40             # header pin pitch in the drawing
ROW_GAP = 30           # even row (outer edge) above the odd row
TRACK = 10             # spacing of the horizontal wire tracks
TERMINAL_PITCH = 36
PART_GAP = 16
FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"


def colour_of(name: str) -> str:
    return COLOURS[name][0] if name in COLOURS else "#8a8a8a"


def colour_label(name: str) -> str:
    return f"{name} / {COLOURS[name][1]}" if name in COLOURS else name


def text_width(text: str, size: float) -> float:
    return len(text) * size * 0.58


def wrap(text: str, width: float, size: float) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and text_width(candidate, size) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


class Svg:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, item: str) -> None:
        self.items.append(item)

    def text(self, x: float, y: float, text: str, size: float = 10, *, anchor: str = "start",
             weight: str = "normal", style: str = "normal", fill: str = "#222222",
             rotate: bool = False) -> None:
        extra = f' transform="rotate(-90 {x:g} {y:g})"' if rotate else ""
        self.add(f'<text x="{x:g}" y="{y:g}" font-size="{size:g}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" font-style="{style}" fill="{fill}"{extra}>'
                 f"{escape(text)}</text>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str, stroke: str = "#444444",
             rx: float = 4) -> None:
        self.add(f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="{rx:g}" '
                 f'fill="{fill}" stroke="{stroke}" stroke-width="1"/>')

    def wire(self, points: list[tuple[float, float]], colour: str) -> None:
        path = " ".join(f"{x:g},{y:g}" for x, y in points)
        self.add(f'<polyline points="{path}" fill="none" stroke="#333333" stroke-width="4.5" '
                 'stroke-linejoin="round"/>')
        self.add(f'<polyline points="{path}" fill="none" stroke="{colour_of(colour)}" '
                 'stroke-width="2.5" stroke-linejoin="round"/>')

    def render(self, width: float, height: float, title: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}" '
                f'viewBox="0 0 {width:g} {height:g}" font-family="{FONT}">\n'
                f"<title>{escape(title)}</title>\n"
                f'<rect x="0" y="0" width="{width:g}" height="{height:g}" fill="#ffffff"/>\n')
        return head + "\n".join(self.items) + "\n</svg>\n"


@dataclass
class Box:
    part_index: int
    x: float
    y: float
    width: float
    height: float
    lines: list[tuple[str, float, str, str]]   # text, size, weight, style
    terminals: dict[str, float]                # terminal → x


def pin_xy(physical: int, x0: float, y_even: float) -> tuple[float, float]:
    column = (physical - 1) // 2
    x = x0 + column * PITCH
    return (x, y_even) if physical % 2 == 0 else (x, y_even + ROW_GAP)


def drop_x(physical: int, x0: float) -> float:
    """Where a wire leaves the header downwards: odd pins straight down, even pins between two
    odd pins."""
    x, _ = pin_xy(physical, x0, 0)
    return x if physical % 2 else x + PITCH / 2


def build_box(index: int, setup: Setup, wired: bool) -> Box:
    part = setup.parts[index]
    terminals = [w.terminal for w in part.wires]
    min_width = max(150.0, len(terminals) * TERMINAL_PITCH + 20)
    width = max(min_width, text_width(part.name, 11) + 20, text_width(part.name_es, 10) + 20)
    width = min(width, 240.0) if wired else max(width, 190.0)
    lines: list[tuple[str, float, str, str]] = []
    if terminals:
        lines.append(("", 12, "normal", "normal"))   # room for the terminal labels
    lines += [(line, 11, "bold", "normal") for line in wrap(part.name, width - 16, 11)]
    lines += [(line, 10, "normal", "italic") for line in wrap(part.name_es, width - 16, 10)]
    for link in part.links:
        lines += [(line, 9, "normal", "normal") for line in wrap("↔ " + link, width - 16, 9)]
    for note in part.notes:
        lines += [(line, 9, "normal", "italic") for line in wrap("• " + note, width - 16, 9)]
    height = 10 + sum(size + 4 for _, size, _, _ in lines) + 4
    return Box(index, 0, 0, width, height, lines, {})


def crossings(order: list[int], segments: list[tuple[float, float]]) -> int:
    """Crossings of orthogonal wires: wire i drops at segments[i][0] from the header to its
    track, runs along it to segments[i][1] and drops to the parts; tracks in ``order``."""
    track = {wire: rank for rank, wire in enumerate(order)}
    count = 0
    for a in order:
        lo, hi = sorted(segments[a])
        for b in order:
            if a == b:
                continue
            upper_x, lower_x = segments[b]
            if track[a] < track[b] and lo < upper_x < hi and upper_x != segments[a][0]:
                count += 1
            if track[a] > track[b] and lo < lower_x < hi:
                count += 1
    return count


def order_tracks(segments: list[tuple[float, float]]) -> list[int]:
    """A track order with few crossings: start by terminal position, improve by swaps."""
    order = sorted(range(len(segments)), key=lambda i: (segments[i][1] - segments[i][0],
                                                        segments[i][1]))
    best = crossings(order, segments)
    improved = True
    while improved and best:
        improved = False
        for i in range(len(order)):
            for j in range(i + 1, len(order)):
                trial = order.copy()
                trial[i], trial[j] = trial[j], trial[i]
                score = crossings(trial, segments)
                if score < best:
                    order, best, improved = trial, score, True
    return order


def render_setup(name: str, setup: Setup) -> str:
    svg = Svg()
    x0 = MARGIN + 50
    header_width = 19 * PITCH
    # Parts wired to the header, ordered by where their wires leave the header.
    wired = [i for i, part in enumerate(setup.parts) if part.wires]
    unwired = [i for i, part in enumerate(setup.parts) if not part.wires]
    wired.sort(key=lambda i: sum(drop_x(w.pin, x0) for w in setup.parts[i].wires)
               / len(setup.parts[i].wires))
    boxes = {i: build_box(i, setup, True) for i in wired}
    boxes |= {i: build_box(i, setup, False) for i in unwired}
    row_width = sum(boxes[i].width for i in wired) + PART_GAP * (len(wired) - 1)
    width = max(header_width + 2 * MARGIN + 100, row_width + 2 * MARGIN, 900)

    # Title.
    svg.text(MARGIN, 30, f"{setup.title} — {name}", 16, weight="bold")
    svg.text(MARGIN, 50, setup.title_es, 13, style="italic")
    svg.text(MARGIN, 68, f"Node config / configuración del nodo: {setup.config}", 10)

    # Header: even pins (outer row) above, odd pins below; labels outside the rows.
    y_even = 160
    y_odd = y_even + ROW_GAP
    used = {wire.pin for _, wire in setup.wires()}
    svg.rect(x0 - 22, y_even - 16, header_width + 44, ROW_GAP + 32, "#1b5e20", "#0d3311", 6)
    for physical, pin in HEADER.items():
        x, y = pin_xy(physical, x0, y_even)
        fill = PIN_FILL.get(pin.kind, USED_GPIO_FILL if physical in used else FREE_GPIO_FILL)
        ring = "#ffeb3b" if physical in used else "#0d3311"
        ring_width = 3 if physical in used else 1
        if physical == 1:
            svg.add(f'<rect x="{x - 8:g}" y="{y - 8:g}" width="16" height="16" fill="{fill}" '
                    f'stroke="{ring}" stroke-width="{ring_width}"/>')
        else:
            svg.add(f'<circle cx="{x:g}" cy="{y:g}" r="8" fill="{fill}" stroke="{ring}" '
                    f'stroke-width="{ring_width}"/>')
        number_fill = "#ffffff" if fill in ("#222222", "#d62728", "#2ca02c") else "#222222"
        svg.text(x, y + 3, str(physical), 8, anchor="middle", fill=number_fill)
        label = pin.label + (f" {pin.special}" if pin.special else "")
        weight = "bold" if physical in used else "normal"
        if physical % 2 == 0:
            svg.text(x + 3.5, y - 20, label, 9, weight=weight, rotate=True)
        else:
            svg.text(x + PITCH / 4 + 3.5, y + 20, label, 9, anchor="end", weight=weight,
                     rotate=True)

    # Wires: from the pin down to its own horizontal track, along it, down to the terminal.
    wires = [(box_index, wire) for box_index in wired for wire in setup.parts[box_index].wires]
    channel_top = y_odd + 90
    parts_y = channel_top + len(wires) * TRACK + 24
    x = (width - row_width) / 2
    for i in wired:
        box = boxes[i]
        box.x, box.y = x, parts_y
        count = len(setup.parts[i].wires)
        start = box.x + (box.width - (count - 1) * TERMINAL_PITCH) / 2
        drops = {drop_x(w.pin, x0) for _, w in wires}
        for n, wire in enumerate(setup.parts[i].wires):
            tx = start + n * TERMINAL_PITCH
            while any(abs(tx - d) < 3 for d in drops):
                tx += 4
            box.terminals[wire.terminal] = tx
        x += box.width + PART_GAP
    segments = [(drop_x(w.pin, x0), boxes[i].terminals[w.terminal]) for i, w in wires]
    order = order_tracks(segments)
    for rank, index in enumerate(order):
        _, wire = wires[index]
        px, py = pin_xy(wire.pin, x0, y_even)
        dx, tx = segments[index]
        ty = channel_top + rank * TRACK
        points = [(px, py)]
        if wire.pin % 2 == 0:
            points += [(px, py + ROW_GAP / 2), (dx, py + ROW_GAP / 2)]
        points += [(dx, ty), (tx, ty), (tx, parts_y)]
        svg.wire(points, wire.colour)

    # Parts.
    def draw_box(box: Box) -> None:
        part = setup.parts[box.part_index]
        svg.rect(box.x, box.y, box.width, box.height, "#f7f7f2")
        for wire in part.wires:
            tx = box.terminals[wire.terminal]
            svg.add(f'<rect x="{tx - 4:g}" y="{box.y - 4:g}" width="8" height="8" '
                    f'fill="{colour_of(wire.colour)}" stroke="#333333"/>')
            svg.text(tx, box.y + 16, wire.terminal, 8.5, anchor="middle", weight="bold")
        y = box.y + 10
        for line, size, weight, style in box.lines:
            y += size + 4
            if line:
                svg.text(box.x + 8, y - 2, line, size, weight=weight, style=style)

    for i in wired:
        draw_box(boxes[i])
    y = parts_y + max((boxes[i].height for i in wired), default=0) + 30
    if unwired:
        svg.text(MARGIN, y, "Not wired to the Pi's header / sin cable al conector de la Pi", 11,
                 weight="bold")
        y += 12
        x = MARGIN
        row_height = 0.0
        for i in unwired:
            box = boxes[i]
            if x + box.width > width - MARGIN:
                x, y = MARGIN, y + row_height + PART_GAP
                row_height = 0
            box.x, box.y = x, y
            draw_box(box)
            x += box.width + PART_GAP
            row_height = max(row_height, box.height)
        y += row_height + 30

    # Power rails: which part hangs on which supply pin.
    svg.text(MARGIN, y, "Power rails / rieles de alimentación", 12, weight="bold")
    y += 8
    for kind in ("3V3", "5V", "GND"):
        members = [(part.name, wire) for part, wire in setup.wires() if wire.power == kind]
        if not members:
            continue
        pins = sorted({wire.pin for _, wire in members})
        text = f"{kind} (pins / pines {', '.join(map(str, pins))}): " + \
            ", ".join(f"{name} {wire.terminal} [{wire.pin}]" for name, wire in members)
        lines = wrap(text, width - 2 * MARGIN - 30, 9.5)
        svg.rect(MARGIN, y + 2, 20, 12 * len(lines) + 4, PIN_FILL[kind], "#333333", 2)
        for line in lines:
            y += 12
            svg.text(MARGIN + 28, y + 1, line, 9.5)
        y += 8

    # Wire list.
    y += 18
    svg.text(MARGIN, y, "Wires / cables", 12, weight="bold")
    columns = [MARGIN, MARGIN + 60, MARGIN + 150, MARGIN + 470, MARGIN + 700]
    y += 16
    for column, title in zip(columns, ("pin", "GPIO", "part · terminal / pieza · borne",
                                       "setting / parámetro", "colour / color"), strict=True):
        svg.text(column, y, title, 9.5, weight="bold")
    rows: list[tuple[int, str, Wire]] = [(w.pin, p.name, w) for p, w in setup.wires()]
    for pin, part_name, wire in sorted(rows, key=lambda row: (row[0], row[1])):
        y += 13
        what = f"GPIO{wire.gpio} ({wire.use})" if wire.gpio is not None else str(wire.power)
        cells = (str(pin), what, f"{part_name} · {wire.terminal}", wire.config or "",
                 colour_label(wire.colour))
        for column, cell in zip(columns, cells, strict=True):
            svg.text(column, y, cell, 9.5)

    # Legend.
    y += 30
    svg.text(MARGIN, y, "Legend / leyenda", 12, weight="bold")
    entries = [(USED_GPIO_FILL, "GPIO in use / GPIO usado"), (FREE_GPIO_FILL, "free / libre"),
               (PIN_FILL["3V3"], "3.3 V"), (PIN_FILL["5V"], "5 V"), (PIN_FILL["GND"], "GND"),
               (PIN_FILL["ID_SD"], "ID_SD/ID_SC: keep free / no usar")]
    x = MARGIN
    y += 18
    for fill, label in entries:
        svg.add(f'<circle cx="{x + 8:g}" cy="{y - 4:g}" r="7" fill="{fill}" stroke="#333333"/>')
        svg.text(x + 20, y, label, 9.5)
        x += 40 + text_width(label, 9.5)
    y += 18
    for line in (
        "The 40-pin header seen from above; numbers in the pins are physical pins 1–40 (pin 1 = "
        "square pad); GPIO numbers are BCM. Conector de 40 pines visto desde arriba; los números "
        "son pines físicos 1–40 (pin 1 = cuadrado); GPIO = numeración BCM.",
        "Wire colours are suggestions; red/orange = supply, black = GND. Colores de cable "
        "sugeridos; rojo/naranja = alimentación, negro = tierra (GND).",
        "Sensors on 3.3 V only: the Pi's GPIOs are not 5 V tolerant. Sensores solo a 3,3 V: los "
        "GPIO de la Pi no toleran 5 V.",
        "Generated from hardware/pinmap.toml by hardware/draw_wiring.py — do not edit by hand. "
        "Generado desde hardware/pinmap.toml; no editar a mano.",
    ):
        for part_line in wrap(line, width - 2 * MARGIN, 9.5):
            svg.text(MARGIN, y, part_line, 9.5)
            y += 13
    return svg.render(width, y + MARGIN - 13, f"{setup.title} / {setup.title_es} ({name})")


def render_all(pinmap: PinMap) -> dict[str, str]:
    """File name → SVG text for every setup."""
    return {f"{name}.svg": render_setup(name, setup) for name, setup in pinmap.setups.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed diagram is out of date")
    args = parser.parse_args(argv)
    drawings = render_all(load_pinmap(PINMAP))
    stale = []
    for file_name, text in drawings.items():
        path = WIRING / file_name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(file_name)
        if not args.check:
            WIRING.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python hardware/draw_wiring.py)")
        return 1
    print(f"{len(drawings)} diagrams {'checked' if args.check else 'written'} in {WIRING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
