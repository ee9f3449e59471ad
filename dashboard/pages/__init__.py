"""Page areas of the dashboard, one module each (batches, thresholds, alerts...).

Each module defines ``router`` (a FastAPI ``APIRouter(include_in_schema=False)`` with its
pages) and ``NAV`` (a tuple of ``dashboard.web.NavItem`` for the navigation bar, may be
empty); ``dashboard.web.install`` picks every module up. Pages render with
``dashboard.web.render`` so they share the frame, texts and security headers.
"""
