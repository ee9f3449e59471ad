"""Passwords, users, sessions, API tokens, CSRF rules and the login throttle, on a real
metadata database (SQLite, and PostgreSQL where the database matters)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from support.auth import PASSWORD

from cacao_dryer.clock import ManualClock
from gateway.auth.csrf import changes_state, csrf_refusal, origin_refusal
from gateway.auth.errors import (
    InvalidAccountInput,
    LastAdminError,
    UserExistsError,
    WeakPasswordError,
)
from gateway.auth.passwords import HashParameters, PasswordHashing, check_password
from gateway.auth.roles import Role, may
from gateway.auth.sessions import SessionService, token_digest
from gateway.auth.throttle import LoginThrottle
from gateway.auth.tokens import ApiTokenService
from gateway.auth.users import UserChange, UserService, Verdict
from gateway.metadata.database import MetadataDB, open_metadata
from gateway.metadata.models import ApiToken, AuditEntry, LoginSession, User

QUICK = HashParameters(time_cost=2, memory_kib=19_456, parallelism=1)
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def db(metadata_url: str) -> Iterator[MetadataDB]:
    database = open_metadata(metadata_url)
    yield database
    database.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[MetadataDB]:
    """For rules that do not depend on the database engine."""
    database = open_metadata(f"sqlite:///{tmp_path / 'metadata.sqlite3'}")
    yield database
    database.close()


@pytest.fixture
def users(clock: ManualClock) -> UserService:
    return UserService(PasswordHashing(QUICK), clock)


@pytest.fixture
def sessions(clock: ManualClock) -> SessionService:
    return SessionService(clock, idle=timedelta(hours=12), lifetime=timedelta(days=7))


def _add(db: MetadataDB, users: UserService, username: str = "ana",
         role: Role = Role.ADMIN) -> int:
    with db.session() as session:
        return users.add(session, username, PASSWORD, role, actor="test").user_id


# --- passwords ---------------------------------------------------------------------------

def test_passwords_are_stored_as_salted_argon2id() -> None:
    hashing = PasswordHashing(QUICK)
    first, second = hashing.hash(PASSWORD), hashing.hash(PASSWORD)
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second, "each hash has its own salt"
    assert hashing.verify(first, PASSWORD) and not hashing.verify(first, PASSWORD + "x")
    assert not hashing.verify("not a hash", PASSWORD)


def test_default_parameters_are_rfc9106_low_memory() -> None:
    assert PasswordHashing().hash(PASSWORD).startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_parameters_below_the_owasp_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        PasswordHashing(HashParameters(time_cost=1, memory_kib=8192, parallelism=1))


@pytest.mark.parametrize(("password", "why"), [
    ("short-pw", "too short: at least 10 characters"),
    ("Ana.Quispe", "must not be the username"),
    ("aaaaaaaaaaaa", "one character repeated"),
    ("x" * 300, "too long"),
])
def test_weak_passwords_are_refused_with_the_reason(password: str, why: str) -> None:
    with pytest.raises(WeakPasswordError, match=why):
        check_password("ana.quispe", password)


def test_login_rehashes_when_the_parameters_changed(sqlite_db: MetadataDB, clock: ManualClock,
                                                    users: UserService) -> None:
    _add(sqlite_db, users)
    stronger = UserService(PasswordHashing(HashParameters(time_cost=3, memory_kib=19_456,
                                                          parallelism=1)), clock)
    with sqlite_db.session() as session:
        verdict, _user = stronger.authenticate(session, "ana", PASSWORD)
        assert verdict is Verdict.OK
    with sqlite_db.session() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "ana"))
    assert stored is not None and "$m=19456,t=3,p=1$" in stored
    with sqlite_db.session() as session:  # and the new hash still logs in
        assert stronger.authenticate(session, "ana", PASSWORD)[0] is Verdict.OK


# --- users ------------------------------------------------------------------------------

def test_usernames_are_case_insensitive_and_unique(db: MetadataDB, users: UserService) -> None:
    _add(db, users, "Ana")
    with pytest.raises(UserExistsError, match="user 'ana' already exists"), \
            db.session() as session:
        users.add(session, " ANA ", PASSWORD, Role.OPERATOR, actor="test")


@pytest.mark.parametrize(("username", "role", "language", "message"), [
    ("ana", "boss", "es", "unknown role 'boss' (one of: operator, technician, manager, admin)"),
    ("a", "admin", "es", "username 'a': 2-64 lowercase letters"),
    ("ana maria", "admin", "es", "username 'ana maria'"),
    ("ana", "admin", "spanish", "language 'spanish'"),
])
def test_bad_account_input_is_one_line(sqlite_db: MetadataDB, users: UserService, username: str,
                                       role: str, language: str, message: str) -> None:
    with pytest.raises(InvalidAccountInput) as error, sqlite_db.session() as session:
        users.add(session, username, PASSWORD, role, language, actor="test")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_user_changes_are_audited_without_passwords(db: MetadataDB,
                                                    users: UserService) -> None:
    _add(db, users)
    _add(db, users, "olga", Role.OPERATOR)
    with db.session() as session:
        users.update(session, "olga", UserChange(role=Role.TECHNICIAN, language="qu",
                                                 password="another-long-secret"),
                     actor="ana")
    with db.session() as session:
        entries = [(e.actor, e.action, e.target, e.old, e.new)
                   for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        hashes = list(session.scalars(select(User.password_hash)))
    assert entries == [
        ("test", "user.add", "ana", None, {"role": "admin", "language": "es",
                                          "disabled": False}),
        ("test", "user.add", "olga", None, {"role": "operator", "language": "es",
                                           "disabled": False}),
        ("ana", "user.update", "olga", {"language": "es", "role": "operator"},
         {"language": "qu", "role": "technician"}),
        ("ana", "user.password_reset", "olga", None, {"password": "changed"}),
    ]
    assert not any(h[:20] in repr(entries) for h in hashes)


def test_the_last_enabled_admin_cannot_be_disabled_or_demoted(sqlite_db: MetadataDB,
                                                              users: UserService) -> None:
    _add(sqlite_db, users)
    for change in (UserChange(disabled=True), UserChange(role=Role.MANAGER)):
        with pytest.raises(LastAdminError, match="only enabled admin"), \
                sqlite_db.session() as session:
            users.update(session, "ana", change, actor="ana")
    _add(sqlite_db, users, "beto", Role.ADMIN)
    with sqlite_db.session() as session:
        users.update(session, "ana", UserChange(disabled=True), actor="beto")


def test_authenticate_tells_wrong_from_disabled_only_with_the_right_password(
        db: MetadataDB, users: UserService) -> None:
    _add(db, users)
    _add(db, users, "olga", Role.OPERATOR)
    with db.session() as session:
        users.update(session, "olga", UserChange(disabled=True), actor="ana")
    with db.session() as session:
        assert users.authenticate(session, "nobody", PASSWORD)[0] is Verdict.WRONG
        assert users.authenticate(session, "ana", "wrong-password")[0] is Verdict.WRONG
        assert users.authenticate(session, "olga", "wrong-password")[0] is Verdict.WRONG
        assert users.authenticate(session, "olga", PASSWORD)[0] is Verdict.DISABLED
        assert users.authenticate(session, "ANA", PASSWORD)[0] is Verdict.OK


# --- sessions ---------------------------------------------------------------------------

def _start(db: MetadataDB, sessions: SessionService, username: str = "ana") -> str:
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        assert user is not None
        return sessions.start(session, user, client_ip="10.0.0.5").token


def _resolve(db: MetadataDB, sessions: SessionService, token: str) -> str | None:
    with db.session() as session:
        identity = sessions.resolve(session, token)
        return None if identity is None else identity.username


def test_only_the_token_digest_is_stored(db: MetadataDB, users: UserService,
                                         sessions: SessionService) -> None:
    _add(db, users)
    token = _start(db, sessions)
    assert len(token) >= 43  # 32 random bytes, base64url
    with db.session() as session:
        keys = list(session.scalars(select(LoginSession.token_sha256)))
    assert keys == [token_digest(token)] and token not in keys
    assert _resolve(db, sessions, token) == "ana"
    assert _resolve(db, sessions, token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_a_session_ends_after_12_idle_hours(db: MetadataDB, users: UserService,
                                            sessions: SessionService,
                                            clock: ManualClock) -> None:
    _add(db, users)
    token = _start(db, sessions)
    clock.advance(11 * 3600)
    assert _resolve(db, sessions, token) == "ana"  # activity slides the expiry
    clock.advance(11 * 3600)
    assert _resolve(db, sessions, token) == "ana"
    clock.advance(12 * 3600 + 1)
    assert _resolve(db, sessions, token) is None
    with db.session() as session:
        assert session.scalar(select(LoginSession.token_sha256)) is None  # and is deleted


def test_a_busy_session_still_ends_after_7_days(sqlite_db: MetadataDB, users: UserService,
                                                sessions: SessionService,
                                                clock: ManualClock) -> None:
    _add(sqlite_db, users)
    token = _start(sqlite_db, sessions)
    for _hour in range(7 * 24 - 1):
        clock.advance(3600)
        assert _resolve(sqlite_db, sessions, token) == "ana"
    clock.advance(3600)
    assert _resolve(sqlite_db, sessions, token) is None


def test_disabling_or_a_new_password_ends_sessions(db: MetadataDB, users: UserService,
                                                   sessions: SessionService) -> None:
    _add(db, users)
    _add(db, users, "olga", Role.OPERATOR)
    first, second = _start(db, sessions, "olga"), _start(db, sessions, "olga")
    with db.session() as session:
        users.update(session, "olga", UserChange(password="a-brand-new-secret"), actor="ana")
    assert _resolve(db, sessions, first) is None and _resolve(db, sessions, second) is None
    third = _start(db, sessions, "olga")
    with db.session() as session:
        users.update(session, "olga", UserChange(disabled=True), actor="ana")
    assert _resolve(db, sessions, third) is None


# --- API tokens -------------------------------------------------------------------------

def test_api_tokens_act_as_their_user_until_expired_revoked_or_disabled(
        db: MetadataDB, users: UserService, clock: ManualClock) -> None:
    tokens = ApiTokenService(clock)
    _add(db, users)
    _add(db, users, "grafana", Role.OPERATOR)
    with db.session() as session:
        grafana = users.get(session, "grafana")
        token, record = tokens.create(session, grafana, "grafana", expires_days=30,
                                      actor="ana")
        revocable, revocable_record = tokens.create(session, grafana, "erp",
                                                    expires_days=None, actor="ana")
        stored = list(session.scalars(select(ApiToken.token_sha256)))
    assert token.startswith("cdt_") and token_digest(token) in stored and token not in stored

    def who(value: str) -> str | None:
        with db.session() as session:
            identity = tokens.resolve(session, value)
            return None if identity is None else f"{identity.username}/{identity.via}"

    assert who(token) == "grafana/token" and who("cdt_forged") is None
    with db.session() as session:
        tokens.revoke(session, users.get(session, "grafana"), revocable_record.token_id,
                      actor="ana")
    assert who(revocable) is None
    with db.session() as session:
        users.update(session, "grafana", UserChange(disabled=True), actor="ana")
    assert who(token) is None
    with db.session() as session:
        users.update(session, "grafana", UserChange(disabled=False), actor="ana")
    assert who(token) == "grafana/token"
    clock.advance(30 * 24 * 3600)
    assert who(token) is None
    with db.session() as session:
        actions = list(session.scalars(select(AuditEntry.action).where(
            AuditEntry.action.like("user.token%")).order_by(AuditEntry.id)))
    assert actions == ["user.token_create", "user.token_create", "user.token_revoke"]
    assert record.expires_at == T0 + timedelta(days=30)


# --- CSRF and origin rules (pure) -------------------------------------------------------

def test_only_state_changing_methods_need_a_csrf_token() -> None:
    assert [m for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
            if changes_state(m)] == ["POST", "PUT", "PATCH", "DELETE"]


def test_csrf_token_must_be_present_and_equal() -> None:
    assert csrf_refusal("abc", "abc") is None
    assert "missing" in (csrf_refusal("abc", None) or "")
    assert "does not match" in (csrf_refusal("abc", "abd") or "")
    assert "does not match" in (csrf_refusal(None, "abc") or "")


@pytest.mark.parametrize(("origin", "referer", "allowed"), [
    (None, None, True),                                         # curl, scripts
    ("http://gateway.local:8080", None, True),
    (None, "http://gateway.local:8080/nodes/demo/secador-01", True),
    ("https://dashboard.coop.pe", None, True),                  # a trusted origin
    ("https://evil.example", None, False),
    (None, "https://evil.example/page", False),
    ("null", None, False),
    ("http://gateway.local:8081", None, False),                 # another port is another site
])
def test_origin_must_be_this_gateway_or_trusted(origin: str | None, referer: str | None,
                                                allowed: bool) -> None:
    refusal = origin_refusal(origin, referer, "gateway.local:8080",
                             ("https://dashboard.coop.pe",))
    assert (refusal is None) is allowed


# --- throttle (pure, hand-driven clock) -------------------------------------------------

def _throttle(clock: ManualClock) -> LoginThrottle:
    return LoginThrottle(clock, max_failures_per_user=5, max_failures_per_ip=20,
                         window=timedelta(minutes=15))


def test_five_failures_lock_a_username_until_the_window_slides(clock: ManualClock) -> None:
    throttle = _throttle(clock)
    for _ in range(4):
        throttle.failed("ana", "10.0.0.5")
        clock.advance(60)
    assert throttle.retry_after_s("ana", "10.0.0.5") is None
    throttle.failed("ana", "10.0.0.5")
    assert throttle.retry_after_s("ana", "10.0.0.6") == 15 * 60 - 4 * 60  # any address
    assert throttle.retry_after_s("beto", "10.0.0.6") is None  # other users are not locked
    clock.advance(11 * 60)
    assert throttle.retry_after_s("ana", "10.0.0.5") is None


def test_one_address_trying_many_usernames_is_locked(clock: ManualClock) -> None:
    throttle = _throttle(clock)
    for number in range(20):
        throttle.failed(f"user-{number}", "10.0.0.5")
    assert throttle.retry_after_s("someone-else", "10.0.0.5") == 15 * 60
    assert throttle.retry_after_s("someone-else", "10.0.0.6") is None


def test_a_right_password_clears_the_usernames_failures(clock: ManualClock) -> None:
    throttle = _throttle(clock)
    for _ in range(4):
        throttle.failed("ana", "10.0.0.5")
    throttle.succeeded("ana")
    throttle.failed("ana", "10.0.0.5")
    assert throttle.retry_after_s("ana", "10.0.0.5") is None


def test_roles_grant_upwards_but_technician_and_manager_are_apart() -> None:
    assert may(Role.ADMIN, Role.TECHNICIAN) and may(Role.MANAGER, Role.OPERATOR)
    assert not may(Role.MANAGER, Role.TECHNICIAN) and not may(Role.TECHNICIAN, Role.MANAGER)
    assert not may(Role.OPERATOR, Role.TECHNICIAN)
