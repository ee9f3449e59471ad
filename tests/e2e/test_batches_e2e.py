"""The managers' batch pages in a real headless Chromium against the whole system (simulated
node → Mosquitto → gateway → browser): a manager finds the batch the node started, fills in
its lot and producer, filters the list, opens the batch and sees its curves drawn, downloads
the CSV of readings and of batch summaries through the pages' links, and prints the batch
report to PDF. Screenshots, the downloads and the PDF go to test-artifacts/dashboard/."""

from __future__ import annotations

import csv
import io
import re
import zlib
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from e2e_support import ARTIFACTS, DESKTOP, NODE, SITE, System, logged_in_context, shot
from playwright.sync_api import BrowserContext, expect
from support import wait_for

from dashboard.i18n import catalog, format_number
from gateway.auth.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MANAGER = "mara"
LOT = "L-E2E-031"
PRODUCER = "Cooperativa Alto Mayo"
ES = catalog("es")


@pytest.fixture(scope="module")
def manager(system: System) -> Iterator[BrowserContext]:
    """A phone-sized browser with a manager logged in through the login page."""
    context = logged_in_context(system, MANAGER, Role.MANAGER, "/batches")
    yield context
    context.close()


@pytest.fixture(scope="module")
def batch_id(system: System, manager: BrowserContext) -> str:
    """The batch the simulated node started on its own, with the lot details an operator
    types in afterwards (PATCH with the session's CSRF token) and a hand-meter reading."""
    api = manager.request

    def running() -> list[dict]:
        answer = api.get(f"/api/batches?running=true&node_id={NODE}")
        return list(answer.json()["items"]) if answer.ok else []

    wait_for(lambda: bool(running()), 30, "the node's own batch")
    found = running()[0]["batch_id"]
    token = api.get("/api/auth/me").json()["csrf_token"]
    headers = {"X-CSRF-Token": token}
    changed = api.patch(f"/api/batches/{found}", headers=headers,
                        data={"lot_code": LOT, "producer": PRODUCER})
    assert changed.ok, changed.text()
    check = api.post(f"/api/batches/{found}/spot-checks", headers=headers,
                     data={"moisture_pct_wb": 50.5, "note": "muestra e2e"})
    assert check.status == 201, check.text()
    # enough readings for curves: at 120x a real second is two simulated minutes
    wait_for(lambda: len(api.get(f"/api/batches/{found}/series").json()["times"]) >= 10, 30,
             "readings in the batch")
    return str(found)


def test_the_manager_filters_the_list_and_opens_the_batch(
        system: System, manager: BrowserContext, batch_id: str) -> None:
    page = system.watch(manager.new_page())
    page.goto("/batches")
    item = page.locator(f'[data-batch="{batch_id}"]')
    expect(item.locator(".batch-lot")).to_have_text(LOT)
    expect(item).to_contain_text(PRODUCER)
    expect(item.locator(".badge")).to_have_text(ES["batches.state_running"])
    shot(page, "batches-360")
    # a producer nobody has: nothing found, said in one line
    page.fill('input[name="producer"]', "nadie")
    page.click("#filters button[type=submit]")
    expect(page.locator("#list-status")).to_have_text(ES["batches.list_empty"])
    # part of the producer's name, any case, and running only
    page.fill('input[name="producer"]', "alto mayo")
    page.select_option('select[name="state"]', "running")
    page.select_option('select[name="dryer"]', f"{SITE}/{NODE}")
    page.click("#filters button[type=submit]")
    expect(page.locator("#list-status")).to_have_text(ES["batches.list_count_one"])
    query = parse_qs(urlsplit(page.url).query)
    assert query["producer"] == ["alto mayo"] and query["state"] == ["running"]
    summaries = page.locator("#csv-summaries").get_attribute("href") or ""
    assert parse_qs(urlsplit(summaries).query) == {
        "site_id": [SITE], "node_id": [NODE], "producer": ["alto mayo"], "running": ["true"]}
    with page.expect_download() as download_info:
        page.click("#csv-summaries")
    download = download_info.value
    download.save_as(ARTIFACTS / "batches-summary.csv")
    rows = list(csv.DictReader(io.StringIO((ARTIFACTS / "batches-summary.csv").read_text())))
    assert [(r["batch_id"], r["lot_code"], r["producer"]) for r in rows] == [
        (batch_id, LOT, PRODUCER)]
    # two to four batches may be compared: one ticked is not enough
    page.check(f'[data-batch="{batch_id}"] input[name="ids"]')
    expect(page.locator("#compare-button")).to_be_disabled()
    page.click(f'[data-batch="{batch_id}"] .batch-lot')
    page.wait_for_url(f"{system.base_url}/batches/{batch_id}")
    page.close()


