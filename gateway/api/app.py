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
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.timeseries import StoreUnavailable

# One module per resource; each has ``router``. Listed here so the OpenAPI schema is complete.
ROUTERS = ("health", "nodes", "readings", "alerts", "batches", "thresholds", "audit",
           "metrics")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


def create_app(context: GatewayContext, *, local_actor: Actor | None = None) -> FastAPI:
    """``local_actor``: who the API acts as until the dashboard brings logins (issue 4);
    None = every protected route answers 401."""
    app = FastAPI(title="cacao-dryer gateway API", version=__version__,
                  description="Dryer nodes, readings, batches, alerts and thresholds of the "
                  "collection center. Times are ISO 8601 UTC; units are in field names.")
    app.state.context = context
    app.state.local_actor = local_actor
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

    return app


LOCAL_ADMIN = Actor("local-admin", Role.ADMIN)
