"""Threshold profiles: versioned overrides per site, dryer and batch stage, pushed to the nodes
as retained configs, and which version each node has applied.

- **Profiles** (``save_profile``): each save is a new, immutable version of one profile
  (site-wide or one dryer, every stage or one stage) storing only the overridden fields. It is
  refused (ConfigError, one line) if any affected dryer's effective thresholds would be
  invalid in any stage. The audit entry is written in the same transaction.
- **Pushes** (``push_if_changed``): when a dryer's effective thresholds differ from the last
  config it was sent, a ``NodeConfigPush`` with the dryer's next version is recorded; it is
  published retained (QoS 1) only AFTER the transaction commits (``publish_latest``), so a
  node can never acknowledge a version the database does not have; ``published_at`` is set
  once the broker acknowledged. ``reconcile`` (run periodically and on batch start/end)
  pushes what changed with the batch stage and publishes again what the broker did not take.
- **Acks** (``record_config_event``, called by the node registry for config_applied /
  config_rejected events): which version each node has applied; ``rollout`` and
  ``pending_configs`` show who lags behind.

Versions per node are monotonic and allocated under a row lock on the node (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite serialises writers), with the primary key as the last guard,
so gateways sharing one PostgreSQL never hand out the same version twice. A new version is
always above what the node reports having applied, because the node ignores older ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cacao_dryer.contract import Channel, EventType, Identifier, NodeConfig, Thresholds
from cacao_dryer.contract import encode as encode_message
from cacao_dryer.contract import topic as contract_topic
from cacao_dryer.errors import ConfigError, NotFoundError
from gateway import audit
from gateway.context import GatewayContext
from gateway.metadata.models import (
    Batch,
    Node,
    NodeConfigPush,
    Site,
    ThresholdProfile,
    ThresholdProfileVersion,
)
from gateway.threshold_rules import (
    ANY,
    Profile,
    ProfileStage,
    Resolved,
    Scope,
    Stage,
    batch_stage,
    changes,
    check_overrides,
    overrides_diff,
    resolve,
)
from gateway.timeseries import StoreUnavailable, TimeSeriesStore

log = logging.getLogger("cacao_dryer.gateway")

ACTION = "thresholds.update"
GATEWAY_ACTOR = "gateway"          # issued_by of pushes the gateway makes on its own
PUBLISH_TIMEOUT_S = 3.0            # per config; a broker that does not answer is retried later
# A node online applies a config within a second or two; one that has not after this long is
# offline or refusing it. Default for the rollout view and the config_not_applied alert.
DEFAULT_APPLY_TIMEOUT_S = 15 * 60.0
MAX_REASON = 200                   # NodeConfigPush.reason
MAX_NODE_MESSAGE = 500             # NodeConfigPush.node_message


# --- requests and results ---------------------------------------------------------------------

class ProfileChange(BaseModel):
    """A new version of one profile: ``values`` REPLACES the profile's overrides (omit a field
    to let the layer below decide again; ``{}`` clears the profile)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    site_id: Identifier
    node_id: Identifier | None = Field(None, description="One dryer; omitted = every dryer")
    stage: ProfileStage | None = Field(
        None, description="early / main: only while a batch is in that stage; omitted = always")
    values: dict[str, Any] = Field(
        description="Threshold field → value, in the field's unit (GET /api/thresholds/schema)",
        examples=[{"air_temp_warn_c": 52.0, "target_moisture_pct_wb": 7.5}])
    comment: str = Field("", max_length=500, description="Why — kept in the history and audit")

    @property
    def scope(self) -> Scope:
        return Scope(self.site_id, self.node_id or "", self.stage or "")


class RolloutState(StrEnum):
    UNMANAGED = "unmanaged"      # no profile reaches this dryer: it runs its own config
    UNPUBLISHED = "unpublished"  # recorded, the broker has not taken it yet (retried)
    PENDING = "pending"          # published, the node has not acknowledged it yet
    APPLIED = "applied"          # the node runs the latest config
    REJECTED = "rejected"        # the node refused the latest config (node_message says why)


