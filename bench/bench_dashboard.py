"""Dashboard benchmark: live-update latency from a node's publish to the browser, requests/s
of the live view, and the bytes each main page transfers on a first visit. Prints Markdown;
``--write`` replaces the table in bench/DASHBOARD_RESULTS.md (run it as often as you like).

    .venv/bin/python bench/bench_dashboard.py [--nodes 100] [--seconds 60] \
        [--sse-clients 10] [--concurrency 10] [--no-browser] [--write]

Everything is private and on loopback: a Mosquitto on a free port (tests/support/mosquitto.py)
and a real ``cacao-dryer gateway run`` process (SQLite readings and metadata, the HTTP API and
dashboard), with one administrator created by ``cacao-dryer user add``.

1. Live latency. One paho client publishes valid telemetry (cacao_dryer.contract.Telemetry,
   QoS 1) for ``--nodes`` nodes at 1 reading/s each, spread evenly over the second, and
   remembers when it published each (node, seq). ``--sse-clients`` logged-in HTTP clients
   read ``GET /api/live`` (httpx, one thread each) and take the time each ``reading`` event
   arrives; a headless Chromium (Debian's, through Playwright) shows the overview and a
   MutationObserver takes the time each card's ``data-seq`` changes (the value shown).
   Latency = arrival − publish, same machine clock; p50/p99/max over ``--seconds``.
2. Requests/s: ``--concurrency`` logged-in clients (httpx, asyncio) ask for
   ``GET /api/nodes`` (what the live view fetches), then for the overview page ``/``, for
   ``--rps-seconds`` each, while the nodes keep publishing.
3. Page weights: a fresh Chromium context per page (empty cache), transferred bytes as the
   browser counts them (gzip bodies + headers) of the page and everything it loads, the
   endless /api/live stream aside (the approach of tests/e2e/test_dashboard_e2e.py), for the
   login page, the overview, a dryer page and every page the navigation lists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import replace_section  # noqa: E402
from bench_outbox import machine  # noqa: E402
from support import wait_for  # noqa: E402
from support.mosquitto import MosquittoBroker, free_port  # noqa: E402

from cacao_dryer.contract import Channel, Mode, Telemetry, encode, topic  # noqa: E402

SITE = "bench"
USER, PASSWORD = "ana", "secador-norte-2026"
CHROMIUM = Path("/usr/bin/chromium")
RESULTS = ROOT / "bench" / "DASHBOARD_RESULTS.md"
Key = tuple[str, int]  # (node_id, seq)


def node_ids(count: int) -> list[str]:
    return [f"secador-{i:03d}" for i in range(1, count + 1)]


def telemetry(node: str, seq: int) -> bytes:
    """A node's reading as it sends it, taken now."""
    return encode(Telemetry(site_id=SITE, node_id=node, seq=seq,
                            measured_at=datetime.now(UTC),
                            readings={"air_temp_c": 40 + seq % 10, "air_rh_pct": 55.0,
                                      "ambient_temp_c": 29.0, "ambient_rh_pct": 70.0,
                                      "bean_moisture_pct_wb": 50 - (seq % 400) / 10},
                            fan_speed_pct=30, vent_open_pct=100, mode=Mode.AUTO,
                            config_version=1))


class Nodes:
    """``count`` nodes publishing 1 reading/s each, evenly spread, from one paho client."""

    def __init__(self, port: int, count: int) -> None:
        self.nodes = node_ids(count)
        self.sent: dict[Key, float] = {}
        self.seq = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-nodes",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_round(self, spread_s: float = 1.0) -> None:
        """One reading of every node, spread over ``spread_s``."""
        self.seq += 1
        step = spread_s / len(self.nodes)
        start = time.monotonic()
        for index, node in enumerate(self.nodes):
            delay = start + index * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            payload = telemetry(node, self.seq)
            self.sent[(node, self.seq)] = time.time()
            self.client.publish(topic(SITE, node, Channel.TELEMETRY), payload, qos=1)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.publish_round()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.client.loop_stop()
        self.client.disconnect()


def log_in(client: httpx.Client) -> None:
    response = client.post("/api/auth/login", json={"username": USER, "password": PASSWORD})
    response.raise_for_status()


@dataclass
class SseClient:
    """One logged-in reader of GET /api/live: when each reading arrived."""

    base_url: str
    arrived: dict[Key, float] = field(default_factory=dict)
    events: int = 0
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=30) as client:
                log_in(client)
                with client.stream("GET", "/api/live") as stream:
                    kind = ""
                    for line in stream.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: ") and kind == "reading":
                            now = time.time()
                            data = json.loads(line[6:])
                            self.arrived.setdefault((data["node_id"], data["seq"]), now)
                            self.events += 1
        except Exception as exc:  # reported in the results, never silently
            if not self._stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()


