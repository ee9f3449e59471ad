"""The whole system for browser tests: a simulated dryer node (a real ``cacao-dryer node run``
process at accelerated time) → a private Mosquitto → the gateway runtime (SQLite, HTTP API,
dashboard) → Debian's Chromium, headless, driven by Playwright.

Playwright for Python drives the system browser (``executable_path=/usr/bin/chromium``;
``playwright install`` is never run): it waits for elements by itself and exposes the browser's
resource timings, console and every request, with no separate driver package whose version
must match the browser (Selenium would need Debian's ``chromium-driver`` in step).

Screenshots go to ``test-artifacts/dashboard/`` (not committed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from e2e_support import (
    ARTIFACTS,
    CHROMIUM,
    OPERATOR,
    PHONE,
    SITE,
    SPEED,
    START,
    System,
    log_in,
    node_config,
)
from playwright.sync_api import BrowserContext, sync_playwright
from support import wait_for
from support.auth import QUICK_HASHING, add_user
from support.mosquitto import MosquittoBroker, free_port

from cacao_dryer.clock import AcceleratedClock
from gateway.auth.roles import Role
from gateway.config import parse_gateway_config
from gateway.runtime import GatewayRuntime


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    folder = tmp_path_factory.mktemp("e2e")
    broker = MosquittoBroker(folder / "mosquitto")
    broker.start()
    port = free_port()
    settings = parse_gateway_config({
        "data_dir": str(folder / "gateway"), "sites": [SITE],
        "mqtt": {"broker": broker.url, "client_id": "gw-e2e"},
        "metadata": {"url": f"sqlite:///{folder / 'metadata.sqlite3'}"},
        "storage": {"kind": "sqlite", "path": str(folder / "readings.sqlite3")},
        "api": {"port": port, **QUICK_HASHING}})
    # The gateway keeps the simulated node's time. It starts first, so readings are never
    # "in the future" of its last-24-hours window.
    runtime = GatewayRuntime(settings, clock=AcceleratedClock(START, SPEED))
    context = runtime.start()
    add_user(context, OPERATOR, Role.OPERATOR, language="es")
    node_log = folder / "node.log"
    node = subprocess.Popen([sys.executable, "-m", "cacao_dryer.cli", "node", "run",
                             "--config", str(node_config(folder, broker))],
                            stdout=node_log.open("ab"), stderr=subprocess.STDOUT)
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--disable-dev-shm-usage"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        wait_for(lambda: runtime.ingest is not None and runtime.ingest.stats.stored >= 5, 30,
                 f"the first readings of the simulated node (log: {node_log})")
        yield System(f"http://127.0.0.1:{port}", runtime, node, node_log, browser)
    finally:
        browser.close()
        playwright.stop()
        node.terminate()
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        runtime.stop()
        broker.kill()


@pytest.fixture(scope="module")
def operator(system: System) -> Iterator[BrowserContext]:
    """A phone-sized browser with the operator logged in through the login page (pages opened
    from it share the session cookie)."""
    context = system.new_context(PHONE)
    page = system.watch(context.new_page())
    log_in(system, page)
    page.close()
    yield context
    context.close()
