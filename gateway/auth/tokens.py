"""API tokens for machines (Grafana, a cooperative's ERP): ``Authorization: Bearer cdt_...``.

A token acts as the user it belongs to, with that user's role, and stops working when the
user is disabled, the token expires or an administrator revokes it. Only its SHA-256 is kept;
the token itself is shown once, when it is created. Requests with a token need no CSRF token
(browsers never attach ``Authorization`` on their own, so a foreign page cannot forge one).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cacao_dryer.clock import Clock
from gateway.auth.errors import InvalidAccountInput, UnknownUserError
from gateway.auth.roles import Role
from gateway.auth.sessions import TOUCH_EVERY, Identity, token_digest
from gateway.metadata.models import ApiToken, AuditEntry, User

TOKEN_PREFIX = "cdt_"  # recognisable in a leaked file or a secret scanner's report
MAX_TOKEN_DAYS = 3650


class ApiTokenService:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def create(self, db: Session, user: User, name: str, *, expires_days: int | None,
               actor: str) -> tuple[str, ApiToken]:
        """A new token for ``user``; returns the token (shown once) and its record."""
        name = " ".join(name.split())
        if not 1 <= len(name) <= 100:
            raise InvalidAccountInput("token name: 1-100 characters, e.g. 'grafana'")
        if expires_days is not None and not 1 <= expires_days <= MAX_TOKEN_DAYS:
            raise InvalidAccountInput(f"expires_days: between 1 and {MAX_TOKEN_DAYS}")
        now = self.clock.now()
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = ApiToken(token_sha256=token_digest(token), user_id=user.user_id, name=name,
                          created_at=now, created_by=actor,
                          expires_at=None if expires_days is None
                          else now + timedelta(days=expires_days),
                          last_used_at=None)
        db.add(record)
        db.flush()
        self._audit(db, actor, "user.token_create", user.username, None,
                    {"token_id": record.token_id, "name": name,
                     "expires_at": None if record.expires_at is None
                     else record.expires_at.isoformat()})
        return token, record

    def list(self, db: Session, user: User) -> list[ApiToken]:
        return list(db.scalars(select(ApiToken).where(ApiToken.user_id == user.user_id)
                               .order_by(ApiToken.token_id)))

    def revoke(self, db: Session, user: User, token_id: int, *, actor: str) -> None:
        record = db.get(ApiToken, token_id)
        if record is None or record.user_id != user.user_id:
            raise UnknownUserError(f"user {user.username!r} has no API token {token_id}")
        db.delete(record)
        self._audit(db, actor, "user.token_revoke", user.username,
                    {"token_id": token_id, "name": record.name}, None)

    def resolve(self, db: Session, token: str) -> Identity | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        record = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
        if record is None:
            return None
        now = self.clock.now()
        if record.expires_at is not None and record.expires_at <= now:
            return None
        user = db.get(User, record.user_id)
        if user is None or user.disabled:
            return None
        if record.last_used_at is None or now - record.last_used_at >= TOUCH_EVERY:
            record.last_used_at = now
        return Identity(user_id=user.user_id, username=user.username, role=Role(user.role),
                        language=user.language, via="token")

    def _audit(self, db: Session, actor: str, action: str, target: str,
               old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        db.add(AuditEntry(at=self.clock.now(), actor=actor, action=action, target=target,
                          old=old, new=new, detail=""))
