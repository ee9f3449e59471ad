"""The web dashboard for operators, technicians and managers, served by the gateway's FastAPI
app: HTML pages (``web``), Spanish/English texts and formats (``i18n``), static files with
content-hashed URLs (``assets``). Live values come from ``gateway.live`` over ``/api/live``.
See docs/dashboard.md."""