@dataclass(frozen=True)
class SaveResult:
    profile: ThresholdProfile
    version: ThresholdProfileVersion
    created: bool                       # False: same values as the newest version, nothing done
    pushes: list[NodeConfigPush] = field(default_factory=list)


@dataclass(frozen=True)
class Published:
    site_id: str
    node_id: str
    version: int
    delivered_to_broker: bool


@dataclass(frozen=True)
class SaveOutcome:
    result: SaveResult
    published: list[Published]


@dataclass(frozen=True)
class NodeRollout:
    site_id: str
    node_id: str
    node_state: str
    state: RolloutState
    desired_version: int | None
    issued_at: datetime | None
    issued_by: str | None
    reason: str | None
    stage: str | None                   # batch stage the newest config was made for
    batch_id: str | None
    published_at: datetime | None
    applied_version: int | None
    applied_at: datetime | None
    pending_s: float | None             # since the latest push was issued, while not applied
    overdue: bool                       # pending longer than the timeout
    rejected_at: datetime | None
    node_message: str | None


@dataclass(frozen=True)
class PendingConfig:
    """A node that has not applied its latest config after the timeout (an alert)."""

    site_id: str
    node_id: str
    desired_version: int
    applied_version: int | None
    issued_at: datetime
    pending_s: float
    published: bool
    rejected: bool
    node_message: str | None


@dataclass(frozen=True)
class NodePlan:
    """What a dryer should run now, and whether that needs a new push."""

    site_id: str
    node_id: str
    managed: bool                 # some profile reaches this dryer, or it was sent one before
    stage: Stage | None
    batch_id: str | None
    resolved: Resolved
    latest: NodeConfigPush | None
    reported_version: int         # the highest version the node says it has applied
    reason: str | None            # why a push is needed; None = it is not

    @property
    def needs_push(self) -> bool:
        return self.reason is not None


@dataclass
class ReconcileReport:
    pushed: list[tuple[str, str, int]] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


# --- profiles ---------------------------------------------------------------------------------

def site_profiles(session: Session, site_id: str) -> dict[Scope, Profile]:
    """The newest version of every profile of a site."""
    newest = (select(ThresholdProfileVersion.profile_id,
                     func.max(ThresholdProfileVersion.version).label("version"))
              .group_by(ThresholdProfileVersion.profile_id).subquery())
    rows = session.execute(
        select(ThresholdProfile.site_id, ThresholdProfile.node_id, ThresholdProfile.stage,
               ThresholdProfileVersion.version, ThresholdProfileVersion.values)
        .join(ThresholdProfileVersion,
              ThresholdProfileVersion.profile_id == ThresholdProfile.profile_id)
        .join(newest, and_(newest.c.profile_id == ThresholdProfileVersion.profile_id,
                           newest.c.version == ThresholdProfileVersion.version))
        .where(ThresholdProfile.site_id == site_id))
    profiles: dict[Scope, Profile] = {}
    for site, node, stage, version, values in rows:
        scope = Scope(site, node, stage)
        profiles[scope] = Profile(scope, version, values)
    return profiles


def list_profiles(session: Session, site_id: str | None = None
                  ) -> list[tuple[ThresholdProfile, ThresholdProfileVersion | None]]:
    """Every profile with its newest version, by site, dryer ("" first) and stage."""
    query = select(ThresholdProfile).order_by(ThresholdProfile.site_id,
                                              ThresholdProfile.node_id, ThresholdProfile.stage)
    if site_id is not None:
        query = query.where(ThresholdProfile.site_id == site_id)
    return [(profile, profile.versions[-1] if profile.versions else None)
            for profile in session.scalars(query)]


def get_profile(session: Session, profile_id: int) -> ThresholdProfile:
    profile = session.get(ThresholdProfile, profile_id)
    if profile is None:
        raise NotFoundError(f"threshold profile {profile_id} does not exist")
    return profile


