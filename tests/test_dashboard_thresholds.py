"""The technicians' pages (/thresholds and /audit) over FastAPI's TestClient against a real
gateway context (SQLite metadata, a publisher on a private Mosquitto): who may open them
(anonymous → login page, operator → 403 page, technician and admin → the page, manager → the
audit log only), their texts in both languages, an explanation for every threshold, and the
API calls the page scripts make, with real logins, sessions and CSRF tokens."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.auth import logged_in_client
from support.pages import add_dryers, page_client, page_config, page_gateway, visible_text

from cacao_dryer.contract import Thresholds
from dashboard.i18n import LANGUAGES, catalog
from dashboard.pages.audit import ACTION_GROUPS, ACTION_TEXTS
from dashboard.pages.thresholds import FIELD_TEXTS, field_units
from dashboard.web import all_nav, nav_for
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext

SITE, NODE = "demo", "secador-01"
PAGES = ("/thresholds", "/audit")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayContext]:
    """A known site with one dryer, real SQLite metadata, a publisher on a private broker."""
    with page_gateway(tmp_path_factory.mktemp("technician-pages"),
                      datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) as context:
        add_dryers(context, [NODE], names={NODE: "Secador norte"},
                   site_name="Cooperativa Demo")
        yield context


# --- who may open the pages -------------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_an_anonymous_visitor_is_sent_to_the_login_page_and_sees_nothing(
        gateway: GatewayContext, path: str) -> None:
    with page_client(gateway, None) as anonymous:
        answer = anonymous.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next=%2F{path[1:]}"
        assert answer.text == ""
        for api in ("/api/thresholds/schema", "/api/thresholds/profiles",
                    "/api/thresholds/rollout", "/api/audit"):
            refused = anonymous.get(api)
            assert refused.status_code == 401, api
            assert refused.json() == {"detail": "log in first (POST /api/auth/login)"}
        put = anonymous.put("/api/thresholds/profiles",
                            json={"site_id": SITE, "values": {"air_temp_warn_c": 50}})
        assert put.status_code == 401


@pytest.mark.parametrize(("path", "key"), [("/thresholds", "thresholds.forbidden"),
                                           ("/audit", "audit.forbidden")])
@pytest.mark.parametrize("language", LANGUAGES)
def test_an_operator_gets_a_403_page_in_their_language(gateway: GatewayContext, path: str,
                                                       key: str, language: str) -> None:
    with page_client(gateway, Actor("olga", Role.OPERATOR, language=language)) as operator:
        answer = operator.get(path)
    assert answer.status_code == 403
    assert "text/html" in answer.headers["content-type"]
    texts = catalog(language)
    html = answer.text
    assert texts["error.forbidden_title"] in html
    assert texts[key].format(role=texts["role.operator"]) in html
    assert 'id="editor"' not in html and 'id="audit-list"' not in html
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")


def test_an_operator_cannot_change_thresholds_or_read_the_audit_log(
        gateway: GatewayContext) -> None:
    """With a real login and the session's CSRF token, as the page's script would send it."""
    operator = logged_in_client(gateway, Role.OPERATOR, "olga-op")
    before = operator.get("/api/thresholds/profiles").json()
    refused = operator.put("/api/thresholds/profiles",
                           json={"site_id": SITE, "values": {"air_temp_warn_c": 50}})
    assert (refused.status_code, refused.json()["detail"]) == (
        403, "operator may not do this (needs technician)")
    audit = operator.get("/api/audit")
    assert (audit.status_code, audit.json()["detail"]) == (
        403, "operator may not do this (needs technician or manager)")
    assert operator.get("/thresholds").status_code == 403
    assert operator.get("/api/thresholds/profiles").json() == before  # nothing was saved


@pytest.mark.parametrize(("role", "thresholds", "audit"), [
    (Role.TECHNICIAN, 200, 200), (Role.ADMIN, 200, 200), (Role.MANAGER, 403, 200)])
def test_who_opens_which_page_matches_the_api(gateway: GatewayContext, role: Role,
                                              thresholds: int, audit: int) -> None:
    """/thresholds is the editor: whoever may save (PUT, technician) opens it. The audit log
    is for technicians and managers, page and API alike."""
    with page_client(gateway, Actor("someone", role)) as client:
        assert client.get("/thresholds").status_code == thresholds
        assert client.get("/audit").status_code == audit
        assert client.get("/api/audit").status_code == audit
        saved = client.put("/api/thresholds/profiles",
                           json={"site_id": SITE, "values": {"air_temp_warn_c": 55}})
        assert saved.status_code == thresholds


def test_the_navigation_lists_the_pages_for_the_roles_that_may_open_them() -> None:
    def paths(role: Role) -> set[str]:
        return {item.path for item in nav_for(Actor("x", role))}

    assert {"/thresholds", "/audit"} <= paths(Role.TECHNICIAN)
    assert {"/thresholds", "/audit"} <= paths(Role.ADMIN)
    assert not {"/thresholds", "/audit"} & paths(Role.OPERATOR)
    assert "/thresholds" not in paths(Role.MANAGER)
    assert "/audit" in paths(Role.MANAGER)
    assert [item.path for item in nav_for(Actor("x", Role.ADMIN))].count("/audit") == 1
    orders = {item.path: item.order for item in all_nav()}
    assert (orders["/thresholds"], orders["/audit"]) == (40, 60)


# --- the pages --------------------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_the_thresholds_page_renders_in_each_language(gateway: GatewayContext,
                                                      language: str) -> None:
    with page_client(gateway, Actor("ana", Role.TECHNICIAN, language=language)) as client:
        answer = client.get("/thresholds")
    assert answer.status_code == 200
    texts = catalog(language)
    html = answer.text
    for key in ("thresholds.title", "thresholds.profiles_title", "thresholds.rollout_title",
                "thresholds.review", "thresholds.save", "thresholds.refresh", "nav.thresholds",
                "nav.audit"):
        assert texts[key] in html, key
    assert "/static/css/technician.css?v=" in html and "/static/js/thresholds.js?v=" in html
    assert 'aria-current="page">' + texts["nav.thresholds"] in html
    config = page_config(html)
    assert config["page"] == "thresholds"
    assert config["field_texts"]["air_temp_limit_c"] == {
        "name": "thresholds.name_air_temp_limit_c", "why": "thresholds.why_air_temp_limit_c"}
    wet = "% b.h." if language == "es" else "% w.b."
    assert config["field_units"]["target_moisture_pct_wb"] == wet
    assert config["field_units"]["max_drying_rate_pct_per_h"] == f"{wet}/h"
    assert config["field_units"]["air_temp_warn_c"] == "°C"
    assert not [k for k in texts if f">{k}<" in visible_text(html)]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_audit_page_renders_in_each_language(gateway: GatewayContext, language: str) -> None:
    with page_client(gateway, Actor("rosa", Role.MANAGER, language=language)) as client:
        answer = client.get("/audit")
    assert answer.status_code == 200
    texts = catalog(language)
    html = answer.text
    for key in ("audit.title", "audit.filter_actor", "audit.filter_action",
                "audit.filter_since", "audit.filter_until", "audit.older", "audit.newer",
                *ACTION_GROUPS.values()):
        assert texts[key] in html, key
    for prefix in ACTION_GROUPS:
        assert f'<option value="{prefix}">' in html
    config = page_config(html)
    assert config["action_texts"]["thresholds.update"] == "audit.action_thresholds_update"
    assert config["threshold_action"] == "thresholds.update"
    assert not [k for k in texts if f">{k}<" in visible_text(html)]


def test_the_page_scripts_and_styles_are_served(gateway: GatewayContext) -> None:
    with page_client(gateway, Actor("ana", Role.TECHNICIAN)) as client:
        for page in PAGES:
            for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', client.get(page).text):
                answer = client.get(url)
                assert answer.status_code == 200, url
                assert answer.headers["cache-control"].endswith("immutable"), url


# --- every threshold explained ----------------------------------------------------------------

def test_every_threshold_has_a_name_and_an_explanation_in_every_language() -> None:
    assert list(FIELD_TEXTS) == list(Thresholds.model_fields)
    for language in LANGUAGES:
        texts = catalog(language)
        for field, (name_key, why_key) in FIELD_TEXTS.items():
            assert name_key == f"thresholds.name_{field}" and why_key == f"thresholds.why_{field}"
            assert texts.get(name_key, "").strip(), (language, name_key)
            assert len(texts.get(why_key, "")) >= 40, (language, why_key)  # a real sentence
    # and they differ between the languages (translated, not copied)
    assert sum(catalog("es")[k] != catalog("en")[k]
               for keys in FIELD_TEXTS.values() for k in keys) >= 2 * len(FIELD_TEXTS) - 2


def test_every_unit_is_written_the_languages_way() -> None:
    for language in LANGUAGES:
        units = field_units(language)
        assert set(units) == set(Thresholds.model_fields)
        assert all(units.values())
    assert field_units("es")["over_dry_moisture_pct_wb"] == "% b.h."
    assert field_units("en")["fan_min_on_s"] == "s"


def test_every_recorded_action_has_words(gateway: GatewayContext) -> None:
    """The actions the gateway's code writes to the audit log are all named on the page."""
    root = Path(__file__).parent.parent / "gateway"
    written = set()
    for path in root.rglob("*.py"):
        written |= set(re.findall(
            r'"((?:thresholds|batch|node|alert|user|calibration)\.[a-z_]+)"',
            path.read_text(encoding="utf-8")))
    written -= {"alert.opened", "alert.closed", "alert.updated"}  # webhook kinds, not audit
    written = {action for action in written  # file names (node.toml) are not actions
               if action.rsplit(".", 1)[1] not in {"toml", "json", "py", "csv", "txt"}}
    assert written and written <= set(ACTION_TEXTS), sorted(written - set(ACTION_TEXTS))


