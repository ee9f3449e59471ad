"""A live terminal table of every node on a site: what an operator would glance at.

Listens to telemetry, status and events on the broker (read-only) and redraws twice a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cacao_dryer.contract import (
    TOPIC_PREFIX,
    NodeEvent,
    NodeState,
    NodeStatus,
    Telemetry,
    decode_message,
)
from cacao_dryer.errors import CacaoDryerError, PayloadError, TopicError
from firmware.config import parse_broker_url


@dataclass
class NodeView:
    telemetry: Telemetry | None = None
    status: NodeStatus | None = None
    readings_seen: int = 0


@dataclass
class SiteView:
    nodes: dict[str, NodeView] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    invalid: int = 0

    def receive(self, topic_name: str, payload: bytes) -> None:
        try:
            site_id, node_id, message = decode_message(topic_name, payload)
        except (PayloadError, TopicError) as exc:
            self.invalid += 1
            self.events.append(f"invalid message: {exc}"[:160])
            return
        view = self.nodes.setdefault(f"{site_id}/{node_id}", NodeView())
        if isinstance(message, Telemetry):
            view.telemetry = message
            view.readings_seen += 1
        elif isinstance(message, NodeStatus):
            view.status = message
        elif isinstance(message, NodeEvent):
            when = _local(message.occurred_at)
            self.events.append(f"{when} {node_id}: {message.type.value} — {message.message}"
                               [:160])


def _local(moment: datetime, fmt: str = "%d %b %H:%M") -> str:
    return moment.astimezone().strftime(fmt)


def _air(temp_c: float | None, rh_pct: float | None) -> str:
    return f"{_num(temp_c)}° {_num(rh_pct, '{:.0f}')}%"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def render(view: SiteView):  # type: ignore[no-untyped-def]
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Secadores / dryers — aire: inside air, exterior: outside air, "
                  "grano: bean moisture, vent.: fans/vents %", expand=True,
                  title_justify="left")
    for header in ("nodo", "hora", "aire", "exterior", "grano", "vent.", "modo", "estado",
                   "alarmas"):
        table.add_column(header, no_wrap=header != "alarmas")
    for name in sorted(view.nodes):
        node = view.nodes[name]
        t = node.telemetry
        r = t.readings if t else None
        status = node.status
        state = status.state.value if status else "?"
        if status and status.queue_depth:
            state += f" ({status.queue_depth} en cola)"
        table.add_row(
            name.split("/", 1)[1],
            _local(t.measured_at, "%H:%M") if t else "—",
            _air(r.air_temp_c, r.air_rh_pct) if r else "—",
            _air(r.ambient_temp_c, r.ambient_rh_pct) if r else "—",
            _num(r.bean_moisture_pct_wb if r else None, "{:.1f}%"),
            f"{t.fan_speed_pct:.0f}/{t.vent_open_pct:.0f}" if t else "—",
            t.mode.value if t else "—",
            state,
            " ".join(a.value for a in t.alarms) if t and t.alarms else "",
            style="red" if state.startswith(NodeState.OFFLINE.value) else None,
        )
    events = Text("\n".join(view.events) or "(no events yet)")
    footer = Text(f"invalid messages: {view.invalid}", style="dim")
    return Group(table, Text("Eventos / events:", style="bold"), events, footer)


def watch_site(broker: str, site: str = "+", duration_s: float = 0.0,
               ready: Callable[[], None] | None = None) -> SiteView:
    """Run the live view until Ctrl-C (or ``duration_s``); returns what it saw. ``ready`` is
    called once the view listens (the demo starts its nodes then, so no event is missed)."""
    from rich.live import Live

    try:
        host, port, tls = parse_broker_url(broker)
    except ValueError as exc:
        raise CacaoDryerError(f"--broker: {exc}") from None
    view = SiteView()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if tls:
        client.tls_set()

    subscribed = threading.Event()

    def on_connect(client: mqtt.Client, _u: object, _f: object, _rc: object,
                   _p: object = None) -> None:
        client.subscribe([(f"{TOPIC_PREFIX}/{site}/+/{channel}", 0)
                          for channel in ("telemetry", "status", "event")])

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_message = lambda _c, _u, msg: view.receive(msg.topic, msg.payload)
    client.connect_async(host, port)
    client.loop_start()
    try:
        if not subscribed.wait(15):
            raise CacaoDryerError(f"could not subscribe at {broker} within 15 s")
        if ready is not None:
            ready()
        started = time.monotonic()
        with Live(render(view), refresh_per_second=2) as live:
            while duration_s <= 0 or time.monotonic() - started < duration_s:
                time.sleep(0.5)
                live.update(render(view))
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return view
