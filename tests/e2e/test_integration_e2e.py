"""The dashboard as one product in a real headless Chromium against the whole system (a
simulated node process at 120x → a private Mosquitto → the gateway → the browser): every main
page fits a 360 px phone without sideways scrolling and shows no raw text key, in Spanish and
after switching to English on the page itself; a technician calibrates the moisture probe
with hand-meter readings typed on the phone and sees the node apply the curve; a technician
tares the empty tray and sees the node confirm it. Screenshots of every page at 360 px go to
test-artifacts/dashboard/phone-*.png."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from e2e_support import (
    ARTIFACTS,
    NODE,
    PHONE,
    SITE,
    System,
    first_load_bytes,
    logged_in_context,
    shot,
)
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select
from support import wait_for

from dashboard.i18n import catalog
from gateway.auth.roles import Role
from gateway.metadata.models import Batch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ADMIN, TECHNICIAN = "ada", "tito"
ES, EN = catalog("es"), catalog("en")
KEYS = sorted(ES)
NODE_PAGE = f"/nodes/{SITE}/{NODE}"
LOADING = {ES["common.loading"], EN["common.loading"]}


@pytest.fixture(scope="module")
def admin(system: System) -> Iterator[BrowserContext]:
    """An administrator (every page opens for them) on a 360 px phone."""
    context = logged_in_context(system, ADMIN, Role.ADMIN)
    yield context
    context.close()


@pytest.fixture(scope="module")
def technician(system: System) -> Iterator[BrowserContext]:
    """A technician on a phone whose clock is in UTC (the hand-meter times typed below)."""
    context = logged_in_context(system, TECHNICIAN, Role.TECHNICIAN, timezone_id="UTC")
    yield context
    context.close()


def csrf_headers(context: BrowserContext) -> dict[str, str]:
    return {"X-CSRF-Token": context.request.get("/api/auth/me").json()["csrf_token"]}


@pytest.fixture(scope="module")
def batches(system: System, admin: BrowserContext) -> list[str]:
    """Two ended batches: the node's own (ended here) and one started and ended through the
    API; the dryer is left empty (no batch running: its tray may be tared)."""
    assert system.runtime.context is not None

    def running() -> str | None:
        with system.runtime.context.metadata.session() as session:  # type: ignore[union-attr]
            return session.scalar(select(Batch.batch_id).where(
                Batch.node_id == NODE, Batch.ended_at.is_(None)))

    wait_for(lambda: running() is not None, 30, "the node's own batch")
    api, headers = admin.request, csrf_headers(admin)
    first = running()
    assert api.post(f"/api/batches/{first}/end", headers=headers,
                    data={"final_moisture_pct_wb": 7.5}).ok
    started = api.post("/api/batches", headers=headers, data={
        "site_id": SITE, "node_id": NODE, "lot_code": "L-E2E-2", "initial_moisture_pct_wb": 55})
    assert started.status == 201, started.text()
    second = started.json()["batch_id"]
    assert api.post(f"/api/batches/{second}/end", headers=headers, data={}).ok
    return [str(first), str(second)]


def main_pages(batches: list[str]) -> dict[str, str]:
    first, second = batches
    return {"overview": "/", "dryer": NODE_PAGE, "alerts": "/alerts", "batches": "/batches",
            "batch": f"/batches/{first}", "compare": f"/batches/compare?ids={first},{second}",
            "report": f"/batches/{first}/report", "thresholds": "/thresholds",
            "audit": "/audit", "calibration": f"/calibration?site_id={SITE}&node_id={NODE}"}


def settle(page: Page) -> None:
    """The page's script has filled it: loaded, and no "loading…" placeholder left."""
    page.wait_for_load_state("load")
    page.wait_for_function(
        """(loading) => ![...document.querySelectorAll('main *')].some(e =>
             e.children.length === 0 && e.offsetParent !== null
             && loading.includes(e.textContent.trim()))""", arg=sorted(LOADING),
        timeout=15_000)
    page.wait_for_timeout(400)  # the last API answers drawn


