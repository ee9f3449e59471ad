"""The batch pages and the API they stand on, over FastAPI's TestClient against a real gateway
context (SQLite stores, a private Mosquitto): the list with its filters passed through to
/api/batches, one batch, the comparison, the printable report, who may open what, unknown
batches, the batch's series/events/comparison routes, the CSV exports, and a 7-day batch of
10-second readings charted in one fast call."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from support.pages import add_dryers, page_client, page_config, page_gateway, visible_text

from cacao_dryer.contract import EventType, NodeEvent
from dashboard.i18n import catalog, format_number
from dashboard.pages.batches import NAV, _nice_step
from dashboard.web import all_nav
from gateway.api.deps import Actor, Role
from gateway.batch_metrics import REASONS
from gateway.context import GatewayContext
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NORTH, SOUTH = "demo", "secador-01", "secador-02"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)        # 07:00 in Lima
NOW = T0 + timedelta(hours=40)
ADMIN = Actor("ana", Role.ADMIN)
MANAGER = Actor("mara", Role.MANAGER)
OPERATOR = Actor("olga", Role.OPERATOR)
TECHNICIAN = Actor("tito", Role.TECHNICIAN)


def readings(node: str, start: datetime, hours: float, every_s: int, first_seq: int,
             hot: tuple[float, float] | None = None) -> list[StoredReading]:
    """A drying curve: moisture 55 % falling ~1 point an hour, air 45 °C (67 °C in the
    ``hot`` hours), humidity 50 %."""
    out = []
    for i in range(int(hours * 3600 / every_s)):
        at = start + timedelta(seconds=i * every_s)
        h = i * every_s / 3600
        air = 67.0 if hot and hot[0] <= h < hot[1] else 45.0
        out.append(StoredReading(site_id=SITE, node_id=node, seq=first_seq + i, measured_at=at,
                                 fields={"air_temp_c": air, "air_rh_pct": 50.0,
                                         "bean_moisture_pct_wb": max(7.0, 55.0 - h)}))
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two dryers and two batches: L-031 on the north dryer (28 h, ended, an hour of air
    above the 65 °C limit, a spot check) and L-032 on the south dryer (running)."""
    with page_gateway(tmp_path_factory.mktemp("batch-pages"), NOW) as context:
        add_dryers(context, [NORTH, SOUTH], names={NORTH: "Secador norte"},
                   site_name="Cooperativa Alto Mayo", first_seen=T0)
        context.store.write(readings(NORTH, T0 - timedelta(hours=1), 31, 60, 1,
                                     hot=(10, 11)))
        context.store.write(readings(SOUTH, T0 + timedelta(hours=2), 38, 60, 1))
        NodeRegistry(context.metadata, context.clock).batch_received([], [], [
            NodeEvent(site_id=SITE, node_id=NORTH, seq=1, occurred_at=T0 + timedelta(
                hours=10), type=EventType.ALARM_RAISED, message="air 67 °C",
                data={"alarm": "air_temp_limit"}),
            NodeEvent(site_id=SITE, node_id=NORTH, seq=2, occurred_at=T0 + timedelta(
                hours=30), type=EventType.BOOT, message="after the batch", data={})])
        admin = page_client(context, ADMIN)
        north = admin.post("/api/batches", json={
            "site_id": SITE, "node_id": NORTH, "lot_code": "L-031",
            "producer": "Coop Alto Mayo", "initial_mass_kg": 400,
            "initial_moisture_pct_wb": 55, "started_at": T0.isoformat(),
            "notes": "fermentado 6 días"}).json()["batch_id"]
        assert admin.post(f"/api/batches/{north}/spot-checks", json={
            "moisture_pct_wb": 48.5, "measured_at": (T0 + timedelta(hours=6)).isoformat(),
            "note": "muestra del centro"}).status_code == 201
        assert admin.post(f"/api/batches/{north}/end", json={
            "ended_at": (T0 + timedelta(hours=28)).isoformat(),
            "final_moisture_pct_wb": 7.2, "final_mass_kg": 232}).status_code == 200
        south = admin.post("/api/batches", json={
            "site_id": SITE, "node_id": SOUTH, "lot_code": "L-032",
            "producer": "Juan Pérez", "initial_moisture_pct_wb": 56,
            "started_at": (T0 + timedelta(hours=2)).isoformat()}).json()["batch_id"]
        yield {"context": context, "north": north, "south": south}  # type: ignore[dict-item]


