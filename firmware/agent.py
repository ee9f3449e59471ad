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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cacao_dryer import __version__
from cacao_dryer.clock import Clock, stepped_s
from cacao_dryer.contract import (
    MAX_PAYLOAD_BYTES,
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
    SetCalibrationAction,
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
from firmware.drivers.moisture_probe import MoistureProbe
from firmware.hardware import DryerHardware
from firmware.outbox import Outbox
from firmware.state_store import BatchInfo, StateStore, StoredCalibration
from firmware.watchdog import SystemdNotifier

log = logging.getLogger("cacao_dryer.node")

# estimate: below half a kilo the load cell's noise (a few grams) and vibration dominate the
# mass balance [IIETA2025, Sitorus2020].
MIN_TRAY_SAMPLE_KG = 0.5


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


# A step of the clock smaller than this is not worth rescheduling for (NTP slews the clock
# by milliseconds; it steps it when it is more than 128 ms off).
MIN_CLOCK_STEP = timedelta(seconds=1)


def clock_step(before_s: float | None, after_s: float | None) -> tuple[timedelta, float | None]:
    """The clock step between two readings of ``stepped_s()`` (zero below ``MIN_CLOCK_STEP``
    or when the clock cannot tell), and the reading to compare with next time. A step too
    small to count is carried over, so that slow drift never adds up unseen."""
    if before_s is None or after_s is None:
        return timedelta(0), after_s
    step = timedelta(seconds=after_s - before_s)
    if abs(step) < MIN_CLOCK_STEP:
        return timedelta(0), before_s
    return step, after_s


@dataclass(frozen=True)
class Timetable:
    """When the loop takes its next reading and sends its next status (node clock)."""

    next_sample: datetime
    next_status: datetime


@dataclass(frozen=True)
class TickPlan:
    take_sample: bool
    send_status: bool
    due: Timetable  # after this tick


def plan_tick(now: datetime, due: Timetable, sample_every: timedelta, status_every: timedelta,
              stepped_by: timedelta = timedelta(0)) -> TickPlan:
    """What one tick of the loop does and what is due next. Pure.

    A clock step the clock reported (``stepped_by``) moves the readings' timetable with it —
    the readings stay ``sample_every`` apart, none is taken twice or skipped — and sends a
    status at once: the gateway measures a node's clock offset from its status, and a status
    now tells it minutes earlier. A step nobody reported (a clock that cannot tell) is caught
    all the same: a time more than one interval away is brought to now (never wait for a time
    that moved away, or control would stall for as long as the step), and a loop that fell
    behind (a forward step, a slow machine, a pause) takes one reading, never a burst.
    """
    next_sample, next_status = due.next_sample, due.next_status
    if stepped_by:
        next_sample += stepped_by
        next_status = now
    if next_sample - now > sample_every:
        next_sample = now
    if next_status - now > status_every:
        next_status = now
    take_sample = now >= next_sample
    if take_sample:
        next_sample += sample_every
        if next_sample <= now:
            next_sample = now + sample_every
    send_status = now >= next_status
    if send_status:
        next_status = now + status_every
    return TickPlan(take_sample, send_status, Timetable(next_sample, next_status))


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
        self.calibration_source = "config"  # or "gateway": where the probe's curve came from
        self._restore_calibration(store.load_calibration())
        self.override: Override | None = None
        self.state = ControllerState.initial(clock.now())
        self.last_decision: Decision | None = None
        self.latest: dict[str, Observed] = {}
        self.last_sample = Sample()
        self._alarms: frozenset[Alarm] = frozenset()
        self._faults: dict[str, str] = {}
        self.errors_total = 0
        self.last_error: str | None = None
        self._error_logged_at: dict[str, float] = {}
        self._watchdog = SystemdNotifier()
        for note in store.set_aside:  # unreadable state files found while loading above
            self.emit(EventType.STORAGE_RESET, note)

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
        link.subscribe(self.topic(Channel.CONFIG),
                       lambda _topic, payload: self.deliver(Channel.CONFIG, payload))
        link.subscribe(self.topic(Channel.COMMAND),
                       lambda _topic, payload: self.deliver(Channel.COMMAND, payload))

    def deliver(self, channel: Channel, payload: bytes) -> None:
        """Hand a message from the gateway to the loop (thread-safe; handled at the next
        tick, on the loop's thread)."""
        self._inbox.put((channel, payload))

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
            errors_total=self.errors_total,
            last_error=self.last_error,
        ))

    def publish_status(self, state: NodeState = NodeState.ONLINE) -> None:
        if self._link is not None:
            self._link.publish_direct(self.topic(Channel.STATUS), self.status(state), 1, True)

    # --- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """The node's life: never leaves because of an error in one tick (an unreadable
        sensor, a full disk, a bad message); only ``stop`` ends it."""
        settings = self.settings
        sample_every = timedelta(seconds=settings.sample_interval_s)
        status_every = timedelta(seconds=settings.status_interval_s)
        boot: dict[str, Any] = {"boot_id": self.boot_id, "config_version": self.config_version}
        if (calibration := self.probe_calibration()) is not None:
            boot["probe_calibration"] = calibration
        self._guarded(self.emit, EventType.BOOT, f"node started (firmware {__version__}, "
                      f"config version {self.config_version})", boot)
        self._watchdog.notify("READY=1")
        stepped = stepped_s(self.clock)
        now = self.clock.now()
        due = Timetable(next_sample=now, next_status=now + status_every)
        tick_s = self._tick_seconds()
        while not stop.is_set():
            stepped_by, stepped = clock_step(stepped, stepped_s(self.clock))
            now = self.clock.now()
            if stepped_by:
                self._guarded(self.clock_stepped, stepped_by, now)
            plan = plan_tick(now, due, sample_every, status_every, stepped_by)
            due = plan.due
            self._guarded(self.step, now)
            if plan.take_sample:
                self._guarded(self.cycle, now)
            if plan.send_status:
                self._guarded(self.report_overflow)
                self._guarded(self.publish_status)
            self._watchdog.ping()
            self.clock.sleep(tick_s)
        self._watchdog.notify("STOPPING=1")

    def clock_stepped(self, step: timedelta, now: datetime) -> None:
        """The node's clock stepped (NTP after a boot without RTC, a wrong time server, a
        technician): what the node timed keeps its real length — a manual override ends
        when it was asked to, the sensor values the controller holds keep their age. The
        controller's own minimum times are its business (``decide`` restarts them after a
        step back). The loop reschedules by itself
        (``plan_tick``) and sends a status at once, from which the gateway measures the new
        offset."""
        log.warning("clock stepped %s: now %s", _signed_duration(step), now.isoformat())
        if self.override is not None:
            self.override = replace(self.override,
                                    expires_at=self.override.expires_at + step)
        self.latest = {key: replace(seen, at=seen.at + step)
                       for key, seen in self.latest.items()}

    def _guarded(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            self._record_error(exc, f"{getattr(action, '__name__', 'action')}")

    def _record_error(self, exc: BaseException, where: str) -> None:
        """Count an error the node survived; log each distinct one at most once a minute."""
        text = f"{where}: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.errors_total += 1
        self.last_error = text
        logged_at = self._error_logged_at.get(text)
        if logged_at is None or time.monotonic() - logged_at > 60:
            self._error_logged_at[text] = time.monotonic()
            log.error("%s", text, exc_info=exc if not isinstance(exc, CacaoDryerError) else None)

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
            try:
                if channel is Channel.CONFIG:
                    self.handle_config(payload)
                else:
                    self.handle_command(payload, now)
            except Exception as exc:  # a message must never stop the node
                self._record_error(exc, f"{channel.value} message")
                self._guarded(self.emit, EventType.CONFIG_REJECTED if channel is Channel.CONFIG
                              else EventType.COMMAND_RESULT,
                              f"{channel.value} not applied: {self.last_error}",
                              {"ok": False, "config_version": self.config_version})
        if self._on_tick is not None:
            self._on_tick(now, self.hardware)
        self.hardware.update(now)

    def cycle(self, now: datetime) -> Telemetry | None:
        """One control-and-publish cycle: read, decide, actuate, queue the reading. Each step
        survives the failure of the next: control goes on when the disk is full, and the
        reading is still stored when an actuator fails."""
        sample = self.read_sensors(now)
        try:
            decision = decide(self.control_inputs(now, sample), self.thresholds, self.state,
                              self.override)
        except Exception as exc:  # a controller bug must still leave the beans safe
            self._record_error(exc, "controller")
            decision = self._fail_safe(f"controller error: {exc}")
        self.state = decision.state
        if self.override is not None and decision.mode is Mode.AUTO:
            self.override = None
            self._guarded(self.emit, EventType.OVERRIDE_ENDED,
                          "manual override expired; automatic control")
        try:
            self.hardware.set_fans(decision.fan_speed_pct)
            self.hardware.set_vents(decision.vent_open_pct, now)
        except Exception as exc:
            self._record_error(exc, "actuators")
            decision = replace(decision, alarms=decision.alarms | {Alarm.NODE_ERROR})
        self.last_decision = decision
        self.last_sample = sample
        self._guarded(self._report_changes, decision, sample)
        try:
            return self._queue_telemetry(now, sample, decision)
        except Exception as exc:  # disk full, SD card failing: the reading is lost, say so
            self._record_error(exc, "storing the reading")
            return None

    def _fail_safe(self, why: str) -> Decision:
        """Fans full, vents open: overheating is the one risk that cannot be undone."""
        return Decision(fan_speed_pct=100.0, vent_open_pct=100.0, mode=Mode.AUTO,
                        alarms=frozenset({Alarm.NODE_ERROR}), reasons=(why,), state=self.state)

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
            try:
                sample.raining = hw.rain.is_raining
            except Exception as exc:
                sample.faults[hw.rain.name] = f"rain sensor: {type(exc).__name__}: {exc}"[:300]
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
        except Exception as exc:  # a driver or library bug: don't trust this sensor now
            sample.faults[sensor.name] = f"{sensor.name}: driver error {type(exc).__name__}: " \
                                         f"{exc}"[:300]
            for key in keys:
                self.latest.pop(key, None)
        return None

    def _tray_moisture(self, mass_kg: float) -> float | None:
        batch = self.batch
        if (batch is None or batch.initial_tray_mass_kg is None
                or batch.initial_tray_mass_kg <= 0 or mass_kg <= 0):
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
        data: dict[str, Any] = {"command_id": command.command_id, "ok": True,
                                "action": command.action.type}
        if isinstance(command.action, SetCalibrationAction):
            data["probe_calibration"] = self.probe_calibration()
        self.emit(EventType.COMMAND_RESULT, result, data)

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
        if isinstance(action, SetCalibrationAction):
            return self.set_calibration(action, command.command_id, now)
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
            if mass < MIN_TRAY_SAMPLE_KG:
                raise CommandRejected(
                    f"the tray holds {mass:.2f} kg: put at least {MIN_TRAY_SAMPLE_KG} kg of the "
                    "batch's beans on it before starting the batch")
        self.batch = BatchInfo(batch_id=action.batch_id, started_at=now,
                               initial_moisture_pct_wb=action.initial_moisture_pct_wb,
                               initial_tray_mass_kg=mass)
        self.store.save_batch(self.batch)
        text = f"batch {action.batch_id} started at {action.initial_moisture_pct_wb:.1f} %"
        self.emit(EventType.BATCH_STARTED, text,
                  {"batch_id": action.batch_id, "initial_tray_mass_kg": mass,
                   "initial_moisture_pct_wb": action.initial_moisture_pct_wb})
        return text

    # --- moisture-probe calibration -----------------------------------------------------------

    def _probe(self) -> MoistureProbe | None:
        probe = self.hardware.moisture_probe
        return probe if isinstance(probe, MoistureProbe) else None

    def probe_calibration(self) -> dict[str, Any] | None:
        """The probe's curve in use and where it came from (boot and command_result events
        carry it, so the gateway knows the curve a new calibration starts from)."""
        probe = self._probe()
        if probe is None:
            return None
        return {"sensor": probe.name, "points": [list(p) for p in probe.calibration],
                "source": self.calibration_source}

    def _restore_calibration(self, stored: StoredCalibration | None) -> None:
        """A curve the gateway sent before a restart wins over the config file's, for the
        same probe; a probe renamed or removed in the config file keeps the file's curve."""
        if stored is None:
            return
        probe = self._probe()
        if probe is None or probe.name != stored.sensor:
            log.warning("stored calibration is for probe %r, which this config does not have: "
                        "using the config file's curve", stored.sensor)
            return
        probe.set_calibration(stored.points)
        self.calibration_source = "gateway"

    def set_calibration(self, action: SetCalibrationAction, command_id: str,
                        now: datetime) -> str:
        """Persist first, then use: a curve the node reports as applied survives a power cut."""
        probe = self._probe()
        if probe is None:
            raise CommandRejected("this node has no moisture probe")
        if action.sensor is not None and action.sensor != probe.name:
            raise CommandRejected(f"this node's moisture probe is {probe.name!r}, "
                                  f"not {action.sensor!r}")
        self.store.save_calibration(StoredCalibration(
            sensor=probe.name, points=list(action.points), command_id=command_id,
            applied_at=now))
        probe.set_calibration(action.points)
        self.calibration_source = "gateway"
        first, last = action.points[0], action.points[-1]
        return (f"probe {probe.name} calibrated: {len(action.points)} points, "
                f"{first[0]:g} V = {first[1]:g} % to {last[0]:g} V = {last[1]:g} %")

    def shutdown(self) -> None:
        """Leave the dryer safe (see DryerHardware.close) and say goodbye."""
        self.hardware.close()


class CommandRejected(CacaoDryerError, ValueError):
    """A command was understood but cannot be carried out (reason in the message)."""


def _signed_duration(step: timedelta) -> str:
    seconds = step.total_seconds()
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.0f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.1f} min"
    return f"{sign}{seconds / 3600:.2f} h"


def _pct(value: float | None) -> str:
    return "auto" if value is None else f"{value:.0f} %"


def _raw_field(payload: bytes, name: str) -> Any:
    """Best-effort field from an invalid payload, to name it in the rejection event."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, int | str) and len(str(value)) <= 64 else None
