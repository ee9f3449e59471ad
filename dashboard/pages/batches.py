"""The batch pages: the list managers review (filters, paging, CSV), one batch (record,
progress, metrics and flags, curves, spot checks, events), batches side by side, and a
printable report for certification and traceability files.

The list, detail and comparison pages are thin: the server renders the frame, the texts and
the filters, the page scripts fill them from ``/api/batches...``. The report is rendered on
the server completely (tables and SVG charts), so it prints the same in any browser and needs
no script to be right on paper.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape
from sqlalchemy import select

from cacao_dryer.errors import NotFoundError
from dashboard.i18n import LocaleFormat, catalog, format_datetime, format_number, translate, unit
from dashboard.web import Frame, NavItem, allowed, frame
from gateway import batches as service
from gateway.api.deps import Actor, ContextDep, OperatorDep, Role, SessionDep
from gateway.batch_metrics import AS_SET, REASONS, SOURCE, TIME, ParamFormat, QualityFlag
from gateway.metadata.models import Batch, Node, Site

router = APIRouter(include_in_schema=False)
NAV: tuple[NavItem, ...] = (NavItem("/batches", "nav.batches", Role.OPERATOR, order=30),)

PAGE_SIZE = 20
MAX_COMPARE = 4
REPORT_POINTS = 400   # per chart line on paper: a point every ~25 min for a 7-day batch

# Texts for codes the API answers with (written out, so the catalog tests see them used).
FLAG_KEYS = {
    "dried_too_fast": "batches.flag_dried_too_fast",
    "overheated": "batches.flag_overheated",
    "rewetted": "batches.flag_rewetted",
    "too_long": "batches.flag_too_long",
    "not_dry": "batches.flag_not_dry",
    "over_dried": "batches.flag_over_dried",
}
SOURCE_KEYS = {
    "final": "batches.source_final",
    "final_mass": "batches.source_final_mass",
    "spot_check": "batches.source_spot_check",
    "reading": "batches.source_reading",
    "readings": "batches.source_reading",
    "spot_checks": "batches.source_spot_check",
}
METHOD_KEYS = {
    "hand_meter": "batches.method_hand_meter",
    "oven": "batches.method_oven",
    "halogen": "batches.method_halogen",
}
CROP_KEYS = {"cacao": "batches.crop_cacao", "coffee": "batches.crop_coffee"}
STATES = {"running": True, "ended": False}
# The text of each flag reason (gateway.batch_metrics.REASONS); its {parameters} are the
# reason's ``reason_params``.
REASON_KEYS = {
    "dried_too_fast.rate": "batches.reason_dried_too_fast_rate",
    "dried_too_fast.too_soon": "batches.reason_dried_too_fast_too_soon",
    "overheated.above_limit": "batches.reason_overheated_above_limit",
    "overheated.early_phase": "batches.reason_overheated_early_phase",
    "rewetted.rise": "batches.reason_rewetted_rise",
    "too_long.still_wet": "batches.reason_too_long_still_wet",
    "not_dry.above_ready": "batches.reason_not_dry_above_ready",
    "over_dried.below_limit": "batches.reason_over_dried_below_limit",
}
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")   # as dashboard.i18n.translate fills them


def flag_reason(flag: QualityFlag, language: str, zone: tzinfo) -> str:
    """Why ``flag`` was raised, in ``language``: its reason's text with the numbers written the
    language's way and times in the site's zone ``zone``; the English ``flag.reason`` when the
    reason has no text in the catalog or the flag lacks a number the text names. batch.js
    does the same in the browser (``reasonText``).

    >>> from datetime import UTC
    >>> hot = QualityFlag("overheated", "air at or above 65 °C for 1.5 h (max 68.0 °C)",
    ...                   "overheated.above_limit",
    ...                   {"limit_c": 65.0, "duration_h": 1.5, "max_c": 68.0})
    >>> flag_reason(hot, "en", UTC)
    'air at or above 65 °C for 1.5 h (max 68.0 °C)'
    >>> flag_reason(QualityFlag("overheated", "air too hot"), "es", UTC)
    'air too hot'
    """
    key = REASON_KEYS.get(flag.reason_key)
    formats = REASONS.get(flag.reason_key)
    text = catalog(language).get(key or "")
    if key is None or formats is None or text is None:
        return flag.reason
    params: dict[str, str] = {}
    for name in PLACEHOLDER.findall(text):
        value, fmt = flag.reason_params.get(name), formats.get(name)
        if value is None or fmt is None:
            return flag.reason
        params[name] = reason_param(value, fmt, language, zone)
    return translate(language, key, **params)


def reason_param(value: float | str, fmt: ParamFormat, language: str, zone: tzinfo) -> str:
    """One of a reason's numbers, times or moisture sources, as ``language`` writes it."""
    if fmt == TIME:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return format_datetime(moment, language, zone)
    if fmt == SOURCE:
        return translate(language, SOURCE_KEYS[str(value)]) if value in SOURCE_KEYS \
            else str(value)
    if isinstance(value, str):
        return value
    digits = as_set_digits(value) if fmt == AS_SET else int(fmt)
    return format_number(value, language, digits)


