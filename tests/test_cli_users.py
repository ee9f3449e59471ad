"""``cacao-dryer user ...``: the real command in a subprocess (and on a terminal of its own
for the password prompt) on a real metadata database, then logging in over the API with what
it made. Error messages and the other subcommands run in-process through ``main()`` (the same
code, without paying a Python start-up per case)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select as sql_select
from support.auth import PASSWORD, QUICK_HASHING, log_in
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker

from cacao_dryer.cli import main
from cacao_dryer.clock import ManualClock
from gateway.api.app import create_app
from gateway.metadata.database import open_metadata
from gateway.metadata.models import AuditEntry

pytestmark = pytest.mark.integration


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    api = "\n".join(f"{key} = {value}" for key, value in QUICK_HASHING.items())
    path.write_text(f'data_dir = "."\n[metadata]\nurl = "sqlite:///metadata.sqlite3"\n'
                    f"[api]\n{api}\n")
    return path


def cli_process(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cacao_dryer.cli", "user", *args],
                          input=stdin, capture_output=True, text=True, timeout=300)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> Callable[..., Result]:
    """``cacao-dryer user ...`` in this process; ``stdin`` is what the keyboard would type."""

    def run(*args: str, stdin: str = "") -> Result:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(["user", *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def password_file(tmp_path: Path, password: str = PASSWORD) -> str:
    path = tmp_path / "password.txt"
    path.write_text(password + "\n")
    return str(path)


def api_client(tmp_path: Path, mosquitto: MosquittoBroker, clock: ManualClock):  # type: ignore[no-untyped-def]
    return gateway_context(tmp_path / "api", mosquitto,
                           f"sqlite:///{tmp_path / 'metadata.sqlite3'}", clock)


def test_the_first_admin_is_added_and_logs_in_over_the_api(
        tmp_path: Path, config: Path, mosquitto: MosquittoBroker, clock: ManualClock) -> None:
    added = cli_process("add", "--config", str(config), "--username", "Ana", "--role",
                        "admin", "--password-file", "-", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added user ana (admin, language es)"
    with api_client(tmp_path, mosquitto, clock) as context:
        client = TestClient(create_app(context))
        client.headers["X-CSRF-Token"] = log_in(client, "ana")
        assert client.get("/api/auth/me").json()["role"] == "admin"
        assert client.get("/api/users").status_code == 200
    database = open_metadata(f"sqlite:///{tmp_path / 'metadata.sqlite3'}")
    with database.session() as session:
        entry = session.scalars(sql_select(AuditEntry)).one()
    database.close()
    assert entry.action == "user.add" and entry.actor.startswith("cli:")
    assert entry.new == {"role": "admin", "language": "es", "disabled": False}


@pytest.mark.parametrize(("args", "message"), [
    (("--username", "ana", "--role", "boss"),
     "error: unknown role 'boss' (one of: operator, technician, manager, admin)"),
    (("--username", "anaquispe01", "--role", "admin", "--password-file", "-"),
     "error: password must not be the username"),
    (("--username", "ana maria", "--role", "admin"),
     "error: username 'ana maria': 2-64 lowercase letters, digits, '.', '_' or '-', starting "
     "with a letter or digit"),
    (("--username", "ana", "--role", "admin", "--password-file", "/nonexistent/pw"),
     "error: --password-file /nonexistent/pw: cannot read (No such file or directory)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, config: Path,
                                          cli: Callable[..., Result],
                                          args: tuple[str, ...], message: str) -> None:
    if "--password-file" not in args:
        args = (*args, "--password-file", password_file(tmp_path))
    result = cli("add", "--config", str(config), *args, stdin="AnaQuispe01\n")
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_without_a_terminal_or_a_password_file_nothing_is_added(
        config: Path, cli: Callable[..., Result]) -> None:
    result = subprocess.run(  # a session of its own: no terminal to ask on, as under cron
        [sys.executable, "-m", "cacao_dryer.cli", "user", "add", "-c", str(config),
         "-u", "ana", "--role", "admin"], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=300, start_new_session=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "error: no password given: type it at a terminal or use --password-file")
    assert cli("list", "-c", str(config)).stdout.splitlines()[1:] == []


def test_a_duplicate_user_is_refused(tmp_path: Path, config: Path,
                                     cli: Callable[..., Result]) -> None:
    first = cli("add", "-c", str(config), "-u", "ana", "--role", "admin",
                "--password-file", password_file(tmp_path))
    assert first.returncode == 0, first.stderr
    again = cli("add", "-c", str(config), "-u", "ANA", "--role", "operator",
                "--password-file", password_file(tmp_path))
    assert (again.returncode, again.stderr.strip()) == (2, "error: user 'ana' already exists")


def test_passwd_list_and_disable(tmp_path: Path, config: Path, mosquitto: MosquittoBroker,
                                 clock: ManualClock, cli: Callable[..., Result]) -> None:
    for username, role in (("ana", "admin"), ("olga", "operator")):
        result = cli("add", "-c", str(config), "-u", username, "--role", role,
                     "--password-file", password_file(tmp_path))
        assert result.returncode == 0, result.stderr
    with api_client(tmp_path, mosquitto, clock) as context:
        olga = TestClient(create_app(context))
        log_in(olga, "olga")
        changed = cli("passwd", "-c", str(config), "-u", "olga", "--password-file", "-",
                      stdin="nuevo-secreto-largo\n")
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.strip() == "password of olga changed; their sessions ended"
        assert olga.get("/api/auth/me").status_code == 401
        assert olga.post("/api/auth/login", json={"username": "olga", "password": PASSWORD}
                         ).status_code == 401
        log_in(olga, "olga", "nuevo-secreto-largo")
        disabled = cli("disable", "-c", str(config), "-u", "olga")
        assert disabled.stdout.strip() == "disabled olga; their sessions ended"
        assert olga.get("/api/auth/me").status_code == 401
        assert olga.post("/api/auth/login", json={"username": "olga",
                                                  "password": "nuevo-secreto-largo"}
                         ).status_code == 403
    listing = cli("list", "-c", str(config))
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["username", "role", "language", "state", "created"]
    assert [line.split()[:4] for line in lines[1:]] == [["ana", "admin", "es", "enabled"],
                                                        ["olga", "operator", "es", "disabled"]]
    last_admin = cli("disable", "-c", str(config), "-u", "ana")
    assert last_admin.returncode == 2
    assert last_admin.stderr.strip() == ("error: 'ana' is the only enabled admin: make another "
                                         "admin first")


def _converse(argv: list[str], answers: list[tuple[str, str]], timeout_s: float = 60
              ) -> tuple[int, str]:
    """Run ``argv`` on a terminal of its own (getpass reads /dev/tty), answering prompts."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command at once
        os.execv(argv[0], argv)
    output = b""
    deadline = time.monotonic() + timeout_s
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if pending and pending[0][0].encode() in output:
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
                output += b"\n"
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_add_asks_for_the_password_twice_without_echo(config: Path) -> None:
    argv = [sys.executable, "-m", "cacao_dryer.cli", "user", "add", "-c", str(config),
            "-u", "ana", "--role", "admin"]
    code, output = _converse(argv, [("Password: ", PASSWORD),
                                    ("Password (again): ", PASSWORD + "-typo")])
    assert code == 2 and "the two passwords differ; nothing changed" in output
    code, output = _converse(argv, [("Password: ", PASSWORD),
                                    ("Password (again): ", PASSWORD)])
    assert code == 0 and "added user ana (admin, language es)" in output
    assert PASSWORD not in output  # never echoed