def test_the_batch_page_draws_its_curves_and_downloads_its_readings(
        system: System, manager: BrowserContext, batch_id: str) -> None:
    page = system.watch(manager.new_page())
    page.goto(f"/batches/{batch_id}")
    expect(page.locator("#batch-title")).to_have_text(ES["batches.lot"].format(lot=LOT))
    expect(page.locator("#record")).to_contain_text(PRODUCER)
    for field in ("bean_moisture_pct_wb", "air_temp_c", "air_rh_pct"):
        chart = page.locator(f"#chart-{field}")
        expect(chart).to_have_attribute("data-drawn", "true")
        expect(chart.locator("canvas")).to_be_visible()
    assert int(page.locator("#chart-air_temp_c").get_attribute("data-points") or 0) >= 10
    # the moisture line (brown) is really painted
    painted = page.evaluate("""() => {
        const canvas = document.querySelector('#chart-bean_moisture_pct_wb canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let brown = 0;
        for (let i = 0; i < pixels.length; i += 4) {
          const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
          if (a > 0 && r > 100 && r < 150 && g > 70 && g < 110 && b > 40 && b < 80) brown++;
        }
        return brown;
      }""")
    assert painted > 20
    expect(page.locator("#checks tbody")).to_contain_text("muestra e2e")
    expect(page.locator("#metrics")).to_contain_text("°C")
    expect(page.locator("#progress-text")).to_contain_text("% b.h.")
    expect(page.locator("#prediction-text")).not_to_be_empty()
    expect(page.locator("#events li").first).to_be_visible()
    shot(page, "batch-360")
    with page.expect_download() as download_info:
        page.click("#csv-readings")
    download = download_info.value
    assert download.suggested_filename == f"{batch_id}.csv"
    download.save_as(ARTIFACTS / "batch-readings.csv")
    rows = list(csv.DictReader(io.StringIO((ARTIFACTS / "batch-readings.csv").read_text())))
    assert rows and {r["batch_id"] for r in rows} == {batch_id}
    assert rows[0]["measured_at"].endswith("Z") and re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[0]["measured_at_local"])
    assert all(float(r["air_temp_c"]) > 0 for r in rows if r["air_temp_c"])
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(300)  # the charts follow the new width (debounced resize)
    shot(page, "batch-1280")
    page.close()


def test_the_report_prints_to_a_pdf_with_the_lot(
        system: System, manager: BrowserContext, batch_id: str) -> None:
    page = system.watch(manager.new_page())
    page.goto(f"/batches/{batch_id}")
    page.click("#report-link")
    page.wait_for_url(f"{system.base_url}/batches/{batch_id}/report")
    expect(page.locator("#report-lot-code")).to_have_text(LOT)
    expect(page.locator("svg.report-chart")).to_have_count(2)
    expect(page.locator("#report-checks")).to_contain_text("muestra e2e")
    shot(page, "batch-report-360")
    page.emulate_media(media="print")
    expect(page.locator(".topbar")).to_be_hidden()
    expect(page.locator(".mainnav")).to_be_hidden()
    expect(page.locator("#print-report")).to_be_hidden()
    page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi: how paper looks
    shot(page, "batch-report-print")
    pdf = page.pdf(format="A4", print_background=True)
    (ARTIFACTS / "batch-report.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF-") and len(pdf) > 10_000
    text = " ".join(pdf_text(pdf).split())   # lines wrap where the paper ends
    assert LOT in text and PRODUCER in text
    assert ES["batches.report_title"] in text and ES["batches.report_sign_quality"] in text
    assert ES["app.name"] not in text.split(ES["batches.report_title"])[0]  # no top bar
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))
    print(f"batch report: {pages} A4 pages, {len(pdf)} bytes")
    assert 1 <= pages <= 4
    page.close()


def test_a_new_batch_started_through_the_api_is_compared_with_the_first(
        system: System, manager: BrowserContext, batch_id: str) -> None:
    api = manager.request
    headers = {"X-CSRF-Token": api.get("/api/auth/me").json()["csrf_token"]}
    ended = api.post(f"/api/batches/{batch_id}/end", headers=headers,
                     data={"final_moisture_pct_wb": 7.4, "final_mass_kg": 230})
    assert ended.ok, ended.text()
    started = api.post("/api/batches", headers=headers, data={
        "site_id": SITE, "node_id": NODE, "lot_code": "L-E2E-032", "producer": PRODUCER,
        "initial_mass_kg": 400, "initial_moisture_pct_wb": 56})
    assert started.status == 201, started.text()
    second = started.json()["batch_id"]
    wait_for(lambda: len(api.get(f"/api/batches/{second}/series").json()["times"]) >= 3, 30,
             "readings in the new batch")
    page = system.watch(manager.new_page())
    page.goto("/batches")
    for picked in (batch_id, second):
        page.check(f'[data-batch="{picked}"] input[name="ids"]')
    expect(page.locator("#compare-button")).to_be_enabled()
    page.click("#compare-button")
    page.wait_for_url(re.compile(r".*/batches/compare\?ids=.*"))
    header = page.locator("#compare-table thead th")
    expect(header).to_have_count(3)
    expect(header.nth(1)).to_contain_text("L-E2E-032")   # in the list's order: newest first
    expect(header.nth(2)).to_contain_text(LOT)
    expect(page.locator("#compare-table tbody")).to_contain_text("230.0\u00a0kg")
    expect(page.locator("#compare-chart")).to_have_attribute("data-drawn", "true")
    shot(page, "batches-compare-360")
    page.close()


