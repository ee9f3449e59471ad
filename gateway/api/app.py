"""The FastAPI application: routers, error mapping, the shared context.

``create_app(context)`` builds the app around an already assembled ``GatewayContext`` (the
service does that in production, tests do it with real stores), so the app owns no clients of
its own and tests need no globals.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cacao_dryer import __version__
from cacao_dryer.errors import ConfigError, ConflictError, NotFoundError, PayloadError
from dashboard.web import install as install_dashboard
from gateway.api.deps import Actor, Role
from gateway.auth import build_auth
from gateway.auth.errors import InvalidAccountInput
from gateway.context import GatewayContext
from gateway.timeseries import StoreUnavailable

# One module per resource; each has ``router``. Listed here so the OpenAPI schema is complete.
ROUTERS = ("health", "nodes", "readings", "alerts", "batches", "thresholds", "audit",
           "metrics", "live", "auth", "users", "calibration")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


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

    install_dashboard(app)  # the HTML pages and their static files, on the same app
    return app


# A fixed administrator for tests that exercise routes rather than logins
# (``create_app(context, local_actor=LOCAL_ADMIN)``); the running gateway never uses it.
LOCAL_ADMIN = Actor("local-admin", Role.ADMIN)
