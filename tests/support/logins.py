"""Users for tests that go through the real login (the running gateway never acts as anyone
without one): cheap password hashing settings and a helper to add an account."""

from __future__ import annotations

from gateway.auth import user_service
from gateway.auth.roles import Role
from gateway.context import GatewayContext

# The smallest argon2id cost the settings allow: fast tests, same code path.
FAST_HASHING = {"password_time_cost": 2, "password_memory_kib": 19_456,
                "password_parallelism": 1}
PASSWORD = "secador-norte-2026"


def add_user(context: GatewayContext, username: str, role: Role = Role.OPERATOR,
             language: str = "es", password: str = PASSWORD) -> None:
    users = user_service(context.settings.api, context.clock)
    with context.metadata.session() as session:
        users.add(session, username, password, role, language, actor="test")
