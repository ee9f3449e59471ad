"""Ingest worker processes: telemetry taken by several processes of one gateway.

One Python process decodes, validates and encodes readings on one core at most; a busy site
(bench/GATEWAY_RESULTS.md: 20,000 readings/s) needs the second core. With
``ingest_workers = N`` the gateway starts N worker processes: fresh interpreters
(``python -c "from gateway.ingest_workers import ..."``, not ``multiprocessing``: its ``spawn``
re-imports the parent's ``__main__`` and keeps a 12 MB resource-tracker process running) that
import only what ingest needs and get the settings over a socket pair. Each is a complete
``gateway.ingest.Ingest`` for telemetry only:

- its own MQTT client ``<client_id>-w<i>`` with a persistent session on the shared
  subscription ``$share/<group>/cacao/v1/<site>/+/telemetry`` (``group`` = ``shared_group``,
  else one private to this gateway): the broker splits the readings between the workers, and
  between the workers of every gateway of the same group;
- its own store connection and its own spool (``spool-w<i>.jsonl``);
- the same guarantee: acknowledged only once durable, idempotent writes, SIGKILL-safe.

The main process keeps status and events (low rate, retained statuses) and the listener (node
registry, alerts, live dashboards). After each durable batch a worker sends the main process a
``WorkerBatch`` — the newest reading of each node in the batch and its counters — and waits for
the answer before acknowledging: the listener sees every node's latest state with the same
"recorded before acknowledged" guarantee, for the price of one pipe round trip per batch of
thousands of readings. The counters keep the gateway's ``IngestStats`` (``/metrics``) whole.

A worker paces its garbage collection like the main process (``gateway.gc_pacing``):
automatic collection off, the young generation after every durable batch, everything every
few seconds.

Lifecycle: workers ignore SIGINT/SIGTERM (systemd and Ctrl-C signal the whole group; the main
process decides) and stop when told (``stop`` on their stdin), finishing and acknowledging
what they hold. A worker whose main process disappears (SIGKILL: its stdin ends) stops within
a second without acknowledging anything more — the broker delivers it again to the restarted
gateway — so an orphan never fights the restarted gateway's worker over its client id. A
worker that dies is started again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.connection
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any

from cacao_dryer.contract import Channel, NodeEvent, NodeStatus
from gateway.config import GatewaySettings
from gateway.gc_pacing import GarbagePacer
from gateway.timeseries import StoredReading

log = logging.getLogger("cacao_dryer.gateway")

PARENT_CHECK_S = 0.5     # how often a worker checks that the main process still lives
STATS_PUSH_S = 1.0       # counters of batches the listener never saw (invalid only) go up
ANSWER_TIMEOUT_S = 120.0  # a worker waits this long for the main process's listener
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0


@dataclass(frozen=True)
class WorkerBatch:
    """What a worker reports after a durable batch (or, with no readings, counters only)."""

    worker: int
    readings: list[StoredReading]  # the newest reading of each node of the batch
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    spooled: int = 0
    store_errors: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    spool_waiting: int | None = None  # readings in the worker's spool now, when it changed
    needs_answer: bool = True
    connected: bool | None = None  # the worker's MQTT state, when it changed


# The worker process's entry: a fresh interpreter importing only this module (and what ingest
# needs); the socket pair's end is its argument, the settings come over it.
WORKER_ENTRY = "from gateway.ingest_workers import worker_process; worker_process()"
_STOP = b"stop\n"  # on a worker's stdin: finish and acknowledge what you hold


class WorkerPool:
    """The main process's side: starts the workers, answers their batches by calling
    ``on_batch`` (which raises to make the worker retry), restarts a worker that died."""

    def __init__(self, settings: GatewaySettings,
                 on_batch: Callable[[WorkerBatch], None]) -> None:
        self.settings = settings
        self.count = settings.ingest_workers
        self._on_batch = on_batch
        self._connected = [False] * self.count
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self._connections: list[Connection | None] = [None] * self.count
        self._restart_at = [0.0] * self.count
        self._restart_delay = [RESTART_MIN_S] * self.count
        self._stopping = threading.Event()  # stop() began: no more restarts
        self._stopped = threading.Event()   # every worker has exited
        self._process_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="ingest-workers",
                                        daemon=True)
        self.restarts = 0

    def start(self) -> None:
        # An interpreter that exits without stop() (a failed start) closes the workers'
        # stdin, so they stop: do not start them again meanwhile (atexit runs this first).
        atexit.register(self._stopping.set)
        for index in range(self.count):
            self._spawn(index)
        self._thread.start()

    def all_connected(self) -> bool:
        return all(self._connected)

    def stop(self, timeout: float = 10.0) -> None:
        """Tell every worker to finish; answer them until they have exited."""
        with self._process_lock:  # no restart check in flight: only this thread reaps now
            self._stopping.set()
        for process in self._processes:
            if process is not None:
                _tell(process.stdin, _STOP)
        deadline = time.monotonic() + timeout
        for index, process in enumerate(self._processes):
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("ingest worker %d did not stop in time; terminating it", index + 1)
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
        self._stopped.set()
        self._thread.join(5)
        for index in range(self.count):
            self._forget(index)

    def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", WORKER_ENTRY, str(child_end.fileno())],
                stdin=subprocess.PIPE, pass_fds=(child_end.fileno(),), close_fds=True)
        finally:
            child_end.close()
        connection = Connection(parent_end.detach())
        connection.send({"settings": self.settings.model_dump(mode="json"), "index": index,
                         "log_level": logging.getLogger().getEffectiveLevel()})
        self._processes[index] = process
        self._connections[index] = connection

    def _forget(self, index: int) -> None:
        """Close what linked this process to worker ``index`` (it has exited)."""
        self._connected[index] = False
        connection, self._connections[index] = self._connections[index], None
        if connection is not None:
            connection.close()
        process = self._processes[index]
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _serve(self) -> None:
        """Answer the workers' batches; notice and restart dead workers."""
        while True:
            live = [c for c in self._connections if c is not None]
            if live:
                ready = multiprocessing.connection.wait(live, timeout=0.2)
            else:  # every worker is down (being restarted) or stopping
                self._stopped.wait(0.2)
                ready = []
            for index, connection in enumerate(self._connections):
                if connection is not None and connection in ready:
                    self._answer(index, connection)
            self._check_processes()
            if self._stopped.is_set():
                return

    def _answer(self, index: int, connection: Connection) -> None:
        try:
            batch: WorkerBatch = connection.recv()
        except (EOFError, OSError):
            connection.close()
            self._connections[index] = None  # the process check below restarts it
            return
        if batch.connected is not None:
            self._connected[index] = batch.connected
        error: str | None = None
        try:
            self._on_batch(batch)
        except Exception as exc:  # the listener failed: the worker retries, unacknowledged
            error = f"{type(exc).__name__}: {exc}"
        if batch.needs_answer:
            with contextlib.suppress(OSError):  # the worker died meanwhile: it is restarted
                connection.send(error)

    def _check_processes(self) -> None:
        with self._process_lock:
            if not self._stopping.is_set():
                self._restart_dead()

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for index, process in enumerate(self._processes):
            if process is None:
                if now >= self._restart_at[index]:
                    log.warning("restarting ingest worker %d", index + 1)
                    self.restarts += 1
                    self._spawn(index)
            elif process.poll() is not None:
                log.error("ingest worker %d exited (code %s); restarting it in %.0f s",
                          index + 1, process.returncode, self._restart_delay[index])
                self._forget(index)
                self._processes[index] = None
                self._restart_at[index] = now + self._restart_delay[index]
                self._restart_delay[index] = min(self._restart_delay[index] * 2,
                                                 RESTART_MAX_S)


