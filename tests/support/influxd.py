"""A PRIVATE InfluxDB 1.x server (Debian's ``influxd``) for tests.

``InfluxDaemon`` takes the server's own default configuration (``influxd config``), rewrites
every data, WAL and meta path into a temporary folder, binds the HTTP API to 127.0.0.1 on a
free port and the RPC (backup) service to another free loopback port, turns usage reporting,
the ``_internal`` monitor database and every other listener off, and starts ``influxd``. It is
ready when ``GET /ping`` answers 204. It can be stopped (SIGTERM), killed (SIGKILL) and started
again on the same port and data folder, as a server restarts in the field. The machine's own
InfluxDB (port 8086, /var/lib/influxdb) is never touched. It starts in a few hundredths of a
second, so each test gets its own.

``WalErrorProxy`` sits in front of one and answers chosen writes with the 500 influxd 1.6
gives under load, after influxd has stored them.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from support import wait_for
from support.mosquitto import free_port

INFLUXD = "/usr/bin/influxd"

# Keys whose value is a path: all of them go into the private folder.
_PATH_KEYS = {"dir", "wal-dir", "bind-socket"}
_KEY_VALUE = re.compile(r"^(\s*)([A-Za-z0-9_-]+)\s*=\s*(.*)$")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def private_config(template: str, folder: Path, http_port: int, rpc_port: int, *,
                   auth_enabled: bool = False) -> str:
    """``influxd config`` output rewritten for a private server living in ``folder``."""
    overrides: dict[tuple[str, str], str] = {
        ("", "bind-address"): _toml_string(f"127.0.0.1:{rpc_port}"),
        # Debian's build calls it reporting-enabled (opt-in); upstream reporting-disabled.
        ("", "reporting-enabled"): "false",
        ("", "reporting-disabled"): "true",
        ("meta", "logging-enabled"): "false",
        ("data", "query-log-enabled"): "false",
        ("monitor", "store-enabled"): "false",
        ("subscriber", "enabled"): "false",
        ("http", "bind-address"): _toml_string(f"127.0.0.1:{http_port}"),
        ("http", "auth-enabled"): "true" if auth_enabled else "false",
        ("http", "log-enabled"): "false",
        ("http", "pprof-enabled"): "false",
        ("http", "unix-socket-enabled"): "false",
        ("logging", "level"): _toml_string("warn"),
        ("logging", "suppress-logo"): "true",
        ("continuous_queries", "log-enabled"): "false",
    }
    section = ""
    in_listener_array = False  # [[graphite]], [[udp]]...: every other listener stays off
    lines: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
            in_listener_array = stripped.startswith("[[")
            lines.append(line)
            continue
        match = _KEY_VALUE.match(line)
        if match is None:
            lines.append(line)
            continue
        indent, key, _ = match.groups()
        if key in _PATH_KEYS:
            name = {"bind-socket": "influxd.sock", "wal-dir": "wal"}.get(key, section)
            target = folder / name
            value = _toml_string(str(target))
        elif key == "enabled" and (in_listener_array or section == "ifql"):
            value = "false"
        else:
            value = overrides.get((section, key), match.group(3))
        lines.append(f"{indent}{key} = {value}")
    return "\n".join(lines) + "\n"


class InfluxDaemon:
    """A private ``influxd``; ``auth_enabled`` requires users (create the first admin with
    ``create_admin`` right after ``start``)."""

    def __init__(self, folder: Path, *, auth_enabled: bool = False) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        rpc_port = free_port()
        while rpc_port == self.port:
            rpc_port = free_port()
        self.rpc_port = rpc_port
        self.log_file = folder / "influxd.log"
        template = subprocess.run([INFLUXD, "config", "-config", "/dev/null"], check=True,
                                  capture_output=True, text=True).stdout
        self.config_file = folder / "influxdb.conf"
        self.config_file.write_text(
            private_config(template, folder, self.port, self.rpc_port,
                           auth_enabled=auth_enabled), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as response:
                return response.status == 204
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 20.0) -> None:
        assert not self.running, "influxd already running"
        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen([INFLUXD, "run", "-config", str(self.config_file)],
                                         stdout=self._log, stderr=subprocess.STDOUT)
        process = self._process
        wait_for(lambda: self.ping() or process.poll() is not None, timeout,
                 f"influxd to answer /ping on port {self.port}")
        if process.poll() is not None:
            self._close_log()
            raise RuntimeError(f"influxd exited with {process.returncode}: {self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM): influxd closes its WAL and shards."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: what is in the WAL survives (fsynced before a write is answered)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)  # also ends a paused (SIGSTOPped) one
            self._process.wait()
        self._process = None
        self._close_log()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung server)."""
        assert self._process is not None and self.running, "influxd not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None, "influxd not started"
        self._process.send_signal(signal.SIGCONT)

    def query(self, statement: str, database: str | None = None,
              auth: tuple[str, str] | None = None) -> dict:
        """Run InfluxQL through the HTTP API (for test set-up and checks, independent of the
        code under test); returns the decoded JSON."""
        form = {"q": statement} | ({"db": database} if database else {})
        headers = {}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(f"{self.url}/query",
                                         data=urllib.parse.urlencode(form).encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def create_admin(self, user: str, password: str) -> None:
        escaped = password.replace("\\", "\\\\").replace("'", "\\'")
        self.query(f"CREATE USER \"{user}\" WITH PASSWORD '{escaped}' WITH ALL PRIVILEGES")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> InfluxDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class WalErrorProxy:
    """An HTTP hop in front of a real influxd that reproduces influxd 1.6's answer under load.

    ``fail_writes(n)``: the next ``n`` ``POST /write`` requests are passed to influxd — which
    stores the points — and then answered ``500 {"error":"engine: error syncing wal"}``
    instead of influxd's 204 (shared/reference/infrastructure.md: under load 1.6 answers so
    and has usually stored the points anyway). Everything else is passed through unchanged.
    It only makes that real but load-dependent answer deterministic; the database is real.
    """

    def __init__(self, target: InfluxDaemon) -> None:
        self.target = target
        self._failures_left = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._forward(self.rfile.read(length))

            def _forward(self, body: bytes | None) -> None:
                headers = {key: value for key, value in self.headers.items()
                           if key.lower() in ("content-type", "authorization")}
                request = urllib.request.Request(f"{proxy.target.url}{self.path}", data=body,
                                                 headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, payload = response.status, response.read()
                        content_type = response.headers.get("Content-Type", "")
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                    content_type = exc.headers.get("Content-Type", "")
                if self.path.startswith("/write") and proxy._take_failure():
                    status, payload = 500, b'{"error":"engine: error syncing wal"}\n'
                    content_type = "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_writes(self, count: int) -> None:
        with self._lock:
            self._failures_left = count

    def _take_failure(self) -> bool:
        with self._lock:
            if self._failures_left <= 0:
                return False
            self._failures_left -= 1
            return True

    def __enter__(self) -> WalErrorProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