def test_the_batch_page_says_why_a_flag_was_raised_in_spanish(
        system: System, manager: BrowserContext, batch_id: str) -> None:
    """A final moisture corrected to 5.2 % flags the batch over-dried; its page says why in
    the reader's language, the numbers written as the server writes them."""
    api = manager.request
    headers = {"X-CSRF-Token": api.get("/api/auth/me").json()["csrf_token"]}
    corrected = api.patch(f"/api/batches/{batch_id}", headers=headers,
                          data={"final_moisture_pct_wb": 5.2})
    assert corrected.ok, corrected.text()
    page = system.watch(manager.new_page())
    page.goto(f"/batches/{batch_id}")
    reason = page.locator('#flags [data-flag="over_dried"] .flag-reason')
    expect(reason).to_have_text(ES["batches.reason_over_dried_below_limit"].format(
        moisture_pct=format_number(5.2, "es"), source=ES["batches.source_final"],
        limit_pct="6"))
    page.close()


def test_no_request_left_the_gateway_and_no_script_failed(system: System) -> None:
    """Runs last in this module."""
    assert system.requests
    assert [url for url in system.requests if not url.startswith(system.base_url)] == []
    assert system.problems == []


# --- reading text back out of Chromium's PDF ---------------------------------------------------

_OBJECT = re.compile(rb"(\d+) 0 obj(.*?)endobj", re.S)
_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)


def pdf_text(pdf: bytes) -> str:
    """The text of a PDF as Chromium (Skia) writes it: every font carries a ToUnicode map from
    its glyph ids to characters, pages select fonts by name (``/F3 12 Tf``) and show glyph
    ids as hex strings (``<0012> Tj``, ``[<00120013> 40 <0014>] TJ``). Enough to check what
    is printed, with no PDF library (a few dozen lines instead of a dependency)."""
    objects: dict[int, tuple[bytes, bytes | None]] = {}
    for number, body in _OBJECT.findall(pdf):
        found = _STREAM.search(body)
        data = None
        if found:
            data = found.group(1)
            if b"FlateDecode" in body[:found.start()]:
                data = zlib.decompress(data)
        objects[int(number)] = (body, data)
    cmaps = {number: _cmap(data) for number, (_, data) in objects.items()
             if data is not None and b"begincmap" in data}
    fonts: dict[int, dict[int, str]] = {}
    for number, (body, _) in objects.items():
        to_unicode = re.search(rb"/ToUnicode (\d+) 0 R", body)
        if to_unicode and int(to_unicode.group(1)) in cmaps:
            fonts[number] = cmaps[int(to_unicode.group(1))]
    names: dict[bytes, dict[int, str]] = {}
    for body, _ in objects.values():
        for block in re.findall(rb"/Font\s*<<(.*?)>>", body, re.S):
            for name, ref in re.findall(rb"/(\w+) (\d+) 0 R", block):
                if int(ref) in fonts:
                    names[name] = fonts[int(ref)]
    out: list[str] = []
    for _, data in objects.values():
        if data is None or b"Tf" not in data:
            continue
        current: dict[int, str] = {}
        for token in re.finditer(rb"/(\w+) [\d.]+ Tf|<([0-9A-Fa-f]+)>|(T\*|Td|TD|Tm|ET)", data):
            if token.group(1):
                current = names.get(token.group(1), {})
            elif token.group(2):
                hexes = token.group(2).decode()
                out.extend(current.get(int(hexes[i:i + 4], 16), "")
                           for i in range(0, len(hexes) - 3, 4))
            elif token.group(3) in (b"ET", b"T*"):
                out.append("\n")
    return "".join(out)


def _cmap(data: bytes) -> dict[int, str]:
    mapping: dict[int, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", data, re.S):
        for glyph, text in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            mapping[int(glyph, 16)] = bytes.fromhex(text.decode()).decode("utf-16-be")
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", data, re.S):
        for first, last, text in re.findall(
                rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
            base = int(text, 16)
            for offset in range(int(last, 16) - int(first, 16) + 1):
                mapping[int(first, 16) + offset] = chr(base + offset)
    return mapping
