"""Threshold profiles: what each field means, the profiles and their versions, saving a new
version (pushed to the affected dryers), a dryer's effective thresholds, and which dryer runs
which config version. Rules: gateway/thresholds.py, docs/thresholds.md."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cacao_dryer.contract import Thresholds
from gateway import thresholds as service
from gateway.api.deps import ContextDep, OperatorDep, SessionDep, TechnicianDep
from gateway.metadata.models import ThresholdProfile, ThresholdProfileVersion
from gateway.threshold_rules import DEFAULT_LAYER, FIELDS, Scope, Stage

router = APIRouter(prefix="/api", tags=["thresholds"])


# --- response models --------------------------------------------------------------------------

class ThresholdField(BaseModel):
    name: str
    type: str = Field(description="number or integer")
    unit: str
    minimum: float
    maximum: float
    default: float
    description: str
    source: str | None = Field(description="Where the number comes from (docs/references.md)")


class ThresholdSchema(BaseModel):
    fields: list[ThresholdField]
    layers: list[str] = Field(description="Layer order, lowest precedence first")
    stages: list[str]


class ProfileVersionOut(BaseModel):
    version: int
    values: dict[str, Any] = Field(description="Only the fields this profile overrides")
    created_at: datetime
    created_by: str
    comment: str

    @classmethod
    def of(cls, row: ThresholdProfileVersion) -> ProfileVersionOut:
        return cls(version=row.version, values=row.values, created_at=row.created_at,
                   created_by=row.created_by, comment=row.comment)


class ProfileOut(BaseModel):
    profile_id: int
    site_id: str
    node_id: str | None = Field(description="null = every dryer of the site")
    stage: str | None = Field(description="early / main; null = every stage")
    layer: str = Field(description="site, site+early, dryer, dryer+main …")
    target: str = Field(description="site/node/stage with * for every (the audit target)")
    created_at: datetime
    latest: ProfileVersionOut | None

    @classmethod
    def of(cls, profile: ThresholdProfile, latest: ThresholdProfileVersion | None
           ) -> ProfileOut:
        scope = Scope(profile.site_id, profile.node_id, profile.stage)  # type: ignore[arg-type]
        return cls(profile_id=profile.profile_id, site_id=profile.site_id,
                   node_id=profile.node_id or None, stage=profile.stage or None,
                   layer=scope.layer, target=scope.target, created_at=profile.created_at,
                   latest=ProfileVersionOut.of(latest) if latest else None)


class ProfileDetail(ProfileOut):
    versions: list[ProfileVersionOut] = Field(description="Every saved version, newest first")


class PushOut(BaseModel):
    site_id: str
    node_id: str
    version: int
    delivered_to_broker: bool = Field(description="False: the broker was unreachable; the "
                                      "gateway publishes it again by itself")


class ProfileSaved(BaseModel):
    profile: ProfileOut
    created: bool = Field(description="False: same values as the newest version; nothing done")
    pushes: list[PushOut] = Field(description="Dryers whose effective thresholds changed")


class RolloutOut(BaseModel):
    site_id: str
    node_id: str
    node_state: str = Field(description="online / offline / unknown")
    state: service.RolloutState
    desired_version: int | None = Field(description="Newest config sent to the dryer")
    issued_at: datetime | None
    issued_by: str | None
    reason: str | None
    stage: str | None = Field(description="Batch stage the newest config was made for "
                              "(early / main); null = no batch")
    batch_id: str | None
    published_at: datetime | None = Field(description="When the broker took it (retained)")
    applied_version: int | None = Field(description="Newest version the node acknowledged")
    applied_at: datetime | None
    pending_s: float | None = Field(description="Since the newest config was issued, while "
                                    "it is not applied [s]")
    overdue: bool = Field(description="Pending longer than timeout_s")
    rejected_at: datetime | None
    node_message: str | None = Field(description="Why the node rejected it")

    @classmethod
    def of(cls, row: service.NodeRollout) -> RolloutOut:
        return cls(**asdict(row))


class EffectiveValue(BaseModel):
    value: float
    unit: str
    source: str = Field(description="The layer that set it: default, site, site+early, "
                        "dryer, dryer+main …")


class NodeThresholds(BaseModel):
    site_id: str
    node_id: str
    managed: bool = Field(description="False: no profile reaches this dryer; it runs its "
                          "own configured thresholds and is sent nothing")
    stage: Stage | None = Field(description="Stage of the running batch; null = no batch")
    batch_id: str | None
    values: dict[str, EffectiveValue]
    layers: dict[str, int] = Field(description="Profile layers in force → their version")
    in_sync: bool = Field(description="The newest config sent equals these values (else the "
                          "gateway sends a new one at its next reconcile)")
    rollout: RolloutOut


# --- the schema of the fields -----------------------------------------------------------------

def _unit(description: str, extra: dict[str, Any]) -> str:
    if "unit" in extra:
        return str(extra["unit"])
    found = re.search(r"\[([^\]]+)\]\s*$", description)
    return found.group(1) if found else ""


def _bound(metadata: list[Any], name: str) -> float:
    return next(float(getattr(m, name)) for m in metadata if hasattr(m, name))


def threshold_fields() -> list[ThresholdField]:
    fields = []
    for name in FIELDS:
        info = Thresholds.model_fields[name]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        description = info.description or ""
        fields.append(ThresholdField(
            name=name, type="integer" if info.annotation is int else "number",
            unit=_unit(description, extra), minimum=_bound(info.metadata, "ge"),
            maximum=_bound(info.metadata, "le"), default=info.default,
            description=re.sub(r"\s*\[[^\]]+\]\s*$", "", description),
            source=str(extra["source"]) if "source" in extra else None))
    return fields


UNITS = {f.name: f.unit for f in threshold_fields()}


@router.get("/thresholds/schema", response_model=ThresholdSchema,
            summary="Every threshold: unit, range, default, meaning, source")
def schema(_actor: OperatorDep) -> ThresholdSchema:
    return ThresholdSchema(
        fields=threshold_fields(),
        layers=[DEFAULT_LAYER, "site", "site+<stage>", "dryer", "dryer+<stage>"],
        stages=[stage.value for stage in Stage])


# --- profiles ---------------------------------------------------------------------------------

@router.get("/thresholds/profiles", response_model=list[ProfileOut],
            summary="Every profile with its newest version")
def list_profiles(session: SessionDep, _actor: OperatorDep,
                  site_id: str | None = None) -> list[ProfileOut]:
    return [ProfileOut.of(profile, latest)
            for profile, latest in service.list_profiles(session, site_id)]


@router.get("/thresholds/profiles/{profile_id}", response_model=ProfileDetail,
            summary="One profile and every version of it")
def profile_detail(profile_id: int, session: SessionDep, _actor: OperatorDep) -> ProfileDetail:
    profile = service.get_profile(session, profile_id)
    latest = profile.versions[-1] if profile.versions else None
    return ProfileDetail(**ProfileOut.of(profile, latest).model_dump(),
                         versions=[ProfileVersionOut.of(v) for v in reversed(profile.versions)])


@router.put("/thresholds/profiles", response_model=ProfileSaved,
            summary="Save a new version of a profile and push it to the affected dryers")
def save_profile(change: service.ProfileChange, context: ContextDep,
                 actor: TechnicianDep) -> ProfileSaved:
    outcome = service.update_profile(context, change, actor.username)
    result = outcome.result
    return ProfileSaved(
        profile=ProfileOut.of(result.profile, result.version), created=result.created,
        pushes=[PushOut(site_id=p.site_id, node_id=p.node_id, version=p.version,
                        delivered_to_broker=p.delivered_to_broker) for p in outcome.published])


# --- dryers -----------------------------------------------------------------------------------

TimeoutS = Annotated[float, Query(gt=0, le=7 * 24 * 3600,
                                  description="Pending longer than this is overdue [s]")]


@router.get("/nodes/{site_id}/{node_id}/thresholds", response_model=NodeThresholds,
            summary="A dryer's effective thresholds, which layer set each, versions")
def node_thresholds(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
                    _actor: OperatorDep,
                    timeout_s: TimeoutS = service.DEFAULT_APPLY_TIMEOUT_S) -> NodeThresholds:
    now = context.clock.now()
    node = service.get_node(session, site_id, node_id)
    plan = service.plan_node(session, context.store, node,
                             service.site_profiles(session, site_id), now)
    values = plan.resolved.thresholds.model_dump()
    latest = plan.latest
    return NodeThresholds(
        site_id=site_id, node_id=node_id, managed=plan.managed, stage=plan.stage,
        batch_id=plan.batch_id,
        values={name: EffectiveValue(value=values[name], unit=UNITS[name],
                                     source=plan.resolved.sources[name]) for name in FIELDS},
        layers=plan.resolved.layers,
        in_sync=not plan.needs_push,
        rollout=RolloutOut.of(service.node_rollout(node, latest, now, timeout_s)))


@router.get("/thresholds/rollout", response_model=list[RolloutOut],
            summary="Which dryer runs which config version; pending and rejected ones")
def rollout(session: SessionDep, context: ContextDep, _actor: OperatorDep,
            site_id: str | None = None,
            timeout_s: TimeoutS = service.DEFAULT_APPLY_TIMEOUT_S) -> list[RolloutOut]:
    return [RolloutOut.of(row) for row in
            service.rollout(session, context.clock.now(), timeout_s, site_id=site_id)]
