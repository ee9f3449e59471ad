"""Open the metadata database and bring its schema up to date (Alembic migrations).

``open_metadata(url)`` accepts SQLAlchemy URLs: ``sqlite:///path`` (the default, zero set-up)
or ``postgresql+psycopg://user@host/db`` (several gateways sharing one site). The schema is
migrated to the newest revision on open, so an upgraded gateway upgrades its database; a
database newer than the code is refused with a one-line error rather than misread.

Alembic is imported only to migrate. Whether the database is at the newest revision is read
without it (the ``alembic_version`` table against the revisions named in the migration files),
and the running gateway migrates in a short child process (``migrate_in_subprocess``): a
gateway whose schema is current, and one that has just migrated, never hold Alembic's ~7 MB of
modules for the rest of their life (docs/scaling.md, "Memory").
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cacao_dryer.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

    from gateway.timeseries import StoreUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # where Alembic keeps the database's revision
MIGRATION_LOCK_KEY = 0x0CACA0  # PostgreSQL advisory lock held while migrating
_PARSE_LOCK = threading.Lock()
MIGRATE_TIMEOUT_S = 600.0  # a child process migrating a large PostgreSQL database
# A migrating child's exit codes besides 0 and 1 (a bug: its traceback is in the log).
_EXIT_CONFIG, _EXIT_UNAVAILABLE = 2, 3


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


@functools.cache
def migration_revisions() -> tuple[str, frozenset[str]]:
    """(newest revision, every revision) named by the migration files, read without Alembic:
    each file's module-level ``revision`` and ``down_revision``. Anything but one chain with
    one head is left to Alembic's own reading. Read once (under a lock: CPython 3.11's
    ``ast.parse`` fails when threads call it at once)."""
    with _PARSE_LOCK:
        return _read_revisions()


def _read_revisions() -> tuple[str, frozenset[str]]:
    revisions: dict[str, object] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        names: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = value = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    names[target.id] = ast.literal_eval(value)  # type: ignore[arg-type]
                except ValueError:
                    return _alembic_revisions()
        if isinstance(names.get("revision"), str):
            revisions[names["revision"]] = names.get("down_revision")  # type: ignore[index]
    parents = set(revisions.values())
    heads = [revision for revision in revisions if revision not in parents]
    if len(heads) != 1 or not all(p is None or isinstance(p, str) for p in parents):
        return _alembic_revisions()
    return heads[0], frozenset(revisions)


def _alembic_revisions() -> tuple[str, frozenset[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    if head is None:
        raise ConfigError(f"{MIGRATIONS}: no migrations")
    return head, frozenset(s.revision for s in script.walk_revisions())


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (imports Alembic). On PostgreSQL, gateways
    that start together on one new database take turns (an advisory lock), and whoever comes
    second finds the schema current."""
    from alembic import command

    if engine.dialect.name != "postgresql":
        command.upgrade(_alembic_config(engine), "head")
        return
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            if MetadataDB(engine).revision() != migration_revisions()[0]:
                command.upgrade(_alembic_config(engine), "head")
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            lock.commit()


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
            raise _store_unavailable(f"metadata database: {str(exc.orig).strip()[:200]}"
                                   ) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated)."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            versions = connection.execute(
                text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(versions) > 1:
            raise ConfigError(f"metadata database is at several schema revisions at once "
                              f"({', '.join(sorted(versions))}): repair its {VERSION_TABLE} "
                              "table")
        return versions[0] if versions else None

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


def open_metadata(url: str, *, upgrade: bool = True,
                  migrate_in_subprocess: bool = False) -> MetadataDB:
    """Connect and migrate to the newest schema (``upgrade=False`` only checks).
    ``migrate_in_subprocess``: a child process migrates, so this one never imports Alembic
    (the long-running gateway; a little slower to start when there is something to do)."""
    engine = create_metadata_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    head, known = migration_revisions()
    database = MetadataDB(engine)
    try:
        current = database.revision()
        if current is not None and current not in known:
            raise ConfigError(f"metadata database {_safe(url)} is at schema revision "
                              f"{current}, newer than this gateway knows (head {head}): "
                              "upgrade the gateway")
        if current != head:
            if not upgrade:
                raise ConfigError(f"metadata database {_safe(url)} is at revision "
                                  f"{current}, expected {head}: run the gateway to migrate")
            if migrate_in_subprocess:
                _migrate_in_child(url)
            else:
                migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        raise _unavailable(url, exc) from None
    except BaseException:
        engine.dispose()
        raise
    return database


def _store_unavailable(message: str) -> StoreUnavailable:
    # Imported here: the migrating child process needs neither it nor the message contract
    # (pydantic, ~20 MB) that comes with it.
    from gateway.timeseries import StoreUnavailable

    return StoreUnavailable(message)


def _unavailable(url: str, exc: OperationalError) -> StoreUnavailable:
    return _store_unavailable(f"metadata database {_safe(url)}: "
                            f"{str(exc.orig).strip().splitlines()[0]}")


def _migrate_in_child(url: str) -> None:
    """Migrate in a short child process; its one-line error becomes ours. The URL (it may
    hold the password) goes through stdin, never the command line."""
    result = subprocess.run(
        [sys.executable, "-c", "from gateway.metadata.database import migrate_child_main; "
         "migrate_child_main()"],
        input=url, text=True, capture_output=True, timeout=MIGRATE_TIMEOUT_S, check=False)
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit code {result.returncode}"
    if result.returncode == _EXIT_UNAVAILABLE:
        raise _store_unavailable(reason)
    if result.returncode == _EXIT_CONFIG:
        raise ConfigError(reason)
    raise RuntimeError(f"migrating the metadata database {_safe(url)} failed: {reason}")


def migrate_child_main() -> None:
    """The migrating child process: the URL on stdin; exit 0, or a one-line reason on stderr
    with exit code 2 (configuration), 3 (database unavailable) or 1 (a bug, with traceback)."""
    url = sys.stdin.read().strip()
    try:
        engine = create_metadata_engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
    except OperationalError as exc:
        print(_unavailable(url, exc), file=sys.stderr)
        sys.exit(_EXIT_UNAVAILABLE)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(_EXIT_CONFIG)


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"
