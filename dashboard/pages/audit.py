"""The audit log page: who changed what and when, old → new, newest first, with filters (who,
what, which dryer, dates) and pages. Its script reads ``GET /api/audit``; the page opens for
whoever may read that (technician, manager, admin) and is a 403 page for an operator.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dashboard.pages.thresholds import field_texts, field_units
from dashboard.web import NavItem, frame
from gateway.api.deps import ContextDep, OperatorDep, Role, SessionDep
from gateway.api.routes.audit import may_read_audit
from gateway.thresholds import ACTION as THRESHOLDS_ACTION

router = APIRouter(include_in_schema=False)

# Technicians and managers (and admins) see it in the navigation.
NAV: tuple[NavItem, ...] = (
    NavItem("/audit", "nav.audit", (Role.TECHNICIAN, Role.MANAGER), order=60),
)

# The texts audit.js translates: its own, and the thresholds' names in a change's old → new.
SCRIPT_TEXTS = ("audit.", "thresholds.name_")

# The actions the gateway records (``<resource>.<verb>``), in plain words; an action not listed
# shows as recorded. Written as pairs: a dotted action in quotes would read as a catalog key.
ACTION_TEXTS: dict[str, str] = {f"{resource}.{verb}": key for (resource, verb), key in {
    ("thresholds", "update"): "audit.action_thresholds_update",
    ("batch", "start"): "audit.action_batch_start",
    ("batch", "end"): "audit.action_batch_end",
    ("batch", "update"): "audit.action_batch_update",
    ("batch", "spot_check"): "audit.action_batch_spot_check",
    ("node", "update"): "audit.action_node_update",
    ("node", "override"): "audit.action_node_override",
    ("node", "override_clear"): "audit.action_node_override_clear",
    ("node", "tare"): "audit.action_node_tare",
    ("calibration", "send"): "audit.action_calibration_send",
    ("alert", "acknowledge"): "audit.action_alert_acknowledge",
    ("user", "add"): "audit.action_user_add",
    ("user", "update"): "audit.action_user_update",
    ("user", "password_reset"): "audit.action_user_password_reset",
    ("user", "password_change"): "audit.action_user_password_change",
    ("user", "token_create"): "audit.action_user_token_create",
    ("user", "token_revoke"): "audit.action_user_token_revoke",
}.items()}

# The "what" filter: a group of actions (a prefix ending in ".", as GET /api/audit takes it).
ACTION_GROUPS: dict[str, str] = {
    "thresholds.": "audit.group_thresholds",
    "batch.": "audit.group_batch",
    "node.": "audit.group_node",
    "alert.": "audit.group_alert",
    "calibration.": "audit.group_calibration",
    "user.": "audit.group_user",
}


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, context: ContextDep, session: SessionDep,
               actor: OperatorDep) -> HTMLResponse:
    here = frame(request, context, session, actor)
    if not may_read_audit(actor.role):
        return here.forbidden("audit.forbidden", page="audit")
    return here.page("audit/page.html", "audit", "audit.title", texts=SCRIPT_TEXTS,
                     extra={"action_texts": ACTION_TEXTS, "threshold_action": THRESHOLDS_ACTION,
                            "field_texts": {field: {"name": keys["name"]}  # no "why"
                                            for field, keys in field_texts().items()},
                            "field_units": field_units(here.language)},
                     view={"action_groups": ACTION_GROUPS})
