"""Logging in and out, and the logged-in user's own account (``/api/auth``).

``POST /api/auth/login`` takes JSON (the dashboard's scripts) or a plain HTML form
(urlencoded, with an optional ``next`` page to go to), checks the password (argon2id), and sets
the ``cacao_session`` cookie: HttpOnly, SameSite=Lax, Path=/, Secure on https or when
``api.secure_cookies`` is on. It answers with the CSRF token every later change must carry.
Failed logins are rate limited per username and per client address (429 with Retry-After).
Every login, failure and lockout is logged (logger ``cacao_dryer.gateway.auth``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.api.deps import ContextDep, OperatorDep, SessionDep, identity_of
from gateway.auth import SESSION_COOKIE, Auth
from gateway.auth.csrf import origin_refusal
from gateway.auth.roles import Role
from gateway.auth.sessions import token_digest
from gateway.auth.users import Verdict, check_language

router = APIRouter(prefix="/api/auth", tags=["auth"])
log = logging.getLogger("cacao_dryer.gateway.auth")

WRONG_CREDENTIALS = "wrong username or password"


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a form also sends its csrf_token, submit, ...

    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)
    next: str | None = Field(None, max_length=500, description="Form posts: the local page to "
                             "go to after login (303); failures go back to /login?error=...")


class LoginResult(BaseModel):
    username: str
    role: Role
    language: str
    csrf_token: str = Field(description="Send it back as X-CSRF-Token (or form field "
                            "csrf_token) with every POST, PUT, PATCH and DELETE")
    expires_at: datetime = Field(description="When the session ends if left idle")


class Me(BaseModel):
    username: str
    role: Role
    language: str | None
    via: str = Field(description="session (browser cookie), token (API token) or local")
    csrf_token: str | None
    expires_at: datetime | None


class MeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, max_length=8, examples=["es"])
    current_password: str | None = Field(None, max_length=1024)
    new_password: str | None = Field(None, max_length=1024)


@dataclass(frozen=True)
class _LoginForm:
    credentials: LoginRequest
    is_form: bool


async def _login_form(request: Request) -> _LoginForm:
    """JSON or urlencoded credentials (no python-multipart needed for either)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    is_form = content_type == "application/x-www-form-urlencoded"
    data: Any
    if is_form:
        data = {key: values[0] for key, values in parse_qs(
            body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20).items()}
    else:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            raise RequestValidationError([{"loc": ("body",), "msg": "not valid JSON",
                                           "type": "json_invalid"}]) from None
    try:
        return _LoginForm(LoginRequest.model_validate(data), is_form)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


_LOGIN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": LoginRequest.model_json_schema()},
    "application/x-www-form-urlencoded": {"schema": LoginRequest.model_json_schema()}}}}


