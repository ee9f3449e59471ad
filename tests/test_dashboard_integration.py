"""The dashboard as one product, over FastAPI's TestClient against a real gateway context
(SQLite, a private Mosquitto): every main page sends its scripts the texts they use and no
other area's; one 403 page and one 404 page for every area; what a role may do decides what
the dryer page offers (``can``). The tare API is tested with the other dryer commands in
test_dashboard_operator.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.pages import add_dryers, page_client, page_config, page_gateway, visible_text

from dashboard.i18n import LANGUAGES, catalog, shared_keys
from gateway.api.deps import Actor, Role
from gateway.timeseries import StoredReading

ROOT = Path(__file__).parent.parent / "dashboard"
SITE, NODE = "demo", "secador-01"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
KEY_LITERAL = re.compile(r"""["']([a-z]+\.[a-z0-9_]+)["']""")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One dryer with a load-cell tray (its readings carry tray_mass_kg) and two ended
    batches, so every page has something to show."""
    with page_gateway(tmp_path_factory.mktemp("integration"), NOW) as context:
        add_dryers(context, [NODE], names={NODE: "Secador norte"},
                   site_name="Cooperativa Demo", first_seen=NOW - timedelta(days=2))
        context.store.write([StoredReading(
            site_id=SITE, node_id=NODE, seq=i + 1,
            measured_at=NOW - timedelta(hours=30) + timedelta(minutes=10 * i),
            fields={"air_temp_c": 45.0, "air_rh_pct": 50.0,
                    "bean_moisture_pct_wb": 55.0 - i * 0.2, "tray_mass_kg": 2.0})
            for i in range(170)])
        admin = page_client(context, Actor("ana", Role.ADMIN))
        batches = []
        for number, hours in ((1, 30), (2, 15)):
            started = NOW - timedelta(hours=hours)
            batch_id = admin.post("/api/batches", json={
                "site_id": SITE, "node_id": NODE, "lot_code": f"L-00{number}",
                "initial_moisture_pct_wb": 55,
                "started_at": started.isoformat()}).json()["batch_id"]
            assert admin.post(f"/api/batches/{batch_id}/end", json={
                "ended_at": (started + timedelta(hours=12)).isoformat()}).status_code == 200
            batches.append(batch_id)
        yield {"context": context, "batches": batches}


def main_pages(batches: list[str]) -> list[str]:
    first, second = batches
    return ["/", f"/nodes/{SITE}/{NODE}", "/alerts", "/batches", f"/batches/{first}",
            f"/batches/compare?ids={first},{second}", f"/batches/{first}/report",
            "/thresholds", "/audit", "/calibration", "/login"]


def script_keys(html: str, every_key: set[str]) -> set[str]:
    """The catalog keys written in the scripts the page loads."""
    keys: set[str] = set()
    for path in re.findall(r'<script src="/static/(js/[^"?]+)', html):
        keys |= set(KEY_LITERAL.findall((ROOT / "static" / path).read_text(encoding="utf-8")))
    return keys & every_key


def keys_in(value: object, every_key: set[str]) -> set[str]:
    """Catalog keys the server hands a script as data (a kind's or a field's text key)."""
    if isinstance(value, str):
        return {value} & every_key
    if isinstance(value, dict):
        return set().union(*(keys_in(v, every_key) for v in value.values()), set())
    if isinstance(value, list):
        return set().union(*(keys_in(v, every_key) for v in value), set())
    return set()


# --- each page's texts ----------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_sends_its_scripts_the_texts_they_use(site: dict[str, Any],
                                                         language: str) -> None:
    every_key = set(catalog(language))
    admin = page_client(site["context"], Actor("ana", Role.ADMIN), language)
    for path in main_pages(site["batches"]):
        answer = admin.get(path)
        assert answer.status_code == 200, path
        config = page_config(answer.text)
        texts = config["catalog"]
        assert texts.items() <= catalog(language).items(), path
        data = {k: v for k, v in config.items() if k != "catalog"}
        missing = (script_keys(answer.text, every_key) | keys_in(data, every_key)) - set(texts)
        assert sorted(missing) == [], path
        visible = visible_text(answer.text)
        assert not [k for k in every_key if f">{k}<" in visible], path


def test_a_page_carries_only_the_shared_texts_and_its_own_areas(site: dict[str, Any]) -> None:
    admin = page_client(site["context"], Actor("ana", Role.ADMIN))
    shared = shared_keys("es")

    def namespaces(path: str) -> set[str]:
        texts = page_config(admin.get(path).text)["catalog"]
        assert shared <= set(texts), path
        return {key.split(".")[0] for key in set(texts) - shared}

    assert namespaces("/") == set()
    assert namespaces("/login") == set()
    assert namespaces(f"/nodes/{SITE}/{NODE}") == {"operator", "alerts"}
    assert namespaces("/alerts") == {"alerts"}
    assert namespaces("/batches") == {"batches"}
    assert namespaces("/audit") == {"audit", "thresholds"}
    audit_texts = page_config(admin.get("/audit").text)["catalog"]
    assert not [k for k in audit_texts if k.startswith("thresholds.why_")]  # names only
    overview = admin.get("/", headers={"Accept-Encoding": "identity"})
    assert len(overview.content) < len(json.dumps(catalog("es"), ensure_ascii=False))


# --- one 403 page, one 404 page -------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_one_403_page_says_in_the_users_language_what_their_role_may_not_do(
        site: dict[str, Any], language: str) -> None:
    first = site["batches"][0]
    operator = page_client(site["context"], Actor("olga", Role.OPERATOR), language)
    texts = catalog(language)
    role = texts["role.operator"]
    for path, key in (("/thresholds", "thresholds.forbidden"), ("/audit", "audit.forbidden"),
                      (f"/batches/compare?ids={first},{site['batches'][1]}",
                       "batches.forbidden"), (f"/batches/{first}/report", "batches.forbidden")):
        answer = operator.get(path)
        assert answer.status_code == 403, path
        assert 'id="forbidden"' in answer.text, path
        assert texts["error.forbidden_title"] in answer.text, path
        assert texts[key].replace("{role}", role) in answer.text, path
        assert "L-001" not in answer.text  # nothing of the page leaks
    assert sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("forbidden.html")) == [
        "templates/forbidden.html"]


def test_one_404_page_names_what_is_unknown_and_links_back(site: dict[str, Any]) -> None:
    operator = page_client(site["context"], Actor("olga", Role.OPERATOR))
    texts = catalog("es")
    node = operator.get(f"/nodes/{SITE}/nadie")
    assert node.status_code == 404
    assert texts["error.not_found_node"].replace("{what}", f"{SITE}/nadie") in node.text
    assert f'<a href="/">← {texts["nav.overview"]}</a>' in node.text
    batch = operator.get("/batches/no-existe")
    assert batch.status_code == 404
    assert texts["batches.not_found"].replace("{what}", "no-existe") in batch.text
    assert f'<a href="/batches">← {texts["nav.batches"]}</a>' in batch.text
    assert sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("not_found.html")) == [
        "templates/not_found.html"]


# --- what the dryer page offers each role ---------------------------------------------------

@pytest.mark.parametrize(("role", "offered"), [(Role.OPERATOR, False), (Role.MANAGER, False),
                                               (Role.TECHNICIAN, True), (Role.ADMIN, True)])
def test_the_tare_and_override_controls_are_for_technicians_and_admins(
        site: dict[str, Any], role: Role, offered: bool) -> None:
    page = page_client(site["context"], Actor("x", role)).get(f"/nodes/{SITE}/{NODE}").text
    html = visible_text(page)  # not the texts for scripts
    texts = catalog("es")
    for element in ('id="tare-box"', 'id="tare-send"', 'id="override-form"'):
        assert (element in html) is offered, (role, element)
    assert (texts["operator.tare_empty_first"] in html) is offered
    templates = "".join(p.read_text(encoding="utf-8")
                        for p in (ROOT / "templates").rglob("*.html"))
    assert "role.value in" not in templates and "role.value ==" not in templates