def latencies_ms(sent: dict[Key, float], arrived: dict[Key, float],
                 since: float, until: float) -> list[float]:
    sent, arrived = dict(sent), dict(arrived)  # (the publisher and readers go on)
    return [(arrived[key] - at) * 1000 for key, at in sent.items()
            if since <= at < until and key in arrived]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    if not values:
        return "— | — | —"
    return f"{percentile(values, 0.5):.0f} | {percentile(values, 0.99):.0f} | {max(values):.0f}"


# --- the browser ---------------------------------------------------------------------------

WATCH_CARDS = """() => {
  window.__seen = [];
  new MutationObserver((changes) => {
    const now = Date.now();
    for (const change of changes) {
      const card = change.target;
      window.__seen.push([card.dataset.node, Number(card.dataset.seq), now]);
    }
  }).observe(document.body, {attributes: true, subtree: true, attributeFilter: ['data-seq']});
}"""
TAKE_SEEN = "() => window.__seen.splice(0)"

RESOURCES = """() => [
    ...performance.getEntriesByType('navigation'),
    ...performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/live'))
  ].map(e => ({name: e.name, bytes: e.transferSize, decoded: e.decodedBodySize}))"""


class Browser:
    def __init__(self, base_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.base_url = base_url
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                       args=["--disable-dev-shm-usage"])

    def context(self, logged_in: bool = True) -> Any:
        context = self.browser.new_context(base_url=self.base_url,
                                           viewport={"width": 360, "height": 740})
        if logged_in:
            assert context.request.post("/api/auth/login", data={
                "username": USER, "password": PASSWORD}).ok
        return context

    def overview(self, nodes: int) -> Any:
        page = self.context().new_page()
        page.goto("/")
        page.wait_for_function(
            f"() => document.querySelectorAll('[data-node][data-seq]').length >= {nodes}",
            timeout=60_000)
        page.evaluate(WATCH_CARDS)
        return page

    def first_load(self, path: str, logged_in: bool = True) -> dict[str, Any]:
        context = self.context(logged_in)
        page = context.new_page()
        page.goto(path, wait_until="load")
        page.wait_for_timeout(2500)  # the page's script fetches its API answers
        entries = page.evaluate(RESOURCES)
        nav = page.eval_on_selector_all("nav.mainnav a", "links => links.map("
                                        "a => a.getAttribute('href'))")
        context.close()
        return {"requests": len(entries), "bytes": sum(e["bytes"] for e in entries),
                "decoded": sum(e["decoded"] for e in entries), "nav": nav}

    def close(self) -> None:
        self.browser.close()
        self.playwright.stop()


# --- requests per second -------------------------------------------------------------------

async def requests_per_second(base_url: str, path: str, concurrency: int, seconds: float
                              ) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        login = await client.post("/api/auth/login",
                                  json={"username": USER, "password": PASSWORD})
        login.raise_for_status()
        took: list[float] = []
        failed = 0
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < deadline:
                start = time.monotonic()
                response = await client.get(path, headers={"Accept-Encoding": "gzip"})
                took.append((time.monotonic() - start) * 1000)
                if response.status_code != 200:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"rps": len(took) / elapsed, "p50": percentile(took, 0.5),
            "p99": percentile(took, 0.99), "failed": failed, "requests": len(took)}


