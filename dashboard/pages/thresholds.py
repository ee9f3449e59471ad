"""The technicians' threshold page: the profiles (per site, dryer and batch stage) with their
current version, an editor that explains every value (name, unit, allowed range, default,
what it does and why), and which dryer runs which config version (the rollout).

The page is thin: its script reads ``/api/thresholds/schema``, ``/api/thresholds/profiles``,
``/api/thresholds/rollout`` and saves with ``PUT /api/thresholds/profiles``. Only those who
may change thresholds (technician, admin — the PUT's own rule) open it; anyone else logged in
gets a 403 page, nobody logged in the login page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dashboard.i18n import unit
from dashboard.web import NavItem, allowed, frame
from gateway.api.deps import ContextDep, OperatorDep, Role, SessionDep
from gateway.api.routes.thresholds import threshold_fields
from gateway.threshold_rules import FIELDS

router = APIRouter(include_in_schema=False)

NAV: tuple[NavItem, ...] = (
    NavItem("/thresholds", "nav.thresholds", Role.TECHNICIAN, order=40),
)

# The texts thresholds.js translates, beyond the shared ones.
SCRIPT_TEXTS = ("thresholds.",)

# Every threshold's plain name and its explanation (what it does, and why this default: the
# reference), written out so the catalog tests see each key; a test holds this table to the
# fields of cacao_dryer.contract.Thresholds.
FIELD_TEXTS: dict[str, tuple[str, str]] = {
    "target_moisture_pct_wb": ("thresholds.name_target_moisture_pct_wb",
                               "thresholds.why_target_moisture_pct_wb"),
    "over_dry_moisture_pct_wb": ("thresholds.name_over_dry_moisture_pct_wb",
                                 "thresholds.why_over_dry_moisture_pct_wb"),
    "air_temp_warn_c": ("thresholds.name_air_temp_warn_c", "thresholds.why_air_temp_warn_c"),
    "air_temp_alarm_c": ("thresholds.name_air_temp_alarm_c", "thresholds.why_air_temp_alarm_c"),
    "air_temp_limit_c": ("thresholds.name_air_temp_limit_c", "thresholds.why_air_temp_limit_c"),
    "early_phase_h": ("thresholds.name_early_phase_h", "thresholds.why_early_phase_h"),
    "early_phase_moisture_pct_wb": ("thresholds.name_early_phase_moisture_pct_wb",
                                    "thresholds.why_early_phase_moisture_pct_wb"),
    "early_phase_max_air_temp_c": ("thresholds.name_early_phase_max_air_temp_c",
                                   "thresholds.why_early_phase_max_air_temp_c"),
    "max_drying_rate_pct_per_h": ("thresholds.name_max_drying_rate_pct_per_h",
                                  "thresholds.why_max_drying_rate_pct_per_h"),
    "drying_rh_max_pct": ("thresholds.name_drying_rh_max_pct",
                          "thresholds.why_drying_rh_max_pct"),
    "rewet_rh_pct": ("thresholds.name_rewet_rh_pct", "thresholds.why_rewet_rh_pct"),
    "close_vents_ambient_rh_pct": ("thresholds.name_close_vents_ambient_rh_pct",
                                   "thresholds.why_close_vents_ambient_rh_pct"),
    "close_vents_below_moisture_pct_wb": ("thresholds.name_close_vents_below_moisture_pct_wb",
                                          "thresholds.why_close_vents_below_moisture_pct_wb"),
    "fan_on_dew_point_diff_k": ("thresholds.name_fan_on_dew_point_diff_k",
                                "thresholds.why_fan_on_dew_point_diff_k"),
    "fan_off_dew_point_diff_k": ("thresholds.name_fan_off_dew_point_diff_k",
                                 "thresholds.why_fan_off_dew_point_diff_k"),
    "fan_on_air_temp_c": ("thresholds.name_fan_on_air_temp_c",
                          "thresholds.why_fan_on_air_temp_c"),
    "condensation_margin_k": ("thresholds.name_condensation_margin_k",
                              "thresholds.why_condensation_margin_k"),
    "fan_min_speed_pct": ("thresholds.name_fan_min_speed_pct",
                          "thresholds.why_fan_min_speed_pct"),
    "fan_min_on_s": ("thresholds.name_fan_min_on_s", "thresholds.why_fan_min_on_s"),
    "fan_min_off_s": ("thresholds.name_fan_min_off_s", "thresholds.why_fan_min_off_s"),
    "vent_min_interval_s": ("thresholds.name_vent_min_interval_s",
                            "thresholds.why_vent_min_interval_s"),
    "night_start_hour": ("thresholds.name_night_start_hour",
                         "thresholds.why_night_start_hour"),
    "night_end_hour": ("thresholds.name_night_end_hour", "thresholds.why_night_end_hour"),
    "stale_after_s": ("thresholds.name_stale_after_s", "thresholds.why_stale_after_s"),
}


def field_units(language: str) -> dict[str, str]:
    """Each threshold's unit as the language writes it ("% w.b./h" is "% b.h./h" in Spanish).

    >>> field_units("es")["max_drying_rate_pct_per_h"], field_units("en")["air_temp_warn_c"]
    ('% b.h./h', '°C')
    """
    wet_basis = "% w.b."
    units = {}
    for field in threshold_fields():
        symbol = field.unit
        if symbol.startswith(wet_basis):
            symbol = unit(language, wet_basis) + symbol.removeprefix(wet_basis)
        units[field.name] = symbol
    return units


def field_texts() -> dict[str, dict[str, str]]:
    """Per field, the catalog keys of its name and its explanation (for the page scripts)."""
    return {name: {"name": FIELD_TEXTS[name][0], "why": FIELD_TEXTS[name][1]}
            for name in FIELDS}


@router.get("/thresholds", response_class=HTMLResponse)
def thresholds_page(request: Request, context: ContextDep, session: SessionDep,
                    actor: OperatorDep) -> HTMLResponse:
    here = frame(request, context, session, actor)
    if not allowed(actor, Role.TECHNICIAN):
        return here.forbidden("thresholds.forbidden", page="thresholds")
    return here.page("thresholds/page.html", "thresholds", "thresholds.title",
                     texts=SCRIPT_TEXTS,
                     extra={"field_texts": field_texts(),
                            "field_units": field_units(here.language)})
