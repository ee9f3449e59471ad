"""The FastAPI application: routers, error mapping, the shared context.

``create_app(context)`` builds the app around an already assembled ``GatewayContext`` (the
service does that in production, tests do it with real stores), so the app owns no clients of
its own and tests need no globals.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cacao_dryer import __version__
from cacao_dryer.errors import ConfigError, ConflictError, NotFoundError, PayloadError
from dashboard.web import install as install_dashboard
from gateway.api.deps import PUBLIC_PATHS, Actor, Role
from gateway.auth import build_auth
from gateway.auth.errors import InvalidAccountInput
from gateway.context import GatewayContext
from gateway.timeseries import StoreUnavailable

# One module per resource; each has ``router``. Listed here so the OpenAPI schema is complete.
log = logging.getLogger("cacao_dryer.gateway")

ROUTERS = ("health", "nodes", "readings", "alerts", "batches", "thresholds", "audit",
           "metrics", "live", "auth", "users", "calibration")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: body / query / path and the field")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error answer (docs/api.md, Conventions)."""

    detail: str = Field(description="What is wrong and where, in one line")
    errors: list[FieldError] | None = Field(
        default=None, description="422 for invalid fields: every field that is wrong")


def _is_bad_value(exc: DataError) -> bool:
    """PostgreSQL refused a value the request carried: numeric out of range (22003), text
    too long (22001), or another data exception of class 22."""
    code = getattr(exc.orig, "sqlstate", None) or ""
    return isinstance(code, str) and code.startswith("22")


VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"


def _error_answers(path: str, method: str, operation: dict[str, Any]
                   ) -> Iterator[tuple[str, str]]:
    """The error answers an operation can give, by the conventions every route follows
    (docs/api.md): who may call it (``PUBLIC_PATHS`` are the only routes without a login,
    tests/test_api_auth.py proves it), whether it takes input, whether it changes state."""
    needs_login = path not in PUBLIC_PATHS
    takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
    if needs_login:
        yield "401", "Not logged in (no session cookie or API token, or it ended)"
        yield "403", "The role may not do this (names the role needed), or a refused CSRF " \
            "token or origin"
    if takes_input and needs_login:
        yield "404", "Unknown site, dryer, batch or other object named in the request"
    if method.upper() in {"POST", "PUT", "PATCH", "DELETE"} and needs_login:
        yield "409", "The present state forbids it (e.g. a batch already running)"
    if operation.get("requestBody"):
        yield "400", "The body cannot be read (not UTF-8 JSON / form data)"
    if takes_input:
        yield "422", "Invalid input: `detail` names the first problem, `errors` every field"
    if needs_login:
        yield "503", "A database is unreachable (with Retry-After)"


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation documents its error answers in their real shape (``ErrorOut``; not
    FastAPI's default 422 body, which this app replaces), so the schema tells clients, and
    the fuzzer (tests/test_api_fuzz.py), every status they can get. What a route documents
    itself wins."""
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(error_schema.pop("$defs", {}))
    components["ErrorOut"] = error_schema
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code, description in _error_answers(path, method, operation):
                documented = responses.get(code)
                fastapi_default = documented is not None and VALIDATION_ERROR_REF in str(
                    documented.get("content"))
                if documented is None or fastapi_default:
                    responses[code] = {"description": description, "content": content}
    for unused in ("HTTPValidationError", "ValidationError"):
        if VALIDATION_ERROR_REF.rsplit("/", 1)[0] + "/" + unused not in str(schema["paths"]):
            components.pop(unused, None)


def _with_error_answers(app: FastAPI) -> None:
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_errors(default_openapi())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(context: GatewayContext, *, local_actor: Actor | None = None) -> FastAPI:
    """``local_actor``: tests only — act as this user without logging in. The gateway never
    sets it: every route but the public ones needs a session or an API token
    (docs/security.md)."""
    app = FastAPI(title="cacao-dryer gateway API", version=__version__,
                  description="Dryer nodes, readings, batches, alerts and thresholds of the "
                  "collection center. Times are ISO 8601 UTC; units are in field names.",
                  # FastAPI's /docs and /redoc pages load their scripts from a CDN, which a
                  # rural collection center cannot reach: only the schema is served.
                  docs_url=None, redoc_url=None)
    app.state.context = context
    app.state.local_actor = local_actor
    app.state.auth = build_auth(context.settings.api, context.session_clock or context.clock)
    for name in ROUTERS:
        try:
            module = importlib.import_module(f"gateway.api.routes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gateway.api.routes.{name}":
                raise
            continue  # a resource not built yet
        app.include_router(module.router)

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(ConflictError)
    async def conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status.HTTP_409_CONFLICT)

    @app.exception_handler(PayloadError)
    @app.exception_handler(ConfigError)
    @app.exception_handler(InvalidAccountInput)
    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: Exception) -> JSONResponse:
        """A number (or text) the database cannot hold, e.g. ``?offset=9223372036854775808``
        (SQLite: OverflowError; PostgreSQL: a data exception, SQLSTATE class 22) is the
        request's fault, not the gateway's: 422, not 500. Routes should bound their numbers
        in the schema too (``Query(le=...)``); this is the net under them."""
        if isinstance(exc, DataError) and not _is_bad_value(exc):
            raise exc
        log.info("refused %s %s: %s", request.method, request.url.path, _one_line(exc))
        return JSONResponse({"detail": "a number or text in the request is out of the range "
                             "the database can hold"}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}",
                             "errors": errors},
                            status.HTTP_422_UNPROCESSABLE_CONTENT)

    _with_error_answers(app)
    install_dashboard(app)  # the HTML pages and their static files, on the same app
    _complete_allow_header(app)
    return app


def _path_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)))


def _complete_allow_header(app: FastAPI) -> None:
    """A 405 names every method the path offers (RFC 9110): Starlette names only those of the
    first route matching the path (``GET /api/users`` and ``POST /api/users`` are two
    routes). Taken from the schema's operations on the most specific matching path."""
    handle = app.exception_handlers[StarletteHTTPException]
    patterns: list[tuple[int, re.Pattern[str], set[str]]] = []

    async def http_error(request: Request, exc: Exception) -> Any:
        if isinstance(exc, StarletteHTTPException) \
                and exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            if not patterns:
                patterns.extend((template.count("{"), _path_pattern(template),
                                 {method.upper() for method in operations})
                                for template, operations in app.openapi()["paths"].items())
            matching = [(parameters, methods) for parameters, pattern, methods in patterns
                        if pattern.fullmatch(request.url.path)]
            if matching:
                fewest = min(parameters for parameters, _ in matching)
                allowed = set().union(*(methods for parameters, methods in matching
                                        if parameters == fewest))
                exc = StarletteHTTPException(exc.status_code, exc.detail, headers={
                    **(exc.headers or {}), "Allow": ", ".join(sorted(allowed))})
        return await handle(request, exc)

    app.exception_handlers[StarletteHTTPException] = http_error


# A fixed administrator for tests that exercise routes rather than logins
# (``create_app(context, local_actor=LOCAL_ADMIN)``); the running gateway never uses it.
LOCAL_ADMIN = Actor("local-admin", Role.ADMIN)
