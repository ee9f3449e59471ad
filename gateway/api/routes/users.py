"""User accounts and their API tokens (``/api/users``, administrators only).

Every change is audited (``user.add``, ``user.update``, ``user.password_reset``,
``user.token_create``, ``user.token_revoke``), never with a password, hash or token in it.
Disabling a user or resetting their password ends their browser sessions at once; the last
enabled administrator cannot be disabled or demoted (409).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import AdminDep, SessionDep
from gateway.auth import Auth
from gateway.auth.roles import Role
from gateway.auth.tokens import MAX_TOKEN_DAYS
from gateway.auth.users import DEFAULT_LANGUAGE, UserChange
from gateway.metadata.models import ApiToken, User

router = APIRouter(prefix="/api/users", tags=["users"])


class UserOut(BaseModel):
    username: str
    role: Role
    language: str
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(username=user.username, role=Role(user.role), language=user.language,
                   disabled=user.disabled, created_at=user.created_at)


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=100, examples=["ana.quispe"])
    password: str = Field(max_length=1024, description="At least 10 characters, not the "
                          "username")
    role: Role
    language: str = Field(DEFAULT_LANGUAGE, max_length=8)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = Field(None, description="true ends the user's sessions at once")
    language: str | None = Field(None, max_length=8)
    password: str | None = Field(None, max_length=1024,
                                 description="A reset; ends the user's sessions")


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100, examples=["grafana"])
    expires_days: int | None = Field(None, ge=1, le=MAX_TOKEN_DAYS,
                                     description="None: until revoked")


class TokenOut(BaseModel):
    token_id: int
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: ApiToken) -> TokenOut:
        return cls(token_id=record.token_id, name=record.name, created_at=record.created_at,
                   created_by=record.created_by, expires_at=record.expires_at,
                   last_used_at=record.last_used_at)


class TokenCreated(TokenOut):
    token: str = Field(description="Shown this once: Authorization: Bearer <token>")


def _auth(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


@router.get("", response_model=list[UserOut], summary="Every user")
def list_users(request: Request, session: SessionDep, _actor: AdminDep) -> list[UserOut]:
    return [UserOut.of(user) for user in _auth(request).users.list(session)]


@router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED,
             summary="Add a user")
def add_user(new: NewUser, request: Request, session: SessionDep, actor: AdminDep) -> UserOut:
    user = _auth(request).users.add(session, new.username, new.password, new.role,
                                    new.language, actor=actor.username)
    return UserOut.of(user)


@router.get("/{username}", response_model=UserOut, summary="One user")
def get_user(username: str, request: Request, session: SessionDep,
             _actor: AdminDep) -> UserOut:
    return UserOut.of(_auth(request).users.get(session, username))


@router.patch("/{username}", response_model=UserOut,
              summary="Change a user's role, language, password; disable or enable")
def update_user(username: str, change: UserUpdate, request: Request, session: SessionDep,
                actor: AdminDep) -> UserOut:
    user = _auth(request).users.update(
        session, username, UserChange(role=change.role, disabled=change.disabled,
                                      language=change.language, password=change.password),
        actor=actor.username)
    return UserOut.of(user)


@router.get("/{username}/tokens", response_model=list[TokenOut],
            summary="A user's API tokens (never the tokens themselves)")
def list_tokens(username: str, request: Request, session: SessionDep,
                _actor: AdminDep) -> list[TokenOut]:
    auth = _auth(request)
    return [TokenOut.of(t) for t in auth.tokens.list(session, auth.users.get(session, username))]


@router.post("/{username}/tokens", response_model=TokenCreated,
             status_code=status.HTTP_201_CREATED, summary="A new API token for a machine")
def create_token(username: str, new: NewToken, request: Request, session: SessionDep,
                 actor: AdminDep) -> TokenCreated:
    auth = _auth(request)
    token, record = auth.tokens.create(session, auth.users.get(session, username), new.name,
                                       expires_days=new.expires_days, actor=actor.username)
    return TokenCreated(token=token, **TokenOut.of(record).model_dump())


@router.delete("/{username}/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Revoke an API token")
def revoke_token(username: str, token_id: int, request: Request, session: SessionDep,
                 actor: AdminDep) -> Response:
    auth = _auth(request)
    auth.tokens.revoke(session, auth.users.get(session, username), token_id,
                       actor=actor.username)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
