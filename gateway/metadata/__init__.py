"""The gateway's metadata database: sites, nodes, batches, thresholds, alerts, users, audit.

SQLAlchemy models (``models.py``) on SQLite by default or PostgreSQL, migrated by Alembic
(``migrations/``) from the first version on; ``database.py`` opens and upgrades it.
"""
