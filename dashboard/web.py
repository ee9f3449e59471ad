"""The dashboard's HTML pages, served by the gateway's FastAPI app next to the JSON API.

Pages are thin: the server renders the frame (top bar, navigation, texts in the user's
language) and the scripts fill it from the JSON API — ``/api/nodes``, ``/api/readings/...``
and the live stream ``/api/live`` — which stays the source of truth for every page.

``install(app)`` adds the pages, the static files under /static, gzip for every answer but
the event stream, and the redirect of a page request without a login to /login.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from cacao_dryer.contract import Thresholds
from cacao_dryer.measurements import MEASUREMENTS
from dashboard.assets import AssetVersions, CachedStaticFiles
from dashboard.i18n import (
    LANGUAGE_COOKIE,
    LANGUAGES,
    LocaleFormat,
    choose_language,
    format_datetime,
    format_number,
    page_catalog,
    translate,
    unit,
)
from gateway.api.deps import Actor, ContextDep, OperatorDep, Role, SessionDep, require
from gateway.api.routes.nodes import STALE_AFTER
from gateway.context import GatewayContext
from gateway.metadata.models import Node, Site

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("dashboard", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
ASSETS = AssetVersions()

# Pages only load what this host serves (the offline rule, enforced by the browser too).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache, private",
}
LIVE_WATCHDOG_S = 45.0  # no message or heartbeat for this long: the browser reconnects

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class NavItem:
    path: str
    label_key: str
    role: Role | tuple[Role, ...]  # the least role that sees it, or any of several
    order: int = 100  # place in the navigation bar, smallest first


# The pages of this module in the navigation; each module of ``dashboard.pages`` adds its own
# (a ``router`` and a ``NAV`` tuple), so a page area lives in one module.
NAV: tuple[NavItem, ...] = (
    NavItem("/", "nav.overview", Role.OPERATOR, order=10),
)


@cache
def page_modules() -> tuple[ModuleType, ...]:
    """The page areas under ``dashboard/pages/`` (imported on first use: they import this
    module for ``render``)."""
    import dashboard.pages as package

    return tuple(importlib.import_module(f"{package.__name__}.{info.name}")
                 for info in sorted(pkgutil.iter_modules(package.__path__),
                                    key=lambda info: info.name))


@cache
def all_nav() -> tuple[NavItem, ...]:
    items = [*NAV, *(item for module in page_modules() for item in getattr(module, "NAV", ()))]
    return tuple(sorted(items, key=lambda item: (item.order, item.path)))


def allowed(actor: Actor, role: Role) -> bool:
    """Whether ``actor`` has ``role``'s rights, by the API's own rule (gateway.api.deps)."""
    try:
        require(role)(actor)
    except HTTPException:
        return False
    return True


def nav_for(actor: Actor | None, items: tuple[NavItem, ...] | None = None) -> list[NavItem]:
    if actor is None:
        return []
    return [item for item in (all_nav() if items is None else items)
            if any(allowed(actor, role) for role in
                   (item.role if isinstance(item.role, tuple) else (item.role,)))]


def safe_next(target: str | None) -> str:
    """A local path to go back to (never another host: no open redirect).

    >>> safe_next("/nodes/demo/secador-01"), safe_next("//evil.example/x"), safe_next(None)
    ('/nodes/demo/secador-01', '/', '/')
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def page_language(request: Request, actor: Actor | None) -> str:
    """The language of a page: the switch's cookie, the user's saved choice, the default."""
    return choose_language(request.cookies.get(LANGUAGE_COOKIE),
                           getattr(actor, "language", None))


def site_name_of(context: GatewayContext, session: Session) -> str:
    """What the top bar names: the sites' names (or ids) this gateway serves."""
    names = [site.name for site in session.scalars(select(Site).order_by(Site.site_id))]
    return " · ".join(names) if names else " · ".join(context.settings.sites)


def render(request: Request, template: str, *, language: str, actor: Actor | None,
           context: GatewayContext, site_name: str, page: str, title_key: str,
           status_code: int = 200, texts: Iterable[str] = (),
           extra: dict[str, Any] | None = None,
           view: dict[str, Any] | None = None) -> HTMLResponse:
    """One page: the frame, the texts, and the JSON the page's script starts from
    (``extra`` goes to the template and the script, ``view`` to the template only).

    The script gets the shared texts plus the catalog keys starting with one of ``texts``
    (its areas' namespaces, ``"alerts."``); templates may use every text."""
    fmt = LocaleFormat.of(language)
    config = {
        "page": page, "lang": language, "locale": fmt.locale, "hour_cycle": fmt.hour_cycle,
        "zone": context.settings.timezone,
        "catalog": page_catalog(language, tuple(sorted(set(texts)))),
        "live_watchdog_ms": int(LIVE_WATCHDOG_S * 1000),
        "stale_after_s": STALE_AFTER.total_seconds(),
        "target_moisture_pct_wb": Thresholds().target_moisture_pct_wb,
        "measurements": {m.key: {"unit": unit(language, m.unit),
                                 "label": translate(language, f"measure.{m.label}")}
                         for m in MEASUREMENTS},
        **(extra or {}),
    }
    variables = {
        "lang": language, "languages": LANGUAGES, "page": page, "actor": actor,
        "nav": nav_for(actor), "site_name": site_name, "title_key": title_key,
        # what this user may do, by the API's own rule: {% if can("technician") %}
        "can": lambda role: actor is not None and allowed(actor, Role(role)),
        "current_path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "t": lambda key, **params: translate(language, key, **params),
        "asset": ASSETS.url, "quote": lambda text: quote(text, safe="/"),
        "number": lambda value, digits=1: format_number(value, language, digits),
        "when": lambda moment: format_datetime(moment, language, context.zone),
        "config_json": json.dumps(config, ensure_ascii=False, separators=(",", ":"))
        .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
        **(extra or {}), **(view or {}),
    }
    html = TEMPLATES.get_template(template).render(variables)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


