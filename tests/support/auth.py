"""Logged-in API clients for tests: real users in the real metadata database, logged in
through the real ``POST /api/auth/login``.

Hashing uses OWASP's minimum argon2id parameters (19 MiB, t=2, p=1: ~0.05 s a hash instead of
~0.25 s), a configuration the gateway accepts in production too.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.auth import Role, user_service
from gateway.context import GatewayContext

PASSWORD = "secador-norte-2026"
QUICK_HASHING = {"password_time_cost": 2, "password_memory_kib": 19_456,
                 "password_parallelism": 1}


def api_settings(context: GatewayContext, **changes: object) -> GatewayContext:
    """The context with ``[api]`` settings changed (quick hashing unless said otherwise);
    apply before ``create_app``."""
    api = context.settings.api.model_copy(update={**QUICK_HASHING, **changes})
    context.settings = context.settings.model_copy(update={"api": api})
    return context


def add_user(context: GatewayContext, username: str, role: Role | str,
             password: str = PASSWORD, language: str = "es") -> None:
    users = user_service(context.settings.api, context.clock)
    with context.metadata.session() as db:
        users.add(db, username, password, role, language, actor="test")


def log_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Log ``client`` in (its cookie jar keeps the session); returns the CSRF token."""
    response = client.post("/api/auth/login", json={"username": username,
                                                    "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


def logged_in_client(context: GatewayContext, role: Role | str, username: str | None = None,
                     **client_options: object) -> TestClient:
    """A new user with ``role``, logged in; the client sends the CSRF token with every
    request, as the dashboard's scripts do."""
    api_settings(context)  # keeps earlier changes to [api]
    username = username or f"{Role(role).value}-user"
    add_user(context, username, role)
    client = TestClient(create_app(context), **client_options)  # type: ignore[arg-type]
    client.headers["X-CSRF-Token"] = log_in(client, username)
    return client