def save_profile(session: Session, store: TimeSeriesStore, change: ProfileChange, actor: str,
                 now: datetime) -> SaveResult:
    """Record a new version of the profile ``change`` names, audit it, and record a push for
    every affected dryer whose effective thresholds change. Publishing is the caller's job,
    after commit (``update_profile`` does both).

    NotFoundError for an unknown site or dryer; ConfigError (one line) for an unknown field,
    a value out of range, or a combination that would be invalid for any affected dryer."""
    scope = change.scope
    if session.get(Site, scope.site_id) is None:
        raise NotFoundError(f"site {scope.site_id} is not known to this gateway")
    if scope.node_id and session.get(Node, (scope.site_id, scope.node_id)) is None:
        raise NotFoundError(f"node {scope.site_id}/{scope.node_id} is not known to this gateway")
    values = check_overrides(change.values)

    profile = _locked_profile(session, scope, now)
    previous = session.scalar(select(ThresholdProfileVersion)
                              .where(ThresholdProfileVersion.profile_id == profile.profile_id)
                              .order_by(ThresholdProfileVersion.version.desc()).limit(1)
                              .execution_options(populate_existing=True))
    if previous is not None and previous.values == values:
        return SaveResult(profile, previous, created=False)
    number = previous.version + 1 if previous is not None else 1

    affected = _affected_nodes(session, scope)
    for node_id in affected:
        _lock_node(session, scope.site_id, node_id)
    old_profiles = site_profiles(session, scope.site_id)
    new_profiles = {**old_profiles, scope: Profile(scope, number, values)}
    for node_id in [*affected, *([ANY] if not scope.node_id else [])]:
        for stage in (None, Stage.EARLY, Stage.MAIN):
            resolve(new_profiles, scope.site_id, node_id, stage)  # raises ConfigError

    effective_changes: dict[str, dict[str, list[Any]]] = {}
    for node_id in affected:
        node = get_node(session, scope.site_id, node_id)
        before = plan_node(session, store, node, old_profiles, now).resolved.thresholds
        after = plan_node(session, store, node, new_profiles, now).resolved.thresholds
        if diff := changes(before, after):
            effective_changes[node_id] = diff

    version = ThresholdProfileVersion(profile_id=profile.profile_id, version=number,
                                      values=values, created_at=now, created_by=actor,
                                      comment=" ".join(change.comment.split()))
    session.add(version)
    session.flush()
    audit.record(
        session, actor, ACTION, scope.target,
        {"version": previous.version, "values": previous.values} if previous else None,
        {"version": number, "values": values,
         "changes": overrides_diff(previous.values if previous else {}, values),
         "effective_changes": effective_changes},
        change.comment or f"{scope.layer} profile version {number}", at=now)

    reason = f"{scope.layer} profile {scope.target} v{number} saved by {actor}"
    pushes = [push for node_id in affected
              if (push := push_if_changed(session, store, scope.site_id, node_id, now,
                                          issued_by=actor, reason=reason)) is not None]
    return SaveResult(profile, version, created=True, pushes=pushes)


def update_profile(context: GatewayContext, change: ProfileChange, actor: str) -> SaveOutcome:
    """``save_profile`` in its own transaction, then publish each new push (after commit)."""
    now = context.clock.now()
    with context.metadata.session() as session:
        result = save_profile(session, context.store, change, actor, now)
    published = publish_all(context, [(p.site_id, p.node_id) for p in result.pushes])
    return SaveOutcome(result, published)


def _locked_profile(session: Session, scope: Scope, now: datetime) -> ThresholdProfile:
    """The profile row of ``scope`` (created if new), locked until the transaction ends, so
    concurrent saves of one profile get versions n and n+1, never n twice."""
    session.execute(_insert(session, ThresholdProfile).values(
        site_id=scope.site_id, node_id=scope.node_id, stage=scope.stage, created_at=now,
    ).on_conflict_do_nothing())
    match = (ThresholdProfile.site_id == scope.site_id, ThresholdProfile.node_id == scope.node_id,
             ThresholdProfile.stage == scope.stage)
    if _dialect(session) == "postgresql":
        query = select(ThresholdProfile).where(*match).with_for_update()
    else:  # the INSERT above already holds SQLite's write lock
        query = select(ThresholdProfile).where(*match)
    profile = session.scalar(query.execution_options(populate_existing=True))
    assert profile is not None  # inserted above or by a concurrent transaction; never deleted
    return profile


