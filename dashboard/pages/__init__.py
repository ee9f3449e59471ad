"""Page areas of the dashboard, one module each (batches, thresholds, alerts...).

Each module defines ``router`` (a FastAPI ``APIRouter(include_in_schema=False)`` with its
pages) and ``NAV`` (a tuple of ``dashboard.web.NavItem`` for the navigation bar, may be
empty); ``dashboard.web.install`` picks every module up. Pages render with
``dashboard.web.frame(...).page(...)`` so they share the frame, texts and security headers,
and answer a role that may not open them with ``.forbidden(message_key)`` and something
unknown with ``.not_found(...)``. A module names the catalog namespaces its scripts translate
(``SCRIPT_TEXTS``, passed as ``texts=``): a page sends its script only those and the shared
texts.
"""
