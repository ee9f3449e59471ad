"""Browser sessions kept on the server: a random 256-bit token in an HttpOnly cookie, its
SHA-256 in the database (``login_sessions``), a per-session CSRF token beside it.

A session ends after ``idle`` without a request (sliding), after ``lifetime`` in any case, at
logout, or when its user is disabled or gets a new password. Nothing is signed, so the gateway
has no secret key to keep or leak. Activity is written at most once a minute per session, to
spare the SD card of a Raspberry Pi.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from cacao_dryer.clock import Clock
from gateway.auth.roles import Role
from gateway.metadata.models import LoginSession, User

SESSION_COOKIE = "cacao_session"
TOUCH_EVERY = timedelta(seconds=60)


def token_digest(token: str) -> str:
    """What the database keeps of a session or API token: its SHA-256, hex. A 256-bit random
    token needs no salt or slow hash: it cannot be guessed, only stolen."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who a request comes from, as established by a session cookie or an API token."""

    user_id: int
    username: str
    role: Role
    language: str
    via: str  # "session" or "token"
    session_key: str | None = None  # the session's token digest (to log out, keep on change)
    csrf_token: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class NewSession:
    token: str          # goes into the cookie, never stored
    csrf_token: str     # goes to the page, sent back with every change
    expires_at: datetime
    identity: Identity


def revoke_sessions(db: Session, user_id: int, keep: str | None = None) -> int:
    """End every browser session of a user (but ``keep``); returns how many ended."""
    query = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep is not None:
        query = query.where(LoginSession.token_sha256 != keep)
    return int(db.execute(query).rowcount or 0)  # type: ignore[attr-defined]


class SessionService:
    def __init__(self, clock: Clock, *, idle: timedelta, lifetime: timedelta) -> None:
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime

    def start(self, db: Session, user: User, *, client_ip: str = "", user_agent: str = ""
              ) -> NewSession:
        now = self.clock.now()
        db.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
        token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        absolute = now + self.lifetime
        row = LoginSession(token_sha256=token_digest(token), user_id=user.user_id,
                           csrf_token=csrf_token, created_at=now, last_seen_at=now,
                           expires_at=min(now + self.idle, absolute),
                           absolute_expires_at=absolute, client_ip=client_ip[:45],
                           user_agent=user_agent[:200])
        db.add(row)
        db.flush()
        return NewSession(token=token, csrf_token=csrf_token, expires_at=row.expires_at,
                          identity=self._identity(row, user))

    def resolve(self, db: Session, token: str) -> Identity | None:
        """The session's user, or None if the token is unknown, expired or its user disabled
        (an expired or orphaned row is deleted on the way)."""
        if not token or len(token) > 200:
            return None
        row = db.get(LoginSession, token_digest(token))
        if row is None:
            return None
        now = self.clock.now()
        user = db.get(User, row.user_id)
        if row.expires_at <= now or row.absolute_expires_at <= now or user is None \
                or user.disabled:
            db.delete(row)
            return None
        if now - row.last_seen_at >= TOUCH_EVERY:
            row.last_seen_at = now
            row.expires_at = min(now + self.idle, row.absolute_expires_at)
        return self._identity(row, user)

    def end(self, db: Session, session_key: str) -> None:
        db.execute(delete(LoginSession).where(LoginSession.token_sha256 == session_key))

    @staticmethod
    def _identity(row: LoginSession, user: User) -> Identity:
        return Identity(user_id=user.user_id, username=user.username, role=Role(user.role),
                        language=user.language, via="session", session_key=row.token_sha256,
                        csrf_token=row.csrf_token, expires_at=row.expires_at)