def _affected_nodes(session: Session, scope: Scope) -> list[str]:
    if scope.node_id:
        return [scope.node_id]
    return list(session.scalars(select(Node.node_id).where(Node.site_id == scope.site_id)
                                .order_by(Node.node_id)))


# --- what a dryer should run ------------------------------------------------------------------

def plan_node(session: Session, store: TimeSeriesStore, node: Node,
              profiles: dict[Scope, Profile], now: datetime) -> NodePlan:
    """The dryer's effective thresholds now (its batch stage included) and whether they need a
    new push: never sent although a profile reaches it, different from the last push, or the
    node runs a version newer than the last push (a restored database)."""
    site_id, node_id = node.site_id, node.node_id
    latest = _latest_push(session, site_id, node_id)
    base = resolve(profiles, site_id, node_id, None)
    batch = session.scalar(select(Batch).where(Batch.site_id == site_id,
                                               Batch.node_id == node_id,
                                               Batch.ended_at.is_(None))
                           .execution_options(populate_existing=True))
    stage: Stage | None = None
    resolved = base
    if batch is not None:
        previous = (Stage(latest.stage) if latest is not None and latest.stage in set(Stage)
                    and latest.batch_id == batch.batch_id else None)
        stage = batch_stage(batch.started_at, now, _batch_moisture(store, batch),
                            base.thresholds, previous)
        assert stage is not None
        resolved = resolve(profiles, site_id, node_id, stage)
    managed = latest is not None or any(scope.node_id in ("", node_id) for scope in profiles)
    reported = _reported_version(node)
    reason: str | None = None
    when = (f"{stage.value} stage of batch {batch.batch_id}" if stage and batch
            else "no batch running")
    if managed and latest is None:
        reason = f"first config for this dryer ({when})"
    elif latest is not None and reported > latest.version:
        reason = (f"node runs version {reported}, newer than the last push {latest.version}: "
                  "sending a higher one")
    elif latest is not None and pushed_thresholds(latest) != resolved.thresholds:
        reason = f"effective thresholds changed ({when})"
    return NodePlan(site_id, node_id, managed, stage, batch.batch_id if batch else None,
                    resolved, latest, reported, reason)


def effective_thresholds(session: Session, store: TimeSeriesStore, site_id: str, node_id: str,
                         now: datetime) -> Thresholds:
    """The thresholds a dryer should be running now (built-in defaults if no profile)."""
    node = get_node(session, site_id, node_id)
    return plan_node(session, store, node, site_profiles(session, site_id), now
                     ).resolved.thresholds


def _batch_moisture(store: TimeSeriesStore, batch: Batch) -> float | None:
    """Bean moisture of the running batch: the newest reading taken during it, else the
    moisture measured at loading. Unknown while the readings store is down (the stage then
    follows the batch's age)."""
    try:
        latest = store.latest(batch.site_id, batch.node_id)
    except StoreUnavailable as exc:
        log.warning("batch stage of %s/%s from its age only: %s", batch.site_id, batch.node_id,
                    exc)
        return None
    if latest is not None and latest.measured_at >= batch.started_at:
        value = latest.fields.get("bean_moisture_pct_wb")
        if value is not None:
            return value
    return batch.initial_moisture_pct_wb


def _reported_version(node: Node) -> int:
    reported = (node.status or {}).get("config_version")
    status_version = reported if isinstance(reported, int) and not isinstance(reported, bool) \
        else 0
    return max(node.applied_config_version or 0, status_version)


def pushed_thresholds(push: NodeConfigPush) -> Thresholds | None:
    try:
        return Thresholds.model_validate(push.thresholds)
    except ValidationError:  # sent by an older gateway with other fields: differs
        return None


# --- pushes -----------------------------------------------------------------------------------

