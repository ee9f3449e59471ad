"""``cacao-dryer demo``: a whole collection center on one machine.

Starts, all under ``workdir`` and all stopped by Ctrl-C:

1. a private MQTT broker (Mosquitto; unless one is given),
2. the gateway runtime in this process — ingest, SQLite readings and metadata, alert and
   threshold jobs, HTTP API and dashboard on http://127.0.0.1:8080 (the next free port if
   that one is taken) — on accelerated time,
3. one login per role (operator, technician, manager, admin) with a new random password at
   every start, printed on the console with the dashboard's address,
4. N simulated dryers as real ``cacao-dryer node run`` processes on the same accelerated time,
5. a batch started through the gateway (as an operator would) on every dryer but the last,
   so the dashboard shows moisture falling and progress rising within the first minute,
6. a status line every few seconds, or the live terminal table (``--watch``).

With the pure-Python amqtt broker (MQTT 3.1.1; the gateway needs MQTT 5) only the dryers and
the terminal table run.

Time: the gateway and the dryers share one accelerated clock (``DemoClock``). The dryers are
separate processes whose clocks start when they have loaded, so the gateway's clock is set
by the first reading of the first dryer and moved on by any dryer ahead of it; from then on
all run at the same speed (a dryer that took longer to load than the first lags by the
difference, a few simulated minutes, inside the 10-minute "no recent data" limit).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import tomli_w

import firmware
from cacao_dryer.broker import LocalBroker, start_local_broker
from cacao_dryer.clock import SystemClock
from cacao_dryer.errors import CacaoDryerError
from cacao_dryer.watch import SiteView, watch_site

if TYPE_CHECKING:  # the gateway's modules load only when the full demo runs
    from gateway.context import GatewayContext
    from gateway.runtime import GatewayRuntime

DEMO_SITE = "demo"
EXAMPLE = Path(firmware.__file__).parent / "examples" / "simulated.toml"
ZONE = ZoneInfo("America/Lima")
DEMO_ROLES = (("operador", "operator"), ("tecnico", "technician"), ("gerente", "manager"),
              ("admin", "admin"))
PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
NODE_LEAD_S = 2.0          # dryers start this many real seconds ahead (they load meanwhile)
FIRST_READING_TIMEOUT_S = 45.0
PORT_TRIES = 20            # the dashboard port and the next ones
STATUS_EVERY_S = 10.0


def node_config(index: int, broker_url: str, protocol: str, speed: float, workdir: Path,
                start: datetime | None = None) -> dict[str, Any]:
    """A simulated dryer's config. With ``start`` (the full demo) the dryer's clock starts
    there and the gateway starts its batch; without, it starts its own at boot."""
    data = tomllib.loads(EXAMPLE.read_text())
    data["node_id"] = node_id(index)
    data["site_id"] = DEMO_SITE
    data["data_dir"] = str((workdir / node_id(index)).resolve())
    # One reading per simulated 2 minutes keeps the message rate sane at high speed.
    data["sample_interval_s"] = max(10.0, min(600.0, speed / 5))
    data["status_interval_s"] = max(60.0, speed)
    data["mqtt"] = {"broker": broker_url, "protocol": protocol}
    data["simulation"] |= {"seed": index, "speed": speed,
                           "dryer": "open" if index % 3 == 0 else "greenhouse",
                           "initial_moisture_pct_wb": initial_moisture(index)}
    if start is not None:
        data["simulation"] |= {"start": start.isoformat(), "start_batch": False}
    return data


def node_id(index: int) -> str:
    return f"secador-{index:02d}"


def initial_moisture(index: int) -> float:
    return 55.0 + index % 4


def start_nodes(count: int, broker: str, protocol: str, speed: float, workdir: Path,
                start: datetime | None = None) -> list[subprocess.Popen[bytes]]:
    processes = []
    for index in range(1, count + 1):
        path = workdir / f"{node_id(index)}.toml"
        path.write_text(tomli_w.dumps(node_config(index, broker, protocol, speed, workdir,
                                                  start)))
        log = (workdir / f"{node_id(index)}.log").open("ab")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "node", "run", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT))
    return processes


class DemoClock:
    """Accelerated time (``speed`` simulated seconds per real second) from ``start``, which
    may be moved forward once the dryers report (``catch_up``); never backwards."""

    def __init__(self, start: datetime, speed: float) -> None:
        if start.tzinfo is None or speed <= 0:
            raise ValueError("DemoClock needs an aware start and a positive speed")
        self._start = start
        self._speed = speed
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self._speed)

    def catch_up(self, moment: datetime) -> None:
        """Run on from ``moment`` if it is ahead of this clock."""
        with self._lock:
            now = self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)
            if moment > now:
                self._start += moment - now

    def set_to(self, moment: datetime) -> None:
        """Run on from ``moment``, ahead or behind: only while the demo starts, before
        anything but the dryers' first messages is recorded."""
        with self._lock:
            self._start, self._t0 = moment, time.monotonic()


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    password: str


