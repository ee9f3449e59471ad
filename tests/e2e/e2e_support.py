"""What the browser tests share: the simulated site's constants, the running system, and how
a person logs in. The fixtures that start it all are in conftest.py."""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import tomli_w
from playwright.sync_api import Browser, BrowserContext, Page
from support.auth import PASSWORD, add_user
from support.mosquitto import MosquittoBroker

from gateway.auth.roles import Role
from gateway.runtime import GatewayRuntime

REPO = Path(__file__).parent.parent.parent
EXAMPLE = REPO / "firmware" / "examples" / "simulated.toml"
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/bootstrap.sh installs it)

SITE, NODE = "demo", "secador-01"
# 06:00 in Lima: the drying day starts. At 120x a reading every 30 simulated seconds arrives
# four times a real second, and a minute of test is two hours of drying.
START = datetime.fromisoformat("2026-01-10T11:00:00+00:00")
SPEED = 120.0
OPERATOR = "olga"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class System:
    base_url: str
    runtime: GatewayRuntime
    node: subprocess.Popen[bytes]
    node_log: Path
    browser: Browser
    requests: list[str] = field(default_factory=list)   # every URL any watched page asked for
    problems: list[str] = field(default_factory=list)   # console errors and script errors

    def watch(self, page: Page, *, console: bool = True) -> Page:
        """Record the page's requests and (unless a test provokes errors on purpose) its
        console errors and uncaught script errors."""
        page.on("request", lambda request: self.requests.append(request.url))
        if console:
            page.on("console", lambda message: self.problems.append(
                f"{page.url}: {message.text}") if message.type == "error" else None)
            page.on("pageerror", lambda error: self.problems.append(f"{page.url}: {error}"))
        return page

    def new_context(self, viewport: dict[str, int] = PHONE, **options: object
                    ) -> BrowserContext:
        return self.browser.new_context(base_url=self.base_url, viewport=viewport,  # type: ignore[arg-type]
                                        **options)  # type: ignore[arg-type]


def node_config(folder: Path, broker: MosquittoBroker) -> Path:
    """The example simulated node, renamed, accelerated and pointed at the private broker."""
    data = tomllib.loads(EXAMPLE.read_text())
    data |= {"node_id": NODE, "site_id": SITE, "data_dir": str(folder / "node"),
             "sample_interval_s": 30.0, "status_interval_s": 120.0}
    data["mqtt"] = {"broker": broker.url, "protocol": "5"}
    data["simulation"] |= {"speed": SPEED, "start": START.isoformat(), "seed": 4}
    path = folder / "node.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def log_in(system: System, page: Page, next_path: str = "/", username: str = OPERATOR) -> None:
    """Through the login page, as a person would."""
    page.goto(f"/login?next={next_path}")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{system.base_url}{next_path}")


def logged_in_context(system: System, username: str, role: Role, next_path: str = "/",
                      viewport: dict[str, int] = PHONE, **options: object) -> BrowserContext:
    """A new user with ``role`` (Spanish), and a browser (phone-sized unless said otherwise)
    logged in as them through the login page; pages opened from it share the session."""
    assert system.runtime.context is not None
    add_user(system.runtime.context, username, role, language="es")
    context = system.new_context(viewport, **options)
    page = system.watch(context.new_page())
    log_in(system, page, next_path, username)
    page.close()
    return context


def shot(page: Page, name: str) -> None:
    """A full-page screenshot in test-artifacts/dashboard/."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def first_load_bytes(system: System, path: str, ready: str, *, logged_in: bool = True,
                     username: str = OPERATOR, settle_ms: int = 0) -> dict[str, object]:
    """What the browser transferred for a first visit with an empty cache: every response
    (page, styles, scripts, icon, the API answers the page asks for), compressed as sent,
    headers included; the endless /api/live stream is left out. ``ready`` is a JavaScript
    function that is true once the page's script has filled it."""
    context = system.new_context(PHONE)
    if logged_in:
        assert context.request.post("/api/auth/login", data={
            "username": username, "password": PASSWORD}).ok
    page = system.watch(context.new_page())
    page.goto(path)
    page.wait_for_function(ready)
    page.wait_for_timeout(settle_ms)  # answers still on their way count too
    entries = page.evaluate("""() => [
        ...performance.getEntriesByType('navigation'),
        ...performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/live'))
      ].map(e => ({name: e.name.split('?')[0], bytes: e.transferSize,
                   body: e.encodedBodySize, decoded: e.decodedBodySize}))""")
    context.close()
    return {"total_bytes": sum(e["bytes"] for e in entries),
            "decoded_bytes": sum(e["decoded"] for e in entries), "entries": entries}
