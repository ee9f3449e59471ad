"""A live terminal table of every node on a site: what an operator would glance at.

Listens to telemetry, status and events on the broker (read-only) and redraws twice a second.
"""

from __future__ import annotations

import time
from collections import deque
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


def _local(moment: datetime) -> str:
    return moment.astimezone().strftime("%d %b %H:%M")


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def render(view: SiteView):  # type: ignore[no-untyped-def]
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Secadores / dryers", expand=True)
    for header in ("nodo / node", "hora sim.", "aire °C", "HR %", "exterior °C/HR %",
                   "humedad grano %", "ventilador %", "ventanas %", "modo", "alarmas",
                   "seq", "cola", "estado"):
        table.add_column(header, no_wrap=True)
    for name in sorted(view.nodes):
        node = view.nodes[name]
        t = node.telemetry
        r = t.readings if t else None
        state = node.status.state.value if node.status else "?"
        style = "red" if state == NodeState.OFFLINE.value else None
        table.add_row(
            name,
            _local(t.measured_at) if t else "—",
            _num(r.air_temp_c if r else None),
            _num(r.air_rh_pct if r else None, "{:.0f}"),
            f"{_num(r.ambient_temp_c if r else None)}/"
            f"{_num(r.ambient_rh_pct if r else None, '{:.0f}')}",
            _num(r.bean_moisture_pct_wb if r else None),
            _num(t.fan_speed_pct if t else None, "{:.0f}"),
            _num(t.vent_open_pct if t else None, "{:.0f}"),
            t.mode.value if t else "—",
            ", ".join(a.value for a in t.alarms) if t and t.alarms else "",
            str(t.seq) if t else "—",
            str(node.status.queue_depth) if node.status and node.status.queue_depth is not None
            else "—",
            state,
            style=style,
        )
    events = Text("\n".join(view.events) or "(no events yet)")
    footer = Text(f"invalid messages: {view.invalid}", style="dim")
    return Group(table, Text("Eventos / events:", style="bold"), events, footer)


def watch_site(broker: str, site: str = "+", duration_s: float = 0.0) -> SiteView:
    """Run the live view until Ctrl-C (or ``duration_s``); returns what it saw."""
    from rich.live import Live

    try:
        host, port, tls = parse_broker_url(broker)
    except ValueError as exc:
        raise CacaoDryerError(f"--broker: {exc}") from None
    view = SiteView()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if tls:
        client.tls_set()

    def on_connect(client: mqtt.Client, _u: object, _f: object, _rc: object,
                   _p: object = None) -> None:
        for channel in ("telemetry", "status", "event"):
            client.subscribe(f"{TOPIC_PREFIX}/{site}/+/{channel}", qos=0)

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: view.receive(msg.topic, msg.payload)
    client.connect_async(host, port)
    client.loop_start()
    started = time.monotonic()
    try:
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
