"""A real HTTP server on a loopback port that records the POSTs it receives and answers from a
script: the far end of webhooks and of the Telegram Bot API in delivery tests."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from support.mosquitto import free_port


@dataclass(frozen=True)
class Request:
    """One POST as the server received it (header names in lower case)."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpReceiver:
    """Records each POST and answers the first ones from ``script``, then ``default``. The
    first ``hang`` requests get no answer until the server stops (the client times out).
    ``url`` is the server's address followed by ``path``."""

    def __init__(self, script: Iterable[Answer] = (), *, default: Answer = Answer(),
                 hang: int = 0, path: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.script = list(script)
        self.default = default
        self.hang = hang
        self.released = threading.Event()
        self._received: list[Request] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Self:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with owner._lock:
                    owner._received.append(Request(self.path, headers, body))
                    hang = owner.hang > 0
                    owner.hang -= hang
                    answer = owner.script.pop(0) if owner.script else owner.default
                if hang:
                    owner.released.wait(10)
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Releases hanging requests and closes the port; safe to call twice or unstarted."""
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._received)