@pytest.fixture
def context(site: dict) -> GatewayContext:
    return site["context"]


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- who may open what ------------------------------------------------------------------------

def test_the_batches_page_is_in_the_navigation_for_every_role(context: GatewayContext) -> None:
    assert NAV[0].path == "/batches" and NAV[0].order == 30 and NAV[0] in all_nav()
    html = page_client(context, OPERATOR).get("/").text
    assert f'<a href="/batches">{catalog("es")["nav.batches"]}</a>' in html


def test_pages_without_a_login_go_to_the_login_page(site: dict) -> None:
    client = page_client(site["context"], None)
    for path in ("/batches?state=running", f"/batches/{site['north']}",
                 f"/batches/compare?ids={site['north']},{site['south']}",
                 f"/batches/{site['north']}/report"):
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=%2Fbatches"), path


@pytest.mark.parametrize("actor", [OPERATOR, TECHNICIAN])
def test_comparison_and_report_are_the_managers(site: dict, actor: Actor) -> None:
    client = page_client(site["context"], actor)
    for path in (f"/batches/compare?ids={site['north']},{site['south']}",
                 f"/batches/{site['north']}/report"):
        answer = client.get(path)
        assert answer.status_code == 403, path
        assert "text/html" in answer.headers["content-type"]
        assert catalog("es")["error.forbidden_title"] in answer.text
        assert "L-031" not in answer.text  # nothing of the batch leaks
    for path in (f"/api/batches/{site['north']}/readings.csv", "/api/batches.csv"):
        assert client.get(path).status_code == 403, path


def test_operators_see_the_list_and_a_batch_but_no_exports(site: dict) -> None:
    client = page_client(site["context"], OPERATOR)
    listing = client.get("/batches")
    detail = client.get(f"/batches/{site['north']}")
    assert listing.status_code == detail.status_code == 200
    for html in (listing.text, detail.text):
        assert "/api/batches.csv" not in html and "readings.csv" not in html
        assert "/report" not in html and page_config(html)["can_export"] is False
    assert 'id="compare-button"' not in listing.text


# --- the list -----------------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["es", "en"])
def test_the_list_renders_its_filters_in_each_language(site: dict, language: str) -> None:
    client = page_client(site["context"], MANAGER, language)
    answer = client.get("/batches")
    assert answer.status_code == 200
    texts = catalog(language)
    html = answer.text
    for key in ("batches.title", "batches.filter_dryer", "batches.filter_from",
                "batches.filter_flag", "batches.flag_overheated", "batches.state_running",
                "batches.csv_summaries", "batches.compare_button"):
        assert texts[key] in html, key
    assert '<option value="demo/secador-01">Secador norte</option>' in html
    assert 'href="/api/batches.csv?" download' in html
    assert 'id="compare-form" method="get" action="/batches/compare"' in html
    config = page_config(html)
    assert (config["api_query"], config["page_number"], config["page_size"]) == ("", 1, 20)
    assert config["can_export"] is True
    assert config["dryer_names"] == {"demo/secador-01": "Secador norte",
                                     "demo/secador-02": "secador-02"}


