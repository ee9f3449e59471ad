"""The dashboard's pages in tests: one real gateway context a test module's pages share (a
private Mosquitto, SQLite readings and metadata, a hand-driven clock), its dryers with their
names, a TestClient acting as one user, and what a page hands its scripts and shows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cacao_dryer.clock import ManualClock
from dashboard.i18n import LANGUAGE_COOKIE
from gateway.api.app import create_app
from gateway.api.deps import Actor
from gateway.context import GatewayContext
from gateway.metadata.models import Node, Site
from gateway.registry import ensure_nodes
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker

SITE = "demo"  # the one site support.gateway_context configures


@contextmanager
def page_gateway(folder: Path, now: datetime) -> Iterator[GatewayContext]:
    """A real gateway context in ``folder`` (a private Mosquitto, SQLite readings and
    metadata) whose clock stands at ``now`` until a test moves it; meant for a module-scoped
    fixture, since pages mostly read (each test has its own app and cookies)."""
    broker = MosquittoBroker(folder / "mosquitto")
    broker.start()
    try:
        with gateway_context(folder / "gateway", broker,
                             f"sqlite:///{folder / 'metadata.sqlite3'}",
                             ManualClock(now)) as context:
            yield context
    finally:
        broker.kill()


def add_dryers(context: GatewayContext, node_ids: Iterable[str], *,
               names: Mapping[str, str] | None = None, site_name: str | None = None,
               first_seen: datetime | None = None) -> None:
    """Dryers of ``SITE`` known to the gateway since ``first_seen`` (default: the clock's
    now), with the names a manager gave some of them and the site's own name."""
    with context.metadata.session() as session:
        ensure_nodes(session, {(SITE, node_id) for node_id in node_ids},
                     first_seen or context.clock.now())
        for node_id, name in (names or {}).items():
            node = session.get(Node, (SITE, node_id))
            assert node is not None, f"{SITE}/{node_id} is not among the dryers added"
            node.name = name
        if site_name is not None:
            site = session.get(Site, SITE)
            assert site is not None
            site.name = site_name


def page_client(context: GatewayContext, actor: Actor | None,
                language: str | None = None) -> TestClient:
    """A browser acting as ``actor`` (``None``: nobody logged in) without logging in; it does
    not follow redirects, so a test sees where a page sends it. ``language`` sets the
    language switch's cookie."""
    client = TestClient(create_app(context, local_actor=actor), follow_redirects=False)
    if language is not None:
        client.cookies.set(LANGUAGE_COOKIE, language)
    return client


def page_config(html: str) -> dict[str, Any]:
    """What the page hands its scripts (its ``<script id="page-config">`` JSON)."""
    found = re.search(r'<script type="application/json" id="page-config">(.*?)</script>',
                      html, re.S)
    assert found, "page has no config"
    config: dict[str, Any] = json.loads(found.group(1))
    return config


def visible_text(html: str) -> str:
    """The page without its scripts (whose texts for the scripts a person does not see)."""
    return re.sub(r"<script.*?</script>", "", html, flags=re.S)
