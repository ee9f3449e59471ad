"""The gateway's JSON API (FastAPI): one router per resource under ``routes/``."""
