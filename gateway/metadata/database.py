"""Open the metadata database and bring its schema up to date (Alembic migrations).

``open_metadata(url)`` accepts SQLAlchemy URLs: ``sqlite:///path`` (the default, zero set-up)
or ``postgresql+psycopg://user@host/db`` (several gateways sharing one site). The schema is
migrated to the newest revision on open, so an upgraded gateway upgrades its database; a
database newer than the code is refused with a one-line error rather than misread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cacao_dryer.errors import ConfigError
from gateway.timeseries import StoreUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")   # an acknowledged event survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class MetadataDB:
    """The engine and a session factory; ``session()`` is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back if it raises.
        Connection-level failures become ``StoreUnavailable`` (retry later)."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise StoreUnavailable(f"metadata database: {str(exc.orig).strip()[:200]}"
                                   ) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()


def create_metadata_engine(url: str) -> Engine:
    from sqlalchemy.engine import make_url

    try:
        backend = make_url(url).get_backend_name()
    except (SQLAlchemyError, ValueError) as exc:
        raise ConfigError(f"metadata.url: {str(exc).splitlines()[0]}") from None
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"metadata.url {_safe(url)!r}: only sqlite and postgresql are "
                          "supported")
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"metadata.url {_safe(url)!r}: {str(exc).splitlines()[0]}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_metadata(url: str, *, upgrade: bool = True) -> MetadataDB:
    """Connect and migrate to the newest schema (``upgrade=False`` only checks)."""
    engine = create_metadata_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    config = _alembic_config(engine)
    head = ScriptDirectory.from_config(config).get_current_head()
    database = MetadataDB(engine)
    try:
        current = database.revision()
        known = {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}
        if current is not None and current not in known:
            raise ConfigError(f"metadata database {_safe(url)} is at schema revision "
                              f"{current}, newer than this gateway knows (head {head}): "
                              "upgrade the gateway")
        if current != head:
            if not upgrade:
                raise ConfigError(f"metadata database {_safe(url)} is at revision "
                                  f"{current}, expected {head}: run the gateway to migrate")
            command.upgrade(config, "head")
    except OperationalError as exc:
        engine.dispose()
        raise StoreUnavailable(f"metadata database {_safe(url)}: "
                               f"{str(exc.orig).strip().splitlines()[0]}") from None
    except BaseException:
        engine.dispose()
        raise
    return database


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"
