"""A TCP hop per node between the node and the broker that can partition it (fault suite).

``ProxyHub`` runs one asyncio loop in a background thread and, per node, a listener on a free
loopback port that forwards every connection to the broker. ``partition(name, style)``:

- ``"blackhole"`` — what a Wi-Fi or radio link going silent looks like: open connections stay
  open but no byte passes in either direction (bytes already read are held, never dropped, and
  delivered if the link comes back before either side gave up); new connections are refused.
  The broker notices only through the MQTT keepalive (1.5 × the node's keepalive) and then
  publishes the node's Last Will; the node notices when its PINGREQ goes unanswered.
- ``"cut"`` — the connection is reset at once (both sides see it) and new ones are refused.

``heal(name)`` lets bytes flow again and accepts new connections. Nothing here knows MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

PartitionStyle = Literal["blackhole", "cut"]
READ_CHUNK = 65536


@dataclass
class _Link:
    """One node's proxy: its listener, the connections through it, and the gate."""

    upstream: tuple[str, int]
    gate: asyncio.Event
    style: PartitionStyle | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None
    port: int = 0
    connections: int = 0  # accepted and forwarded, since start
    refused: int = 0      # refused while partitioned


class ProxyHub:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="partition-proxy",
                                        daemon=True)
        self._links: dict[str, _Link] = {}
        self._thread.start()

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- public, from any thread ---------------------------------------------------------

    def add(self, name: str, upstream_host: str, upstream_port: int) -> int:
        """A new proxy for ``name`` towards the broker; returns the port nodes connect to."""
        return int(self._call(self._add(name, (upstream_host, upstream_port))))

    def partition(self, name: str, style: PartitionStyle = "blackhole") -> None:
        self._call(self._partition(name, style))

    def heal(self, name: str) -> None:
        self._call(self._heal(name))

    def partitioned(self, name: str) -> bool:
        return self._links[name].style is not None

    def counts(self, name: str) -> tuple[int, int]:
        """(connections forwarded, connections refused while partitioned)."""
        link = self._links[name]
        return link.connections, link.refused

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # --- in the loop ---------------------------------------------------------------------

    async def _add(self, name: str, upstream: tuple[str, int]) -> int:
        gate = asyncio.Event()
        gate.set()
        link = _Link(upstream=upstream, gate=gate)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(link, reader, writer)

        link.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        link.port = link.server.sockets[0].getsockname()[1]
        self._links[name] = link
        return link.port

    async def _serve(self, link: _Link, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if link.style is not None:  # no route to the broker right now
            link.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*link.upstream)
        except OSError:  # the broker is down: the node sees its connection fail
            writer.transport.abort()
            return
        link.connections += 1
        link.writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(link, reader, up_writer),
                                 self._pump(link, up_reader, writer))
        finally:
            link.writers.difference_update((writer, up_writer))

    async def _pump(self, link: _Link, source: asyncio.StreamReader,
                    target: asyncio.StreamWriter) -> None:
        try:
            while True:
                await link.gate.wait()
                data = await source.read(READ_CHUNK)
                if not data:
                    break
                await link.gate.wait()  # read just before a blackhole: held, not dropped
                target.write(data)
                await target.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            target.close()  # the other direction then ends too

    async def _partition(self, name: str, style: PartitionStyle) -> None:
        link = self._links[name]
        link.style = style
        if style == "blackhole":
            link.gate.clear()
            return
        for writer in list(link.writers):
            writer.transport.abort()  # RST to both ends

    async def _heal(self, name: str) -> None:
        link = self._links[name]
        link.style = None
        link.gate.set()

    async def _close(self) -> None:
        for link in self._links.values():
            link.gate.set()
            if link.server is not None:
                link.server.close()
            for writer in list(link.writers):
                writer.transport.abort()
