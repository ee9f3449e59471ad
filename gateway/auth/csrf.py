"""Cross-site request forgery defences, as pure functions (the API's dependency applies them).

1. Double submit: a state-changing request authenticated by the session cookie must carry the
   session's CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``). A foreign page
   can make a browser send the cookie but cannot read the token.
2. Origin check: when the browser says where the request comes from (``Origin``, else
   ``Referer``), it must be this gateway (the ``Host`` it was sent to) or a trusted origin.
3. The cookie itself is SameSite=Lax, so browsers do not send it on cross-site POSTs at all.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def changes_state(method: str) -> bool:
    """POST, PUT, PATCH, DELETE (and anything unknown) change state; GET and friends do not."""
    return method.upper() not in SAFE_METHODS


def origin_refusal(origin: str | None, referer: str | None, host: str | None,
                   trusted_origins: tuple[str, ...] = ()) -> str | None:
    """Why the request's stated origin is refused, or None if it is acceptable (or unstated:
    non-browser clients send neither header, and the CSRF token still has to match).

    >>> origin_refusal("http://gateway.local:8080", None, "gateway.local:8080")
    >>> origin_refusal("https://evil.example", None, "gateway.local:8080")
    'cross-site request refused: origin https://evil.example is not this gateway'
    """
    source = origin if origin else referer
    if not source:
        return None
    if source.strip() == "null":
        return "cross-site request refused: origin null (a sandboxed or file page)"
    parts = urlsplit(source.strip())
    stated = f"{parts.scheme}://{parts.netloc}".lower()
    if host and parts.netloc.lower() == host.strip().lower():
        return None
    if stated in (t.rstrip("/").lower() for t in trusted_origins):
        return None
    return f"cross-site request refused: origin {stated[:100]} is not this gateway"


def csrf_refusal(expected: str | None, given: str | None) -> str | None:
    """Why a state-changing, cookie-authenticated request is refused, or None if its CSRF
    token matches the session's (compared in constant time)."""
    if not given:
        return (f"CSRF token missing: send the {CSRF_HEADER} header (from login or "
                "GET /api/auth/me)")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        return "CSRF token does not match this session: reload the page"
    return None