def push_if_changed(session: Session, store: TimeSeriesStore, site_id: str, node_id: str,
                    now: datetime, *, issued_by: str = GATEWAY_ACTOR,
                    reason: str | None = None) -> NodeConfigPush | None:
    """Record the dryer's next config version if its effective thresholds need one (under a
    lock on the node, so concurrent gateways agree). Not published yet: ``publish_latest``
    after commit. ConfigError if the dryer's effective thresholds are invalid."""
    plan = plan_node(session, store, get_node(session, site_id, node_id),
                     site_profiles(session, site_id), now)
    if not plan.needs_push:
        return None  # the common case: decided without taking a lock
    _lock_node(session, site_id, node_id)
    plan = plan_node(session, store, get_node(session, site_id, node_id),
                     site_profiles(session, site_id), now)
    if not plan.needs_push:
        return None  # another gateway or thread pushed it meanwhile
    highest = session.scalar(select(func.max(NodeConfigPush.version)).where(
        NodeConfigPush.site_id == site_id, NodeConfigPush.node_id == node_id)) or 0
    push = NodeConfigPush(
        site_id=site_id, node_id=node_id, version=max(highest, plan.reported_version) + 1,
        thresholds=plan.resolved.thresholds.model_dump(mode="json"),
        reason=(reason or plan.reason or "")[:MAX_REASON], issued_at=now,
        issued_by=issued_by[:100], stage=plan.stage.value if plan.stage else None,
        batch_id=plan.batch_id)
    session.add(push)
    session.flush()
    log.info("config version %d for %s/%s: %s", push.version, site_id, node_id, push.reason)
    return push


def publish_latest(context: GatewayContext, site_id: str, node_id: str) -> Published | None:
    """Publish the dryer's newest config, retained; record ``published_at`` once the broker
    acknowledged it. If a newer one was recorded meanwhile (another request, another
    gateway), publish that too, so the retained message always ends on the newest."""
    for _attempt in range(5):
        with context.metadata.session() as session:
            push = _latest_push(session, site_id, node_id)
            if push is None:
                return None
            version = push.version
            try:
                payload = encode_message(NodeConfig(
                    version=version, issued_at=push.issued_at, issued_by=push.issued_by,
                    thresholds=Thresholds.model_validate(push.thresholds)))
            except ValidationError as exc:  # recorded by a gateway with other fields
                log.error("config version %d for %s/%s cannot be sent: %s", version,
                          site_id, node_id, " ".join(str(exc).split())[:300])
                return Published(site_id, node_id, version, False)
        delivered = context.publisher.publish(
            contract_topic(site_id, node_id, Channel.CONFIG), payload, retain=True,
            timeout=PUBLISH_TIMEOUT_S)
        with context.metadata.session() as session:
            if delivered:
                session.execute(update(NodeConfigPush).where(
                    NodeConfigPush.site_id == site_id, NodeConfigPush.node_id == node_id,
                    NodeConfigPush.version == version, NodeConfigPush.published_at.is_(None),
                ).values(published_at=context.clock.now())
                    .execution_options(synchronize_session=False))
            newest = session.scalar(select(func.max(NodeConfigPush.version)).where(
                NodeConfigPush.site_id == site_id, NodeConfigPush.node_id == node_id))
        if not delivered:
            log.warning("config version %d for %s/%s not taken by the broker; retried later",
                        version, site_id, node_id)
        if newest == version:
            break
    return Published(site_id, node_id, version, delivered)


def publish_all(context: GatewayContext, keys: Iterable[tuple[str, str]]) -> list[Published]:
    """``publish_latest`` for each dryer; after the first the broker does not take, the rest
    are left for ``reconcile`` rather than waiting out a timeout for each."""
    results: list[Published] = []
    broker_down = False
    for site_id, node_id in keys:
        if broker_down:
            with context.metadata.session() as session:
                push = _latest_push(session, site_id, node_id)
            if push is not None:
                results.append(Published(site_id, node_id, push.version, False))
            continue
        outcome = publish_latest(context, site_id, node_id)
        if outcome is not None:
            results.append(outcome)
            broker_down = not outcome.delivered_to_broker
    return results