def test_the_filters_reach_the_api_as_its_own_parameters(site: dict) -> None:
    """What the form sends becomes /api/batches parameters (days in the site's zone, the
    "to" day included); the script and the CSV links use exactly that query."""
    client = page_client(site["context"], MANAGER)
    answer = client.get("/batches", params={
        "dryer": "demo/secador-01", "start": "2026-03-01", "end": "2026-03-01",
        "producer": "alto", "lot": "L-0", "flag": "overheated", "state": "ended",
        "page": "1"})
    assert answer.status_code == 200
    query = page_config(answer.text)["api_query"]
    assert parse_qs(query) == {
        "site_id": ["demo"], "node_id": ["secador-01"],
        "since": ["2026-03-01T05:00:00Z"], "until": ["2026-03-02T05:00:00Z"],
        "producer": ["alto"], "lot_code": ["L-0"], "flag": ["overheated"],
        "running": ["false"]}
    assert f'href="/api/batches.csv?{query.replace("&", "&amp;")}" download' in answer.text
    found = client.get(f"/api/batches?{query}").json()
    assert [b["lot_code"] for b in found["items"]] == ["L-031"]
    rows = parse_csv(client.get(f"/api/batches.csv?{query}").text)
    assert [r["lot_code"] for r in rows] == ["L-031"]
    # the same filters without the flag find nothing of the south dryer either
    running = page_config(client.get("/batches", params={"state": "running"}).text)
    assert [b["lot_code"] for b in client.get(
        f"/api/batches?{running['api_query']}").json()["items"]] == ["L-032"]


@pytest.mark.parametrize(("params", "key"), [
    ({"start": "2026-13-01"}, "batches.error_date"),
    ({"start": "2026-03-05", "end": "2026-03-01"}, "batches.error_dates"),
    ({"dryer": "secador-01"}, "batches.error_dryer"),
    ({"flag": "mouldy"}, "batches.error_flag"),
    ({"state": "paused"}, "batches.error_state"),
])
def test_bad_filters_are_one_line_on_the_page(site: dict, params: dict, key: str) -> None:
    answer = page_client(site["context"], OPERATOR).get("/batches", params=params)
    assert answer.status_code == 422
    assert f'<p class="error" id="filter-error" role="alert">{catalog("es")[key]}</p>' \
        in answer.text
    assert page_config(answer.text)["filter_error"] is True


def test_paging_starts_at_one_whatever_is_typed(site: dict) -> None:
    client = page_client(site["context"], OPERATOR)
    for typed, number in (("3", 3), ("0", 1), ("-2", 1), ("x", 1), ("9" * 12, 1)):
        assert page_config(client.get("/batches", params={"page": typed}).text)[
            "page_number"] == number, typed


# --- one batch --------------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["es", "en"])
def test_a_batch_page_renders_its_frame_in_each_language(site: dict, language: str) -> None:
    client = page_client(site["context"], MANAGER, language)
    answer = client.get(f"/batches/{site['north']}")
    assert answer.status_code == 200
    texts = catalog(language)
    html = answer.text
    assert texts["batches.lot"].format(lot="L-031") in html
    assert 'href="/nodes/demo/secador-01">Secador norte</a>' in html
    for key in ("batches.record_title", "batches.metrics_title", "batches.flags_title",
                "batches.charts_title", "batches.checks_title", "batches.events_title",
                "batches.csv_readings", "batches.report_link"):
        assert texts[key] in html, key
    assert f'href="/api/batches/{site["north"]}/readings.csv" download' in html
    assert "uPlot.iife.min.js" in html and "js/charts.js" in html and "js/batch.js" in html
    config = page_config(html)
    assert config["batch_id"] == site["north"]
    assert config["flag_labels"]["overheated"] == texts["batches.flag_overheated"]
    assert config["method_labels"]["hand_meter"] == texts["batches.method_hand_meter"]


def test_the_batch_page_gives_its_script_the_flag_reasons_texts(site: dict) -> None:
    """batch.js writes a flag's reason from its key and numbers (the API's English reason
    when the key has no text): the page carries each reason's text and how to write its
    numbers."""
    config = page_config(page_client(site["context"], MANAGER, "es").get(
        f"/batches/{site['north']}").text)
    assert set(config["reason_keys"]) == set(REASONS)
    assert config["reason_formats"] == {key: dict(value) for key, value in REASONS.items()}
    for key in config["reason_keys"].values():
        assert config["catalog"][key] == catalog("es")[key], key


