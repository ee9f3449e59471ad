"""Logins and roles for the gateway's API and dashboard (docs/security.md).

- ``passwords``: the password policy and argon2id hashing (re-hash on login).
- ``users``: accounts in the metadata database, every change audited.
- ``sessions``: server-side browser sessions (hashed random tokens, sliding expiry).
- ``tokens``: API tokens for machines.
- ``csrf``: origin and double-submit checks, pure functions.
- ``throttle``: failed-login rate limiting per username and per client address.
- ``roles``: the four roles and which grants which.

``build_auth(settings.api, clock)`` assembles them; the API keeps one on ``app.state.auth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cacao_dryer.clock import Clock
from gateway.auth.passwords import HashParameters, PasswordHashing
from gateway.auth.roles import Role
from gateway.auth.sessions import SESSION_COOKIE, Identity, SessionService
from gateway.auth.throttle import LoginThrottle
from gateway.auth.tokens import ApiTokenService
from gateway.auth.users import UserService
from gateway.config import ApiConfig

__all__ = ["SESSION_COOKIE", "Auth", "Identity", "Role", "build_auth", "hash_parameters",
           "user_service"]


@dataclass(frozen=True)
class Auth:
    users: UserService
    sessions: SessionService
    tokens: ApiTokenService
    throttle: LoginThrottle
    secure_cookies: bool
    trusted_origins: tuple[str, ...]


def hash_parameters(api: ApiConfig) -> HashParameters:
    return HashParameters(time_cost=api.password_time_cost, memory_kib=api.password_memory_kib,
                          parallelism=api.password_parallelism)


def user_service(api: ApiConfig, clock: Clock) -> UserService:
    """Users alone, as the CLI needs them."""
    return UserService(PasswordHashing(hash_parameters(api)), clock)


def build_auth(api: ApiConfig, clock: Clock) -> Auth:
    return Auth(
        users=user_service(api, clock),
        sessions=SessionService(clock, idle=timedelta(hours=api.session_idle_h),
                                lifetime=timedelta(days=api.session_max_days)),
        tokens=ApiTokenService(clock),
        throttle=LoginThrottle(clock, max_failures_per_user=api.login_max_failures,
                               max_failures_per_ip=api.login_max_failures_per_ip,
                               window=timedelta(minutes=api.login_window_min)),
        secure_cookies=api.secure_cookies,
        trusted_origins=tuple(api.trusted_origins))