def reconcile(context: GatewayContext) -> ReconcileReport:
    """Bring every dryer of this gateway's sites to its effective thresholds: record a push
    where they changed (batch started or ended, early → main stage, a new dryer under a site
    profile, a node ahead of the database) and publish every newest push the broker has not
    acknowledged yet. Safe to run on several gateways at once and as often as wanted."""
    report = ReconcileReport()
    now = context.clock.now()
    with context.metadata.session() as session:
        keys = [(site, node) for site, node in session.execute(
            _served(select(Node.site_id, Node.node_id), context)
            .order_by(Node.site_id, Node.node_id))]
    for site_id, node_id in keys:
        try:
            with context.metadata.session() as session:
                push = push_if_changed(session, context.store, site_id, node_id, now)
                if push is not None:
                    report.pushed.append((site_id, node_id, push.version))
        except ConfigError as exc:
            log.error("%s", exc)
            report.invalid.append(str(exc))
    with context.metadata.session() as session:
        newest = _newest_pushes_query()
        unpublished = [(site, node) for site, node in session.execute(
            _served(select(NodeConfigPush.site_id, NodeConfigPush.node_id)
                    .join(newest, and_(newest.c.site_id == NodeConfigPush.site_id,
                                       newest.c.node_id == NodeConfigPush.node_id,
                                       newest.c.version == NodeConfigPush.version))
                    .where(NodeConfigPush.published_at.is_(None)), context, NodeConfigPush)
            .order_by(NodeConfigPush.site_id, NodeConfigPush.node_id))]
    report.published = publish_all(context, unpublished)
    return report


def _served(query: Any, context: GatewayContext, model: Any = Node) -> Any:
    sites = context.settings.sites
    return query if "+" in sites else query.where(model.site_id.in_(sites))


# --- acknowledgements -------------------------------------------------------------------------

def record_config_event(session: Session, site_id: str, node_id: str, event_type: str,
                        version: int | None, at: datetime, message: str) -> bool:
    """A node's ``config_applied`` / ``config_rejected`` event (from the node registry, in its
    transaction). Idempotent: the node re-acknowledges on every reconnect and replays its
    outbox. A late ack of an older version marks that push applied but never lowers the
    node's applied version. Returns whether anything changed."""
    if version is None or version < 1:
        return False  # an unreadable config: the event itself is kept by the registry
    # Conditional UPDATEs, not read-modify-write: two gateways recording acks of one node at
    # once (shared subscriptions) must not lower its applied version.
    this_push = (NodeConfigPush.site_id == site_id, NodeConfigPush.node_id == node_id,
                 NodeConfigPush.version == version)
    changed = False
    if event_type == EventType.CONFIG_APPLIED.value:
        changed |= _updated(session, update(NodeConfigPush).where(
            *this_push, NodeConfigPush.applied_at.is_(None)).values(applied_at=at))
        changed |= _updated(session, update(Node).where(
            Node.site_id == site_id, Node.node_id == node_id,
            or_(Node.applied_config_version.is_(None), Node.applied_config_version < version),
        ).values(applied_config_version=version, applied_config_at=at))
    elif event_type == EventType.CONFIG_REJECTED.value:
        changed |= _updated(session, update(NodeConfigPush).where(
            *this_push, NodeConfigPush.applied_at.is_(None),
            NodeConfigPush.rejected_at.is_(None),
        ).values(rejected_at=at, node_message=" ".join(message.split())[:MAX_NODE_MESSAGE]))
    return changed


def _updated(session: Session, statement: Any) -> bool:
    result = session.execute(statement.execution_options(synchronize_session="fetch"))
    return bool(getattr(result, "rowcount", 0))


# --- who runs what ----------------------------------------------------------------------------

def rollout(session: Session, now: datetime, timeout_s: float = DEFAULT_APPLY_TIMEOUT_S,
            site_id: str | None = None, site_ids: Sequence[str] | None = None
            ) -> list[NodeRollout]:
    """Per dryer: the newest config sent (desired), the version applied, and the state."""
    newest = _newest_pushes_query()
    query = (select(Node, NodeConfigPush)
             .outerjoin(newest, and_(newest.c.site_id == Node.site_id,
                                     newest.c.node_id == Node.node_id))
             .outerjoin(NodeConfigPush, and_(NodeConfigPush.site_id == Node.site_id,
                                             NodeConfigPush.node_id == Node.node_id,
                                             NodeConfigPush.version == newest.c.version))
             .order_by(Node.site_id, Node.node_id))
    if site_id is not None:
        query = query.where(Node.site_id == site_id)
    if site_ids is not None:
        query = query.where(Node.site_id.in_(list(site_ids)))
    return [node_rollout(node, push, now, timeout_s) for node, push in session.execute(query)]