def test_the_metrics_api_gives_each_flags_reason_key_and_numbers(site: dict) -> None:
    [flag] = page_client(site["context"], OPERATOR).get(
        f"/api/batches/{site['north']}/metrics").json()["flags"]
    assert flag == {"code": "overheated",
                    "reason": "air at or above 65 °C for 1.0 h (max 67.0 °C)",
                    "reason_key": "overheated.above_limit",
                    "reason_params": {"limit_c": 65.0, "duration_h": 1.0, "max_c": 67.0}}


def test_an_unknown_batch_is_a_404_page(site: dict) -> None:
    client = page_client(site["context"], MANAGER)
    for path in ("/batches/lote-nadie", "/batches/lote-nadie/report"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "text/html" in answer.headers["content-type"]
        assert catalog("es")["batches.not_found"].format(what="lote-nadie") in answer.text


# --- comparison -------------------------------------------------------------------------------

def test_the_comparison_page_takes_ids_either_way(site: dict) -> None:
    client = page_client(site["context"], MANAGER)
    ids = [site["north"], site["south"]]
    for params in ({"ids": ",".join(ids)}, [("ids", ids[0]), ("ids", ids[1])]):
        answer = client.get("/batches/compare", params=params)
        assert answer.status_code == 200
        assert page_config(answer.text)["ids"] == ids
        assert "js/compare.js" in answer.text
    for wrong in ({"ids": ids[0]}, {"ids": ",".join([*ids, "a", "b", "c"])}, {}):
        answer = client.get("/batches/compare", params=wrong)
        assert answer.status_code == 422
        assert catalog("es")["batches.compare_pick"] in answer.text
        assert "js/compare.js" not in answer.text


def test_the_comparison_api_gives_metrics_and_curves_from_the_start(site: dict) -> None:
    client = page_client(site["context"], OPERATOR)
    answer = client.get("/api/batches/compare", params={
        "ids": f"{site['south']},{site['north']}"})
    assert answer.status_code == 200
    south, north = answer.json()["items"]
    assert (south["batch"]["lot_code"], north["batch"]["lot_code"]) == ("L-032", "L-031")
    assert north["metrics"]["duration_h"] == 28 and north["every_s"] == 300
    assert [f["code"] for f in north["metrics"]["flags"]] == ["overheated"]
    assert north["hours"][0] == 0 and 27.9 <= north["hours"][-1] < 28
    assert len(north["hours"]) == len(north["moisture_pct_wb"]) <= 500
    assert north["moisture_pct_wb"][0] == pytest.approx(54, abs=0.1)  # 55 an hour before
    assert south["batch"]["running"] is True and south["hours"][0] == 0


@pytest.mark.parametrize(("ids", "status", "detail"), [
    ("secador-01-1", 422, "ids: give 2 to 4 batch ids separated by commas, not 1"),
    ("a,b,c,d,e", 422, "ids: give 2 to 4 batch ids separated by commas, not 5"),
    ("{north},{north}", 422, "ids: a batch is named twice"),
    ("{north},lote-nadie", 404, "batch lote-nadie is not known to this gateway"),
])
def test_bad_comparisons_are_one_line(site: dict, ids: str, status: int, detail: str) -> None:
    answer = page_client(site["context"], OPERATOR).get(
        "/api/batches/compare", params={"ids": ids.format(north=site["north"])})
    assert answer.status_code == status
    assert answer.json()["detail"] == detail


# --- the batch's series and events ------------------------------------------------------------

def test_a_batch_series_covers_the_batch_only_with_its_reference_lines(site: dict) -> None:
    answer = page_client(site["context"], OPERATOR).get(
        f"/api/batches/{site['north']}/series")
    assert answer.status_code == 200
    series = answer.json()
    assert series["fields"] == ["air_temp_c", "air_rh_pct", "bean_moisture_pct_wb"]
    assert series["units"]["bean_moisture_pct_wb"] == "% w.b."
    assert series["every_s"] == 120  # 28 h under 1,500 points
    assert series["times"][0] == "2026-03-01T12:00:00Z"       # none from before the start
    assert series["times"][-1] < "2026-03-02T16:00:00Z"       # nor after the end
    assert len(series["times"]) == 28 * 30
    assert series["reference"] == {"target_moisture_pct_wb": 7.0, "air_temp_alarm_c": 60.0,
                                   "air_temp_limit_c": 65.0}
    assert max(series["values"]["air_temp_c"]) == 67.0


def test_a_batch_series_checks_its_parameters(site: dict) -> None:
    client = page_client(site["context"], OPERATOR)
    bad = client.get(f"/api/batches/{site['north']}/series", params={"fields": "colour"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("fields: unknown colour")
    assert client.get(f"/api/batches/{site['north']}/series",
                      params={"max_points": 5}).status_code == 422
    missing = client.get("/api/batches/lote-nadie/series")
    assert missing.status_code == 404
    one = client.get(f"/api/batches/{site['north']}/series",
                     params={"fields": "tray_mass_kg", "max_points": 100}).json()
    assert one["every_s"] == 1800 and one["times"] == one["values"]["tray_mass_kg"] == []


def test_a_batchs_events_are_those_while_it_ran(site: dict) -> None:
    client = page_client(site["context"], OPERATOR)
    events = client.get(f"/api/batches/{site['north']}/events").json()
    assert [(e["type"], e["message"]) for e in events] == [("alarm_raised", "air 67 °C")]
    assert client.get(f"/api/batches/{site['south']}/events").json() == []
    assert client.get("/api/batches/lote-nadie/events").status_code == 404


# --- CSV ----------------------------------------------------------------------------------------

def test_the_readings_csv_has_utc_and_local_times_and_units_in_its_header(site: dict) -> None:
    answer = page_client(site["context"], MANAGER).get(
        f"/api/batches/{site['north']}/readings.csv", params={"every_s": 3600})
    assert answer.status_code == 200
    header = answer.text.splitlines()[0].split(",")
    assert header[:4] == ["batch_id", "measured_at", "measured_at_local", "air_temp_c"]
    assert "bean_moisture_pct_wb" in header and "tray_mass_kg" in header
    rows = parse_csv(answer.text)
    assert len(rows) == 28
    assert (rows[0]["measured_at"], rows[0]["measured_at_local"]) == (
        "2026-03-01T12:00:00Z", "2026-03-01 07:00:00")
    assert float(rows[9]["air_temp_c"]) == 67.0       # the hot hour: 9-10 h into the batch
    assert float(rows[0]["bean_moisture_pct_wb"]) == pytest.approx(53.51, abs=0.01)  # 54 → 53


def test_the_summary_csv_has_local_times_and_filters_by_flag(site: dict) -> None:
    client = page_client(site["context"], MANAGER)
    rows = parse_csv(client.get("/api/batches.csv").text)
    assert [r["lot_code"] for r in rows] == ["L-032", "L-031"]
    north = rows[1]
    assert (north["timezone"], north["started_at_local"], north["ended_at_local"]) == (
        "America/Lima", "2026-03-01 07:00:00", "2026-03-02 11:00:00")
    assert rows[0]["ended_at_local"] == ""
    flagged = parse_csv(client.get("/api/batches.csv", params={
        "flag": "overheated", "metrics": "true"}).text)
    assert [(r["lot_code"], r["quality_flags"]) for r in flagged] == [("L-031", "overheated")]
    assert "67" in flagged[0]["flag_reasons"] or "1.0 h" in flagged[0]["flag_reasons"]
    bad = client.get("/api/batches.csv", params={"flag": "mouldy"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith(
        "flag 'mouldy' is not a quality flag")


# --- the printable report ---------------------------------------------------------------------

@pytest.mark.parametrize("language", ["es", "en"])
def test_the_report_holds_what_a_certification_file_needs(site: dict, language: str) -> None:
    client = page_client(site["context"], MANAGER, language)
    answer = client.get(f"/batches/{site['north']}/report")
    assert answer.status_code == 200
    html = answer.text
    texts = catalog(language)
    pct = "% b.h." if language == "es" else "% w.b."
    for text in ("Cooperativa Alto Mayo", "Secador norte", '<td id="report-lot-code">L-031</td>',
                 "Coop Alto Mayo", site["north"], "fermentado 6 días",
                 f"48.5 {pct}", "muestra del centro", texts["batches.method_hand_meter"],
                 "400.0 kg", "232.0 kg", f"55.0 {pct}", f"7.2 {pct}", "28.0 h",
                 texts["batches.flag_overheated"], texts["batches.report_sign_operator"],
                 texts["batches.report_sign_quality"], texts["batches.report_print"]):
        assert text in html, text
    started = "01/03/2026 07:00" if language == "es" else "03/01/2026 07:00 AM"
    assert started in html
    assert html.count('<svg class="report-chart"') == 2
    assert html.count("<polyline") >= 2 and html.count('<circle class="mark"') == 0
    assert html.count('class="mark"') == 1           # the spot check on the moisture chart
    assert "style=" not in visible_text(html)
    assert "js/report.js" in html and "uPlot" not in html


@pytest.mark.parametrize(("language", "sentence"), [
    ("es", "el aire estuvo a 65 °C o más durante {hours} horas (máximo {max} °C)"),
    ("en", "air at or above 65 °C for {hours} h (max {max} °C)"),
])
def test_the_report_says_why_a_flag_was_raised_in_the_readers_language(
        site: dict, language: str, sentence: str) -> None:
    html = page_client(site["context"], MANAGER, language).get(
        f"/batches/{site['north']}/report").text
    reason = sentence.format(hours=format_number(1.0, language),
                             max=format_number(67.0, language))
    label = catalog(language)["batches.flag_overheated"]
    assert f"<li><strong>{label}</strong> — {reason}</li>" in html


def test_nice_steps_for_report_axes() -> None:
    assert [_nice_step(v) for v in (0.3, 1, 2.2, 7, 45)] == [0.5, 1.0, 5.0, 10.0, 50.0]


# --- a week of 10-second readings -------------------------------------------------------------

def test_a_7_day_batch_of_10_second_readings_is_charted_in_one_fast_call(
        gateway: GatewayContext) -> None:
    """60,480 readings come back as 10-minute means (1,008 points per field) — the chart's
    load on a phone stays the same whatever the node's sampling rate."""
    start = gateway.clock.now() - timedelta(days=7)
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(
        readings(NORTH, start, 0.01, 10, 1), [], [])
    week = readings(NORTH, start, 7 * 24, 10, 1)
    for first in range(0, len(week), 10_000):
        gateway.store.write(week[first:first + 10_000])
    client = page_client(gateway, OPERATOR)
    batch_id = client.post("/api/batches", json={
        "site_id": SITE, "node_id": NORTH, "lot_code": "L-SEMANA",
        "initial_moisture_pct_wb": 55, "started_at": start.isoformat()}).json()["batch_id"]
    began = time.perf_counter()
    answer = client.get(f"/api/batches/{batch_id}/series", headers={"Accept-Encoding": "gzip"})
    took = time.perf_counter() - began
    assert answer.status_code == 200
    series = answer.json()
    assert len(week) == 60_480 and series["every_s"] == 600
    assert 1_008 <= len(series["times"]) <= 1_009
    assert int(answer.headers["content-length"]) < 40_000   # gzip, as a phone receives it
    print(f"7-day batch series: {took:.2f} s, {len(series['times'])} points, "
          f"{answer.headers['content-length']} bytes gzip")
    assert took < 5.0


def test_no_text_key_shows_through_on_a_batch_page(site: dict) -> None:
    """A missing text would show as its key ("batches.record_title")."""
    client = page_client(site["context"], MANAGER)
    keys = set(catalog("es"))
    for path in ("/batches", f"/batches/{site['north']}", f"/batches/{site['north']}/report",
                 f"/batches/compare?ids={site['north']},{site['south']}", "/batches/nadie",
                 "/batches?flag=x"):
        visible = visible_text(client.get(path).text)
        assert not [k for k in keys if f">{k}<" in visible or f" {k} " in visible], path
