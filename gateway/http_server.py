"""Serve the API with uvicorn in a background thread of the gateway process, so one process
ingests, decides and answers (what a Raspberry Pi at a small collection center can afford)."""

from __future__ import annotations

import threading

import uvicorn
from fastapi import FastAPI

from gateway.timeseries import StoreUnavailable


class ApiServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self.host, self.port = host, port

    def start(self, timeout: float = 15.0) -> None:
        """Start listening; raises StoreUnavailable (retryable) if the port cannot be bound."""
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            deadline.wait(0.05)
        raise StoreUnavailable(f"API could not listen on {self.host}:{self.port} "
                               "(port in use or not allowed)")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
