"""What an operator and a technician do on the dryer and alerts pages, in a real headless
Chromium against the whole system (a simulated node process at 120x → a private Mosquitto →
the gateway → the browser): end the node's own batch with the confirmation step, start a
batch from the phone form and see the node confirm it, record a hand-meter spot check, end the
batch; as a technician drive the fans by hand for 15 minutes and watch the node switch to
manual control and back; acknowledge a real alert (the dryer goes silent). Screenshots at
360 px (and the alerts page at 1280 px) go to test-artifacts/dashboard/."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from e2e_support import (
    DESKTOP,
    NODE,
    OPERATOR,
    SITE,
    System,
    logged_in_context,
    shot,
)
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select
from support import wait_for

from dashboard.i18n import catalog
from gateway.auth.roles import Role
from gateway.metadata.models import AlertRecord, Batch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TECHNICIAN = "tomas"
NODE_PAGE = f"/nodes/{SITE}/{NODE}"
ES = catalog("es")


@pytest.fixture(scope="module")
def technician(system: System) -> Iterator[BrowserContext]:
    context = logged_in_context(system, TECHNICIAN, Role.TECHNICIAN)
    yield context
    context.close()


def running_batch(system: System) -> Batch | None:
    assert system.runtime.context is not None
    with system.runtime.context.metadata.session() as session:
        return session.scalar(select(Batch).where(Batch.node_id == NODE,
                                                  Batch.ended_at.is_(None)))


def end_the_batch(page: Page) -> None:
    """End with the confirmation step: a first tap only asks."""
    page.click("#end-open")
    expect(page.locator("#end-form")).to_be_visible()
    expect(page.locator("#end-question")).to_contain_text("?")
    page.fill("#end-moisture", "7,4")  # a Spanish phone keyboard's comma
    page.fill("#end-mass", "212.5")
    page.click("#end-confirm")
    fate = page.locator("#batch-command")
    expect(fate).to_contain_text(ES["operator.fate_end_confirmed"].split("{id}")[0],
                                 timeout=15_000)
    expect(fate).to_have_attribute("data-state", "confirmed")
    expect(page.locator("#start-form")).to_be_visible()
    expect(page.locator("#running-actions")).to_be_hidden()


def test_the_operator_runs_a_batch_from_the_dryer_page(system: System,
                                                       operator: BrowserContext) -> None:
    page = system.watch(operator.new_page())
    wait_for(lambda: running_batch(system) is not None, 20,
             "the batch the simulated node started on its own")
    page.goto(NODE_PAGE)
    expect(page.locator("#running-actions")).to_be_visible()
    expect(page.locator("#override-form")).to_have_count(0)  # technicians only
    expect(page.locator("#override-status")).to_have_text(ES["operator.override_auto"])

    # a mis-tap asks first and changes nothing
    page.click("#end-open")
    expect(page.locator("#end-form")).to_be_visible()
    shot(page, "node-end-confirm-360")
    page.click("#end-cancel")
    expect(page.locator("#end-form")).to_be_hidden()
    assert running_batch(system) is not None

    old = running_batch(system)
    assert old is not None
    end_the_batch(page)
    expect(page.locator("#batch-command")).to_contain_text(old.batch_id)
    ended = page.locator('#events li.event[data-type="batch_ended"]').first
    expect(ended).to_be_visible()

    # the start form checks what it can before sending
    page.click("#start-form button[type=submit]")
    lot_error = page.locator('#start-form [data-error-for="lot_code"]')
    expect(lot_error).to_have_text(ES["operator.error_required"])
    page.fill("#start-lot", "L-2026-031")
    page.fill("#start-producer", "Asociación Alto Huallaga")
    page.fill("#start-mass", "400")
    page.fill("#start-moisture", "85")
    page.click("#start-form button[type=submit]")
    expect(page.locator('#start-form [data-error-for="initial_moisture_pct_wb"]')).to_have_text(
        ES["operator.error_range"].format(min="10", max="80"))
    page.fill("#start-moisture", "56,5")
    shot(page, "node-start-form-360")
    page.click("#start-form button[type=submit]")

    expect(page.locator("#start-form .form-error")).to_be_hidden()
    fate = page.locator("#batch-command")
    expect(fate).to_contain_text(ES["operator.fate_start_confirmed"].split("{id}")[0],
                                 timeout=15_000)
    batch = running_batch(system)
    assert batch is not None and batch.lot_code == "L-2026-031"
    assert batch.initial_moisture_pct_wb == 56.5 and batch.initial_mass_kg == 400
    assert batch.started_by == OPERATOR
    expect(fate).to_contain_text(batch.batch_id)
    card = page.locator(".node-card .card")
    expect(card.locator('[data-field="batch-id"]')).to_contain_text(batch.batch_id)
    expect(card.locator('[data-field="batch-target"]')).to_contain_text("%")
    expect(card.locator(".progress")).to_be_visible()
    expect(page.locator('#events li.event[data-type="batch_started"]').first).to_be_visible()
    expect(page.locator("#batch-box")).to_contain_text(
        ES["operator.node_confirmed"].split(" ")[0])

    # a hand-meter spot check
    page.fill("#spot-moisture", "48,5")
    page.fill("#spot-note", "muestra del centro")
    page.click("#spot-form button[type=submit]")
    spot = page.locator("#spot-list li.spot")
    expect(spot).to_have_count(1)
    expect(spot.first).to_contain_text("48.5")
    expect(spot.first).to_contain_text("% b.h.")
    expect(spot.first).to_contain_text("muestra del centro")
    shot(page, "node-batch-running-360")

    end_the_batch(page)
    assert running_batch(system) is None
    with system.runtime.context.metadata.session() as session:  # type: ignore[union-attr]
        done = session.get(Batch, batch.batch_id)
        assert done is not None and done.final_moisture_pct_wb == 7.4
        assert done.final_mass_kg == 212.5 and done.ended_by == OPERATOR
    shot(page, "node-batch-ended-360")
    page.close()


def test_the_technician_drives_the_fans_by_hand_for_15_minutes(
        system: System, technician: BrowserContext) -> None:
    page = system.watch(technician.new_page())
    page.goto(NODE_PAGE)
    form = page.locator("#override-form")
    expect(form).to_be_visible()
    expect(form).to_contain_text(ES["operator.override_safety"])
    mode = page.locator('.node-card [data-field="mode"]')
    expect(mode).to_have_text(ES["mode.auto"])
    page.fill("#override-fan", "100")
    page.check('#override-form input[value="900"]')  # 15 min
    page.click("#override-form button[type=submit]")
    status = page.locator("#override-status")
    # 15 simulated minutes are 7.5 real seconds at 120x: manual now, automatic again after
    expect(status).to_have_attribute("data-state", "active", timeout=5_000)
    expect(mode).to_have_text(ES["mode.manual"], timeout=5_000)
    expect(status).to_contain_text(TECHNICIAN)
    expect(page.locator("#override-cancel")).to_be_visible()
    shot(page, "node-override-360")
    expect(status).to_have_attribute("data-state", "ended", timeout=20_000)
    expect(mode).to_have_text(ES["mode.auto"], timeout=5_000)

    # a longer one, cancelled by hand
    page.fill("#override-fan", "")
    page.fill("#override-vent", "0")
    page.check('#override-form input[value="custom"]')
    expect(page.locator("#override-minutes")).to_be_visible()
    page.fill("#override-minutes", "600")
    page.click("#override-form button[type=submit]")
    expect(status).to_have_attribute("data-state", "active", timeout=5_000)
    page.click("#override-cancel")
    expect(status).to_have_attribute("data-state", "ended", timeout=10_000)
    expect(mode).to_have_text(ES["mode.auto"], timeout=5_000)
    page.close()


def test_the_operator_acknowledges_a_real_alert(system: System,
                                                operator: BrowserContext) -> None:
    """The dryer goes silent (its process is paused): after 10 simulated minutes the alert
    job opens node_offline; the operator acknowledges it on the alerts page."""
    context = system.runtime.context
    assert context is not None

    def open_alert() -> AlertRecord | None:
        with context.metadata.session() as session:
            return session.scalar(select(AlertRecord).where(
                AlertRecord.node_id == NODE, AlertRecord.kind == "node_offline",
                AlertRecord.closed_at.is_(None)))

    os.kill(system.node.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: open_alert() is not None, 60, "the node_offline alert")
        page = system.watch(operator.new_page())
        page.goto("/alerts")
        item = page.locator('#alerts li.alert-item[data-kind="node_offline"]')
        expect(item).to_be_visible()
        expect(item).to_contain_text(ES["alerts.kind_node_offline"])
        expect(item.locator(".severity")).to_have_text(ES["alerts.severity_warning"])
        expect(item.locator(".alert-dryer")).to_have_text(NODE)
        shot(page, "alerts-360")
        item.locator('[data-action="acknowledge"]').click()
        item.locator("input[name=note]").fill("voy al secador")
        item.locator("button[type=submit]").click()
        acked = page.locator('#alerts li.alert-item[data-kind="node_offline"] .alert-acked')
        expect(acked).to_contain_text(OPERATOR)
        record = open_alert()
        assert record is not None and record.acknowledged_by == OPERATOR
        # the same alert on the dryer page, acknowledged
        page.goto(NODE_PAGE)
        expect(page.locator("#node-alerts")).to_be_visible()
        expect(page.locator("#alert-list .alert-acked")).to_contain_text(OPERATOR)
        page.goto("/alerts")
        page.select_option("#filter-kind", "over_temperature")
        expect(page.locator("#alerts-status")).to_have_text(ES["alerts.none_open"])
        assert "kind=over_temperature" in page.url
        page.set_viewport_size(DESKTOP)
        page.select_option("#filter-kind", "")
        page.select_option("#filter-state", "all")
        expect(page.locator("#alerts li.alert-item").first).to_be_visible()
        shot(page, "alerts-1280")
        page.close()
    finally:
        os.kill(system.node.pid, signal.SIGCONT)


def test_no_script_failed_and_nothing_came_from_another_host(system: System) -> None:
    assert system.requests
    assert [url for url in system.requests if not url.startswith(system.base_url)] == []
    assert system.problems == []
