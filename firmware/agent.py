"""The node loop: sample sensors, decide, drive fans and vents, queue telemetry and events.

All decisions are made by pure code (``firmware.control.decide``); this module only moves data
between the hardware, the controller, the durable outbox and the MQTT link. Messages arriving
from the gateway (config, commands) are handed to the loop through a queue and handled on the
loop's own thread, so nothing here needs a lock.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cacao_dryer import __version__
from cacao_dryer.clock import Clock
from cacao_dryer.contract import (
    Alarm,
    Channel,
    ClearOverrideAction,
    Command,
    EndBatchAction,
    EventType,
    Mode,
    NodeConfig,
    NodeEvent,
    NodeState,
    NodeStatus,
    OverrideAction,
    Readings,
    StartBatchAction,
    TareTrayAction,
    Telemetry,
    Thresholds,
    decode,
    encode,
    topic,
)
from cacao_dryer.errors import CacaoDryerError, PayloadError, SensorError, SensorFault
from cacao_dryer.measurements import MEASUREMENTS_BY_KEY
from cacao_dryer.science import moisture_from_tray_mass_pct_wb
from firmware.config import NodeSettings
from firmware.control import (
    ControlInputs,
    ControllerState,
    Decision,
    Observed,
    Override,
    decide,
)
from firmware.hardware import DryerHardware
from firmware.outbox import Outbox
from firmware.state_store import BatchInfo, StateStore

log = logging.getLogger("cacao_dryer.node")


@dataclass
class Sample:
    """One round of sensor reads."""

    readings: dict[str, float] = field(default_factory=dict)
    faults: dict[str, str] = field(default_factory=dict)
    raining: bool | None = None


class Publisher:
    """What the agent needs from the MQTT link (firmware.link.MqttLink provides it)."""

    connected: bool

    def wake(self) -> None: ...

    def publish_direct(self, topic_name: str, payload: bytes, qos: int, retain: bool) -> None: ...

    def subscribe(self, topic_name: str, handler: Callable[[str, bytes], None]) -> None: ...


class NodeAgent:
    def __init__(
        self,
        settings: NodeSettings,
        *,
        clock: Clock,
        hardware: DryerHardware,
        outbox: Outbox,
        store: StateStore,
        on_tick: Callable[[datetime, DryerHardware], None] | None = None,
        on_batch_start: Callable[[datetime, StartBatchAction], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.hardware = hardware
        self.outbox = outbox
        self.store = store
        self._on_tick = on_tick
        self._on_batch_start = on_batch_start
        self._link: Publisher | None = None
        self._inbox: queue.Queue[tuple[Channel, bytes]] = queue.Queue()
        self.boot_id = uuid.uuid4().hex[:12]
        self._booted_at = time.monotonic()

        stored = store.load_config()
        self.config: NodeConfig | None = stored
        self.batch: BatchInfo | None = store.load_batch()
        tare = store.load_tare_offset()
        if tare is not None and hardware.tray is not None:
            hardware.tray.tare_offset_counts = tare
        self.override: Override | None = None
        self.state = ControllerState.initial(clock.now())
        self.last_decision: Decision | None = None
        self.latest: dict[str, Observed] = {}
        self.last_sample = Sample()
        self._alarms: frozenset[Alarm] = frozenset()
        self._faults: dict[str, str] = {}

    # --- identity and topics ------------------------------------------------------------------

    @property
    def thresholds(self) -> Thresholds:
        return self.config.thresholds if self.config else self.settings.thresholds

    @property
    def config_version(self) -> int:
        return self.config.version if self.config else 0

    def topic(self, channel: Channel) -> str:
        return topic(self.settings.site_id, self.settings.node_id, channel)

    # --- MQTT side ----------------------------------------------------------------------------

    def attach(self, link: Publisher) -> None:
        """Subscribe to this node's config and commands; called once the link exists."""
        self._link = link
        link.subscribe(self.topic(Channel.CONFIG), self._received(Channel.CONFIG))
        link.subscribe(self.topic(Channel.COMMAND), self._received(Channel.COMMAND))

    def _received(self, channel: Channel) -> Callable[[str, bytes], None]:
        def handler(_topic: str, payload: bytes) -> None:
            self._inbox.put((channel, payload))
        return handler

    def offline_status(self) -> bytes:
        """The Last Will: retained, so everyone sees the node is gone."""
        return encode(NodeStatus(site_id=self.settings.site_id, node_id=self.settings.node_id,
                                 state=NodeState.OFFLINE, boot_id=self.boot_id))

    def status(self, state: NodeState = NodeState.ONLINE) -> bytes:
        return encode(NodeStatus(
            site_id=self.settings.site_id,
            node_id=self.settings.node_id,
            state=state,
            sent_at=self.clock.now(),
            firmware_version=__version__,
            boot_id=self.boot_id,
            uptime_s=round(time.monotonic() - self._booted_at, 1),
            simulated=self.settings.simulated,
            mode=self.last_decision.mode if self.last_decision else Mode.AUTO,
            config_version=self.config_version,
            last_seq=self.outbox.counter("telemetry"),
            queue_depth=self.outbox.depth(),
            queue_dropped_total=self.outbox.dropped_total(),
            sensor_faults=dict(self._faults),
        ))

    def publish_status(self, state: NodeState = NodeState.ONLINE) -> None:
        if self._link is not None:
            self._link.publish_direct(self.topic(Channel.STATUS), self.status(state), 1, True)

    # --- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        settings = self.settings
        self.emit(EventType.BOOT, f"node started (firmware {__version__}, "
                  f"config version {self.config_version})",
                  {"boot_id": self.boot_id, "config_version": self.config_version})
        now = self.clock.now()
        next_sample = now
        next_status = now + timedelta(seconds=settings.status_interval_s)
        tick_s = self._tick_seconds()
        while not stop.is_set():
            now = self.clock.now()
            self.step(now)
            if now >= next_sample:
                self.cycle(now)
                next_sample += timedelta(seconds=settings.sample_interval_s)
                if next_sample <= now:  # fell behind (slow machine, paused): don't burst
                    next_sample = now + timedelta(seconds=settings.sample_interval_s)
            if now >= next_status:
                self.report_overflow()
                self.publish_status()
                next_status = now + timedelta(seconds=settings.status_interval_s)
            self.clock.sleep(tick_s)

    def _tick_seconds(self) -> float:
        """Loop period in clock time: 1 s (vent travel timing), but never under 10 ms real."""
        speed = getattr(self.clock, "speed", 1.0)
        return min(self.settings.sample_interval_s, max(1.0, 0.01 * speed))

    def step(self, now: datetime) -> None:
        """Work done every tick: handle gateway messages, advance actuators (and simulation)."""
        while True:
            try:
                channel, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if channel is Channel.CONFIG:
                self.handle_config(payload)
            else:
                self.handle_command(payload, now)
        if self._on_tick is not None:
            self._on_tick(now, self.hardware)
        self.hardware.update(now)

    def cycle(self, now: datetime) -> Telemetry:
        """One control-and-publish cycle: read, decide, actuate, queue the reading."""
        sample = self.read_sensors(now)
        decision = decide(self.control_inputs(now, sample), self.thresholds, self.state,
                          self.override)
        self.state = decision.state
        if self.override is not None and decision.mode is Mode.AUTO:
            self.emit(EventType.OVERRIDE_ENDED, "manual override expired; automatic control")
            self.override = None
        self.hardware.set_fans(decision.fan_speed_pct)
        self.hardware.set_vents(decision.vent_open_pct, now)
        self.last_decision = decision
        self.last_sample = sample
        self._report_changes(decision, sample)
        return self._queue_telemetry(now, sample, decision)

    # --- sensors ------------------------------------------------------------------------------

    def read_sensors(self, now: datetime) -> Sample:
        hw = self.hardware
        sample = Sample()
        for sensor, temp_key, rh_key in ((hw.inside_air, "air_temp_c", "air_rh_pct"),
                                         (hw.ambient_air, "ambient_temp_c", "ambient_rh_pct")):
            if sensor is None:
                continue
            if (air := self._read(sensor, sample, (temp_key, rh_key))) is not None:
                sample.readings[temp_key] = air.temp_c
                sample.readings[rh_key] = air.rh_pct
        if hw.moisture_probe is not None and (probe := self._read(
            hw.moisture_probe, sample, ("bean_moisture_pct_wb", "moisture_probe_v"))
        ) is not None:
            sample.readings["bean_moisture_pct_wb"] = probe.moisture_pct_wb
            sample.readings["moisture_probe_v"] = probe.probe_v
        if hw.tray is not None and (mass := self._read(
            hw.tray, sample, ("tray_mass_kg", "bean_moisture_pct_wb"))
        ) is not None:
            sample.readings["tray_mass_kg"] = mass
            tray_moisture = self._tray_moisture(mass)
            if tray_moisture is not None:
                # The tray's mass balance is the better measurement [IIETA2025]; a probe, when
                # both exist, stays in the payload through moisture_probe_v for calibration.
                sample.readings["bean_moisture_pct_wb"] = tray_moisture
        if hw.rain is not None:
            sample.raining = hw.rain.is_raining
        for key in list(sample.readings):
            value = sample.readings[key]
            spec = MEASUREMENTS_BY_KEY[key]
            if not spec.minimum <= value <= spec.maximum:
                sample.faults[key] = (f"{key} = {value:.2f} {spec.unit} is outside "
                                      f"{spec.minimum:g}..{spec.maximum:g}")
                del sample.readings[key]
            else:
                sample.readings[key] = round(value, 3)
                self.latest[key] = Observed(value, now)
        return sample

    def _read(self, sensor: Any, sample: Sample, keys: tuple[str, ...]) -> Any:
        try:
            return sensor.read()
        except SensorFault as exc:
            # A faulty sensor's last values are no longer trusted: the controller fails safe
            # now instead of after stale_after_s.
            sample.faults[sensor.name] = str(exc)
            for key in keys:
                self.latest.pop(key, None)
        except SensorError as exc:  # transient: this sample has no value, no fault yet
            log.debug("%s", exc)
        return None

    def _tray_moisture(self, mass_kg: float) -> float | None:
        batch = self.batch
        if batch is None or batch.initial_tray_mass_kg is None or mass_kg <= 0:
            return None
        return moisture_from_tray_mass_pct_wb(batch.initial_tray_mass_kg,
                                              batch.initial_moisture_pct_wb, mass_kg)

    def control_inputs(self, now: datetime, sample: Sample) -> ControlInputs:
        latest = self.latest
        return ControlInputs(
            now=now,
            utc_offset_h=self.settings.utc_offset_h,
            air_temp=latest.get("air_temp_c"),
            air_rh=latest.get("air_rh_pct"),
            ambient_temp=latest.get("ambient_temp_c"),
            ambient_rh=latest.get("ambient_rh_pct"),
            bean_moisture=latest.get("bean_moisture_pct_wb"),
            raining=sample.raining,
            faulted_sensors=frozenset(sample.faults),
            batch_started_at=self.batch.started_at if self.batch else None,
        )

    # --- outgoing messages --------------------------------------------------------------------

    def _queue_telemetry(self, now: datetime, sample: Sample, decision: Decision) -> Telemetry:
        built: list[Telemetry] = []

        def make(seq: int) -> bytes:
            message = Telemetry(
                site_id=self.settings.site_id,
                node_id=self.settings.node_id,
                seq=seq,
                measured_at=now,
                readings=Readings(**sample.readings),
                sensor_faults=sample.faults,
                raining=sample.raining,
                fan_speed_pct=round(decision.fan_speed_pct, 1),
                vent_open_pct=round(decision.vent_open_pct, 1),
                mode=decision.mode,
                alarms=sorted(decision.alarms),
                config_version=self.config_version,
                batch_id=self.batch.batch_id if self.batch else None,
            )
            built.append(message)
            return encode(message)

        self.outbox.add(self.topic(Channel.TELEMETRY), make, "telemetry")
        if self._link is not None:
            self._link.wake()
        return built[0]

    def emit(self, kind: EventType, message: str, data: dict[str, Any] | None = None) -> None:
        """Queue an event durably (it goes through the outbox like readings)."""
        now = self.clock.now()
        log.info("event %s: %s", kind.value, message)

        def make(seq: int) -> bytes:
            return encode(NodeEvent(site_id=self.settings.site_id,
                                    node_id=self.settings.node_id, seq=seq, occurred_at=now,
                                    type=kind, message=message[:500], data=data or {}))

        self.outbox.add(self.topic(Channel.EVENT), make, "event")
        if self._link is not None:
            self._link.wake()

    def _report_changes(self, decision: Decision, sample: Sample) -> None:
        for alarm in sorted(decision.alarms - self._alarms):
            self.emit(EventType.ALARM_RAISED, f"alarm {alarm.value} raised",
                      {"alarm": alarm.value, "reasons": list(decision.reasons)})
        for alarm in sorted(self._alarms - decision.alarms):
            self.emit(EventType.ALARM_CLEARED, f"alarm {alarm.value} cleared",
                      {"alarm": alarm.value})
        self._alarms = decision.alarms
        for name, reason in sample.faults.items():
            if name not in self._faults:
                self.emit(EventType.SENSOR_FAULT, reason, {"sensor": name})
        for name in set(self._faults) - set(sample.faults):
            self.emit(EventType.SENSOR_RECOVERED, f"sensor {name} reads again",
                      {"sensor": name})
        self._faults = dict(sample.faults)

    def report_overflow(self) -> None:
        """Say exactly which sequence numbers a full outbox dropped, so the gateway can tell
        them from readings lost in transit. Only while connected (the loop calls this at each
        status interval): during an outage the outbox keeps the dropped ranges merged on disk,
        whereas an event per drop would itself fill the outbox."""
        if self._link is None or not self._link.connected:
            return
        ranges = self.outbox.take_dropped()
        if not ranges:
            return
        dropped = sum(r.count for r in ranges)
        self.emit(EventType.QUEUE_OVERFLOW,
                  f"outbox full: dropped {dropped} oldest message(s) "
                  f"({self.outbox.dropped_total()} since installation)",
                  {"dropped": dropped, "dropped_total": self.outbox.dropped_total(),
                   "ranges": [{"counter": r.counter, "first_seq": r.first_seq,
                               "last_seq": r.last_seq} for r in ranges]})

    # --- config and commands from the gateway -------------------------------------------------

    def handle_config(self, payload: bytes) -> None:
        try:
            config = decode(Channel.CONFIG, payload, where=self.topic(Channel.CONFIG))
        except PayloadError as exc:
            log.warning("%s", exc)
            self.emit(EventType.CONFIG_REJECTED, str(exc),
                      {"version": _raw_field(payload, "version"),
                       "config_version": self.config_version})
            return
        assert isinstance(config, NodeConfig)
        if config.version < self.config_version:
            self.emit(EventType.CONFIG_REJECTED,
                      f"config version {config.version} is older than the applied version "
                      f"{self.config_version}; keeping {self.config_version}",
                      {"version": config.version, "config_version": self.config_version})
            return
        if config.version > self.config_version or self.config is None:
            self.store.save_config(config)
            self.config = config
            log.info("applied threshold config version %d", config.version)
        # Equal version: acknowledged again (retained configs arrive on every reconnect).
        self.emit(EventType.CONFIG_APPLIED, f"config version {config.version} applied",
                  {"version": config.version, "config_version": config.version})
        self.publish_status()

    def handle_command(self, payload: bytes, now: datetime) -> None:
        try:
            command = decode(Channel.COMMAND, payload, where=self.topic(Channel.COMMAND))
        except PayloadError as exc:
            log.warning("%s", exc)
            self.emit(EventType.COMMAND_RESULT, str(exc),
                      {"command_id": _raw_field(payload, "command_id"), "ok": False})
            return
        assert isinstance(command, Command)
        try:
            result = self._execute(command, now)
        except CacaoDryerError as exc:
            self.emit(EventType.COMMAND_RESULT, f"command {command.command_id} failed: {exc}",
                      {"command_id": command.command_id, "ok": False,
                       "action": command.action.type})
            return
        self.emit(EventType.COMMAND_RESULT, result,
                  {"command_id": command.command_id, "ok": True, "action": command.action.type})

    def _execute(self, command: Command, now: datetime) -> str:
        if command.expires_at is not None and now > command.expires_at:
            raise CommandRejected(f"expired at {command.expires_at.isoformat()}")
        action = command.action
        if isinstance(action, OverrideAction):
            self.override = Override(fan_speed_pct=action.fan_speed_pct,
                                     vent_open_pct=action.vent_open_pct,
                                     expires_at=now + timedelta(seconds=action.duration_s))
            text = (f"manual override: fans {_pct(action.fan_speed_pct)}, vents "
                    f"{_pct(action.vent_open_pct)} for {action.duration_s / 60:.0f} min")
            self.emit(EventType.OVERRIDE_STARTED, text, {"command_id": command.command_id})
            return text
        if isinstance(action, ClearOverrideAction):
            self.override = None
            self.emit(EventType.OVERRIDE_ENDED, "manual override cleared by operator")
            return "override cleared"
        if isinstance(action, StartBatchAction):
            return self.start_batch(action, now)
        if isinstance(action, EndBatchAction):
            if self.batch is None or self.batch.batch_id != action.batch_id:
                raise CommandRejected(f"batch {action.batch_id} is not in this dryer")
            self.batch = None
            self.store.save_batch(None)
            self.emit(EventType.BATCH_ENDED, f"batch {action.batch_id} ended",
                      {"batch_id": action.batch_id})
            return f"batch {action.batch_id} ended"
        if isinstance(action, TareTrayAction):
            if self.hardware.tray is None:
                raise CommandRejected("this node has no load-cell tray")
            self.hardware.tray.tare()
            self.store.save_tare_offset(self.hardware.tray.tare_offset_counts)
            return "tray tared"
        raise CommandRejected(f"unknown action {action!r}")

    def start_batch(self, action: StartBatchAction, now: datetime) -> str:
        """A new load of beans: remember it (control and tray moisture depend on it)."""
        if self._on_batch_start is not None:
            self._on_batch_start(now, action)  # the simulator loads fresh beans
        mass = action.initial_tray_mass_kg
        if mass is None and self.hardware.tray is not None:
            try:
                mass = self.hardware.tray.read()
            except SensorError as exc:
                raise CommandRejected(f"cannot weigh the tray: {exc}") from None
        self.batch = BatchInfo(batch_id=action.batch_id, started_at=now,
                               initial_moisture_pct_wb=action.initial_moisture_pct_wb,
                               initial_tray_mass_kg=mass)
        self.store.save_batch(self.batch)
        text = f"batch {action.batch_id} started at {action.initial_moisture_pct_wb:.1f} %"
        self.emit(EventType.BATCH_STARTED, text,
                  {"batch_id": action.batch_id, "initial_tray_mass_kg": mass,
                   "initial_moisture_pct_wb": action.initial_moisture_pct_wb})
        return text

    def shutdown(self) -> None:
        """Leave the dryer safe (see DryerHardware.close) and say goodbye."""
        self.hardware.close()


class CommandRejected(CacaoDryerError, ValueError):
    """A command was understood but cannot be carried out (reason in the message)."""


def _pct(value: float | None) -> str:
    return "auto" if value is None else f"{value:.0f} %"


def _raw_field(payload: bytes, name: str) -> Any:
    """Best-effort field from an invalid payload, to name it in the rejection event."""
    try:
        data = json.loads(payload)
        return data.get(name) if isinstance(data, dict) else None
    except ValueError:
        return None