def as_set_digits(value: float) -> int:
    """The decimals a threshold needs as it was set, at most 3 (65 → 0, 2.5 → 1, 7.25 → 2).

    >>> as_set_digits(65.0), as_set_digits(2.5), as_set_digits(7.25)
    (0, 1, 2)
    """
    for digits in range(3):
        if abs(round(value, digits) - value) < 1e-9:
            return digits
    return 3


# The texts the batch pages' scripts translate (batches.js, batch.js, compare.js).
SCRIPT_TEXTS = ("batches.",)


def _page(frame: Frame, template: str, page: str, title_key: str, *, status_code: int = 200,
          extra: dict[str, Any] | None = None,
          view: dict[str, Any] | None = None) -> HTMLResponse:
    return frame.page(template, page, title_key, status_code=status_code, texts=SCRIPT_TEXTS,
                      extra=extra, view=view)


def _not_found(frame: Frame, batch_id: str) -> HTMLResponse:
    return frame.not_found("batches.not_found", batch_id, back="/batches",
                           back_key="nav.batches")


def can_export(actor: Actor) -> bool:
    """CSV exports, comparisons and reports are the managers' (the API's export rule)."""
    return allowed(actor, Role.MANAGER)


# --- the list ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListFilters:
    """The list's filters as typed in the form (kept in the page's address)."""

    dryer: str = ""       # "site/node"
    start: str = ""       # from date, YYYY-MM-DD, the site's calendar
    end: str = ""         # to date (included)
    producer: str = ""
    lot: str = ""
    flag: str = ""
    state: str = ""       # running / ended / "" (both)
    page: int = 1

    def api_params(self, zone: tzinfo) -> dict[str, str]:
        """The same filters as ``/api/batches`` parameters; ValueError (one line, for the
        page) on a bad value."""
        params: dict[str, str] = {}
        if self.dryer:
            site, _, node = self.dryer.partition("/")
            if not site or not node:
                raise ValueError("dryer")
            params |= {"site_id": site, "node_id": node}
        since = _day(self.start, "from", zone)
        until = _day(self.end, "to", zone)
        if since is not None:
            params["since"] = service.iso(since)
        if until is not None:
            until += timedelta(days=1)   # the "to" day is included
            params["until"] = service.iso(until)
        if since is not None and until is not None and since >= until:
            raise ValueError("dates")
        if self.producer:
            params["producer"] = self.producer
        if self.lot:
            params["lot_code"] = self.lot
        if self.flag:
            if self.flag not in FLAG_KEYS:
                raise ValueError("flag")
            params["flag"] = self.flag
        if self.state:
            if self.state not in STATES:
                raise ValueError("state")
            params["running"] = "true" if STATES[self.state] else "false"
        return params