def node_rollout(node: Node, latest: NodeConfigPush | None, now: datetime,
                 timeout_s: float = DEFAULT_APPLY_TIMEOUT_S) -> NodeRollout:
    state = rollout_state(latest, node.applied_config_version)
    waiting = latest is not None and state is not RolloutState.APPLIED
    pending_s = (now - latest.issued_at).total_seconds() if waiting and latest else None
    return NodeRollout(
        site_id=node.site_id, node_id=node.node_id, node_state=node.state, state=state,
        desired_version=latest.version if latest else None,
        issued_at=latest.issued_at if latest else None,
        issued_by=latest.issued_by if latest else None,
        reason=latest.reason if latest else None,
        stage=latest.stage if latest else None, batch_id=latest.batch_id if latest else None,
        published_at=latest.published_at if latest else None,
        applied_version=node.applied_config_version, applied_at=node.applied_config_at,
        pending_s=pending_s, overdue=pending_s is not None and pending_s >= timeout_s,
        rejected_at=latest.rejected_at if latest else None,
        node_message=latest.node_message if latest else None)


def rollout_state(latest: NodeConfigPush | None, applied_version: int | None) -> RolloutState:
    if latest is None:
        return RolloutState.UNMANAGED
    if applied_version == latest.version:
        return RolloutState.APPLIED
    if latest.rejected_at is not None:
        return RolloutState.REJECTED
    if latest.published_at is None:
        return RolloutState.UNPUBLISHED
    return RolloutState.PENDING


def pending_configs(session: Session, now: datetime, timeout_s: float,
                    site_ids: Sequence[str] | None = None) -> list[PendingConfig]:
    """Dryers that have not applied their newest config ``timeout_s`` after it was issued
    (offline, refusing it, or never reached): what the config_not_applied alert is about."""
    pending: list[PendingConfig] = []
    for row in rollout(session, now, timeout_s, site_ids=site_ids):
        if not row.overdue or row.desired_version is None or row.issued_at is None:
            continue
        pending.append(PendingConfig(
            site_id=row.site_id, node_id=row.node_id, desired_version=row.desired_version,
            applied_version=row.applied_version, issued_at=row.issued_at,
            pending_s=row.pending_s or 0.0, published=row.published_at is not None,
            rejected=row.state is RolloutState.REJECTED, node_message=row.node_message))
    return pending


def latest_push(session: Session, site_id: str, node_id: str) -> NodeConfigPush | None:
    return _latest_push(session, site_id, node_id)


# --- helpers ----------------------------------------------------------------------------------

def _latest_push(session: Session, site_id: str, node_id: str) -> NodeConfigPush | None:
    return session.scalar(select(NodeConfigPush)
                          .where(NodeConfigPush.site_id == site_id,
                                 NodeConfigPush.node_id == node_id)
                          .order_by(NodeConfigPush.version.desc()).limit(1)
                          .execution_options(populate_existing=True))


def _newest_pushes_query() -> Any:
    return (select(NodeConfigPush.site_id, NodeConfigPush.node_id,
                   func.max(NodeConfigPush.version).label("version"))
            .group_by(NodeConfigPush.site_id, NodeConfigPush.node_id).subquery())


def get_node(session: Session, site_id: str, node_id: str) -> Node:
    node = session.get(Node, (site_id, node_id), populate_existing=True)
    if node is None:
        raise NotFoundError(f"node {site_id}/{node_id} is not known to this gateway")
    return node


def _lock_node(session: Session, site_id: str, node_id: str) -> None:
    """Hold the node's row until the transaction ends, so version allocation for one node is
    serialised across threads and gateways: SELECT … FOR UPDATE on PostgreSQL; on SQLite a
    no-op UPDATE takes the database's single write lock."""
    match = (Node.site_id == site_id, Node.node_id == node_id)
    if _dialect(session) == "postgresql":
        session.execute(select(Node.node_id).where(*match).with_for_update())
    else:
        session.execute(update(Node).where(*match).values(state=Node.state)
                        .execution_options(synchronize_session=False))


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _insert(session: Session, model: type[Any]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the session's database."""
    insert = postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert
    return insert(model)