def in_thread(work: Any) -> Any:
    """Run a coroutine to the end in its own thread (Playwright's sync API holds an event
    loop in this one)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(work)))
    thread.start()
    thread.join()
    return result[0]


# --- the system ------------------------------------------------------------------------------

class Gateway:
    def __init__(self, folder: Path, broker: MosquittoBroker) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "gateway.toml"
        self.config.write_text(tomli_w.dumps({
            "sites": [SITE], "data_dir": str(folder / "gw"),
            "mqtt": {"broker": broker.url, "client_id": "gateway-dashboard-bench"},
            "metadata": {"url": f"sqlite:///{folder / 'gw' / 'metadata.sqlite3'}"},
            "storage": {"kind": "sqlite", "path": str(folder / "gw" / "readings.sqlite3")},
            "api": {"port": self.port}}))
        self.log = folder / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "cacao_dryer.cli", "user", "add", "--config",
                        str(self.config), "--username", USER, "--role", "admin",
                        "--password-file", "-"], input=f"{PASSWORD}\n".encode(),
                       check=True, capture_output=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cacao_dryer.cli", "gateway", "run", "--config",
             str(self.config), "--log-level", "warning"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, 60, f"the gateway's API (log: {self.log})")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def known_nodes(base_url: str) -> int:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        log_in(client)
        return len(client.get("/api/nodes").json())


def run(args: argparse.Namespace, folder: Path) -> str:
    load_before = os.getloadavg()[0]
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    gateway = Gateway(folder, broker)
    nodes: Nodes | None = None
    browser: Browser | None = None
    clients: list[SseClient] = []
    try:
        gateway.start()
        nodes = Nodes(broker.port, args.nodes)
        nodes.publish_round(spread_s=0.2)  # every dryer known before the pages open
        wait_for(lambda: known_nodes(gateway.url) >= args.nodes, 60, "every node registered")
        clients = [SseClient(gateway.url) for _ in range(args.sse_clients)]
        for client in clients:
            threading.Thread(target=client.run, daemon=True).start()
        page = None
        if not args.no_browser:
            browser = Browser(gateway.url)
            page = browser.overview(args.nodes)
        nodes.start()
        time.sleep(3)  # warm-up: streams open, first rounds through
        since = time.time()
        seen: dict[Key, float] = {}
        until = since + args.seconds
        while time.time() < until:
            time.sleep(min(5.0, max(0.0, until - time.time())))
            if page is not None:
                for node, seq, at_ms in page.evaluate(TAKE_SEEN):
                    seen.setdefault((node.split("/", 1)[1], int(seq)), at_ms / 1000)
        time.sleep(2)  # the last readings in flight
        if page is not None:
            for node, seq, at_ms in page.evaluate(TAKE_SEEN):
                seen.setdefault((node.split("/", 1)[1], int(seq)), at_ms / 1000)
        load_during = os.getloadavg()[0]
        published = sum(1 for at in dict(nodes.sent).values() if since <= at < until)
        sse = [latencies_ms(nodes.sent, client.arrived, since, until) for client in clients]
        sse_all = [value for values in sse for value in values]
        shown = latencies_ms(nodes.sent, seen, since, until)
        for client in clients:
            client.stop()

        rps_api = in_thread(requests_per_second(gateway.url, "/api/nodes", args.concurrency,
                                                args.rps_seconds))
        rps_page = in_thread(requests_per_second(gateway.url, "/", args.concurrency,
                                                 args.rps_seconds))
        nodes.stop()
        nodes = None

        weights: dict[str, dict[str, Any]] = {}
        if browser is not None:
            weights["/login"] = browser.first_load("/login", logged_in=False)
            weights["/"] = browser.first_load("/")
            weights[f"/nodes/{SITE}/secador-001"] = browser.first_load(
                f"/nodes/{SITE}/secador-001")
            for path in weights["/"]["nav"]:
                if path and path not in weights:
                    weights[path] = browser.first_load(path)
        errors = [client.error for client in clients if client.error]
    finally:
        for client in clients:
            client.stop()
        if nodes is not None:
            nodes.stop()
        if browser is not None:
            browser.close()
        gateway.stop()
        broker.kill()

    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d} with `.venv/bin/python bench/bench_dashboard.py "
        f"--nodes {args.nodes} --seconds {args.seconds} --sse-clients {args.sse_clients} "
        f"--concurrency {args.concurrency}` on: {machine(folder)}; load average before: "
        f"{load_before:.1f}, during the latency run: {load_during:.1f}.",
        "",
        f"**Live-update latency**, node publish → seen, {args.nodes} nodes at 1 reading/s "
        f"({published:,} readings published in {args.seconds} s):",
        "",
        "| receiver | readings received | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
        f"| {len(clients)} HTTP clients on `GET /api/live` (each) | "
        f"{min((len(v) for v in sse), default=0):,}–{max((len(v) for v in sse), default=0):,}"
        f" of {published:,} | {summary(sse_all)} |",
    ]
    if browser is not None:
        lines.append(f"| Chromium, overview card updated (`data-seq`) | {len(shown):,} of "
                     f"{published:,} | {summary(shown)} |")
    if errors:
        lines += ["", "Stream errors: " + "; ".join(sorted(set(errors)))]
    lines += [
        "",
        f"**Requests/s** with {args.concurrency} logged-in clients at once, "
        f"{args.rps_seconds:.0f} s each, while the {args.nodes} nodes publish "
        "(client and gateway share the machine):",
        "",
        "| request | requests/s | p50 ms | p99 ms | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, result in ((f"`GET /api/nodes` ({args.nodes} dryers, gzip)", rps_api),
                          ("overview page `GET /` (gzip)", rps_page)):
        lines.append(f"| {label} | **{result['rps']:.0f}** | {result['p50']:.0f} | "
                     f"{result['p99']:.0f} | {result['failed']:.0f} of "
                     f"{result['requests']:.0f} |")
    if weights:
        lines += [
            "",
            f"**Page weights**, first visit with an empty cache, {args.nodes} dryers, "
            "Chromium (transferred = gzip bodies + headers; `/api/live` aside):",
            "",
            "| page | requests | transferred kB | uncompressed kB |",
            "| --- | --- | --- | --- |",
        ]
        for path, weight in weights.items():
            lines.append(f"| `{path}` | {weight['requests']} | {weight['bytes'] / 1000:.1f} | "
                         f"{weight['decoded'] / 1000:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=60, help="latency measurement")
    parser.add_argument("--sse-clients", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rps-seconds", type=float, default=10.0)
    parser.add_argument("--no-browser", action="store_true",
                        help="no Chromium (latency over HTTP only, no page weights)")
    parser.add_argument("--write", action="store_true",
                        help="replace the table in bench/DASHBOARD_RESULTS.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-", dir="/var/tmp"))
    try:
        table = run(args, folder)
        print(table)
        if args.write:
            replace_section(RESULTS, "dashboard", table)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
