"""Moisture-probe calibration of a dryer: the node's current curve and past calibrations
(operator and up), spot checks to use as pairs, preview a new curve, save and send it
(technician and up). Service: gateway/calibration.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from gateway import calibration as service
from gateway.api.deps import ContextDep, OperatorDep, SessionDep, TechnicianDep
from gateway.calibration import CalibrationRequest
from gateway.metadata.models import Calibration

router = APIRouter(prefix="/api/calibration", tags=["calibration"])

Point = tuple[float, float]


class CurveOut(BaseModel):
    sensor: str = Field(description="The probe's name in the node config")
    points: list[Point] = Field(description="[[volts, moisture_pct_wb], ...] [V, % w.b.]")
    source: str = Field(description="config (the node's file) or gateway (a calibration)")
    reported_at: datetime = Field(description="When the node said it uses this curve")

    @classmethod
    def of(cls, curve: service.NodeCurve | None) -> CurveOut | None:
        if curve is None:
            return None
        return cls(sensor=curve.sensor, points=curve.points, source=curve.source,
                   reported_at=curve.reported_at)


class PairOut(BaseModel):
    measured_at: datetime | None
    probe_v: float = Field(description="Probe volts used [V]")
    reading_at: datetime | None = Field(description="The stored reading the volts came from")
    meter_moisture_pct_wb: float = Field(description="Hand meter [% w.b.]")
    before_pct_wb: float | None = Field(
        description="What the probe's current curve says for these volts [% w.b.]; null when "
        "the node has not reported its curve and the reading had no moisture")
    after_pct_wb: float = Field(description="What the new curve says [% w.b.]")
    spot_check_id: int | None


class PreviewOut(BaseModel):
    site_id: str
    node_id: str
    current: CurveOut | None = Field(description="The node's curve now; null = not known yet")
    points: list[Point] = Field(description="The curve that would be sent [V, % w.b.]")
    fitted: list[Point] = Field(description="The part fitted from the pairs alone")
    pairs: list[PairOut]
    rmse_before_pct: float | None = Field(description="Current curve vs hand meter [% w.b.]")
    rmse_after_pct: float = Field(description="New curve vs hand meter [% w.b.]")


class CalibrationOut(BaseModel):
    id: int
    site_id: str
    node_id: str
    sensor: str | None
    points: list[Point]
    pairs: list[PairOut]
    comment: str
    created_by: str
    created_at: datetime
    command_id: str
    delivered_to_broker: bool
    state: str = Field(description="pending, applied, rejected or not_delivered")
    applied: bool | None = Field(description="The node's answer; null = none yet")
    applied_at: datetime | None
    node_message: str | None

    @classmethod
    def of(cls, record: Calibration) -> CalibrationOut:
        return cls(id=record.id, site_id=record.site_id, node_id=record.node_id,
                   sensor=record.sensor, points=[tuple(p) for p in record.points],
                   pairs=[PairOut.model_validate(p) for p in record.pairs],
                   comment=record.comment, created_by=record.created_by,
                   created_at=record.created_at, command_id=record.command_id,
                   delivered_to_broker=record.delivered_to_broker,
                   state=service.state_of(record), applied=record.applied,
                   applied_at=record.applied_at, node_message=record.node_message)


class NodeCalibrations(BaseModel):
    site_id: str
    node_id: str
    current: CurveOut | None
    calibrations: list[CalibrationOut] = Field(description="Newest first")


class SpotCheckPair(BaseModel):
    spot_check_id: int
    batch_id: str
    measured_at: datetime
    moisture_pct_wb: float = Field(description="Hand meter (or oven) [% w.b.]")
    method: str
    probe_v: float | None = Field(description="Probe volts at that time [V]; null = none")
    reading_at: datetime | None


@router.get("/{site_id}/{node_id}", response_model=NodeCalibrations,
            summary="A dryer's probe curve now and its calibrations, newest first")
def node_calibrations(site_id: str, node_id: str, session: SessionDep, _actor: OperatorDep,
                      limit: Annotated[int, Query(ge=1, le=200)] = 20) -> NodeCalibrations:
    records = service.history(session, site_id, node_id, limit)
    return NodeCalibrations(
        site_id=site_id, node_id=node_id,
        current=CurveOut.of(service.node_curve(session, site_id, node_id)),
        calibrations=[CalibrationOut.of(record) for record in records])


@router.get("/{site_id}/{node_id}/spot-checks", response_model=list[SpotCheckPair],
            summary="The dryer's recent batch spot checks with the probe volts at their time")
def spot_checks(site_id: str, node_id: str, session: SessionDep, context: ContextDep,
                _actor: OperatorDep, days: Annotated[int, Query(ge=1, le=365)] = 30
                ) -> list[SpotCheckPair]:
    since = context.clock.now() - timedelta(days=days)
    return [SpotCheckPair(**vars(found)) for found in
            service.spot_check_candidates(session, context.store, site_id, node_id, since)]


@router.post("/{site_id}/{node_id}/preview", response_model=PreviewOut,
             summary="Fit a curve from hand-meter pairs and compare (changes nothing)")
def preview(site_id: str, node_id: str, request: CalibrationRequest, session: SessionDep,
            context: ContextDep, _actor: TechnicianDep) -> PreviewOut:
    result = service.preview(session, context.store, site_id, node_id, request,
                             context.clock.now())
    return PreviewOut(site_id=result.site_id, node_id=result.node_id,
                      current=CurveOut.of(result.current), points=result.points,
                      fitted=result.fitted,
                      pairs=[PairOut(**vars(pair)) for pair in result.pairs],
                      rmse_before_pct=result.rmse_before_pct,
                      rmse_after_pct=result.rmse_after_pct)


@router.post("/{site_id}/{node_id}", response_model=CalibrationOut,
             status_code=status.HTTP_201_CREATED,
             summary="Save a calibration and send it to the node (audited)")
def save(site_id: str, node_id: str, request: CalibrationRequest, context: ContextDep,
         actor: TechnicianDep) -> CalibrationOut:
    return CalibrationOut.of(service.save(context, site_id, node_id, request, actor.username))