# --- the worker process -----------------------------------------------------------------------

class MainProcessLink:
    """The worker's ``IngestListener``: reports each durable batch to the main process and
    returns once the main process's listener has recorded it (raises otherwise, so the
    worker's ingest retries and does not acknowledge)."""

    def __init__(self, index: int, connection: Connection) -> None:
        self.index = index
        self._connection = connection
        self._lock = threading.Lock()
        # counters as last reported; the spool depth as unknown, so the first report says it
        # (a restarted worker may find its predecessor's spool, or none)
        self._reported: dict[str, Any] = {"spool_waiting": -1}
        self._connected = False  # as last reported
        self.stats: Any = None  # the worker's IngestStats, set once the ingest exists

    def batch_received(self, readings: Sequence[StoredReading],
                       statuses: Sequence[NodeStatus], events: Sequence[NodeEvent]) -> None:
        from gateway.ingest import newest_per_node

        self._report(newest_per_node(readings), needs_answer=True)

    def push_counters(self, connected: bool) -> None:
        """Counters that changed without a listener call (batches of invalid messages only),
        and the MQTT state when it changed."""
        changed = connected != self._connected
        if changed or self._delta_pending():
            self._report([], needs_answer=False, connected=connected if changed else None)
            self._connected = connected

    def _delta_pending(self) -> bool:
        stats = self.stats
        return stats is not None and (
            stats.received != self._reported.get("received", 0)
            or stats.store_errors != self._reported.get("store_errors", 0)
            or stats.spool_waiting != self._reported.get("spool_waiting", 0))

    def _report(self, readings: list[StoredReading], *, needs_answer: bool,
                connected: bool | None = None) -> None:
        with self._lock:
            batch = self._delta(readings, needs_answer, connected)
            try:
                self._connection.send(batch)
                if not needs_answer:
                    return
                if not self._connection.poll(ANSWER_TIMEOUT_S):
                    raise TimeoutError("the main process did not answer")
                error = self._connection.recv()
            except (EOFError, OSError) as exc:
                raise ConnectionError(f"the gateway's main process is gone ({exc!r})") from None
        if error is not None:
            raise RuntimeError(f"the main process could not record the batch: {error}")

    def _delta(self, readings: list[StoredReading], needs_answer: bool,
               connected: bool | None) -> WorkerBatch:
        """Counters since the last report (reported once, whatever the answer)."""
        stats, before = self.stats, self._reported
        now = {"received": stats.received, "stored": stats.stored,
               "duplicates": stats.duplicates, "spooled": stats.spooled,
               "store_errors": stats.store_errors, "invalid": Counter(stats.invalid),
               "spool_waiting": stats.spool_waiting}
        invalid = now["invalid"] - before.get("invalid", Counter())
        waiting = stats.spool_waiting
        self._reported = now
        return WorkerBatch(
            worker=self.index, readings=readings, needs_answer=needs_answer,
            connected=connected, invalid=dict(invalid),
            spool_waiting=waiting if waiting != before.get("spool_waiting", 0) else None,
            **{key: now[key] - before.get(key, 0) for key in
               ("received", "stored", "duplicates", "spooled", "store_errors")})