@dataclass
class DemoSite:
    """What the full demo brought up (for the console and for tests)."""

    url: str
    users: list[DemoUser]
    batches: dict[str, str] = field(default_factory=dict)  # node id → batch id


def demo_password() -> str:
    """A new random password, easy to type on a phone: ``xxxx-xxxx-xxxx``."""
    return "-".join("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(4))
                    for _ in range(3))


def simulated_start(now: datetime | None = None) -> datetime:
    """06:00 in Peru today: the demo opens with a drying day ahead."""
    today = (now or datetime.now(ZONE)).astimezone(ZONE).date()
    return datetime.combine(today, time_of_day(6, 0), ZONE)


def pick_port(host: str, wanted: int) -> int:
    """``wanted`` if free, else the next free one of the following ``PORT_TRIES``."""
    for port in range(wanted, min(wanted + PORT_TRIES, 65536)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise CacaoDryerError(f"ports {wanted}-{wanted + PORT_TRIES - 1} on {host} are all in use; "
                          "choose another with --port")


def prepare_workdir(workdir: Path) -> None:
    """Every demo starts afresh: what an earlier demo left here (the demo's own files only)
    is removed, so the dryers' clocks, the gateway's and the databases start together."""
    workdir.mkdir(parents=True, exist_ok=True)
    for path in [workdir / "gateway", workdir / "broker", workdir / "gateway.toml",
                 *workdir.glob("secador-[0-9][0-9]"), *workdir.glob("secador-[0-9][0-9].toml"),
                 *workdir.glob("secador-[0-9][0-9].log")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def gateway_config(workdir: Path, broker: str, host: str, port: int) -> Path:
    """The demo gateway's config file, kept in the workdir so that
    ``cacao-dryer dashboard run --config <workdir>/gateway.toml --port 8090`` (or ``user``
    commands) can be tried next to the running demo."""
    path = workdir / "gateway.toml"
    path.write_text(tomli_w.dumps({
        "data_dir": str((workdir / "gateway").resolve()),
        "sites": [DEMO_SITE],
        # Readings reach the pages 50 ms after they arrive: 30 s of simulated time at 600x.
        "batch_max_latency_s": 0.05,
        "mqtt": {"broker": broker, "client_id": "cacao-demo-gateway"},
        "storage": {"kind": "sqlite", "path": "readings.sqlite3"},
        "metadata": {"url": "sqlite:///metadata.sqlite3"},
        # Sessions count accelerated time too: the longest the gateway allows (168 h idle,
        # 90 days) is 17 minutes idle and 3.6 hours at 600x.
        "api": {"host": host, "port": port, "session_idle_h": 168, "session_max_days": 90},
    }))
    return path


def _stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(nodes: int, speed: float, broker: str | None, duration_s: float,
             workdir: Path, embedded_broker: bool = False, *, host: str = "127.0.0.1",
             port: int = 8080, watch: bool = False) -> DemoSite | SiteView | None:
    """Run the demo until Ctrl-C or ``duration_s`` real seconds. Returns what the terminal
    table saw (``--watch`` or an MQTT 3.1.1 broker), else the site that was brought up."""
    prepare_workdir(workdir)
    local: LocalBroker | None = None
    processes: list[subprocess.Popen[bytes]] = []
    runtime: GatewayRuntime | None = None
    try:
        if broker is None:
            local = start_local_broker(workdir / "broker",
                                       prefer="amqtt" if embedded_broker else "mosquitto")
            broker, protocol = local.url, local.protocol
            _say(f"Broker: {local.kind} at {broker} (MQTT {protocol})")
        else:
            protocol = "5"
        if protocol != "5":
            _say("The gateway and dashboard need an MQTT 5 broker (Mosquitto: apt-get install "
                 "mosquitto); with this one only the dryers and the terminal table run.")
            return _terminal_only(nodes, speed, broker, protocol, duration_s, workdir,
                                  processes)
        site, runtime = _start_site(nodes, speed, broker, workdir, host, port, processes)
        if watch:
            return watch_site(broker, site=DEMO_SITE, duration_s=duration_s)
        _status_lines(runtime, site, duration_s)
        return site
    except KeyboardInterrupt:
        return None
    finally:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:  # a second Ctrl-C must not cut the clean-up short
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        _say("\nStopping the dryers, the gateway and the broker...")
        _stop_processes(processes)
        if runtime is not None:
            runtime.stop()
        if local is not None:
            local.stop()
        _say("Stopped.")
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _terminal_only(nodes: int, speed: float, broker: str, protocol: str, duration_s: float,
                   workdir: Path, processes: list[subprocess.Popen[bytes]]) -> SiteView:
    def start() -> None:
        processes.extend(start_nodes(nodes, broker, protocol, speed, workdir))
        _say(f"{nodes} simulated dryers, time x{speed:g}; logs and data in {workdir}/. "
             "Ctrl-C stops everything.")
        time.sleep(1.0)
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise CacaoDryerError(f"{len(dead)} node(s) exited at start; see {workdir}/*.log")

    return watch_site(broker, site=DEMO_SITE, duration_s=duration_s, ready=start)


def _start_site(nodes: int, speed: float, broker: str, workdir: Path, host: str, port: int,
                processes: list[subprocess.Popen[bytes]]) -> tuple[DemoSite, GatewayRuntime]:
    from gateway.config import load_gateway_config
    from gateway.runtime import GatewayRuntime

    chosen = pick_port(host, port)
    if chosen != port:
        _say(f"Port {port} is in use: the dashboard takes port {chosen} instead.")
    settings = load_gateway_config(gateway_config(workdir, broker, host, chosen))
    clock = DemoClock(simulated_start(), speed)
    # Drying runs on the demo's fast clock; logins on the wall clock (a session lasts hours).
    runtime = GatewayRuntime(settings, clock=clock, session_clock=SystemClock())
    try:
        context = runtime.start()
    except BaseException:
        runtime.stop()
        raise
    deadline = time.monotonic() + 15
    while runtime.ingest is None or not runtime.ingest.connected:
        if time.monotonic() > deadline:
            runtime.stop()
            raise CacaoDryerError(f"the gateway could not subscribe at {broker} within 15 s")
        time.sleep(0.05)
    try:
        # Listen before the dryers start, so their first readings are seen.
        first = runtime.live.subscribe(site_id=DEMO_SITE)
        lead = timedelta(seconds=NODE_LEAD_S * speed)
        processes.extend(start_nodes(nodes, broker, "5", speed, workdir, clock.now() + lead))
        _say(f"{nodes} simulated dryers, time x{speed:g} (one real minute = "
             f"{speed / 60:g} simulated hours); logs and data in {workdir}/")
        _await_first_readings(first, clock, nodes, processes, workdir)
        users = _add_users(context)
        site = DemoSite(url=f"http://{_url_host(host)}:{chosen}/", users=users)
        site.batches = _start_batches(context, nodes)
    except BaseException:
        runtime.stop()
        raise
    _print_site(site, speed)
    return site, runtime


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _add_users(context: GatewayContext) -> list[DemoUser]:
    from gateway.auth import user_service

    service = user_service(context.settings.api, context.clock)
    users = [DemoUser(name, role, demo_password()) for name, role in DEMO_ROLES]
    with context.metadata.session() as db:
        for user in users:
            service.add(db, user.username, user.password, user.role, "es", actor="demo")
    return users


def _await_first_readings(subscription: Any, clock: DemoClock, nodes: int,
                          processes: list[subprocess.Popen[bytes]], workdir: Path) -> None:
    """Wait for a reading of every dryer; the gateway's clock catches up with the dryers'."""
    wanted = {node_id(index) for index in range(1, nodes + 1)}
    heard: set[str] = set()
    deadline = time.monotonic() + FIRST_READING_TIMEOUT_S
    try:
        while heard != wanted:
            dead = [node_id(i + 1) for i, p in enumerate(processes) if p.poll() is not None]
            if dead:
                raise CacaoDryerError(f"dryer {dead[0]} stopped at start; see "
                                      f"{workdir / dead[0]}.log")
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - heard))
                raise CacaoDryerError(f"no reading from {missing} within "
                                      f"{FIRST_READING_TIMEOUT_S:g} s; see {workdir}/*.log")
            _reason, messages = subscription.take()
            for message in messages:
                if message.kind == "reading" and message.node_id in wanted:
                    measured_at = datetime.fromisoformat(json.loads(message.json_data)
                                                         ["measured_at"])
                    # The first dryer sets the time (however long they took to load, they
                    # loaded together); a dryer ahead of it moves it on.
                    if heard:
                        clock.catch_up(measured_at)
                    else:
                        clock.set_to(measured_at)
                    heard.add(message.node_id)
            time.sleep(0.05)
    finally:
        subscription.close()


