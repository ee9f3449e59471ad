"""The alerts page: open and recent alerts of every dryer with filters (open/closed, dryer,
kind, severity), each in plain words with its times and who acknowledged it, and the
acknowledge button. Its script reads ``GET /api/alerts`` and acknowledges with
``POST /api/alerts/{id}/ack`` (operator and up, like the page)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from cacao_dryer.contract import AlertKind, AlertSeverity
from dashboard.web import NavItem, frame
from gateway.api.deps import ContextDep, OperatorDep, Role, SessionDep
from gateway.metadata.models import Node

router = APIRouter(include_in_schema=False)

NAV: tuple[NavItem, ...] = (
    NavItem("/alerts", "nav.alerts", Role.OPERATOR, order=20),
)

# The texts the page's scripts translate (alerts.js, alert-items.js), beyond the shared ones.
SCRIPT_TEXTS = ("alerts.",)

# Each kind and severity in plain words (the page, the dryer page and the overview share them
# through cards.js; listed here so the filters render on the server).
KIND_TEXTS: dict[str, str] = {
    AlertKind.OVER_TEMPERATURE: "alerts.kind_over_temperature",
    AlertKind.HIGH_HUMIDITY: "alerts.kind_high_humidity",
    AlertKind.SENSOR_FAULT: "alerts.kind_sensor_fault",
    AlertKind.NODE_OFFLINE: "alerts.kind_node_offline",
    AlertKind.SEQUENCE_GAP: "alerts.kind_sequence_gap",
    AlertKind.DRYING_STALLED: "alerts.kind_drying_stalled",
    AlertKind.TARGET_REACHED: "alerts.kind_target_reached",
    AlertKind.CONFIG_NOT_APPLIED: "alerts.kind_config_not_applied",
    AlertKind.CLOCK_WRONG: "alerts.kind_clock_wrong",
}
SEVERITY_TEXTS: dict[str, str] = {
    AlertSeverity.CRITICAL: "alerts.severity_critical",
    AlertSeverity.WARNING: "alerts.severity_warning",
    AlertSeverity.INFO: "alerts.severity_info",
}
STATES = ("open", "closed", "all")
STATE_TEXTS: dict[str, str] = {"open": "alerts.state_open", "closed": "alerts.state_closed",
                               "all": "alerts.state_all"}


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, context: ContextDep, session: SessionDep,
                actor: OperatorDep) -> HTMLResponse:
    dryers = [(f"{node.site_id}/{node.node_id}", node.name or node.node_id)
              for node in session.scalars(select(Node).order_by(Node.site_id, Node.node_id))]
    return frame(request, context, session, actor).page(
        "alerts/page.html", "alerts", "alerts.title", texts=SCRIPT_TEXTS,
        extra={"dryer_names": dict(dryers)},
        view={"dryers": dryers, "kind_texts": KIND_TEXTS, "severity_texts": SEVERITY_TEXTS,
              "state_texts": STATE_TEXTS})
