"""The batch service on SQLite and PostgreSQL: start and end with commands that reach the
node's topic on a real (private) Mosquitto, conflicts, spot checks, audited corrections,
filters, progress from stored readings, and the node's own batch events arriving through the
real node registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from support import wait_for
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    ID_PATTERN,
    Channel,
    Command,
    EndBatchAction,
    EventType,
    NodeEvent,
    StartBatchAction,
    Thresholds,
    decode,
)
from cacao_dryer.errors import ConflictError, NotFoundError, PayloadError
from gateway import batches
from gateway.batches import (
    BatchCorrection,
    BatchEnd,
    BatchFilter,
    NewBatch,
    NewSpotCheck,
    record_batch_event,
)
from gateway.context import GatewayContext
from gateway.metadata.models import AuditEntry, Batch
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

SITE, NODE, OTHER = "demo", "secador-01", "secador-02"


@pytest.fixture
def gw(tmp_path: Path, mosquitto: MosquittoBroker, metadata_url: str, clock: ManualClock
       ) -> Iterator[GatewayContext]:
    """A real gateway context on SQLite or PostgreSQL, with two dryers already heard of."""
    with gateway_context(tmp_path / "gateway", mosquitto, metadata_url, clock) as context:
        heard = [StoredReading(site_id=SITE, node_id=node, seq=1, measured_at=clock.now(),
                               fields={"air_temp_c": 30.0}) for node in (NODE, OTHER)]
        NodeRegistry(context.metadata, clock).batch_received(heard, [], [])
        yield context


def new_batch(node: str = NODE, **changes: object) -> NewBatch:
    fields: dict[str, object] = {
        "site_id": SITE, "node_id": node, "lot_code": "L-031", "producer": "Coop Alto Mayo",
        "initial_mass_kg": 400.0, "initial_moisture_pct_wb": 56.0}
    return NewBatch.model_validate(fields | changes)


def start(gw: GatewayContext, request: NewBatch | None = None, actor: str = "olga"
          ) -> tuple[str, batches.CommandOutcome]:
    with gw.metadata.session() as session:
        batch, outcome = batches.start_batch(session, gw.publisher, request or new_batch(),
                                             actor, gw.clock.now())
        return batch.batch_id, outcome


def end(gw: GatewayContext, batch_id: str, **fields: object) -> Batch:
    with gw.metadata.session() as session:
        batch, _outcome = batches.end_batch(session, gw.publisher, batch_id,
                                            BatchEnd.model_validate(fields), "olga",
                                            gw.clock.now())
        return batch


def load(gw: GatewayContext, batch_id: str) -> Batch:
    with gw.metadata.session() as session:
        return batches.get_batch(session, batch_id)


def audit(gw: GatewayContext) -> list[AuditEntry]:
    with gw.metadata.session() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def node_event(seq: int, kind: EventType, at: datetime, node: str = NODE,
               **data: object) -> NodeEvent:
    return NodeEvent(site_id=SITE, node_id=node, seq=seq, occurred_at=at, type=kind,
                     message=f"{kind.value} {seq}", data=data)


# --- start ------------------------------------------------------------------------------------

def test_start_records_the_batch_and_sends_start_batch_to_the_node(
        gw: GatewayContext, mosquitto: MosquittoBroker) -> None:
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watcher",
                    persistent=False) as watcher:
        batch_id, outcome = start(gw)
        wait_for(lambda: len(watcher.messages()) == 1, what="the start command on the broker")
    # 12:00 UTC is 07:00 in Lima, the site's zone: the id reads like the operator's clock.
    assert batch_id == "secador-01-202603010700"
    assert outcome.delivered_to_broker
    topic_name, payload, retained = watcher.messages()[0]
    assert topic_name == f"cacao/v1/{SITE}/{NODE}/command" and not retained
    command = decode(Channel.COMMAND, payload)
    assert isinstance(command, Command)
    assert command.command_id == outcome.command_id
    assert command.action == StartBatchAction(batch_id=batch_id, initial_moisture_pct_wb=56.0)
    assert command.expires_at - command.issued_at == timedelta(hours=1)
    assert command.issued_by == "olga"
    stored = load(gw, batch_id)
    assert (stored.lot_code, stored.producer, stored.crop, stored.started_by) == (
        "L-031", "Coop Alto Mayo", "cacao", "olga")
    assert stored.started_at == gw.clock.now() and stored.ended_at is None
    (entry,) = audit(gw)
    assert (entry.actor, entry.action, entry.target, entry.old) == (
        "olga", "batch.start", f"{SITE}/{NODE}/{batch_id}", None)
    assert entry.new["initial_moisture_pct_wb"] == 56.0
    assert entry.new["command"]["command_id"] == outcome.command_id
    assert entry.new["command"]["delivered_to_broker"] is True


def test_a_second_start_on_the_same_dryer_is_a_conflict(gw: GatewayContext) -> None:
    first, _ = start(gw)
    with pytest.raises(ConflictError, match=f"already has batch {first} running"):
        start(gw)
    other, _ = start(gw, new_batch(OTHER))  # another dryer is free
    assert other.startswith(OTHER)


def test_starting_on_an_unknown_dryer_is_not_found(gw: GatewayContext) -> None:
    with pytest.raises(NotFoundError, match="node demo/secador-99 is not known"):
        start(gw, new_batch("secador-99"))


def test_a_start_in_the_future_is_refused(gw: GatewayContext) -> None:
    later = gw.clock.now() + timedelta(hours=1)
    with pytest.raises(PayloadError, match=r"started_at .* is in the future"):
        start(gw, new_batch(started_at=later))


def test_a_start_before_the_previous_batch_ended_is_a_conflict(gw: GatewayContext) -> None:
    first, _ = start(gw)
    gw.clock.advance(3600)
    end(gw, first)
    overlapping = gw.clock.now() - timedelta(minutes=30)
    with pytest.raises(ConflictError, match=f"before batch {first} on this dryer ended"):
        start(gw, new_batch(started_at=overlapping))


def test_batch_ids_are_unique_identifiers_even_within_one_minute(gw: GatewayContext) -> None:
    first, _ = start(gw)
    gw.clock.advance(20)
    end(gw, first)
    gw.clock.advance(20)
    second, _ = start(gw)
    assert (first, second) == ("secador-01-202603010700", "secador-01-202603010700-2")


def test_a_long_node_id_is_shortened_to_keep_the_batch_id_an_identifier(
        gw: GatewayContext) -> None:
    long_node = "secador-modulo-norte-del-centro-acopio-1"  # 40 characters
    NodeRegistry(gw.metadata, gw.clock).batch_received(
        [StoredReading(site_id=SITE, node_id=long_node, seq=1, measured_at=gw.clock.now())],
        [], [])
    batch_id, _ = start(gw, new_batch(long_node))
    assert len(batch_id) <= 40 and re.fullmatch(ID_PATTERN, batch_id)
    assert batch_id == "secador-modulo-norte-del-ce-202603010700"


def test_the_record_stands_when_the_broker_is_down(gw: GatewayContext,
                                                  mosquitto: MosquittoBroker) -> None:
    mosquitto.kill()
    batch_id, outcome = start(gw)
    assert outcome.delivered_to_broker is False
    assert load(gw, batch_id).ended_at is None
    assert audit(gw)[0].new["command"]["delivered_to_broker"] is False


# --- end --------------------------------------------------------------------------------------

def test_end_closes_the_batch_and_sends_end_batch(gw: GatewayContext,
                                                  mosquitto: MosquittoBroker) -> None:
    batch_id, _ = start(gw, new_batch(notes="lote de prueba"))
    gw.clock.advance(5 * 24 * 3600)
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watcher",
                    persistent=False) as watcher:
        ended = end(gw, batch_id, final_moisture_pct_wb=7.2, final_mass_kg=170.5,
                    notes="bien seco")
        wait_for(lambda: len(watcher.messages()) == 1, what="the end command on the broker")
    command = decode(Channel.COMMAND, watcher.messages()[0][1])
    assert isinstance(command, Command)
    assert command.action == EndBatchAction(batch_id=batch_id)
    assert ended.ended_at == gw.clock.now() and ended.ended_by == "olga"
    assert (ended.final_moisture_pct_wb, ended.final_mass_kg) == (7.2, 170.5)
    assert ended.notes == "lote de prueba\nbien seco"
    entry = audit(gw)[-1]
    assert entry.action == "batch.end"
    assert entry.old["ended_at"] is None and entry.new["final_moisture_pct_wb"] == 7.2


def test_ending_twice_is_a_conflict(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    gw.clock.advance(60)
    end(gw, batch_id)
    with pytest.raises(ConflictError,
                       match=rf"batch {batch_id} already ended at .* \(by olga\)"):
        end(gw, batch_id)


def test_an_end_before_the_start_is_refused(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with pytest.raises(PayloadError, match=r"ended_at .* is not after the batch's start"):
        end(gw, batch_id, ended_at=gw.clock.now() - timedelta(hours=1))


def test_ending_an_unknown_batch_is_not_found(gw: GatewayContext) -> None:
    with pytest.raises(NotFoundError, match="batch lote-x is not known"):
        end(gw, "lote-x")


# --- spot checks and corrections --------------------------------------------------------------

def test_spot_checks_are_kept_in_time_order(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    gw.clock.advance(48 * 3600)
    now = gw.clock.now()
    with gw.metadata.session() as session:
        batches.add_spot_check(session, batch_id, NewSpotCheck(moisture_pct_wb=30.5), "olga",
                               now)
        batches.add_spot_check(session, batch_id, NewSpotCheck(
            moisture_pct_wb=45.0, method="oven", measured_at=now - timedelta(hours=24),
            note="muestra 2"), "luis", now)
    with gw.metadata.session() as session:
        checks = batches.spot_checks(session, batch_id)
    assert [(c.moisture_pct_wb, c.method, c.recorded_by) for c in checks] == [
        (45.0, "oven", "luis"), (30.5, "hand_meter", "olga")]
    assert [e.action for e in audit(gw)].count("batch.spot_check") == 2


def test_a_spot_check_before_the_batch_started_is_refused(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with pytest.raises(PayloadError, match=r"before batch .* started"), \
            gw.metadata.session() as session:
        batches.add_spot_check(session, batch_id, NewSpotCheck(
            moisture_pct_wb=50, measured_at=gw.clock.now() - timedelta(days=1)), "olga",
            gw.clock.now())


def test_corrections_are_audited_old_to_new_field_by_field(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with gw.metadata.session() as session:
        batches.correct_batch(session, batch_id, BatchCorrection(
            lot_code="L-032", producer="Coop Alto Mayo", initial_moisture_pct_wb=58.0),
            "ana", gw.clock.now())
    entry = audit(gw)[-1]
    assert (entry.action, entry.actor) == ("batch.update", "ana")
    # The producer did not change, so it is not in the entry.
    assert entry.old == {"lot_code": "L-031", "initial_moisture_pct_wb": 56.0}
    assert entry.new == {"lot_code": "L-032", "initial_moisture_pct_wb": 58.0}
    assert load(gw, batch_id).lot_code == "L-032"


def test_final_values_cannot_be_set_on_a_running_batch(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with pytest.raises(ConflictError, match="still running: give final_moisture_pct_wb"), \
            gw.metadata.session() as session:
        batches.correct_batch(session, batch_id, BatchCorrection(final_moisture_pct_wb=7.0),
                              "ana", gw.clock.now())


def test_a_correction_that_changes_nothing_writes_no_audit_entry(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with gw.metadata.session() as session:
        batches.correct_batch(session, batch_id, BatchCorrection(lot_code="L-031"), "ana",
                              gw.clock.now())
    assert [e.action for e in audit(gw)] == ["batch.start"]


# --- listing ----------------------------------------------------------------------------------

def test_filters_and_pages_newest_first(gw: GatewayContext) -> None:
    ids = []
    for day, producer in enumerate(("Coop Alto Mayo", "Juan 100% Pérez", "coop alto MAYO")):
        batch_id, _ = start(gw, new_batch(producer=producer, lot_code=f"L-{day}"))
        ids.append(batch_id)
        gw.clock.advance(24 * 3600)
        if day < 2:
            end(gw, batch_id)
            gw.clock.advance(3600)
    other, _ = start(gw, new_batch(OTHER, producer="María Quispe"))

    def found(**where: object) -> list[str]:
        with gw.metadata.session() as session:
            return [b.batch_id for b in batches.list_batches(
                session, BatchFilter(**where))[1]]  # type: ignore[arg-type]

    assert found() == [other, ids[2], ids[1], ids[0]]
    assert found(node_id=NODE, running=True) == [ids[2]]
    assert found(node_id=NODE, running=False) == [ids[1], ids[0]]
    assert found(producer="alto mayo") == [ids[2], ids[0]]
    assert found(producer="100%") == [ids[1]]   # % is a character, not a wildcard
    assert found(producer="0%") == [ids[1]]
    assert found(lot_code="l-1") == [ids[1]]
    t0 = load(gw, ids[0]).started_at
    assert found(since=t0 + timedelta(hours=1), until=t0 + timedelta(days=2)) == [ids[1]]
    with gw.metadata.session() as session:
        total, page = batches.list_batches(session, BatchFilter(), limit=2, offset=1)
    assert total == 4 and [b.batch_id for b in page] == [ids[2], ids[1]]


# --- progress ---------------------------------------------------------------------------------

def test_progress_comes_from_the_latest_reading_then_spot_checks_then_the_final_value(
        gw: GatewayContext) -> None:
    batch_id, _ = start(gw)  # 56 % at loading, target 7 %
    t0 = gw.clock.now()
    gw.store.write([StoredReading(site_id=SITE, node_id=NODE, seq=2 + i,
                                  measured_at=t0 + timedelta(minutes=10 * i),
                                  fields={"bean_moisture_pct_wb": 56.0 - i * 0.5})
                    for i in range(1, 51)])
    gw.clock.advance(9 * 3600)
    with gw.metadata.session() as session:
        batch = batches.get_batch(session, batch_id)
        by_reading = batches.progress(session, gw.store, batch, gw.clock.now())
    assert by_reading.target_moisture_pct_wb == 7.0
    assert by_reading.current_moisture_source == "reading"
    assert by_reading.current_moisture_pct_wb == 31.0
    assert by_reading.progress_pct == pytest.approx(51.0, abs=0.1)  # 25 of 49 points
    with gw.metadata.session() as session:
        check = batches.add_spot_check(session, batch_id, NewSpotCheck(moisture_pct_wb=28.0),
                                       "olga", gw.clock.now())
        by_check = batches.progress(session, gw.store, batches.get_batch(session, batch_id),
                                    gw.clock.now(), [check])
    assert (by_check.current_moisture_pct_wb, by_check.current_moisture_source) == (
        28.0, "spot_check")
    end(gw, batch_id, final_moisture_pct_wb=6.5)
    with gw.metadata.session() as session:
        final = batches.progress(session, gw.store, batches.get_batch(session, batch_id),
                                 gw.clock.now())
    assert (final.current_moisture_pct_wb, final.current_moisture_source,
            final.progress_pct) == (6.5, "final", 100.0)


def test_progress_is_unknown_without_readings(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with gw.metadata.session() as session:
        result = batches.progress(session, gw.store, batches.get_batch(session, batch_id),
                                  gw.clock.now())
    assert result.current_moisture_pct_wb is None and result.progress_pct is None


# --- the node's own batch events (through the real node registry) -----------------------------

def test_a_batch_the_node_started_itself_is_created_once(gw: GatewayContext) -> None:
    registry = NodeRegistry(gw.metadata, gw.clock)
    at = gw.clock.now() - timedelta(minutes=5)
    started = node_event(1, EventType.BATCH_STARTED, at, batch_id="lote-secador-01-x",
                         initial_moisture_pct_wb=55.0, initial_tray_mass_kg=2.1)
    registry.batch_received([], [], [started])
    registry.batch_received([], [], [started])                      # redelivered
    record_batch_event_again(gw, started)                           # called twice anyway
    batch = load(gw, "lote-secador-01-x")
    assert (batch.started_by, batch.started_at, batch.ended_at) == ("node", at, None)
    assert (batch.lot_code, batch.initial_moisture_pct_wb) == ("lote-secador-01-x", 55.0)
    assert [(e.actor, e.action) for e in audit(gw)] == [("node", "batch.start")]
    ended = node_event(2, EventType.BATCH_ENDED, at + timedelta(days=4),
                       batch_id="lote-secador-01-x")
    registry.batch_received([], [], [ended, ended])
    record_batch_event_again(gw, ended)
    batch = load(gw, "lote-secador-01-x")
    assert (batch.ended_at, batch.ended_by) == (at + timedelta(days=4), "node")
    assert [e.action for e in audit(gw)] == ["batch.start", "batch.end"]


def record_batch_event_again(gw: GatewayContext, event: NodeEvent) -> None:
    with gw.metadata.session() as session:
        record_batch_event(session, event.site_id, event.node_id, event.type.value,
                           event.data.get("batch_id"), event.data, event.occurred_at)


def test_a_node_started_batch_replaces_the_one_running_in_that_dryer(
        gw: GatewayContext) -> None:
    old_id, _ = start(gw)
    at = gw.clock.now() + timedelta(hours=30)
    gw.clock.advance(31 * 3600)
    NodeRegistry(gw.metadata, gw.clock).batch_received([], [], [
        node_event(1, EventType.BATCH_STARTED, at, batch_id="lote-boton")])
    old, new = load(gw, old_id), load(gw, "lote-boton")
    assert (old.ended_at, old.ended_by) == (at, "node")
    assert (new.started_at, new.ended_at) == (at, None)


def test_a_late_replayed_start_is_recorded_as_ended_when_the_next_batch_began(
        gw: GatewayContext) -> None:
    gw.clock.advance(3600)
    current, _ = start(gw)
    earlier = gw.clock.now() - timedelta(minutes=50)
    NodeRegistry(gw.metadata, gw.clock).batch_received([], [], [
        node_event(1, EventType.BATCH_STARTED, earlier, batch_id="lote-offline")])
    replayed = load(gw, "lote-offline")
    assert (replayed.started_at, replayed.ended_at) == (earlier, load(gw, current).started_at)
    assert load(gw, current).ended_at is None


def test_the_nodes_confirmation_of_our_start_changes_nothing(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    NodeRegistry(gw.metadata, gw.clock).batch_received([], [], [
        node_event(1, EventType.BATCH_STARTED, gw.clock.now() + timedelta(seconds=2),
                   batch_id=batch_id, initial_moisture_pct_wb=56.0)])
    batch = load(gw, batch_id)
    assert batch.started_by == "olga" and batch.started_at == gw.clock.now()
    assert [e.action for e in audit(gw)] == ["batch.start"]


@pytest.mark.parametrize(("kind", "batch_id", "data"), [
    (EventType.BATCH_STARTED.value, None, {}),
    (EventType.BATCH_STARTED.value, "Lote 1!", {}),
    (EventType.BATCH_STARTED.value, "x" * 41, {}),
    (EventType.BATCH_ENDED.value, "lote-nunca-visto", {}),
    ("alarm_raised", "lote-1", {}),
])
def test_odd_batch_events_change_nothing(gw: GatewayContext, kind: str,
                                         batch_id: str | None, data: dict) -> None:
    with gw.metadata.session() as session:
        record_batch_event(session, SITE, NODE, kind, batch_id, data, gw.clock.now())
    with gw.metadata.session() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_odd_initial_moisture_from_a_node_is_left_out(gw: GatewayContext) -> None:
    with gw.metadata.session() as session:
        record_batch_event(session, SITE, NODE, "batch_started", "lote-raro",
                           {"initial_moisture_pct_wb": "mucho"}, gw.clock.now())
        record_batch_event(session, SITE, OTHER, "batch_started", "lote-raro-2",
                           {"initial_moisture_pct_wb": 400}, gw.clock.now())
    assert load(gw, "lote-raro").initial_moisture_pct_wb is None
    assert load(gw, "lote-raro-2").initial_moisture_pct_wb is None


def test_a_node_cannot_end_another_dryers_batch(gw: GatewayContext) -> None:
    batch_id, _ = start(gw)
    with gw.metadata.session() as session:
        record_batch_event(session, SITE, OTHER, "batch_ended", batch_id, {},
                           gw.clock.now() + timedelta(hours=1))
    assert load(gw, batch_id).ended_at is None


def test_node_view_pairs_our_commands_with_the_nodes_answers(gw: GatewayContext) -> None:
    batch_id, outcome = start(gw)
    at = gw.clock.now() + timedelta(seconds=3)
    NodeRegistry(gw.metadata, gw.clock).batch_received([], [], [
        node_event(7, EventType.BATCH_STARTED, at, batch_id=batch_id),
        node_event(8, EventType.COMMAND_RESULT, at, command_id=outcome.command_id, ok=True,
                   action="start_batch"),
        node_event(9, EventType.COMMAND_RESULT, at, command_id="someone-else", ok=False)])
    with gw.metadata.session() as session:
        view = batches.node_view(session, batches.get_batch(session, batch_id),
                                 gw.clock.now())
    assert view.started_at == at and view.ended_at is None
    (command,) = view.commands
    assert (command.command_id, command.action, command.delivered_to_broker,
            command.node_ok, command.node_answered_at) == (
        outcome.command_id, "start_batch", True, True, at)


def test_commands_are_json_on_the_wire(gw: GatewayContext, mosquitto: MosquittoBroker) -> None:
    """The payload is what the node's decoder expects: compact, no nulls, schema_version 1."""
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/{NODE}/command", "watcher",
                    persistent=False) as watcher:
        start(gw)
        wait_for(lambda: len(watcher.messages()) == 1, what="the start command")
    body = json.loads(watcher.messages()[0][1])
    assert body["schema_version"] == 1 and "initial_tray_mass_kg" not in body["action"]


