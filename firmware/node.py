"""Assemble a node from its settings: real or simulated hardware, outbox, MQTT link, agent.

Like gpiozero's pin factory, one setting (``simulated``) picks where the chips and pins come
from; everything else — drivers, controller, outbox, link — is the same code in both cases.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cacao_dryer.clock import AcceleratedClock, Clock, OffsetClock, SystemClock
from cacao_dryer.contract import Channel, NodeState, StartBatchAction, topic
from firmware.agent import NodeAgent
from firmware.config import NodeSettings
from firmware.hardware import DryerHardware, build_hardware
from firmware.link import MqttLink
from firmware.outbox import Outbox, OutboxCorrupt
from firmware.state_store import StateStore

log = logging.getLogger("cacao_dryer.node")


@dataclass
class Node:
    settings: NodeSettings
    clock: Clock          # the node's own clock (a simulated node's may be stepped)
    agent: NodeAgent
    outbox: Outbox
    link: MqttLink
    model: Any | None = None  # firmware.simulation.dryer.DryerModel when simulated


@dataclass
class _SimulatedDryer:
    """A simulated node's world: the dryer model and chips run on true time (``world``); the
    node itself on ``clock``, true time plus an offset that ``offset_file`` may step."""

    world: Clock
    clock: OffsetClock
    model: Any      # firmware.simulation.dryer.DryerModel
    chips: Any      # firmware.simulation.chips.SimulatedChips
    pin_factory: Any
    offset_file: Any | None  # firmware.simulation.clock_offset.ClockOffsetFile


def _simulation(settings: NodeSettings, world: Clock | None) -> _SimulatedDryer:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from firmware.simulation.chips import SimulatedChips
    from firmware.simulation.clock_offset import ClockOffsetFile
    from firmware.simulation.dryer import DryerModel
    from firmware.simulation.weather import Weather

    sim = settings.simulation
    if world is None:
        start = (datetime.fromisoformat(sim.start) if sim.start else SystemClock().now())
        resume = StateStore(settings.data_dir).load_simulated_time()
        if resume is not None and resume > start:
            start = resume + timedelta(seconds=1)  # continue; never go back in time
        world = AcceleratedClock(start, sim.speed)
    clock = OffsetClock(world)
    offset_file = None
    if sim.clock_offset_file is not None:
        offset_file = ClockOffsetFile(sim.clock_offset_file, clock)
        offset_file.poll()  # a node may boot with its clock wrong already
    now = world.now()
    weather = Weather(seed=sim.seed, utc_offset_h=settings.utc_offset_h)
    model = DryerModel(weather, kind=sim.dryer, load_kg=sim.load_kg,
                       initial_moisture_pct_wb=sim.initial_moisture_pct_wb, start=now,
                       seed=sim.seed)
    chips = SimulatedChips(model, world, seed=sim.seed)
    pin_factory = MockFactory(pin_class=MockPWMPin)
    return _SimulatedDryer(world, clock, model, chips, pin_factory, offset_file)


def open_outbox(settings: NodeSettings, store: StateStore) -> Outbox:
    """The node's outbox; an unreadable one (a damaged SD card) is set aside and replaced.

    The new outbox's sequence numbers start above the current Unix time in seconds: a node
    takes at most one reading per second, so no number the gateway already holds is reused.
    """
    path = settings.data_dir / "outbox.sqlite3"

    def new() -> Outbox:
        return Outbox(path, max_bytes=int(settings.outbox.max_mb * 1024 * 1024), sync="full",
                      drop_last=("event",))

    try:
        return new()
    except OutboxCorrupt as exc:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        outbox = new()
        floor = int(time.time())
        for counter in ("telemetry", "event"):
            outbox.raise_counter(counter, floor)
        store.set_aside.append(f"{exc}; moved to {aside.name}, new outbox numbering from "
                               f"{floor + 1}")
        return outbox


def build_node(settings: NodeSettings, clock: Clock | None = None) -> Node:
    """The node ``settings`` describe. ``clock``: true time (default: the system clock, or
    for a simulated node accelerated time from ``simulation.start``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    simulated = chips = pin_factory = None
    if settings.simulated:
        simulated = _simulation(settings, clock)
        clock, chips, pin_factory = simulated.clock, simulated.chips, simulated.pin_factory
    else:
        from firmware.drivers.real_chips import RealChips

        clock = clock or SystemClock()
        chips = RealChips()
    hardware = build_hardware(settings, chips, pin_factory, clock)
    # Ventilate before touching the disk: if the SD card is in trouble, the dryer is already in
    # the one position that cannot burn beans while we find out (the controller starts there).
    hardware.set_fans(100.0)
    hardware.set_vents(100.0, clock.now())
    store = StateStore(settings.data_dir)
    outbox = open_outbox(settings, store)

    on_tick = on_batch_start = None
    if simulated is not None:
        on_tick = _simulation_tick(simulated, settings, store)
        world, model = simulated.world, simulated.model

        def on_batch_start(_now: datetime, action: StartBatchAction) -> None:
            # the beans are loaded at the true time, whatever the node's clock says
            model.load_new_batch(action.initial_moisture_pct_wb, settings.simulation.load_kg,
                                 world.now())

    agent = NodeAgent(settings, clock=clock, hardware=hardware, outbox=outbox,
                      store=store, on_tick=on_tick,
                      on_batch_start=on_batch_start)
    link = MqttLink(
        settings.mqtt,
        client_id=f"node-{settings.site_id}-{settings.node_id}",
        outbox=outbox,
        will=(topic(settings.site_id, settings.node_id, Channel.STATUS), agent.offline_status()),
        on_connect_publish=lambda: [(agent.topic(Channel.STATUS), agent.status(), 1, True)],
    )
    agent.attach(link)
    if settings.simulated and settings.simulation.start_batch and agent.batch is None:
        now = clock.now()
        agent.start_batch(StartBatchAction(
            batch_id=f"lote-{settings.node_id}-{now:%Y%m%d%H%M}"[:40],
            initial_moisture_pct_wb=settings.simulation.initial_moisture_pct_wb), now)
    return Node(settings=settings, clock=clock, agent=agent, outbox=outbox, link=link,
                model=simulated.model if simulated is not None else None)


def _simulation_tick(simulated: _SimulatedDryer, settings: NodeSettings,
                     store: StateStore) -> Any:
    """Each tick: step the node's clock if its offset file says so, then the dryer physics
    to true time with the fans and vents as they are."""
    rain_sensors = [s for s in settings.sensors if s.type == "rain"]
    model, chips, pin_factory = simulated.model, simulated.chips, simulated.pin_factory
    saved_at: list[datetime] = []

    def tick(_now: datetime, hardware: DryerHardware) -> None:
        if simulated.offset_file is not None:
            simulated.offset_file.poll()  # the agent sees the step at its next tick
        world_now = simulated.world.now()  # the physics never jump with the node's clock
        if not saved_at or (world_now - saved_at[0]).total_seconds() >= \
                settings.sample_interval_s:
            store.save_simulated_time(world_now)  # true time: a restart re-reads the offset
            saved_at[:] = [world_now]
        fans = hardware.fans
        vents = hardware.vents
        fan_pct = sum(f.speed_pct for f in fans) / len(fans) if fans else 0.0
        vent_pct = sum(v.open_pct for v in vents) / len(vents) if vents else 0.0
        model.step(world_now, fan_pct, vent_pct)
        for rain in rain_sensors:
            chips.sync_rain_pin(pin_factory, rain)

    return tick


def run_node(settings: NodeSettings) -> None:
    """Run until SIGTERM/SIGINT; leave the dryer safe and the outbox flushed as far as possible."""
    node = build_node(settings)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    node.link.start()
    log.info("node %s/%s running (%s), broker %s, data in %s", settings.site_id,
             settings.node_id, "simulated" if settings.simulated else "hardware",
             settings.mqtt.broker, settings.data_dir)
    node.agent.run(stop)
    try:
        node.agent.shutdown()  # fans off, vents open (waits for relay vents to open)
    finally:
        try:
            # A clean disconnect does not fire the Last Will: say "offline" ourselves (and
            # wait for the broker's acknowledgement).
            offline = node.agent.status(NodeState.OFFLINE)
        except Exception:  # the outbox could not be read: the Last Will says it anyway
            offline = node.agent.offline_status()
        try:
            node.link.stop(timeout=5.0, final_publish=(
                node.agent.topic(Channel.STATUS), offline, 1, True))
        finally:
            node.outbox.close()

