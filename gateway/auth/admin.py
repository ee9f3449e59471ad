"""User administration from the command line (``cacao-dryer user ...``): how the first admin
gets created, and how an admin locked out of the dashboard gets back in.

Works on the metadata database named by the gateway's config file, also while the gateway
runs (SQLite in WAL mode and PostgreSQL both allow it); changes take effect at the gateway's
next request, since sessions and roles are read from the database every time. Audited as
``cli:<system user>``.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from cacao_dryer.clock import SystemClock
from cacao_dryer.errors import ConfigError
from gateway.auth import user_service
from gateway.auth.errors import InvalidAccountInput
from gateway.auth.users import UserChange, UserService


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


@contextmanager
def users_of(config: Path) -> Iterator[tuple[UserService, Session]]:
    """The user service and one transaction on the gateway's metadata database."""
    from gateway.config import load_gateway_config
    from gateway.metadata.database import open_metadata
    from gateway.runtime import metadata_url

    settings = load_gateway_config(config)
    metadata = open_metadata(metadata_url(settings))
    try:
        with metadata.session() as db:
            yield user_service(settings.api, SystemClock()), db
    finally:
        metadata.close()


def read_password(password_file: str | None, *, prompt: str = "Password") -> str:
    """From ``password_file`` (its first line; ``-`` = standard input), else asked twice
    without echo."""
    if password_file is not None:
        if password_file == "-":
            text = sys.stdin.readline()
        else:
            try:
                text = Path(password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"--password-file {password_file}: cannot read "
                                  f"({exc.strerror})") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise InvalidAccountInput(f"--password-file {password_file}: the first line is "
                                      "empty")
        return lines[0]
    try:
        first = getpass.getpass(f"{prompt}: ")
        again = getpass.getpass(f"{prompt} (again): ")
    except EOFError:
        raise InvalidAccountInput("no password given: type it at a terminal or use "
                                  "--password-file") from None
    if again != first:
        raise InvalidAccountInput("the two passwords differ; nothing changed")
    return first


def add(config: Path, username: str, role: str, language: str,
        password_file: str | None) -> str:
    with users_of(config) as (users, db):
        password = read_password(password_file)
        user = users.add(db, username, password, role, language, actor=cli_actor())
        return f"added user {user.username} ({user.role}, language {user.language})"


def list_users(config: Path) -> list[str]:
    with users_of(config) as (users, db):
        rows = [(u.username, u.role, u.language, "disabled" if u.disabled else "enabled",
                 u.created_at.strftime("%Y-%m-%d %H:%M UTC")) for u in users.list(db)]
    header = ("username", "role", "language", "state", "created")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True))
            .rstrip() for row in [header, *rows]]


def passwd(config: Path, username: str, password_file: str | None) -> str:
    with users_of(config) as (users, db):
        user = users.get(db, username)
        password = read_password(password_file, prompt=f"New password for {user.username}")
        users.update(db, user.username, UserChange(password=password), actor=cli_actor())
        return f"password of {user.username} changed; their sessions ended"


def set_disabled(config: Path, username: str, disabled: bool) -> str:
    with users_of(config) as (users, db):
        user = users.update(db, username, UserChange(disabled=disabled), actor=cli_actor())
        return (f"disabled {user.username}; their sessions ended" if disabled
                else f"enabled {user.username}")