def check_phone_page(page: Page, what: str) -> None:
    """No sideways scrolling at 360 px, and no text key showing through."""
    width = page.evaluate("document.documentElement.scrollWidth")
    if width > PHONE["width"] + 1:  # name the innermost elements that stick out
        wide = page.evaluate("""(limit) => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().width > limit)
            .slice(0, 8).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className
                                  + ' ' + Math.round(e.getBoundingClientRect().width))""",
                             PHONE["width"] + 1)
        pytest.fail(f"{what}: {width} px wide at 360 px: {wide}")
    raw = page.evaluate("(keys) => keys.filter(k => document.body.innerText.includes(k))", KEYS)
    assert raw == [], what


def test_every_main_page_fits_a_phone_and_shows_no_raw_text_key(
        system: System, admin: BrowserContext, batches: list[str]) -> None:
    page = system.watch(admin.new_page())
    for name, path in main_pages(batches).items():
        page.goto(path)
        settle(page)
        check_phone_page(page, path)
        shot(page, f"phone-{name}")
    page.close()
    login = system.new_context(PHONE)
    page = system.watch(login.new_page())
    page.goto("/login")
    settle(page)
    check_phone_page(page, "/login")
    shot(page, "phone-login")
    login.close()


def test_switching_language_on_every_page_area_leaves_no_text_untranslated(
        system: System, admin: BrowserContext, batches: list[str]) -> None:
    """The switch on each page (Spanish → English on one, back on the next): the page comes
    back in the other language, filled, with no key showing and still fitting the phone."""
    page = system.watch(admin.new_page())
    language = "es"
    for name, path in main_pages(batches).items():
        page.goto(path)
        settle(page)
        other = "en" if language == "es" else "es"
        page.click(f'.languages a[hreflang="{other}"]')
        expect(page.locator("html")).to_have_attribute("lang", other)
        settle(page)
        check_phone_page(page, f"{path} ({other})")
        title = (EN if other == "en" else ES)["app.name"]
        assert page.title().endswith(title), name
        language = other
    if language == "en":  # the account keeps Spanish for the tests after this one
        page.click('.languages a[hreflang="es"]')
        expect(page.locator("html")).to_have_attribute("lang", "es")
    page.close()


PAGE_WEIGHT_LIMIT = 200 * 1024  # the issue: the live view's first load under 200 KB
# Filled by its script: no "loading…" left, every chart drawn.
LOADING_JSON = json.dumps(sorted(LOADING), ensure_ascii=False)
FILLED = ("() => document.readyState === 'complete'"
          " && ![...document.querySelectorAll('main *')].some(e => e.children.length === 0"
          f" && e.offsetParent !== null && {LOADING_JSON}.includes(e.textContent.trim()))"
          " && [...document.querySelectorAll('.chart')].every(c => c.dataset.drawn === 'true')")


def test_every_main_pages_first_load_is_measured_and_light(
        system: System, admin: BrowserContext, batches: list[str]) -> None:
    """First visit, empty cache, as the browser counts it (compressed bodies and headers):
    written to test-artifacts/dashboard/page-weights-all.json for docs/dashboard.md."""
    pages = {**main_pages(batches), "login": "/login"}
    weights = {name: first_load_bytes(system, path, FILLED, logged_in=name != "login",
                                      username=ADMIN, settle_ms=500)
               for name, path in pages.items()}
    (ARTIFACTS / "page-weights-all.json").write_text(json.dumps(weights, indent=1))
    summary = {name: (len(w["entries"]), w["total_bytes"], w["decoded_bytes"])  # type: ignore[arg-type]
               for name, w in weights.items()}
    print(json.dumps(summary))
    assert weights["overview"]["total_bytes"] < PAGE_WEIGHT_LIMIT  # type: ignore[operator]
    for name, weight in weights.items():
        assert weight["total_bytes"] < PAGE_WEIGHT_LIMIT, name  # type: ignore[operator]
        entries = weight["entries"]
        assert isinstance(entries, list) and all(e["bytes"] > 0 for e in entries), name


