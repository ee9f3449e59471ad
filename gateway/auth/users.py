"""User accounts in the metadata database: add, list, change, check a password.

Every change is written to the audit log in the same transaction (``user.add``,
``user.update``, ``user.password_reset``, ``user.password_change``), never with a password or
a hash in it. Disabling a user or setting their password ends their browser sessions at once
(sessions are looked up in the database on every request). Methods take the caller's
SQLAlchemy session, so a route's change and its audit entry commit or fail together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cacao_dryer.clock import Clock
from gateway.auth.errors import (
    InvalidAccountInput,
    LastAdminError,
    UnknownUserError,
    UserExistsError,
)
from gateway.auth.passwords import PasswordHashing, check_password
from gateway.auth.roles import Role
from gateway.auth.sessions import revoke_sessions
from gateway.metadata.models import AuditEntry, User

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,4})?$")  # es, en, qu, pt-br
DEFAULT_LANGUAGE = "es"


def normalize_username(raw: str) -> str:
    """Usernames are compared in lower case, so ``Ana`` and ``ana`` are one person.

    >>> normalize_username(" Ana.Quispe ")
    'ana.quispe'
    """
    username = raw.strip().lower()
    if not _USERNAME.match(username):
        raise InvalidAccountInput(
            f"username {raw.strip()[:70]!r}: 2-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return username


def parse_role(raw: str) -> Role:
    try:
        return Role(raw.strip().lower())
    except ValueError:
        raise InvalidAccountInput(f"unknown role {raw[:30]!r} (one of: "
                                  f"{', '.join(r.value for r in Role)})") from None


def check_language(raw: str) -> str:
    language = raw.strip().lower()
    if not _LANGUAGE.match(language):
        raise InvalidAccountInput(f"language {raw[:20]!r}: a language code such as es, en "
                                  "or qu")
    return language


class Verdict(Enum):
    OK = "ok"
    WRONG = "wrong"          # unknown user or wrong password: the caller cannot tell which
    DISABLED = "disabled"    # right password, but the account is disabled


@dataclass(frozen=True)
class UserChange:
    """What an administrator changes about a user; None leaves a field as it is."""

    role: Role | None = None
    disabled: bool | None = None
    language: str | None = None
    password: str | None = None


class UserService:
    def __init__(self, hashing: PasswordHashing, clock: Clock) -> None:
        self.hashing = hashing
        self.clock = clock

    def get(self, db: Session, username: str) -> User:
        user = db.scalar(select(User).where(User.username == username.strip().lower()))
        if user is None:
            raise UnknownUserError(f"user {username.strip()[:64]!r} does not exist")
        return user

    def list(self, db: Session) -> list[User]:
        return list(db.scalars(select(User).order_by(User.username)))

    def add(self, db: Session, username: str, password: str, role: Role | str,
            language: str = DEFAULT_LANGUAGE, *, actor: str) -> User:
        username = normalize_username(username)
        role = parse_role(role)
        language = check_language(language)
        check_password(username, password)
        if db.scalar(select(User.user_id).where(User.username == username)) is not None:
            raise UserExistsError(f"user {username!r} already exists")
        user = User(username=username, password_hash=self.hashing.hash(password),
                    role=role.value, language=language, disabled=False,
                    created_at=self.clock.now())
        db.add(user)
        try:
            db.flush()
        except IntegrityError:  # added at the same moment by another request or the CLI
            raise UserExistsError(f"user {username!r} already exists") from None
        self.audit(db, actor, "user.add", username, None,
                    {"role": role.value, "language": language, "disabled": False})
        return user

    def update(self, db: Session, username: str, change: UserChange, *, actor: str) -> User:
        user = self.get(db, username)
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        if change.language is not None:
            language = check_language(change.language)
            if language != user.language:
                old["language"], new["language"] = user.language, language
                user.language = language
        demoted = change.role is not None and change.role != Role.ADMIN
        if (demoted or change.disabled) and user.role == Role.ADMIN and not user.disabled:
            self._keep_an_admin(db, user)
        if change.role is not None and change.role.value != user.role:
            old["role"], new["role"] = user.role, change.role.value
            user.role = change.role.value
        if change.disabled is not None and change.disabled != user.disabled:
            old["disabled"], new["disabled"] = user.disabled, change.disabled
            user.disabled = change.disabled
            if change.disabled:
                revoke_sessions(db, user.user_id)
        if new:
            self.audit(db, actor, "user.update", user.username, old, new)
        if change.password is not None:
            self.set_password(db, user, change.password, actor=actor)
        return user

    def set_password(self, db: Session, user: User, password: str, *, actor: str,
                     keep_session: str | None = None) -> None:
        """A new password; every browser session of the user ends except ``keep_session``
        (the one the user changed their own password from)."""
        check_password(user.username, password)
        user.password_hash = self.hashing.hash(password)
        ended = revoke_sessions(db, user.user_id, keep=keep_session)
        action = "user.password_change" if actor == user.username else "user.password_reset"
        self.audit(db, actor, action, user.username, None, {"password": "changed"},
                    detail=f"{ended} session(s) ended")

    def authenticate(self, db: Session, username: str, password: str
                     ) -> tuple[Verdict, User | None]:
        """Check a login. Costs one argon2id verification whether or not the user exists;
        re-hashes the password when the configured parameters changed."""
        user = db.scalar(select(User).where(User.username == username.strip().lower()))
        if user is None:
            self.hashing.waste_time(password)
            return Verdict.WRONG, None
        if not self.hashing.verify(user.password_hash, password):
            return Verdict.WRONG, None
        if user.disabled:
            return Verdict.DISABLED, user
        if self.hashing.needs_rehash(user.password_hash):
            user.password_hash = self.hashing.hash(password)
        return Verdict.OK, user

    def verify_password(self, user: User, password: str) -> bool:
        return self.hashing.verify(user.password_hash, password)

    def _keep_an_admin(self, db: Session, user: User) -> None:
        others = db.scalar(select(func.count()).select_from(User).where(
            User.role == Role.ADMIN.value, User.disabled.is_(False),
            User.user_id != user.user_id))
        if not others:
            raise LastAdminError(f"{user.username!r} is the only enabled admin: make another "
                                 "admin first")

    def audit(self, db: Session, actor: str, action: str, target: str,
               old: dict[str, Any] | None, new: dict[str, Any] | None, detail: str = ""
               ) -> None:
        db.add(AuditEntry(at=self.clock.now(), actor=actor, action=action, target=target,
                          old=old, new=new, detail=detail))