# --- analysis ---------------------------------------------------------------------------------

def test_the_flag_filter_computes_metrics_from_the_stored_readings(gw: GatewayContext) -> None:
    hot, _ = start(gw)
    cool, _ = start(gw, new_batch(OTHER))
    t0 = gw.clock.now()
    for node in (NODE, OTHER):
        gw.store.write([StoredReading(
            site_id=SITE, node_id=node, seq=10 + i, measured_at=t0 + timedelta(minutes=5 * i),
            fields={"air_temp_c": 66.0 if node == NODE and i < 24 else 40.0,
                    "bean_moisture_pct_wb": 55.0}) for i in range(1, 100)])
    gw.clock.advance(9 * 3600)
    with gw.metadata.session() as session:
        total, page = batches.list_flagged(session, gw.store, BatchFilter(), "overheated",
                                           gw.clock.now())
        assert (total, [b.batch_id for b in page]) == (1, [hot])
        result = batches.batch_metrics(session, gw.store, batches.get_batch(session, cool),
                                       gw.clock.now())
    assert result.metrics.max_air_temp_c == 40.0 and result.every_s == 60


def test_the_flag_filter_refuses_to_scan_too_many_batches(gw: GatewayContext) -> None:
    for _ in range(3):
        batch_id, _ = start(gw)
        gw.clock.advance(3600)
        end(gw, batch_id)
        gw.clock.advance(60)
    with pytest.raises(PayloadError, match="3 batches match the other filters, at most 2"), \
            gw.metadata.session() as session:
        batches.list_flagged(session, gw.store, BatchFilter(), "overheated", gw.clock.now(),
                             max_scan=2)


def test_a_batch_is_judged_by_the_thresholds_pushed_to_its_dryer(gw: GatewayContext) -> None:
    from gateway.metadata.models import NodeConfigPush

    with gw.metadata.session() as session:
        assert batches.target_moisture_for(session, SITE, NODE) == 7.0  # built-in default
        session.add(NodeConfigPush(
            site_id=SITE, node_id=NODE, version=1, reason="test", issued_by="tomas",
            issued_at=gw.clock.now(), thresholds=Thresholds(
                target_moisture_pct_wb=7.5).model_dump()))
    with gw.metadata.session() as session:
        assert batches.target_moisture_for(session, SITE, NODE) == 7.5
        assert batches.thresholds_for(session, SITE, NODE).air_temp_limit_c == 65.0