def probe_times(system: System) -> list[datetime]:
    """Three moments an hour apart in the node's (accelerated) time at which it stored a
    probe reading, newest last."""
    assert system.runtime.context is not None
    store = system.runtime.context.store
    latest = store.latest(SITE, NODE)
    assert latest is not None and "moisture_probe_v" in latest.fields
    times = [latest.measured_at - timedelta(minutes=minutes) for minutes in (120, 60, 5)]
    for moment in times:
        points = store.series(SITE, NODE, moment - timedelta(minutes=1),
                              moment + timedelta(minutes=1), ["moisture_probe_v"], every_s=60)
        assert any(p.values.get("moisture_probe_v") is not None for p in points), moment
    return times


def test_a_technician_calibrates_the_probe_from_hand_meter_readings_and_the_node_applies_it(
        system: System, technician: BrowserContext) -> None:
    # two simulated hours of readings (a minute of test) before the first hand-meter time
    wait_for(lambda: system.runtime.ingest is not None
             and system.runtime.ingest.stats.stored >= 300, 90, "two hours of readings")
    page = system.watch(technician.new_page())
    page.goto(f"/calibration?site_id={SITE}&node_id={NODE}")
    settle(page)
    times = probe_times(system)
    for number, (moment, meter) in enumerate(zip(times, ("47,5", "45.0", "42.5"), strict=True)):
        if number:
            page.click("#cal-add")
        row = page.locator("#cal-pairs tbody tr").nth(number)
        row.locator('input[type="datetime-local"]').fill(
            moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        row.locator('input[type="number"]').fill(meter.replace(",", "."))
    page.click("#cal-preview")
    expect(page.locator("#cal-result")).to_be_visible()
    expect(page.locator("#cal-pairs tbody tr").first.locator("td.computed").first
           ).to_contain_text("V")
    expect(page.locator("#cal-save")).to_be_enabled()
    shot(page, "phone-calibration-preview")
    page.click("#cal-save")
    expect(page.locator("#cal-sent")).to_be_visible()
    newest = page.locator("#cal-history tbody tr").first.locator(".cal-state")
    expect(newest).to_have_attribute("data-state", "applied", timeout=30_000)
    expect(newest).to_contain_text(ES["calibration.state_applied"])
    expect(page.locator("#cal-current")).to_contain_text(
        ES["calibration.current_gateway"].split("{")[0].strip(), timeout=15_000)
    check_phone_page(page, "/calibration after saving")
    shot(page, "phone-calibration-applied")
    page.close()


def test_a_technician_tares_the_empty_tray_after_a_confirmation(
        system: System, technician: BrowserContext, batches: list[str]) -> None:
    page = system.watch(technician.new_page())
    page.goto(NODE_PAGE)
    box = page.locator("#tare-box")
    expect(box).to_be_visible(timeout=15_000)  # the node's readings carry the tray's mass
    expect(page.locator("#tare-now")).to_contain_text("kg")
    expect(page.locator("#tare-running")).to_be_hidden()  # the batches above have ended
    page.click("#tare-open")
    expect(page.locator("#tare-confirm")).to_contain_text(ES["operator.tare_empty_first"])
    shot(page, "phone-tare-confirm")
    page.click("#tare-send")
    fate = page.locator("#tare-fate")
    expect(fate).to_have_attribute("data-state", "confirmed", timeout=15_000)
    expect(fate).to_contain_text(ES["operator.tare_done"].split("(")[0].strip())
    shot(page, "phone-tare-done")
    page.close()
    audit = technician.request.get("/api/audit?action=node.tare").json()
    assert [entry["actor"] for entry in audit["entries"]] == [TECHNICIAN]


def test_no_request_left_the_gateway_and_no_script_failed(system: System) -> None:
    assert system.requests
    assert [url for url in system.requests if not url.startswith(system.base_url)] == []
    assert system.problems == []