def _local_path(target: str | None) -> str:
    """A page of this gateway to go to (never another host: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _secure(request: Request, auth: Auth) -> bool:
    return auth.secure_cookies or request.url.scheme == "https"


def _refuse(form: _LoginForm, code: int, detail: str, error: str,
            headers: dict[str, str] | None = None) -> Response:
    """JSON for scripts; a plain form that named its next page goes back to the login page."""
    if form.is_form and form.credentials.next is not None:
        target = _local_path(form.credentials.next)
        return RedirectResponse(f"/login?error={error}&next={quote(target, safe='')}",
                                status_code=status.HTTP_303_SEE_OTHER, headers=headers)
    raise HTTPException(code, detail, headers=headers)


@router.post("/login", response_model=LoginResult, summary="Log in (sets the session cookie)",
             openapi_extra=_LOGIN_BODY,
             responses={401: {"description": WRONG_CREDENTIALS},
                        403: {"description": "account disabled, or a cross-site form"},
                        429: {"description": "too many failed logins; see Retry-After"},
                        303: {"description": "a plain form with `next`: to that page, or "
                              "back to /login?error=wrong|locked|disabled"}})
def login(request: Request, context: ContextDep,
          form: Annotated[_LoginForm, Depends(_login_form)]) -> Response:
    auth: Auth = request.app.state.auth
    refusal = origin_refusal(request.headers.get("origin"), request.headers.get("referer"),
                             request.headers.get("host"), auth.trusted_origins)
    if refusal is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, refusal)
    client_ip = request.client.host if request.client else ""
    username = form.credentials.username.strip().lower()[:64]
    wait_s = auth.throttle.retry_after_s(username, client_ip)
    if wait_s is not None:
        log.warning("login refused for %r from %s: too many failures, locked for %d s",
                    username, client_ip, wait_s)
        return _refuse(form, status.HTTP_429_TOO_MANY_REQUESTS,
                       f"too many failed logins: try again in {wait_s} s", "locked",
                       headers={"Retry-After": str(wait_s)})
    with context.metadata.session() as db:
        verdict, user = auth.users.authenticate(db, username, form.credentials.password)
        new = None
        if verdict is Verdict.OK and user is not None:
            previous = request.cookies.get(SESSION_COOKIE)
            if previous:  # a new login replaces this browser's old session, never reuses it
                auth.sessions.end(db, token_digest(previous))
            new = auth.sessions.start(db, user, client_ip=client_ip,
                                      user_agent=request.headers.get("user-agent", ""))
    if verdict is Verdict.WRONG:
        auth.throttle.failed(username, client_ip)
        log.warning("login failed for %r from %s", username, client_ip)
        return _refuse(form, status.HTTP_401_UNAUTHORIZED, WRONG_CREDENTIALS, "wrong")
    if verdict is Verdict.DISABLED or new is None:
        log.warning("login refused for disabled user %r from %s", username, client_ip)
        return _refuse(form, status.HTTP_403_FORBIDDEN,
                       "this account is disabled: ask an administrator", "disabled")
    auth.throttle.succeeded(username)
    log.info("login %s (%s) from %s", new.identity.username, new.identity.role.value,
             client_ip)
    result = LoginResult(username=new.identity.username, role=new.identity.role,
                         language=new.identity.language, csrf_token=new.csrf_token,
                         expires_at=new.expires_at)
    response: Response
    if form.is_form and form.credentials.next is not None:
        response = RedirectResponse(_local_path(form.credentials.next),
                                    status_code=status.HTTP_303_SEE_OTHER)
    else:
        response = JSONResponse(result.model_dump(mode="json"))
    response.set_cookie(SESSION_COOKIE, new.token, httponly=True, samesite="lax",
                        secure=_secure(request, auth), path="/")
    return response


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="Log out")
def logout(request: Request, context: ContextDep, actor: OperatorDep) -> Response:
    """Ends this browser session on the server and clears its cookie."""
    auth: Auth = request.app.state.auth
    identity = identity_of(request)
    if identity is not None and identity.session_key is not None:
        with context.metadata.session() as db:
            auth.sessions.end(db, identity.session_key)
        log.info("logout %s", actor.username)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=_secure(request, auth))
    return response


def _me(request: Request, username: str, role: Role, language: str | None) -> Me:
    identity = identity_of(request)
    return Me(username=username, role=role, language=language,
              via=identity.via if identity else "local",
              csrf_token=identity.csrf_token if identity else None,
              expires_at=identity.expires_at if identity else None)


@router.get("/me", response_model=Me, summary="Who is logged in (and the CSRF token)")
def me(request: Request, actor: OperatorDep) -> Me:
    return _me(request, actor.username, actor.role, actor.language)


@router.patch("/me", response_model=Me, summary="Change my language or password",
              responses={429: {"description": "too many wrong current passwords; see "
                                              "Retry-After"}})
def update_me(change: MeUpdate, request: Request, session: SessionDep,
              actor: OperatorDep) -> Me:
    """A new password needs the current one; it ends the user's other sessions."""
    auth: Auth = request.app.state.auth
    user = auth.users.get(session, actor.username)
    if change.language is not None:
        language = check_language(change.language)
        if language != user.language:
            auth.users.audit(session, actor.username, "user.update", user.username,
                             {"language": user.language}, {"language": language})
            user.language = language
    if change.new_password is not None:
        client_ip = request.client.host if request.client else ""
        wait_s = auth.throttle.retry_after_s(user.username, client_ip)
        if wait_s is not None:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"too many wrong passwords: try again in {wait_s} s",
                                headers={"Retry-After": str(wait_s)})
        if not change.current_password or \
                not auth.users.verify_password(user, change.current_password):
            auth.throttle.failed(user.username, client_ip)
            log.warning("password change refused for %r from %s: wrong current password",
                        user.username, client_ip)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "current password is wrong")
        identity = identity_of(request)
        auth.users.set_password(session, user, change.new_password, actor=actor.username,
                                keep_session=identity.session_key if identity else None)
    return _me(request, user.username, Role(user.role), user.language)
