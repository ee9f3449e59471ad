"""Drying science helpers against the numbers in docs/references.md."""

import pytest

from cacao_dryer.science import (
    arrhenius_rate,
    dew_point_c,
    dry_to_wet_basis,
    gab_equilibrium_moisture_pct_wb,
    moisture_from_tray_mass_pct_wb,
    relative_humidity_pct,
    vapour_pressure_kpa,
    wet_to_dry_basis,
)


@pytest.mark.parametrize(("rh", "expected"), [(60, 6.8), (65, 7.4), (70, 8.2), (80, 10.4),
                                              (90, 14.1)])
def test_gab_matches_the_reference_estimates(rh, expected):
    # docs/references.md, "Equilibrium moisture" [Sandoval2020]
    assert gab_equilibrium_moisture_pct_wb(rh) == pytest.approx(expected, abs=0.15)


def test_tray_mass_balance_matches_the_reference_example():
    # 100 kg at 55 % → 48.6 kg at 7.5 % [IIETA2025]
    assert moisture_from_tray_mass_pct_wb(100, 55, 48.6) == pytest.approx(7.4, abs=0.1)


def test_dew_point_equals_temperature_at_saturation():
    assert dew_point_c(25.0, 100.0) == pytest.approx(25.0, abs=0.01)


def test_dew_point_below_temperature_in_dry_air():
    assert dew_point_c(30.0, 50.0) == pytest.approx(18.4, abs=0.2)


def test_vapour_pressure_and_rh_are_inverse():
    vapour = vapour_pressure_kpa(32.0, 63.0)
    assert relative_humidity_pct(32.0, vapour) == pytest.approx(63.0)


def test_basis_conversions_are_inverse():
    assert dry_to_wet_basis(wet_to_dry_basis(55.0)) == pytest.approx(55.0)


def test_wet_basis_of_100_percent_is_rejected():
    with pytest.raises(ValueError, match="moisture wet basis"):
        wet_to_dry_basis(100.0)


def test_rate_constant_grows_with_temperature():
    assert arrhenius_rate(1.68, 45.0, 30.0) > 1.68 > arrhenius_rate(1.68, 22.0, 30.0)
