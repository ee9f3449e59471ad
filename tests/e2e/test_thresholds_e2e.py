"""The technicians' pages in a real headless Chromium against the whole system (simulated node
process → real Mosquitto → gateway runtime → browser): a technician logs in, is stopped by the
form on an out-of-range value and by the gateway's one line on an inconsistent one, saves a
change, and watches the rollout view until the real node has applied the new version; then
reads the change in the audit log. An operator gets the 403 page. Screenshots at 360 px (and
1280 px) go to test-artifacts/dashboard/."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator

import pytest
from e2e_support import ARTIFACTS, DESKTOP, NODE, PHONE, SITE, System, logged_in_context, shot
from playwright.sync_api import BrowserContext, expect
from support.auth import PASSWORD

from dashboard.i18n import catalog
from gateway.auth.roles import Role

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TECHNICIAN = "tomas"
ES = catalog("es")
DRYER_ROW = f'#rollout-list [data-node="{SITE}/{NODE}"]'
NODE_APPLIES_WITHIN_MS = 30_000  # the node applies a retained config within seconds
PAGE_WEIGHT_LIMIT = 200 * 1024  # the budget for a first load on a weak network


@pytest.fixture(scope="module")
def technician(system: System) -> Iterator[BrowserContext]:
    """A phone-sized browser with a technician logged in through the login page."""
    context = logged_in_context(system, TECHNICIAN, Role.TECHNICIAN, "/thresholds")
    yield context
    context.close()


def test_a_technician_changes_a_threshold_and_sees_the_node_apply_it(
        system: System, technician: BrowserContext) -> None:
    page = system.watch(technician.new_page())
    page.goto("/thresholds")
    expect(page.locator(".mainnav")).to_contain_text(ES["nav.thresholds"])
    dryer = page.locator(DRYER_ROW)
    expect(dryer).to_have_attribute("data-state", "unmanaged")  # no profile yet
    expect(page.locator("#profiles")).to_contain_text(ES["thresholds.no_profiles"])

    # open (create) the site-wide profile: every dryer, every stage
    page.select_option("#scope-site", SITE)
    page.click("#scope-form button[type=submit]")
    warn = page.locator('#fields [data-field="air_temp_warn_c"]')
    expect(warn.locator(".field-name")).to_have_text(ES["thresholds.name_air_temp_warn_c"])
    expect(warn.locator(".field-why")).to_have_text(ES["thresholds.why_air_temp_warn_c"])
    expect(warn.locator(".field-facts")).to_contain_text("°C")
    expect(warn.locator(".field-facts")).to_contain_text("ICCO")
    expect(page.locator("#fields .field-row")).to_have_count(24)

    # out of range: the form says so next to the field and will not send it
    warn.locator("input").fill("70")
    expect(warn.locator(".field-error")).to_be_visible()
    expect(warn.locator(".field-error")).to_contain_text("Fuera de rango")
    expect(warn.locator(".field-error")).to_contain_text("65")
    page.click("#review")
    expect(page.locator("#editor-error")).to_be_visible()
    expect(page.locator("#review-box")).to_be_hidden()
    warn.screenshot(path=str(ARTIFACTS / "thresholds-field-error-360.png"))
    shot(page, "thresholds-out-of-range-360")

    # in range but above the alarm (60 °C): the gateway refuses with one line, shown there
    warn.locator("input").fill("62")
    expect(warn.locator(".field-error")).to_be_hidden()
    page.click("#review")
    expect(page.locator('#changes [data-field="air_temp_warn_c"]')).to_contain_text("62")
    page.click("#save")
    expect(warn.locator(".field-error")).to_contain_text(
        "air_temp_warn_c <= air_temp_alarm_c <= air_temp_limit_c must hold")
    expect(page.locator("#editor-error")).to_contain_text("air_temp_warn_c=62")

    # a good value: review old → new, save, the new version appears
    warn.locator("input").fill("52")
    page.fill("#comment", "temporada seca")
    page.click("#review")
    change = page.locator('#changes [data-field="air_temp_warn_c"]')
    expect(change.locator(".old")).to_have_text(ES["thresholds.layer_below"])
    expect(change.locator(".new")).to_contain_text("52")
    shot(page, "thresholds-review-360")
    page.click("#save")
    expect(page.locator("#thr-status")).to_contain_text(
        ES["thresholds.saved"].format(version=1, count=1))
    expect(page.locator(f'#profiles [data-target="{SITE}/*/*"]')).to_contain_text(
        ES["thresholds.version"].format(version=1))
    expect(page.locator("#editor-meta")).to_contain_text(TECHNICIAN)
    expect(warn.locator("input")).to_have_value("52")

    # the real node gets the retained config, applies it and says so: the rollout shows it
    expect(dryer).to_have_attribute("data-state", "applied", timeout=NODE_APPLIES_WITHIN_MS)
    expect(dryer).to_have_attribute("data-applied", re.compile(r"^[1-9]\d*$"))
    assert dryer.get_attribute("data-applied") == dryer.get_attribute("data-desired")
    expect(dryer).not_to_have_class(re.compile(r"\bbehind\b"))
    effective = page.request.get(f"/api/nodes/{SITE}/{NODE}/thresholds").json()
    assert effective["values"]["air_temp_warn_c"] == {"value": 52.0, "unit": "°C",
                                                      "source": "site"}
    assert effective["rollout"]["state"] == "applied"
    page.locator("#rollout").screenshot(path=str(ARTIFACTS / "thresholds-rollout-360.png"))
    shot(page, "thresholds-applied-360")
    page.set_viewport_size(DESKTOP)
    shot(page, "thresholds-1280")
    page.close()


def test_the_change_is_in_the_audit_log_old_to_new(system: System,
                                                   technician: BrowserContext) -> None:
    page = system.watch(technician.new_page())
    page.goto("/thresholds")
    page.click('.mainnav a[href="/audit"]')
    page.wait_for_url(f"{system.base_url}/audit")
    entry = page.locator('#audit-list .audit-entry[data-action="thresholds.update"]').first
    expect(entry).to_contain_text(ES["audit.action_thresholds_update"])
    expect(entry).to_contain_text(TECHNICIAN)
    expect(entry).to_contain_text("temporada seca")
    change = entry.locator('[data-key="air_temp_warn_c"]').first
    expect(change).to_contain_text(ES["thresholds.name_air_temp_warn_c"])
    expect(change.locator(".old")).to_have_text(ES["audit.layer_below"])
    expect(change.locator(".new")).to_contain_text("52")
    expect(entry).to_contain_text(ES["audit.effective_on"].format(dryer=NODE))
    shot(page, "audit-360")

    page.fill("#f-actor", "nadie")
    page.click("#audit-filters button[type=submit]")
    expect(page.locator("#audit-list")).to_contain_text(ES["audit.empty"])
    page.click("#f-clear")
    expect(page.locator("#audit-list .audit-entry").first).to_be_visible()
    page.fill("#f-since", "2030-01-02")
    page.fill("#f-until", "2030-01-01")
    page.click("#audit-filters button[type=submit]")
    expect(page.locator("#audit-error")).to_have_text(ES["audit.error_dates"])
    page.close()


def test_a_dryer_that_has_not_applied_the_newest_version_stands_out(
        system: System, technician: BrowserContext) -> None:
    """The node process is paused (as a busy or unreachable node would be): the new version
    stays pending and the dryer is highlighted, until the node runs again and applies it."""
    page = system.watch(technician.new_page())
    page.goto("/thresholds")
    dryer = page.locator(DRYER_ROW)
    expect(dryer).to_have_attribute("data-state", "applied")
    page.locator(f'#profiles [data-target="{SITE}/*/*"] button').click()
    warn = page.locator('#fields [data-field="air_temp_warn_c"]')
    expect(warn.locator("input")).to_have_value("52")
    os.kill(system.node.pid, signal.SIGSTOP)
    try:
        warn.locator("input").fill("53")
        page.click("#review")
        page.click("#save")
        expect(page.locator("#thr-status")).to_contain_text(
            ES["thresholds.saved"].format(version=2, count=1))
        expect(dryer).to_have_attribute("data-state", "pending")
        expect(dryer).to_have_class(re.compile(r"\bbehind\b"))
        expect(dryer).to_contain_text(ES["thresholds.state_pending"])
        page.locator("#rollout").screenshot(
            path=str(ARTIFACTS / "thresholds-rollout-pending-360.png"))
    finally:
        os.kill(system.node.pid, signal.SIGCONT)
    expect(dryer).to_have_attribute("data-state", "applied", timeout=NODE_APPLIES_WITHIN_MS)
    expect(dryer).not_to_have_class(re.compile(r"\bbehind\b"))
    page.close()


def test_the_pages_first_load_is_light(system: System) -> None:
    """Transferred bytes of a first visit with an empty cache (page, assets, the API answers
    the script asks for; not the endless live stream), as the browser counts them."""
    weights = {}
    for path, ready in (("/thresholds", "#rollout-list .rollout-row"),
                        ("/audit", "#audit-list .audit-entry")):
        context = system.new_context(PHONE)
        assert context.request.post("/api/auth/login", data={
            "username": TECHNICIAN, "password": PASSWORD}).ok
        page = system.watch(context.new_page())
        page.goto(path)
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
        entries = page.evaluate("""() => [
            ...performance.getEntriesByType('navigation'),
            ...performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/live'))
          ].map(e => ({name: e.name.split('?')[0], bytes: e.transferSize,
                       decoded: e.decodedBodySize}))""")
        context.close()
        weights[path] = {"requests": len(entries),
                         "transferred_bytes": sum(e["bytes"] for e in entries),
                         "uncompressed_bytes": sum(e["decoded"] for e in entries),
                         "entries": entries}
    (ARTIFACTS / "technician-page-weights.json").write_text(json.dumps(weights, indent=1))
    for path, weight in weights.items():
        assert 0 < weight["transferred_bytes"] < PAGE_WEIGHT_LIMIT, path


def test_an_operator_is_shown_the_403_page(system: System) -> None:
    context = system.new_context(PHONE)
    assert context.request.post("/api/auth/login", data={
        "username": "olga", "password": PASSWORD}).ok
    page = system.watch(context.new_page(), console=False)  # the 403 is logged on purpose
    answer = page.goto("/thresholds")
    assert answer is not None and answer.status == 403
    expect(page.locator("#forbidden")).to_contain_text(ES["error.forbidden_title"])
    expect(page.locator(".mainnav")).not_to_contain_text(ES["nav.thresholds"])
    context.close()


def test_nothing_was_loaded_from_another_host_and_no_script_failed(system: System) -> None:
    """Runs last in this module: every request of the pages above went to the gateway."""
    assert system.requests
    assert [url for url in system.requests if not url.startswith(system.base_url)] == []
    provoked = "the server responded with a status of 422"  # the refused save, on purpose
    assert [problem for problem in system.problems if provoked not in problem] == []
