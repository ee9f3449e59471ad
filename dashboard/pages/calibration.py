"""The moisture-probe calibration page (technician and up): choose a dryer, type hand-meter
readings (or take a batch's spot checks), preview the new curve against the current one, save
and send it, and watch the node apply it. The page script does all of it through
``/api/calibration/...`` (gateway/api/routes/calibration.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from dashboard.web import NavItem, allowed, frame
from gateway.api.deps import ContextDep, OperatorDep, Role, SessionDep
from gateway.metadata.models import Node

router = APIRouter(include_in_schema=False)

NAV: tuple[NavItem, ...] = (
    NavItem("/calibration", "nav.calibration", Role.TECHNICIAN, order=50),
)

# The texts calibration.js translates, beyond the shared ones.
SCRIPT_TEXTS = ("calibration.",)


@router.get("/calibration", response_class=HTMLResponse)
def calibration_page(request: Request, context: ContextDep, session: SessionDep,
                     actor: OperatorDep, site_id: str | None = None,
                     node_id: str | None = None) -> HTMLResponse:
    here = frame(request, context, session, actor)
    if not allowed(actor, Role.TECHNICIAN):
        return here.forbidden("calibration.forbidden", page="calibration")
    nodes = [{"site_id": node.site_id, "node_id": node.node_id,
              "name": node.name or node.node_id}
             for node in session.scalars(select(Node).order_by(Node.site_id, Node.node_id))]
    keys = {(n["site_id"], n["node_id"]) for n in nodes}
    chosen = (site_id, node_id) if (site_id, node_id) in keys else None
    if chosen is None and len(nodes) == 1:
        chosen = (nodes[0]["site_id"], nodes[0]["node_id"])
    selected = f"{chosen[0]}/{chosen[1]}" if chosen else ""
    return here.page(
        "calibration/calibration.html", "calibration", "calibration.title",
        texts=SCRIPT_TEXTS, extra={"selected": selected}, view={"nodes": nodes})