def _tell(stream: IO[bytes] | None, message: bytes) -> None:
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):  # the worker is gone (or being reaped)
        stream.write(message)
        stream.flush()


def worker_process() -> None:
    """The worker process's entry (``WORKER_ENTRY``): the socket pair's end is argv[1]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = Connection(int(sys.argv[1]))
    setup: dict[str, Any] = connection.recv()
    worker_main(setup["settings"], setup["index"], connection, sys.stdin.fileno(),
                setup["log_level"])


def worker_main(settings_data: dict[str, Any], index: int, connection: Connection,
                control: int, log_level: int) -> None:
    """A worker process: telemetry on the shared subscription until ``stop`` comes on the
    ``control`` file descriptor, or it ends (the main process is gone)."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s "
                        f"[worker {index + 1}]: %(message)s")
    from gateway.ingest import Ingest, share_name
    from gateway.service import open_store

    settings = GatewaySettings.model_validate(settings_data)
    parent = os.getppid()
    link = MainProcessLink(index, connection)
    store = open_store(settings)
    ingest = Ingest(settings, store, link, channels=(Channel.TELEMETRY,),
                    client_id=f"{settings.mqtt.client_id}-w{index + 1}",
                    shared_group=share_name(settings),
                    spool_path=settings.data_dir / f"spool-w{index + 1}.jsonl")
    link.stats = ingest.stats
    pacer = GarbagePacer()  # automatic GC off: young after each batch, all every few s
    pacer.start()
    ingest.start()
    try:
        while True:
            told, _, _ = select.select([control], [], [], PARENT_CHECK_S)
            if told:
                if os.read(control, 64).startswith(_STOP):
                    break  # finish and acknowledge what is held
                log.error("the gateway's main process is gone: stopping without "
                          "acknowledging more")
                break
            pacer.tick()
            if os.getppid() != parent:
                log.error("the gateway's main process is gone: stopping without "
                          "acknowledging more")
                break
            link.push_counters(ingest.connected)
    finally:
        ingest.stop()
        store.close()