# --- the API calls the page makes -------------------------------------------------------------

def test_a_technician_saves_through_the_session_and_sees_the_new_version(
        gateway: GatewayContext) -> None:
    technician = logged_in_client(gateway, Role.TECHNICIAN, "tomas")
    out_of_range = technician.put("/api/thresholds/profiles", json={
        "site_id": SITE, "node_id": NODE, "values": {"air_temp_limit_c": 80}})
    assert out_of_range.status_code == 422
    detail = out_of_range.json()["detail"]
    assert detail.startswith("values.air_temp_limit_c: ") and "\n" not in detail
    inconsistent = technician.put("/api/thresholds/profiles", json={
        "site_id": SITE, "node_id": NODE, "values": {"air_temp_warn_c": 62}})
    assert inconsistent.status_code == 422
    assert "air_temp_warn_c <= air_temp_alarm_c" in inconsistent.json()["detail"]

    saved = technician.put("/api/thresholds/profiles", json={
        "site_id": SITE, "node_id": NODE, "stage": "early",
        "values": {"early_phase_max_air_temp_c": 42}, "comment": "techo nuevo"})
    assert saved.status_code == 200
    body = saved.json()
    assert body["created"] is True and body["profile"]["latest"]["version"] == 1
    listed = {p["target"]: p for p in technician.get("/api/thresholds/profiles").json()}
    assert listed[f"{SITE}/{NODE}/early"]["latest"]["created_by"] == "tomas"
    rows = {r["node_id"]: r for r in technician.get("/api/thresholds/rollout").json()}
    assert rows[NODE]["state"] in {"unmanaged", "pending", "unpublished"}

    without_token = TestClient(create_app(gateway))
    without_token.cookies = technician.cookies
    refused = without_token.put("/api/thresholds/profiles", json={
        "site_id": SITE, "values": {"air_temp_warn_c": 50}})
    assert refused.status_code == 403  # no CSRF token: refused before anything is saved

    audit = technician.get("/api/audit", params={"action": "thresholds.update",
                                                 "target": f"{SITE}/{NODE}"}).json()
    newest = audit["entries"][0]
    assert (newest["actor"], newest["detail"]) == ("tomas", "techo nuevo")
    assert newest["new"]["changes"] == {"early_phase_max_air_temp_c": [None, 42.0]}