@dataclass(frozen=True)
class Frame:
    """What every page of one request renders with: who asks, in which language, for which
    site. ``frame(...)`` builds it; page modules use it instead of repeating ``render``'s
    arguments."""

    request: Request
    context: GatewayContext
    actor: Actor | None
    language: str
    site_name: str

    def page(self, template: str, page: str, title_key: str, *, status_code: int = 200,
             texts: Iterable[str] = (), extra: dict[str, Any] | None = None,
             view: dict[str, Any] | None = None) -> HTMLResponse:
        return render(self.request, template, language=self.language, actor=self.actor,
                      context=self.context, site_name=self.site_name, page=page,
                      title_key=title_key, status_code=status_code, texts=texts,
                      extra=extra, view=view)

    def texts(self, keys: dict[str, str]) -> dict[str, str]:
        """code → catalog key, as code → text in this page's language."""
        return {code: translate(self.language, key) for code, key in keys.items()}

    def forbidden(self, message_key: str, *, page: str = "forbidden") -> HTMLResponse:
        """The one 403 page: logged in, but this role may not open the page (the API's own
        rule). ``message_key`` says what the role may not do; it gets ``{role}``."""
        return self.page("forbidden.html", page, "error.forbidden_title", status_code=403,
                         view={"message_key": message_key})

    def not_found(self, message_key: str, what: str, *, back: str = "/",
                  back_key: str = "nav.overview") -> HTMLResponse:
        """The one 404 page: ``message_key`` names what is unknown (``{what}``) and the page
        links back to ``back``."""
        return self.page("not_found.html", "not_found", "error.not_found_title",
                         status_code=404, view={"message_key": message_key, "what": what,
                                                "back": back, "back_key": back_key})


def frame(request: Request, context: GatewayContext, session: Session,
          actor: Actor | None) -> Frame:
    return Frame(request, context, actor, page_language(request, actor),
                 site_name_of(context, session))


# The texts the dryer page's scripts need beyond the shared ones (node.js, alert-items.js).
NODE_PAGE_TEXTS = ("operator.", "alerts.")


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, context: ContextDep, session: SessionDep,
             actor: OperatorDep) -> HTMLResponse:
    return frame(request, context, session, actor).page("overview.html", "overview",
                                                        "overview.title")


@router.get("/nodes/{site_id}/{node_id}", response_class=HTMLResponse)
def node_page(site_id: str, node_id: str, request: Request, context: ContextDep,
              session: SessionDep, actor: OperatorDep) -> HTMLResponse:
    node = session.get(Node, (site_id, node_id))
    here = frame(request, context, session, actor)
    if node is None:
        return here.not_found("error.not_found_node", f"{site_id}/{node_id}")
    return here.page("node.html", "node", "node.title", texts=NODE_PAGE_TEXTS,
                     extra={"site_id": site_id, "node_id": node_id},
                     view={"node_name": node.name or node_id,
                           "first_seen_at": node.first_seen_at,
                           "firmware_version": node.firmware_version or ""})


# Why a plain-form login came back (POST /api/auth/login redirects to /login?error=<code>).
LOGIN_ERRORS = {"wrong": "login.error_wrong", "locked": "login.error_locked",
                "disabled": "login.error_disabled"}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, context: ContextDep, session: SessionDep,
               next: str | None = None, error: str | None = None) -> HTMLResponse:
    return frame(request, context, session, None).page(
        "login.html", "login", "login.title", extra={"next_path": safe_next(next)},
        view={"error_key": LOGIN_ERRORS.get(error or "")})


@router.get("/lang/{code}")
def switch_language(code: str, next: str | None = None) -> Response:
    """Remember the chosen language in this browser (a cookie, a year) and go back; an unknown
    code changes nothing. Saving it with the account is the page script's PATCH /api/auth/me
    (a change needs the CSRF token, which a plain link cannot carry)."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if code in LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, code, max_age=365 * 24 * 3600, samesite="lax",
                            path="/")
    return response


_API_PREFIXES = ("/api/", "/metrics", "/static/", "/openapi.json", "/docs", "/redoc")


async def _page_errors(request: Request, exc: StarletteHTTPException) -> Response:
    """A page asked for without a login goes to the login page; the API keeps its JSON."""
    path = request.url.path
    if exc.status_code == 401 and not path.startswith(_API_PREFIXES) and path != "/login":
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Add the dashboard to the gateway's app (gateway.api.app.create_app calls this)."""
    app.include_router(router)
    for module in page_modules():
        app.include_router(module.router)
    app.mount("/static", CachedStaticFiles(ASSETS), name="static")
    # Pages, scripts and JSON shrink 3-10x for weak links; the event stream is left alone
    # (Starlette excludes text/event-stream), so live messages are never held in a buffer.
    app.add_middleware(GZipMiddleware, minimum_size=500)
    app.add_exception_handler(StarletteHTTPException, _page_errors)  # type: ignore[arg-type]