def _day(text: str, name: str, zone: tzinfo) -> datetime | None:
    """Local midnight of a YYYY-MM-DD day in the site's zone, in UTC."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(name) from None
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


FILTER_ERRORS = {
    "dryer": "batches.error_dryer",
    "from": "batches.error_date",
    "to": "batches.error_date",
    "dates": "batches.error_dates",
    "flag": "batches.error_flag",
    "state": "batches.error_state",
}


def _text(value: str | None, limit: int) -> str:
    return (value or "").strip()[:limit]


@router.get("/batches", response_class=HTMLResponse)
def batch_list(request: Request, context: ContextDep, session: SessionDep,
               actor: OperatorDep, dryer: str | None = None, start: str | None = None,
               end: str | None = None, producer: str | None = None, lot: str | None = None,
               flag: str | None = None, state: str | None = None,
               page: str | None = None) -> HTMLResponse:
    here = frame(request, context, session, actor)
    number = int(page) if page and page.isdigit() and 0 < int(page) < 100_000 else 1
    filters = ListFilters(dryer=_text(dryer, 90), start=_text(start, 10), end=_text(end, 10),
                          producer=_text(producer, 200), lot=_text(lot, 64),
                          flag=_text(flag, 40), state=_text(state, 10), page=number)
    error_key: str | None = None
    params: dict[str, str] = {}
    try:
        params = filters.api_params(context.zone)
    except ValueError as problem:
        error_key = FILTER_ERRORS[str(problem)]
    dryers = [(f"{n.site_id}/{n.node_id}", n.name or n.node_id) for n in session.scalars(
        select(Node).order_by(Node.site_id, Node.node_id))]
    return _page(
        here, "batches/list.html", "batches", "batches.title",
        status_code=422 if error_key else 200,
        extra={"api_query": urlencode(params), "page_size": PAGE_SIZE,
               "page_number": filters.page, "can_export": can_export(actor),
               "filter_error": error_key is not None,
               "dryer_names": dict(dryers)},
        view={"filters": filters, "dryers": dryers, "flags": here.texts(FLAG_KEYS),
              "error_key": error_key})


# --- one batch --------------------------------------------------------------------------------

@router.get("/batches/compare", response_class=HTMLResponse)
def compare_page(request: Request, context: ContextDep, session: SessionDep,
                 actor: OperatorDep) -> HTMLResponse:
    """2-4 batches side by side (managers). ``ids=a,b`` or ``ids=a&ids=b`` (the list's
    check boxes)."""
    here = frame(request, context, session, actor)
    if not can_export(actor):
        return here.forbidden("batches.forbidden")
    ids = [part.strip() for value in request.query_params.getlist("ids")
           for part in value.split(",") if part.strip()]
    ids = list(dict.fromkeys(ids))
    error_key = None if 2 <= len(ids) <= MAX_COMPARE else "batches.compare_pick"
    return _page(here, "batches/compare.html", "batches-compare", "batches.compare_title",
                 status_code=422 if error_key else 200,
                 extra={"ids": ids, "compare_error": error_key is not None,
                        "flag_labels": here.texts(FLAG_KEYS),
                        "source_labels": here.texts(SOURCE_KEYS)},
                 view={"error_key": error_key})


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(batch_id: str, request: Request, context: ContextDep, session: SessionDep,
               actor: OperatorDep) -> HTMLResponse:
    here = frame(request, context, session, actor)
    batch = session.get(Batch, batch_id)
    if batch is None:
        return _not_found(here, batch_id)
    node = session.get(Node, (batch.site_id, batch.node_id))
    return _page(
        here, "batches/detail.html", "batch", "batches.detail_title",
        extra={"batch_id": batch_id, "can_export": can_export(actor),
               "flag_labels": here.texts(FLAG_KEYS),
               "reason_keys": REASON_KEYS, "reason_formats": dict(REASONS),
               "source_labels": here.texts(SOURCE_KEYS),
               "method_labels": here.texts(METHOD_KEYS),
               "crop_labels": here.texts(CROP_KEYS)},
        view={"lot_code": batch.lot_code,
              "dryer_name": (node.name if node is not None else None) or batch.node_id,
              "dryer_path": f"/nodes/{batch.site_id}/{batch.node_id}"})


# --- the printable report ---------------------------------------------------------------------

@router.get("/batches/{batch_id}/report", response_class=HTMLResponse)
def report_page(batch_id: str, request: Request, context: ContextDep, session: SessionDep,
                actor: OperatorDep) -> HTMLResponse:
    """Everything on paper for a certification or traceability file, rendered here."""
    here = frame(request, context, session, actor)
    if not can_export(actor):
        return here.forbidden("batches.forbidden")
    try:
        batch = service.get_batch(session, batch_id)
    except NotFoundError:
        return _not_found(here, batch_id)
    now = context.clock.now()
    language = here.language
    zone = service.site_zone(session, batch.site_id, context.settings.timezone)
    checks = service.spot_checks(session, batch_id)
    found = service.batch_metrics(session, context.store, batch, now)
    limits = service.thresholds_for(session, batch.site_id, batch.node_id)
    start, end = service.batch_span(batch, now)
    every_s = _report_bucket(start, end)
    points = service.batch_series(context.store, batch,
                                  [service.MOISTURE, "air_temp_c", "air_rh_pct"], every_s, now)
    node = session.get(Node, (batch.site_id, batch.node_id))
    site = session.get(Site, batch.site_id)
    chart_end = min(end, now) if batch.ended_at is None else end
    moisture_unit = unit(language, "% w.b.")
    axis = ChartAxis(start, max(chart_end, start + timedelta(hours=1)), zone, language)
    moisture_chart = svg_chart(
        axis, [(p.at, p.values.get(service.MOISTURE)) for p in points],
        title=f"{translate(language, 'measure.bean_moisture')} ({moisture_unit})",
        colour="#7d5a3c",
        references=[(limits.target_moisture_pct_wb,
                     translate(language, "batches.report_target_line"))],
        marks=[(c.measured_at, c.moisture_pct_wb) for c in checks],
        marks_label=translate(language, "batches.report_spot_check_mark"))
    air_chart = svg_chart(
        axis, [(p.at, p.values.get("air_temp_c")) for p in points],
        title=f"{translate(language, 'measure.air_temperature')} (°C)", colour="#c0392b",
        references=[(limits.air_temp_limit_c,
                     translate(language, "batches.report_limit_line"))])
    metrics = found.metrics
    return here.page(  # printed as rendered: no script texts
        "batches/report.html", "batch-report", "batches.report_title",
        view={"batch": batch, "checks": checks, "metrics": metrics, "limits": limits,
              "site_label": (site.name if site and site.name else batch.site_id),
              "dryer_name": (node.name if node is not None else None) or batch.node_id,
              "flags": [(translate(language, FLAG_KEYS.get(f.code, "batches.flag_other")),
                         flag_reason(f, language, zone)) for f in metrics.flags],
              "methods": here.texts(METHOD_KEYS), "crops": here.texts(CROP_KEYS),
              "sources": here.texts(SOURCE_KEYS),
              "duration_h": service.duration_h(batch, now),
              "moisture_chart": moisture_chart, "air_chart": air_chart,
              "every_min": every_s / 60, "readings": len(points),
              "generated_at": now, "generated_by": actor.username,
              "moisture_unit": moisture_unit,
              "local": lambda moment: format_datetime(moment, language, zone)})


def _report_bucket(start: datetime, end: datetime) -> int:
    """Minutes that keep a line on paper under REPORT_POINTS points (at least 5 min)."""
    span_s = max((end - start).total_seconds(), 1.0)
    for minutes in (5, 10, 15, 30, 60, 120, 180, 360):
        if span_s / (minutes * 60) <= REPORT_POINTS:
            return minutes * 60
    return math.ceil(span_s / REPORT_POINTS)


# --- SVG charts for paper ---------------------------------------------------------------------

@dataclass(frozen=True)
class ChartAxis:
    start: datetime
    end: datetime
    zone: tzinfo
    language: str


SVG_W, SVG_H = 680, 220
PAD_L, PAD_R, PAD_T, PAD_B = 46, 12, 26, 34


def svg_chart(axis: ChartAxis, values: list[tuple[datetime, float | None]], *, title: str,
              colour: str, references: list[tuple[float, str]] | None = None,
              marks: list[tuple[datetime, float]] | None = None,
              marks_label: str = "") -> Markup:
    """A line chart as inline SVG (no script, no style attribute: prints anywhere and passes
    the pages' CSP). Days on the x axis in the site's zone; gaps over an hour break the
    line; ``references`` are dashed horizontal lines, ``marks`` drawn as circles."""
    references = references or []
    marks = marks or []
    ys = [v for _, v in values if v is not None and math.isfinite(v)]
    ys += [v for v, _ in references] + [v for _, v in marks]
    low, high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    step = _nice_step((high - low) / 4 if high > low else 1.0)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high <= low:
        high = low + step
    span_s = max((axis.end - axis.start).total_seconds(), 1.0)
    inner_w, inner_h = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B

    def x(moment: datetime) -> float:
        return PAD_L + inner_w * min(max((moment - axis.start).total_seconds() / span_s, 0), 1)

    def y(value: float) -> float:
        return PAD_T + inner_h * (1 - (value - low) / (high - low))

    parts = [f'<svg class="report-chart" viewBox="0 0 {SVG_W} {SVG_H}" role="img" '
             f'aria-label="{escape(title)}">',
             f'<text x="{PAD_L}" y="16" class="chart-title">{escape(title)}</text>']
    value = low
    while value <= high + step / 2:
        parts.append(f'<line x1="{PAD_L}" x2="{SVG_W - PAD_R}" y1="{y(value):.1f}" '
                     f'y2="{y(value):.1f}" class="grid"/>'
                     f'<text x="{PAD_L - 4}" y="{y(value) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{format_number(value, axis.language, _digits(step))}'
                     '</text>')
        value += step
    # the language's day and month (its date pattern without the year)
    day_format = (LocaleFormat.of(axis.language).datetime_pattern.split(" ")[0]
                  .replace("/%Y", "").replace("%Y/", "").replace("-%Y", "").replace("%Y-", ""))
    for moment in _day_ticks(axis):
        parts.append(f'<line x1="{x(moment):.1f}" x2="{x(moment):.1f}" y1="{PAD_T}" '
                     f'y2="{SVG_H - PAD_B}" class="grid"/>'
                     f'<text x="{x(moment):.1f}" y="{SVG_H - PAD_B + 16}" class="tick" '
                     f'text-anchor="middle">{moment.astimezone(axis.zone).strftime(day_format)}'
                     '</text>')
    # the axis' own start and end under the day ticks (a short batch may cross no midnight)
    for moment, anchor, at_x in ((axis.start, "start", PAD_L), (axis.end, "end", SVG_W - PAD_R)):
        parts.append(f'<text x="{at_x}" y="{SVG_H - 3}" class="tick" text-anchor="{anchor}">'
                     f'{escape(format_datetime(moment, axis.language, axis.zone))}</text>')
    for level, label in references:
        parts.append(f'<line x1="{PAD_L}" x2="{SVG_W - PAD_R}" y1="{y(level):.1f}" '
                     f'y2="{y(level):.1f}" class="reference"/>'
                     f'<text x="{SVG_W - PAD_R - 2}" y="{y(level) - 4:.1f}" class="tick" '
                     f'text-anchor="end">{escape(label)} '
                     f'{format_number(level, axis.language)}</text>')
    for line in _segments(values):
        path = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in line)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     'stroke-width="1.6" class="line"/>')
    for at, level in marks:
        parts.append(f'<circle cx="{x(at):.1f}" cy="{y(level):.1f}" r="3.5" class="mark">'
                     f'<title>{escape(marks_label)}</title></circle>')
    if not any(v is not None for _, v in values):
        parts.append(f'<text x="{SVG_W / 2}" y="{SVG_H / 2}" class="tick" '
                     f'text-anchor="middle">'
                     f'{escape(translate(axis.language, "batches.no_readings"))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _segments(values: list[tuple[datetime, float | None]]
              ) -> list[list[tuple[datetime, float]]]:
    lines: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    for at, value in values:
        if value is None or not math.isfinite(value) or (
                current and at - current[-1][0] > timedelta(hours=1)):
            if current:
                lines.append(current)
            current = []
        if value is not None and math.isfinite(value):
            current.append((at, value))
    if current:
        lines.append(current)
    return lines


def _day_ticks(axis: ChartAxis) -> list[datetime]:
    """Local midnights within the axis (every second one beyond 10 days)."""
    first = axis.start.astimezone(axis.zone).date() + timedelta(days=1)
    days = [datetime.combine(first + timedelta(days=n), time(0), tzinfo=axis.zone)
            for n in range(0, 62)]
    inside = [d for d in days if d < axis.end]
    return inside[::2] if len(inside) > 10 else inside


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``.

    >>> _nice_step(3.2), _nice_step(0.7), _nice_step(12)
    (5.0, 1.0, 20.0)
    """
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if factor * power >= raw - 1e-12:
            return float(factor * power)
    return float(10 * power)


def _digits(step: float) -> int:
    return 0 if step >= 1 else 1