def _start_batches(context: GatewayContext, nodes: int) -> dict[str, str]:
    """A batch on every dryer but the last (which stays free to try "start a batch"),
    started as an operator does it: recorded, and ``start_batch`` sent to the dryer."""
    from gateway.batches import NewBatch, start_batch

    started: dict[str, str] = {}
    for index in range(1, max(nodes - 1, 1) + 1):
        request = NewBatch.model_validate({
            "site_id": DEMO_SITE, "node_id": node_id(index), "lot_code": f"DEMO-{index:02d}",
            "producer": "Cooperativa demo", "crop": "cacao", "initial_mass_kg": 400.0,
            "initial_moisture_pct_wb": initial_moisture(index),
            "notes": "started by cacao-dryer demo"})
        with context.metadata.session() as session:
            batch, outcome = start_batch(session, context.publisher, request, "demo",
                                         context.clock.now())
            started[node_id(index)] = batch.batch_id
        if not outcome.delivered_to_broker:
            raise CacaoDryerError(f"the broker did not take the start of {batch.batch_id}")
    return started


def _print_site(site: DemoSite, speed: float) -> None:
    width = max(len(user.username) for user in site.users)
    _say()
    _say(f"Dashboard: {site.url}   (log in with one of these; new passwords at every start)")
    _say(f"  {'user':<{width}}  {'role':<10}  password")
    for user in site.users:
        _say(f"  {user.username:<{width}}  {user.role:<10}  {user.password}")
    started = ", ".join(f"{batch} on {node}" for node, batch in site.batches.items())
    _say(f"Batches started: {started}. At x{speed:g} the beans dry visibly within a minute.")
    _say("Ctrl-C stops everything.")
    _say()


def _status_lines(runtime: GatewayRuntime, site: DemoSite, duration_s: float) -> None:
    """One line every ``STATUS_EVERY_S``: simulated time, each batch's moisture and progress."""
    started = time.monotonic()
    next_line = started
    while duration_s <= 0 or time.monotonic() - started < duration_s:
        if time.monotonic() >= next_line:
            next_line += STATUS_EVERY_S
            if runtime.context is not None:
                _say(status_line(runtime.context, site))
        time.sleep(0.2)


def status_line(context: GatewayContext, site: DemoSite) -> str:
    from gateway import batches

    now = context.clock.now()
    parts = []
    with context.metadata.session() as session:
        for node, batch_id in site.batches.items():
            progress = batches.progress(session, context.store,
                                        batches.get_batch(session, batch_id), now)
            moisture = ("—" if progress.current_moisture_pct_wb is None
                        else f"{progress.current_moisture_pct_wb:.1f} % w.b.")
            done = "" if progress.progress_pct is None else f", {progress.progress_pct:.0f} % done"
            parts.append(f"{node} {moisture}{done}")
    return f"[simulated {now.astimezone(ZONE):%d %b %H:%M}] " + " · ".join(parts)
