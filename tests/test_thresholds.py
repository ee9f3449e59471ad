"""Threshold profiles: the pure layering and stage rules (examples and properties), and the
service on a real metadata database — SQLite and a private PostgreSQL — with a real
publisher on a private Mosquitto where configs are pushed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from support import wait_for
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import Channel, NodeConfig, Thresholds, decode, topic
from cacao_dryer.errors import ConfigError, NotFoundError
from gateway import audit
from gateway import thresholds as service
from gateway.context import GatewayContext
from gateway.metadata.database import MetadataDB, open_metadata
from gateway.metadata.models import (
    AuditEntry,
    Batch,
    Node,
    NodeConfigPush,
    Site,
    ThresholdProfileVersion,
)
from gateway.stores.sqlite import SqliteStore
from gateway.threshold_rules import (
    FIELDS,
    Profile,
    Scope,
    Stage,
    batch_stage,
    check_overrides,
    resolve,
)
from gateway.timeseries import StoredReading

SITE = "demo"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEFAULTS = Thresholds()


# --- pure rules: layering ---------------------------------------------------------------------

def profiles(*entries: tuple[Scope, dict[str, Any]]) -> dict[Scope, Profile]:
    return {scope: Profile(scope, 1, values) for scope, values in entries}


def test_later_layers_win_defaults_site_site_stage_dryer_dryer_stage() -> None:
    layers = profiles(
        (Scope(SITE), {"target_moisture_pct_wb": 7.5, "air_temp_warn_c": 50.0,
                       "fan_min_speed_pct": 40.0, "stale_after_s": 200.0}),
        (Scope(SITE, "", "early"), {"air_temp_warn_c": 45.0, "fan_min_speed_pct": 45.0,
                                    "stale_after_s": 210.0}),
        (Scope(SITE, "secador-01"), {"fan_min_speed_pct": 50.0, "stale_after_s": 220.0}),
        (Scope(SITE, "secador-01", "early"), {"stale_after_s": 230.0}),
    )
    resolved = resolve(layers, SITE, "secador-01", Stage.EARLY)
    t = resolved.thresholds
    assert (t.target_moisture_pct_wb, t.air_temp_warn_c, t.fan_min_speed_pct,
            t.stale_after_s, t.air_temp_limit_c) == (7.5, 45.0, 50.0, 230.0, 65.0)
    assert [resolved.sources[name] for name in ("target_moisture_pct_wb", "air_temp_warn_c",
                                                "fan_min_speed_pct", "stale_after_s",
                                                "air_temp_limit_c")] == \
        ["site", "site+early", "dryer", "dryer+early", "default"]
    assert resolved.layers == {"site": 1, "site+early": 1, "dryer": 1, "dryer+early": 1}


def test_stage_layers_apply_only_while_a_batch_is_in_that_stage() -> None:
    layers = profiles((Scope(SITE, "", "early"), {"air_temp_warn_c": 45.0}),
                      (Scope(SITE, "secador-01", "main"), {"air_temp_warn_c": 58.0}))
    warn = {stage: resolve(layers, SITE, "secador-01", stage).thresholds.air_temp_warn_c
            for stage in (None, Stage.EARLY, Stage.MAIN)}
    assert warn == {None: 55.0, Stage.EARLY: 45.0, Stage.MAIN: 58.0}


def test_another_dryers_profile_does_not_apply() -> None:
    layers = profiles((Scope(SITE, "secador-02"), {"air_temp_warn_c": 40.0}),
                      (Scope("otro-sitio"), {"air_temp_warn_c": 41.0}))
    assert resolve(layers, SITE, "secador-01", None).thresholds == DEFAULTS


def test_an_inconsistent_combination_is_one_line_naming_fields_values_and_dryer() -> None:
    layers = profiles((Scope(SITE), {"air_temp_warn_c": 58.0}),
                      (Scope(SITE, "secador-01", "main"), {"air_temp_alarm_c": 56.0}))
    resolve(layers, SITE, "secador-01", Stage.EARLY)  # fine in the early stage
    with pytest.raises(ConfigError) as error:
        resolve(layers, SITE, "secador-01", Stage.MAIN)
    assert str(error.value) == (
        "thresholds of demo/secador-01, main stage: air_temp_warn_c <= air_temp_alarm_c <= "
        "air_temp_limit_c must hold (here air_temp_warn_c=58, air_temp_alarm_c=56, "
        "air_temp_limit_c=65)")


def test_an_unknown_field_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"^values\.air_temp_warm_c: not a threshold; "
                       r"did you mean air_temp_warn_c\?"):
        check_overrides({"air_temp_warm_c": 50})


@pytest.mark.parametrize(("values", "message"), [
    ({"air_temp_limit_c": 70}, "values.air_temp_limit_c: Input should be less than or equal "
                               "to 65 (got 70)"),
    ({"air_temp_warn_c": "50"}, "values.air_temp_warn_c: expected a number, got '50'"),
    ({"air_temp_warn_c": True}, "values.air_temp_warn_c: expected a number, got True"),
    ({"air_temp_warn_c": float("nan")}, "values.air_temp_warn_c: expected a finite number, "
                                        "got nan"),
    ({"night_start_hour": 18.5}, "values.night_start_hour: Input should be a valid integer, "
                                 "got a number with a fractional part (got 18.5)"),
])
def test_a_bad_value_is_one_line_naming_the_field(values: dict[str, Any], message: str
                                                  ) -> None:
    with pytest.raises(ConfigError) as error:
        check_overrides(values)
    assert str(error.value) == message


def test_overrides_are_normalised_whole_hours_become_integers() -> None:
    assert check_overrides({"night_start_hour": 19.0, "air_temp_warn_c": 50}) == \
        {"air_temp_warn_c": 50.0, "night_start_hour": 19}


# Overrides drawn within each field's own range (the combination may still be inconsistent).
def _field_values(name: str) -> st.SearchStrategy[Any]:
    info = Thresholds.model_fields[name]
    low = next(m.ge for m in info.metadata if hasattr(m, "ge"))
    high = next(m.le for m in info.metadata if hasattr(m, "le"))
    if info.annotation is int:
        return st.integers(int(low), int(high))
    return st.floats(low, high, allow_nan=False).map(lambda value: round(value, 1))


overrides = st.lists(st.sampled_from(FIELDS), max_size=6, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: _field_values(name) for name in names}))
SCOPES = [Scope(SITE), Scope(SITE, "", "early"), Scope(SITE, "", "main"),
          Scope(SITE, "secador-01"), Scope(SITE, "secador-01", "early"),
          Scope(SITE, "secador-01", "main"), Scope(SITE, "secador-02")]


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({scope: overrides for scope in SCOPES}),
       st.sampled_from([None, Stage.EARLY, Stage.MAIN]))
def test_each_field_comes_from_the_highest_layer_that_sets_it_or_one_line_error(
        drawn: dict[Scope, dict[str, Any]], stage: Stage | None) -> None:
    layers = {scope: Profile(scope, 1, values) for scope, values in drawn.items()}
    order = [Scope(SITE)] + ([Scope(SITE, "", stage.value)] if stage else []) + \
        [Scope(SITE, "secador-01")] + ([Scope(SITE, "secador-01", stage.value)] if stage else [])
    expected: dict[str, tuple[Any, str]] = {
        name: (getattr(DEFAULTS, name), "default") for name in FIELDS}
    for scope in order:
        for name, value in drawn[scope].items():
            expected[name] = (value, scope.layer)
    try:
        resolved = resolve(layers, SITE, "secador-01", stage)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and message.startswith("thresholds of demo/secador-01")
        assert any(name in message for name in FIELDS)
        return
    for name in FIELDS:
        assert (getattr(resolved.thresholds, name), resolved.sources[name]) == expected[name]


# --- pure rules: batch stage ------------------------------------------------------------------

def test_no_batch_means_no_stage() -> None:
    assert batch_stage(None, T0, 50.0, DEFAULTS) is None


@pytest.mark.parametrize(("age_h", "moisture", "stage"), [
    (2.0, None, Stage.EARLY),      # the first 48 h are gentle whatever the moisture [UWI]
    (2.0, 20.0, Stage.EARLY),
    (60.0, 40.0, Stage.EARLY),     # old, but still wetter than 35 %
    (60.0, 30.0, Stage.MAIN),
    (60.0, None, Stage.MAIN),      # moisture unknown: the batch's age decides
])
def test_stage_follows_batch_age_and_bean_moisture(age_h: float, moisture: float | None,
                                                   stage: Stage) -> None:
    assert batch_stage(T0 - timedelta(hours=age_h), T0, moisture, DEFAULTS) is stage


@given(st.floats(0, 500), st.one_of(st.none(), st.floats(0, 80)))
def test_once_in_the_main_stage_a_batch_stays_there(age_h: float, moisture: float | None
                                                    ) -> None:
    assert batch_stage(T0 - timedelta(hours=age_h), T0, moisture, DEFAULTS,
                       previous=Stage.MAIN) is Stage.MAIN


# --- the service on a real database -----------------------------------------------------------

@pytest.fixture
def db(metadata_url: str) -> Iterator[MetadataDB]:
    database = open_metadata(metadata_url)
    with database.session() as session:
        session.add(Site(site_id=SITE, name="Demo", created_at=T0))
        session.flush()
        for node_id in ("secador-01", "secador-02"):
            session.add(Node(site_id=SITE, node_id=node_id, first_seen_at=T0, last_seen_at=T0))
    yield database
    database.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    readings = SqliteStore(tmp_path / "readings.sqlite3")
    yield readings
    readings.close()


def save(db: MetadataDB, store: SqliteStore, values: dict[str, Any], *,
         node_id: str | None = None, stage: Any = None, actor: str = "ana", comment: str = "",
         now: datetime = T0) -> service.SaveResult:
    change = service.ProfileChange(site_id=SITE, node_id=node_id, stage=stage, values=values,
                                   comment=comment)
    with db.session() as session:
        return service.save_profile(session, store, change, actor, now)


def pushes(db: MetadataDB, node_id: str) -> list[NodeConfigPush]:
    with db.session() as session:
        return list(session.scalars(select(NodeConfigPush).where(
            NodeConfigPush.node_id == node_id).order_by(NodeConfigPush.version)))


def node_row(db: MetadataDB, node_id: str) -> Node:
    with db.session() as session:
        node = session.get(Node, (SITE, node_id))
        assert node is not None
        return node


def test_each_save_is_a_new_immutable_version(db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_warn_c": 52.0}, comment="hot season")
    save(db, store, {"air_temp_warn_c": 50.0, "target_moisture_pct_wb": 7.5})
    result = save(db, store, {})
    with db.session() as session:
        history = [(v.version, v.values, v.created_by, v.comment) for v in session.scalars(
            select(ThresholdProfileVersion).where(
                ThresholdProfileVersion.profile_id == result.profile.profile_id)
            .order_by(ThresholdProfileVersion.version))]
    assert history == [(1, {"air_temp_warn_c": 52.0}, "ana", "hot season"),
                       (2, {"air_temp_warn_c": 50.0, "target_moisture_pct_wb": 7.5}, "ana", ""),
                       (3, {}, "ana", "")]


def test_saving_the_same_values_again_changes_nothing(db: MetadataDB, store: SqliteStore
                                                      ) -> None:
    save(db, store, {"air_temp_warn_c": 52.0})
    again = save(db, store, {"air_temp_warn_c": 52})
    assert (again.created, again.version.version, again.pushes) == (False, 1, [])
    with db.session() as session:
        assert len(session.scalars(select(AuditEntry)).all()) == 1


def test_a_save_that_would_make_a_dryer_invalid_is_refused_and_nothing_is_written(
        db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_alarm_c": 63.0}, stage="main")
    with pytest.raises(ConfigError) as error:
        save(db, store, {"air_temp_limit_c": 62.0}, node_id="secador-01")
    assert str(error.value) == (
        "thresholds of demo/secador-01, main stage: air_temp_warn_c <= air_temp_alarm_c <= "
        "air_temp_limit_c must hold (here air_temp_warn_c=55, air_temp_alarm_c=63, "
        "air_temp_limit_c=62)")
    with db.session() as session:
        assert len(session.scalars(select(ThresholdProfileVersion)).all()) == 1
        assert [e.target for e in session.scalars(select(AuditEntry))] == ["demo/*/main"]


def test_a_site_change_is_checked_for_dryers_not_heard_of_yet(db: MetadataDB,
                                                              store: SqliteStore) -> None:
    for node_id in ("secador-01", "secador-02"):  # fine for both known dryers ...
        save(db, store, {"air_temp_alarm_c": 63.0}, node_id=node_id)
    # ... but a dryer heard of tomorrow would get warn 62 > alarm 60 from the site profile
    with pytest.raises(ConfigError, match=r"^thresholds of demo \(a dryer without its own "
                       r"profile\), no batch: air_temp_warn_c"):
        save(db, store, {"air_temp_warn_c": 62.0})


def test_unknown_site_or_dryer_is_not_found(db: MetadataDB, store: SqliteStore) -> None:
    with pytest.raises(NotFoundError, match=r"^node demo/secador-09 is not known"):
        save(db, store, {"air_temp_warn_c": 50.0}, node_id="secador-09")
    with db.session() as session, pytest.raises(NotFoundError, match=r"^site lejos is not"):
        service.save_profile(session, store, service.ProfileChange(
            site_id="lejos", values={}), "ana", T0)


def test_every_change_is_audited_with_old_and_new_overrides_and_effective_changes(
        db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_warn_c": 50.0}, node_id="secador-02")
    save(db, store, {"air_temp_warn_c": 52.0}, actor="ana")
    save(db, store, {"air_temp_warn_c": 53.0, "target_moisture_pct_wb": 7.5}, actor="luis",
         comment="lote de exportación", now=T0 + timedelta(hours=1))
    with db.session() as session:
        total, entries = audit.query(session, audit.AuditFilter(target_prefix="demo/*/"))
    assert total == 2
    newest = entries[0]
    assert (newest.actor, newest.action, newest.target, newest.at, newest.detail) == \
        ("luis", "thresholds.update", "demo/*/*", T0 + timedelta(hours=1), "lote de exportación")
    assert newest.old == {"version": 1, "values": {"air_temp_warn_c": 52.0}}
    assert newest.new is not None
    assert newest.new["version"] == 2
    assert newest.new["changes"] == {"target_moisture_pct_wb": [None, 7.5],
                                     "air_temp_warn_c": [52.0, 53.0]}
    # secador-02 keeps its own warning threshold: only the target changes for it
    assert newest.new["effective_changes"] == {
        "secador-01": {"target_moisture_pct_wb": [7.0, 7.5], "air_temp_warn_c": [52.0, 53.0]},
        "secador-02": {"target_moisture_pct_wb": [7.0, 7.5]}}


def test_audit_filters_by_actor_action_time_and_pages(db: MetadataDB, store: SqliteStore
                                                      ) -> None:
    for minute in range(5):
        save(db, store, {"fan_min_speed_pct": 30.0 + minute},
             actor="ana" if minute % 2 else "luis", now=T0 + timedelta(minutes=minute))
    with db.session() as session:
        total, page = audit.query(session, audit.AuditFilter(actor="luis"), limit=2, offset=1)
        assert total == 3 and [e.at.minute for e in page] == [2, 0]
        total, page = audit.query(session, audit.AuditFilter(
            since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3),
            action="thresholds."))
        assert total == 2 and [e.at.minute for e in page] == [2, 1]
        assert audit.query(session, audit.AuditFilter(target_prefix="demo/secador-01"))[0] == 0


def test_a_site_profile_pushes_the_next_version_to_every_dryer_it_changes(
        db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_warn_c": 50.0}, node_id="secador-02")
    result = save(db, store, {"air_temp_warn_c": 52.0})
    assert [(p.node_id, p.version) for p in result.pushes] == [("secador-01", 1)]
    assert pushes(db, "secador-02")[0].thresholds["air_temp_warn_c"] == 50.0
    save(db, store, {"air_temp_warn_c": 52.0, "fan_min_speed_pct": 35.0})
    sent = [(p.version, p.thresholds["air_temp_warn_c"], p.thresholds["fan_min_speed_pct"],
             p.issued_by, p.published_at) for p in pushes(db, "secador-01")]
    assert sent == [(1, 52.0, 30.0, "ana", None), (2, 52.0, 35.0, "ana", None)]
    assert Thresholds.model_validate(pushes(db, "secador-01")[1].thresholds) == \
        Thresholds(air_temp_warn_c=52.0, fan_min_speed_pct=35.0)


def test_a_new_version_starts_above_what_the_node_reports_running(db: MetadataDB,
                                                                  store: SqliteStore) -> None:
    with db.session() as session:
        node = session.get(Node, (SITE, "secador-01"))
        assert node is not None
        node.status = {"state": "online", "config_version": 7}  # e.g. a restored database
    result = save(db, store, {"air_temp_warn_c": 52.0}, node_id="secador-01")
    assert [p.version for p in result.pushes] == [8]


def test_applied_acks_are_idempotent_and_a_late_ack_never_lowers_the_version(
        db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_warn_c": 52.0})
    save(db, store, {"air_temp_warn_c": 51.0})
    with db.session() as session:
        assert service.record_config_event(session, SITE, "secador-01", "config_applied", 2,
                                           T0 + timedelta(seconds=5), "config version 2 applied")
        assert not service.record_config_event(session, SITE, "secador-01", "config_applied",
                                               2, T0 + timedelta(minutes=5), "re-sent")
        assert service.record_config_event(session, SITE, "secador-01", "config_applied", 1,
                                           T0 + timedelta(seconds=9), "late")
        assert not service.record_config_event(session, SITE, "secador-01", "config_applied",
                                               None, T0, "unreadable")
    node = node_row(db, "secador-01")
    assert (node.applied_config_version, node.applied_config_at) == \
        (2, T0 + timedelta(seconds=5))
    assert [p.applied_at for p in pushes(db, "secador-01")] == \
        [T0 + timedelta(seconds=9), T0 + timedelta(seconds=5)]


def test_a_rejected_config_is_kept_with_the_nodes_reason(db: MetadataDB, store: SqliteStore
                                                          ) -> None:
    save(db, store, {"air_temp_warn_c": 52.0}, node_id="secador-01")
    with db.session() as session:
        service.record_config_event(session, SITE, "secador-01", "config_rejected", 1, T0,
                                    "cacao/v1/demo/secador-01/config: thresholds.x: Extra "
                                    "inputs are not permitted")
        [row] = service.rollout(session, T0, site_id=SITE)[:1]
    assert (row.state, row.desired_version, row.applied_version) == \
        (service.RolloutState.REJECTED, 1, None)
    assert row.node_message is not None and "Extra inputs" in row.node_message


def test_pending_configs_lists_dryers_that_did_not_apply_after_the_timeout(
        db: MetadataDB, store: SqliteStore) -> None:
    save(db, store, {"air_temp_warn_c": 52.0})
    with db.session() as session:
        service.record_config_event(session, SITE, "secador-02", "config_applied", 1,
                                    T0 + timedelta(seconds=2), "applied")
        assert service.pending_configs(session, T0 + timedelta(minutes=14), 900) == []
        late = service.pending_configs(session, T0 + timedelta(minutes=15), 900)
    assert [(p.node_id, p.desired_version, p.applied_version, p.pending_s, p.published,
             p.rejected) for p in late] == [("secador-01", 1, None, 900.0, False, False)]
    with db.session() as session:
        service.record_config_event(session, SITE, "secador-01", "config_applied", 1,
                                    T0 + timedelta(minutes=20), "applied")
        assert service.pending_configs(session, T0 + timedelta(minutes=30), 900) == []


def test_concurrent_saves_never_hand_out_a_version_twice(db: MetadataDB, store: SqliteStore
                                                         ) -> None:
    """Eight technicians (or gateways sharing one database) save the site profile at once."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def technician(number: int) -> None:
        try:
            start.wait()
            save(db, store, {"fan_min_speed_pct": 31.0 + number}, actor=f"tecnico-{number}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=technician, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with db.session() as session:
        versions = sorted(v.version for v in session.scalars(select(ThresholdProfileVersion)))
    assert versions == list(range(1, 9))
    assert [p.version for p in pushes(db, "secador-01")] == list(range(1, 9))


# --- pushing: retained configs, stages, re-publishing -----------------------------------------

@pytest.fixture
def context(tmp_path: Path, mosquitto: MosquittoBroker, metadata_url: str,
            clock: ManualClock) -> Iterator[GatewayContext]:
    with gateway_context(tmp_path / "gateway", mosquitto, metadata_url, clock) as built:
        with built.metadata.session() as session:
            session.add(Site(site_id=SITE, name="Demo", created_at=clock.now()))
            session.flush()
            session.add(Node(site_id=SITE, node_id="secador-01", first_seen_at=clock.now(),
                             last_seen_at=clock.now()))
        yield built


def retained_config(mosquitto: MosquittoBroker, node_id: str) -> NodeConfig:
    """What a node connecting now would receive on its config topic."""
    name = topic(SITE, node_id, Channel.CONFIG)
    with Subscriber(mosquitto, name, f"probe-{node_id}", persistent=False) as probe:
        wait_for(lambda: bool(probe.messages()), 10, f"retained config on {name}")
        [(_topic, payload, retained)] = probe.messages()
    assert retained
    config = decode(Channel.CONFIG, payload)
    assert isinstance(config, NodeConfig)
    return config


def change(context: GatewayContext, values: dict[str, Any], **scope: Any
           ) -> service.SaveOutcome:
    return service.update_profile(context, service.ProfileChange(
        site_id=SITE, values=values, **scope), "ana")


def test_a_saved_profile_is_published_retained_with_its_version(
        context: GatewayContext, mosquitto: MosquittoBroker) -> None:
    outcome = change(context, {"air_temp_warn_c": 52.0})
    assert outcome.published == [service.Published(SITE, "secador-01", 1, True)]
    config = retained_config(mosquitto, "secador-01")
    assert (config.version, config.issued_by, config.thresholds) == \
        (1, "ana", Thresholds(air_temp_warn_c=52.0))
    with context.metadata.session() as session:
        push = service.latest_push(session, SITE, "secador-01")
        assert push is not None and push.published_at == context.clock.now()


def test_what_the_broker_did_not_take_is_published_by_reconcile(
        context: GatewayContext, mosquitto: MosquittoBroker) -> None:
    mosquitto.stop()
    outcome = change(context, {"air_temp_warn_c": 52.0})
    assert outcome.published == [service.Published(SITE, "secador-01", 1, False)]
    with context.metadata.session() as session:
        [row] = service.rollout(session, context.clock.now())
        assert row.state is service.RolloutState.UNPUBLISHED
    mosquitto.start()
    wait_for(lambda: context.publisher.publish("probe/ping", b"", timeout=1), 30,
             "the publisher to reconnect")
    report = service.reconcile(context)
    assert (report.pushed, report.published) == \
        ([], [service.Published(SITE, "secador-01", 1, True)])
    assert retained_config(mosquitto, "secador-01").version == 1
    assert service.reconcile(context).published == []  # nothing left to do


def test_reconcile_follows_the_batch_stage_and_does_not_flap(
        context: GatewayContext, mosquitto: MosquittoBroker, clock: ManualClock) -> None:
    change(context, {"early_phase_max_air_temp_c": 42.0}, stage="early")
    change(context, {"fan_min_speed_pct": 40.0}, stage="main")
    assert service.reconcile(context).pushed == []  # managed, but no batch: nothing changes
    assert retained_config(mosquitto, "secador-01").thresholds == DEFAULTS

    with context.metadata.session() as session:
        session.add(Batch(batch_id="secador-01-lote-1", site_id=SITE, node_id="secador-01",
                          lot_code="L-1", started_at=clock.now(), started_by="luis",
                          initial_moisture_pct_wb=55.0))
    assert service.reconcile(context).pushed == [(SITE, "secador-01", 2)]
    assert retained_config(mosquitto, "secador-01").thresholds == \
        Thresholds(early_phase_max_air_temp_c=42.0)

    def moisture(pct: float, seq: int) -> None:
        context.store.write([StoredReading(site_id=SITE, node_id="secador-01", seq=seq,
                                           measured_at=clock.now(), mode="auto",
                                           fields={"bean_moisture_pct_wb": pct})])

    clock.advance(50 * 3600)
    moisture(36.0, 1)  # past 48 h but still wet: early
    assert service.reconcile(context).pushed == []
    moisture(34.0, 2)
    assert service.reconcile(context).pushed == [(SITE, "secador-01", 3)]
    assert retained_config(mosquitto, "secador-01").thresholds == \
        Thresholds(fan_min_speed_pct=40.0)
    moisture(35.5, 3)  # the reading bounces back over the limit: stays main
    assert service.reconcile(context).pushed == []

    with context.metadata.session() as session:
        batch = session.get(Batch, "secador-01-lote-1")
        assert batch is not None
        batch.ended_at = clock.now()
    assert service.reconcile(context).pushed == [(SITE, "secador-01", 4)]
    assert retained_config(mosquitto, "secador-01").thresholds == DEFAULTS
    with context.metadata.session() as session:
        reasons = [p.reason for p in session.scalars(
            select(NodeConfigPush).order_by(NodeConfigPush.version))]
    assert reasons[1:] == ["effective thresholds changed (early stage of batch "
                           "secador-01-lote-1)",
                           "effective thresholds changed (main stage of batch "
                           "secador-01-lote-1)",
                           "effective thresholds changed (no batch running)"]


def test_a_dryer_no_profile_reaches_is_left_on_its_own_config(context: GatewayContext) -> None:
    assert service.reconcile(context).pushed == []
    with context.metadata.session() as session:
        [row] = service.rollout(session, context.clock.now())
    assert (row.state, row.desired_version) == (service.RolloutState.UNMANAGED, None)


def test_a_node_ahead_of_the_database_is_sent_a_higher_version(
        context: GatewayContext, mosquitto: MosquittoBroker) -> None:
    change(context, {"air_temp_warn_c": 52.0})
    with context.metadata.session() as session:  # the node says it runs version 5
        service.record_config_event(session, SITE, "secador-01", "config_applied", 5,
                                    context.clock.now(), "config version 5 applied")
    assert service.reconcile(context).pushed == [(SITE, "secador-01", 6)]
    config = retained_config(mosquitto, "secador-01")
    assert (config.version, config.thresholds.air_temp_warn_c) == (6, 52.0)


def test_the_retained_payload_is_the_contracts_config_message(
        context: GatewayContext, mosquitto: MosquittoBroker) -> None:
    change(context, {"night_start_hour": 19.0}, node_id="secador-01")
    name = topic(SITE, "secador-01", Channel.CONFIG)
    with Subscriber(mosquitto, name, "probe-raw", persistent=False) as probe:
        wait_for(lambda: bool(probe.messages()), 10, "retained config")
        payload = json.loads(probe.payloads()[0])
    assert payload["schema_version"] == 1 and payload["version"] == 1
    assert payload["thresholds"]["night_start_hour"] == 19
    assert payload["issued_at"] == "2026-03-01T12:00:00Z"
