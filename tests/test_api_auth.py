"""Logins, roles, CSRF and users through the HTTP API, on a real gateway context (SQLite
metadata, private Mosquitto) and the real login endpoint."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.routing import Route
from support.auth import PASSWORD, add_user, api_settings, log_in, logged_in_client

from cacao_dryer.contract import NodeState, NodeStatus
from gateway.api.app import create_app
from gateway.api.deps import PUBLIC_PATHS
from gateway.auth import Role
from gateway.auth.sessions import token_digest
from gateway.context import GatewayContext
from gateway.metadata.models import ApiToken, AuditEntry, LoginSession
from gateway.registry import NodeRegistry

SITE, NODE = "demo", "secador-01"
RENAME = f"/api/nodes/{SITE}/{NODE}"


@pytest.fixture
def with_node(gateway: GatewayContext) -> GatewayContext:
    NodeRegistry(gateway.metadata, gateway.clock).batch_received(
        [], [NodeStatus(site_id=SITE, node_id=NODE, state=NodeState.ONLINE)], [])
    return api_settings(gateway)


def _client(context: GatewayContext, **options: object) -> TestClient:
    return TestClient(create_app(api_settings(context)), **options)  # type: ignore[arg-type]


def _cookie_header(response) -> str:  # type: ignore[no-untyped-def]
    return next(v for k, v in response.headers.multi_items() if k == "set-cookie")


# --- logging in -------------------------------------------------------------------------

def test_login_sets_an_httponly_samesite_cookie_and_returns_a_csrf_token(
        gateway: GatewayContext) -> None:
    client = _client(gateway)
    add_user(gateway, "ana", Role.TECHNICIAN, language="qu")
    response = client.post("/api/auth/login", json={"username": "Ana", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert (body["username"], body["role"], body["language"]) == ("ana", "technician", "qu")
    assert len(body["csrf_token"]) >= 43
    cookie = _cookie_header(response)
    assert cookie.startswith("cacao_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback, secure_cookies off
    me = client.get("/api/auth/me").json()
    assert (me["username"], me["via"], me["csrf_token"]) == ("ana", "session",
                                                             body["csrf_token"])


def test_the_cookie_is_secure_over_https(gateway: GatewayContext) -> None:
    add_user(api_settings(gateway), "ana", Role.OPERATOR)
    client = _client(gateway, base_url="https://gateway.local")
    response = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD})
    assert "Secure" in _cookie_header(response)
    assert client.get("/api/nodes").status_code == 200


def test_the_cookie_is_secure_behind_a_tls_proxy_when_configured(
        gateway: GatewayContext) -> None:
    client = _client(api_settings(gateway, secure_cookies=True))
    add_user(gateway, "ana", Role.OPERATOR)
    response = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD})
    assert "Secure" in _cookie_header(response)


@pytest.mark.parametrize("username", ["ana", "nobody"])
def test_a_wrong_login_is_401_with_one_uniform_line(gateway: GatewayContext,
                                                    username: str) -> None:
    client = _client(gateway)
    add_user(gateway, "ana", Role.ADMIN)
    response = client.post("/api/auth/login", json={"username": username,
                                                    "password": "not-the-password"})
    assert response.status_code == 401
    assert response.json() == {"detail": "wrong username or password"}
    assert "set-cookie" not in response.headers


def test_a_disabled_user_cannot_log_in(gateway: GatewayContext) -> None:
    admin = logged_in_client(gateway, Role.ADMIN, "ana")
    add_user(gateway, "olga", Role.OPERATOR)
    assert admin.patch("/api/users/olga", json={"disabled": True}).status_code == 200
    response = admin.post("/api/auth/login", json={"username": "olga", "password": PASSWORD})
    assert response.status_code == 403 and "disabled" in response.json()["detail"]


def test_five_failures_lock_the_login_then_it_recovers(gateway: GatewayContext) -> None:
    client = _client(gateway)
    add_user(gateway, "ana", Role.ADMIN)
    for _ in range(5):
        assert client.post("/api/auth/login", json={"username": "ana",
                                                    "password": "guess-guess"}
                           ).status_code == 401
    locked = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD})
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "900"
    assert locked.json()["detail"] == "too many failed logins: try again in 900 s"
    gateway.clock.advance(15 * 60)
    assert client.post("/api/auth/login", json={"username": "ana",
                                                "password": PASSWORD}).status_code == 200


def test_one_address_trying_many_usernames_is_locked(gateway: GatewayContext) -> None:
    client = _client(api_settings(gateway, login_max_failures_per_ip=8))
    add_user(gateway, "ana", Role.ADMIN)
    for number in range(8):
        client.post("/api/auth/login", json={"username": f"guess-{number}",
                                             "password": "guess-guess"})
    response = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0


def test_a_plain_html_form_logs_in_and_goes_to_the_next_page(gateway: GatewayContext) -> None:
    client = _client(gateway, follow_redirects=False)
    add_user(gateway, "ana", Role.OPERATOR)
    wrong = client.post("/api/auth/login", data={"username": "ana", "password": "nope-nope!",
                                                 "next": "/nodes/demo/secador-01"})
    assert wrong.status_code == 303
    assert wrong.headers["location"] == "/login?error=wrong&next=%2Fnodes%2Fdemo%2Fsecador-01"
    right = client.post("/api/auth/login", data={"username": "ana", "password": PASSWORD,
                                                 "next": "//evil.example/"})
    assert right.status_code == 303 and right.headers["location"] == "/"
    assert client.get("/api/auth/me").json()["username"] == "ana"


def test_logging_in_again_replaces_the_old_session(gateway: GatewayContext) -> None:
    client = logged_in_client(gateway, Role.OPERATOR, "olga")
    first = client.cookies["cacao_session"]
    log_in(client, "olga")
    assert client.cookies["cacao_session"] != first
    with gateway.metadata.session() as session:
        assert session.scalars(select(LoginSession.token_sha256)).all() == [
            token_digest(client.cookies["cacao_session"])]


def test_logout_ends_the_session_on_the_server(gateway: GatewayContext) -> None:
    client = logged_in_client(gateway, Role.OPERATOR)
    cookie = client.cookies["cacao_session"]
    assert client.post("/api/auth/logout").status_code == 204
    thief = _client(gateway)
    thief.cookies.set("cacao_session", cookie)
    assert thief.get("/api/nodes").status_code == 401
    with gateway.metadata.session() as session:
        assert session.scalar(select(LoginSession.token_sha256)) is None


def test_a_session_ends_after_12_idle_hours(gateway: GatewayContext) -> None:
    client = logged_in_client(gateway, Role.OPERATOR)
    gateway.clock.advance(12 * 3600 + 1)
    response = client.get("/api/nodes")
    assert response.status_code == 401
    assert response.json()["detail"] == "session expired or ended: log in again"



def test_with_a_session_clock_logins_keep_their_own_time(gateway: GatewayContext) -> None:
    """The demo's drying clock runs 600x fast; its logins follow the wall clock instead
    (``session_clock``), so a week of drying time does not end a session."""
    from cacao_dryer.clock import ManualClock

    gateway.session_clock = ManualClock(gateway.clock.now())
    client = logged_in_client(gateway, Role.OPERATOR)
    gateway.clock.advance(7 * 24 * 3600)
    assert client.get("/api/nodes").status_code == 200
    gateway.session_clock.advance(12 * 3600 + 1)
    assert client.get("/api/nodes").status_code == 401

# --- CSRF -------------------------------------------------------------------------------

def test_a_change_without_the_csrf_token_is_refused(with_node: GatewayContext) -> None:
    client = logged_in_client(with_node, Role.TECHNICIAN)
    token = client.headers.pop("X-CSRF-Token")
    missing = client.patch(RENAME, json={"name": "Secador norte"})
    assert missing.status_code == 403
    assert missing.json()["detail"].startswith("CSRF token missing: send the X-CSRF-Token")
    wrong = client.patch(RENAME, json={"name": "Secador norte"},
                         headers={"X-CSRF-Token": token[::-1]})
    assert wrong.status_code == 403
    assert wrong.json()["detail"] == "CSRF token does not match this session: reload the page"
    right = client.patch(RENAME, json={"name": "Secador norte"},
                         headers={"X-CSRF-Token": token})
    assert right.status_code == 200 and right.json()["name"] == "Secador norte"
    assert client.get(RENAME).status_code == 200  # reading needs no token


def test_a_form_may_carry_the_csrf_token_as_a_field(gateway: GatewayContext) -> None:
    client = logged_in_client(gateway, Role.OPERATOR)
    token = client.headers.pop("X-CSRF-Token")
    assert client.post("/api/auth/logout", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/api/auth/logout", data={"csrf_token": token}).status_code == 204


def test_a_change_from_another_site_is_refused_even_with_the_token(
        with_node: GatewayContext) -> None:
    client = logged_in_client(with_node, Role.TECHNICIAN)
    response = client.patch(RENAME, json={"name": "x"},
                            headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json()["detail"] == ("cross-site request refused: origin "
                                         "https://evil.example is not this gateway")
    same_site = client.patch(RENAME, json={"name": "Secador 1"},
                             headers={"Origin": "http://testserver"})
    assert same_site.status_code == 200


def test_a_login_form_on_another_site_is_refused(gateway: GatewayContext) -> None:
    client = _client(gateway)
    add_user(gateway, "ana", Role.OPERATOR)
    response = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


# --- roles ------------------------------------------------------------------------------

def test_an_operator_cannot_change_what_needs_a_technician(with_node: GatewayContext) -> None:
    operator = logged_in_client(with_node, Role.OPERATOR, "olga")
    rename = operator.patch(RENAME, json={"name": "Secador norte"})
    assert rename.status_code == 403
    assert rename.json()["detail"] == "operator may not do this (needs technician)"
    override = operator.post(f"{RENAME}/override", json={"fan_speed_pct": 80,
                                                         "duration_s": 600})
    assert override.status_code == 403
    thresholds = operator.put("/api/thresholds/profiles",
                              json={"site_id": SITE, "values": {"max_air_temp_c": 60}})
    assert thresholds.status_code == 403  # the role is checked before the body is looked at
    assert thresholds.json()["detail"] == "operator may not do this (needs technician)"
    assert operator.get(RENAME).status_code == 200  # but may look
    technician = logged_in_client(with_node, Role.TECHNICIAN, "teo")
    assert technician.patch(RENAME, json={"name": "Secador norte"}).status_code == 200
    with with_node.metadata.session() as session:
        assert session.scalars(select(AuditEntry.actor).where(
            AuditEntry.action == "node.update")).all() == ["teo"]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "1" if "id}" in m.group(0) and "_id" not in
                  m.group(0) else "x", path)


def _every_route(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, however deeply routers are included."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.120: lazy inclusion
    except ImportError:
        found = [(r.path, set(r.methods or ())) for r in app.routes
                 if isinstance(r, APIRoute | Route)]
    else:
        found = [(c.path, set(c.methods or ())) for c in iter_route_contexts(app.routes)
                 if c.path is not None and c.methods]
    return found


def test_an_anonymous_caller_sees_nothing_on_any_route(with_node: GatewayContext) -> None:
    app = create_app(with_node)
    anonymous = TestClient(app, follow_redirects=False)
    checked = []
    for path, methods in _every_route(app):
        if path in PUBLIC_PATHS:
            continue
        for method in methods - {"HEAD"}:
            response = anonymous.request(method, _concrete(path), json={})
            where = f"{method} {path}"
            if path.startswith("/api/"):
                assert response.status_code == 401, where
                assert response.json()["detail"] == "log in first (POST /api/auth/login)"
            else:  # a dashboard page sends the browser to the login page
                assert response.status_code == 303, where
                assert response.headers["location"].startswith("/login?next="), where
            checked.append(where)
    assert {"GET /api/nodes", "PATCH /api/nodes/{site_id}/{node_id}", "GET /api/users",
            "POST /api/auth/logout", "GET /api/auth/me"} <= set(checked)
    for public in ("/api/health", "/metrics", "/openapi.json"):
        assert anonymous.get(public).status_code == 200


def test_every_role_logs_in_and_reads(with_node: GatewayContext) -> None:
    for role in Role:
        client = logged_in_client(with_node, role)
        assert client.get("/api/nodes").status_code == 200, role
        assert client.get("/api/auth/me").json()["role"] == role.value


# --- users and tokens -------------------------------------------------------------------

def test_only_an_admin_manages_users(gateway: GatewayContext) -> None:
    manager = logged_in_client(gateway, Role.MANAGER)
    assert manager.get("/api/users").status_code == 403
    assert manager.post("/api/users", json={"username": "x1", "password": PASSWORD,
                                            "role": "admin"}).status_code == 403
    admin = logged_in_client(gateway, Role.ADMIN, "ana")
    created = admin.post("/api/users", json={"username": "Olga", "password": PASSWORD,
                                             "role": "operator", "language": "en"})
    assert created.status_code == 201
    assert created.json()["username"] == "olga" and "password" not in created.text
    assert [u["username"] for u in admin.get("/api/users").json()] == ["ana", "manager-user",
                                                                       "olga"]
    duplicate = admin.post("/api/users", json={"username": "olga", "password": PASSWORD,
                                               "role": "operator"})
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"] == "user 'olga' already exists"
    weak = admin.post("/api/users", json={"username": "pedro", "password": "pedro",
                                          "role": "operator"})
    assert weak.status_code == 422
    assert weak.json()["detail"] == "password too short: at least 10 characters"
    with gateway.metadata.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.target == "olga")).one()
    assert (entry.actor, entry.action, entry.new) == (
        "ana", "user.add", {"role": "operator", "language": "en", "disabled": False})


def test_disabling_a_user_ends_their_session_at_once(gateway: GatewayContext) -> None:
    operator = logged_in_client(gateway, Role.OPERATOR, "olga")
    admin = logged_in_client(gateway, Role.ADMIN, "ana")
    assert operator.get("/api/nodes").status_code == 200
    assert admin.patch("/api/users/olga", json={"disabled": True}).status_code == 200
    assert operator.get("/api/nodes").status_code == 401


def test_a_role_change_applies_to_the_open_session(with_node: GatewayContext) -> None:
    user = logged_in_client(with_node, Role.OPERATOR, "olga")
    admin = logged_in_client(with_node, Role.ADMIN, "ana")
    assert user.patch(RENAME, json={"name": "n"}).status_code == 403
    assert admin.patch("/api/users/olga", json={"role": "technician"}).status_code == 200
    assert user.patch(RENAME, json={"name": "n"}).status_code == 200


def test_the_last_admin_cannot_lock_everyone_out(gateway: GatewayContext) -> None:
    admin = logged_in_client(gateway, Role.ADMIN, "ana")
    response = admin.patch("/api/users/ana", json={"disabled": True})
    assert response.status_code == 409
    assert response.json()["detail"] == ("'ana' is the only enabled admin: make another admin "
                                         "first")


def test_changing_my_password_keeps_this_session_and_ends_the_others(
        gateway: GatewayContext) -> None:
    here = logged_in_client(gateway, Role.OPERATOR, "olga")
    elsewhere = _client(gateway)
    elsewhere.headers["X-CSRF-Token"] = log_in(elsewhere, "olga")
    wrong = here.patch("/api/auth/me", json={"current_password": "not-it-at-all",
                                             "new_password": "another-long-one"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "current password is wrong"
    changed = here.patch("/api/auth/me", json={"current_password": PASSWORD,
                                               "new_password": "another-long-one",
                                               "language": "en"})
    assert changed.status_code == 200 and changed.json()["language"] == "en"
    assert here.get("/api/auth/me").status_code == 200
    assert elsewhere.get("/api/auth/me").status_code == 401
    fresh = _client(gateway)
    assert fresh.post("/api/auth/login", json={"username": "olga", "password": PASSWORD}
                      ).status_code == 401
    log_in(fresh, "olga", "another-long-one")


def test_an_api_token_works_without_csrf_until_revoked(with_node: GatewayContext) -> None:
    admin = logged_in_client(with_node, Role.ADMIN, "ana")
    add_user(with_node, "erp", Role.TECHNICIAN)
    created = admin.post("/api/users/erp/tokens", json={"name": "ERP", "expires_days": 365})
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["token_id"]
    machine = _client(with_node)
    machine.headers["Authorization"] = f"Bearer {token}"
    assert machine.patch(RENAME, json={"name": "Secador ERP"}).status_code == 200
    assert machine.get("/api/auth/me").json()["via"] == "token"
    listed = admin.get("/api/users/erp/tokens").json()
    assert [t["name"] for t in listed] == ["ERP"] and "token" not in listed[0]
    with with_node.metadata.session() as session:
        assert token not in session.scalars(select(ApiToken.token_sha256)).all()
    assert admin.delete(f"/api/users/erp/tokens/{token_id}").status_code == 204
    refused = machine.get("/api/nodes")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
