"""Drying science shared by the controller, the simulator and the gateway: pure functions.

Sources are cited by key; see docs/references.md.
"""

from __future__ import annotations

import math

# Magnus formula constants for dew point over water [Kellerklima] (as given in
# docs/references.md, "Control practice").
_MAGNUS_B = 17.62
_MAGNUS_C_C = 243.12

# GAB sorption isotherm constants for cacao at 25 °C, X in g water / 100 g dry solids
# [Sandoval2020].
GAB_NIB = (3.60, 21.63, 0.871)  # Xm, C, K
GAB_SHELL = (8.50, 83.56, 0.942)

# Universal gas constant, J/(mol·K).
R_J_PER_MOL_K = 8.314
# Activation energy of sun drying of cacao, J/mol [Akmel2009].
SUN_DRYING_EA_J_PER_MOL = 22_500.0


def saturation_vapour_pressure_kpa(temp_c: float) -> float:
    """Saturation vapour pressure over water (Magnus), kPa."""
    return 0.6112 * math.exp(_MAGNUS_B * temp_c / (_MAGNUS_C_C + temp_c))


def dew_point_c(temp_c: float, rh_pct: float) -> float:
    """Dew point by the Magnus formula [Kellerklima].

    >>> round(dew_point_c(30.0, 80.0), 1)
    26.2
    """
    rh = min(max(rh_pct, 0.1), 100.0)
    gamma = math.log(rh / 100.0) + _MAGNUS_B * temp_c / (_MAGNUS_C_C + temp_c)
    return _MAGNUS_C_C * gamma / (_MAGNUS_B - gamma)


def vapour_pressure_kpa(temp_c: float, rh_pct: float) -> float:
    """Partial pressure of water vapour in air, kPa."""
    return saturation_vapour_pressure_kpa(temp_c) * min(max(rh_pct, 0.0), 100.0) / 100.0


def relative_humidity_pct(temp_c: float, vapour_kpa: float) -> float:
    """Relative humidity of air at ``temp_c`` holding ``vapour_kpa`` of water vapour (≤ 100 %)."""
    return min(100.0, max(0.0, 100.0 * vapour_kpa / saturation_vapour_pressure_kpa(temp_c)))


def wet_to_dry_basis(moisture_pct_wb: float) -> float:
    """Moisture wet basis (%) → dry basis (kg water / kg dry matter)."""
    m = moisture_pct_wb / 100.0
    if not 0.0 <= m < 1.0:
        raise ValueError(f"moisture wet basis must be in [0, 100) %, got {moisture_pct_wb}")
    return m / (1.0 - m)


def dry_to_wet_basis(moisture_db: float) -> float:
    """Moisture dry basis (kg/kg) → wet basis (%)."""
    if moisture_db < 0:
        raise ValueError(f"moisture dry basis must be >= 0, got {moisture_db}")
    return 100.0 * moisture_db / (1.0 + moisture_db)


def gab_equilibrium_moisture_pct_wb(rh_pct: float, part: str = "nib") -> float:
    """Equilibrium moisture content (% wet basis) of cacao in air at ``rh_pct``, by GAB at 25 °C
    [Sandoval2020]. ``part`` is ``"nib"`` (default, the bean's inside) or ``"shell"``.

    Estimates from the nib constants: aw 0.60 → 6.8 %, 0.70 → 8.2 %, 0.80 → 10.4 %.

    >>> round(gab_equilibrium_moisture_pct_wb(70.0), 1)
    8.2
    """
    xm, c, k = GAB_NIB if part == "nib" else GAB_SHELL
    aw = min(max(rh_pct, 0.0), 99.0) / 100.0
    x_g_per_100g = xm * c * k * aw / ((1 - k * aw) * (1 - k * aw + c * k * aw))
    return dry_to_wet_basis(x_g_per_100g / 100.0)


def moisture_from_tray_mass_pct_wb(
    initial_mass_kg: float, initial_moisture_pct_wb: float, mass_kg: float
) -> float:
    """Bean moisture by mass balance on a load-cell tray [IIETA2025]:
    Mt = 1 − m0·(1 − M0)/mt.

    >>> round(moisture_from_tray_mass_pct_wb(100.0, 55.0, 48.6), 1)
    7.4
    """
    if initial_mass_kg <= 0 or mass_kg <= 0:
        raise ValueError("tray masses must be > 0 kg")
    dry_matter_kg = initial_mass_kg * (1.0 - initial_moisture_pct_wb / 100.0)
    return 100.0 * (1.0 - dry_matter_kg / mass_kg)


def arrhenius_rate(k_ref: float, temp_c: float, temp_ref_c: float,
                   ea_j_per_mol: float = SUN_DRYING_EA_J_PER_MOL) -> float:
    """Scale a drying rate constant to another temperature (**estimate**, Arrhenius form with Ea
    from [Akmel2009]): k = k_ref · exp(−Ea/R · (1/T − 1/T_ref))."""
    t = temp_c + 273.15
    t_ref = temp_ref_c + 273.15
    return k_ref * math.exp(-ea_j_per_mol / R_J_PER_MOL_K * (1.0 / t - 1.0 / t_ref))
