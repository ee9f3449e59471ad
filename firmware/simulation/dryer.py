"""A simulated solar cacao dryer: inside air, beans, and sensor faults on demand.

``DryerModel`` integrates, from its last time to ``now``, in sub-steps of at most
``max_step_s`` (60 s), so big jumps of an accelerated clock work. It is stepped only by whoever
owns the actuators (the node agent, each tick: ``model.step(now, fan_speed_pct,
vent_open_pct)``); simulated chips only read its state. Model, equations, parameters and
their sources: docs/simulator.md.

Greenhouse dryer (a plastic-covered module, beans on the floor/racks):

* inside air temperature, lumped energy balance:
  C·dT/dt = gain·A·G − (UA + ρc·Q)·(T − T_out) − λ·E
  with the sunshine G, the cover losses UA, the ventilation flow Q (air changes per hour from
  leakage, vents and fans) and the latent heat λ·E of the water E the beans give off;
* inside water vapour, mass balance: V·dρ/dt = Q·(ρ_out − ρ) + E, at most saturation (the rest
  condenses on the cover);
* beans, thin-layer Newton kinetics on dry basis: dX/dt = −k(T)·(X − Xe), Xe from the GAB
  isotherm at the inside RH [Sandoval2020], k from the whole-day constant [CET2017] scaled with
  temperature by Arrhenius [Akmel2009]; evaporation capped by what the air can take up
  (h_m·A·(ρ_sat − ρ)), so drying stalls in saturated air.

Open sun drying (a patio or tarp): the "inside" air is the outside air just above the beans,
a little warmer in the sun; beans are heaped and covered at night and in rain [Beckett], so they
neither dry nor re-wet then. Fans and vents have no effect.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from cacao_dryer.science import (
    R_J_PER_MOL_K,
    arrhenius_rate,
    dry_to_wet_basis,
    gab_equilibrium_moisture_pct_wb,
    relative_humidity_pct,
    saturation_vapour_pressure_kpa,
    wet_to_dry_basis,
)
from firmware.simulation.weather import AmbientConditions, AmbientSource, Weather

if TYPE_CHECKING:
    from firmware.config import SimulationConfig

DryerKind = Literal["greenhouse", "open"]
FaultKind = Literal["dead", "stuck", "noisy", "checksum"]
FAULT_KINDS: tuple[str, ...] = ("dead", "stuck", "noisy", "checksum")

# --- physical constants ----------------------------------------------------------------------
WATER_MOLAR_MASS_KG_MOL = 0.018015
AIR_HEAT_CAPACITY_J_M3_K = 1170.0     # ρ·c_p of air at ~30 °C (1.16 kg/m³ × 1007 J/kg·K)
LATENT_HEAT_J_KG = 2.43e6             # evaporation of water at ~30 °C
BEAN_HEAT_CAPACITY_J_KG_K = 3000.0    # wet cacao beans (estimate)
SECONDS_PER_DAY = 86_400.0

# --- drying kinetics -------------------------------------------------------------------------
# Whole-day Newton rate constants under the sun, per calendar day [CET2017].
K_REF_PER_DAY = {"greenhouse": 1.68, "open": 0.76}
# The whole-day constant averages the rate over 24 h. Open-sun beans only dry while spread out
# in daylight (~12 h; heaped and covered at night [Beckett]), so their exposed-time rate is
# k_ref · 24/12; greenhouse beans stay spread day and night (estimate).
EXPOSED_RATE_FACTOR = {"greenhouse": 1.0, "open": 24.0 / 12.0}
# Bean temperature at which that rate applies; k scales from it with Arrhenius [Akmel2009].
# Estimates, tuned within the temperatures the model produces so that, under the reference
# policy (docs/simulator.md), 56 → 7.5 % takes about as long as CET2017 reports for 58 → 7 %:
# greenhouse ~4 days, open sun ~6 days.
K_REF_TEMP_C = {"greenhouse": 33.0, "open": 36.0}
# Dried beans take water back more slowly than they lose it (sorption hysteresis, shell acts
# as a barrier) (estimate).
REWET_RATE_FACTOR = 0.3
LOT_RATE_SPREAD = 0.05   # lots differ: k × U(1 − s, 1 + s), drawn from (seed, batch) (estimate)


@dataclass(frozen=True)
class GreenhouseDesign:
    """A plastic-covered drying module. Defaults: a 12 × 5 m DEVIDA module [DEVIDA]; the thermal
    figures are estimates calibrated so that, with wet beans, a closed dryer reaches ~50–60 °C
    at a sunny midday and a ventilated one ~10 °C above the outside air [Kallari, Hohenheim]."""

    floor_area_m2: float = 60.0             # 12 × 5 m [DEVIDA]
    # The rest: estimates (docs/simulator.md shows the calibration).
    air_volume_m3: float = 150.0            # mean height 2.5 m
    cover_loss_w_k: float = 780.0           # UA, single polyethylene film ~6 W/m²K × 130 m²
    solar_gain_fraction: float = 0.50       # of the sunshine on the floor that heats the air
    structure_heat_j_k: float = 2.5e6       # floor, racks, frame
    leak_ach: float = 2.0                   # air changes per hour, everything closed
    vents_ach: float = 12.0                 # added by vents fully open (natural draught)
    fans_ach: float = 16.0                  # added by fans at full speed, vents open
    fans_closed_fraction: float = 0.3       # share of fan flow that gets through shut vents
    still_mass_transfer_m_s: float = 0.004  # h_m over the bean bed in still air (Lewis
    fan_mass_transfer_m_s: float = 0.004    # analogy, h 5–10 W/m²K); + this at full fan speed

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:   # also NaN
                raise ValueError(f"GreenhouseDesign.{name} must be > 0, got {value}")
        if self.fans_closed_fraction > 1:
            raise ValueError("GreenhouseDesign.fans_closed_fraction must be within 0..1")


# Open sun: air just above beans on a sunlit patio is warmer than in the shade, and the dark
# beans themselves warmer still (estimates: ~4 K and ~10 K at 1000 W/m²).
OPEN_SURFACE_HEATING_K_PER_W_M2 = 0.004
OPEN_BEAN_HEATING_K_PER_W_M2 = 0.010
# Farmers heap and cover beans when the sun is gone or it rains [Beckett] (estimate threshold).
OPEN_COVER_BELOW_W_M2 = 50.0


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    until: datetime | None


def vapour_density_kg_m3(temp_c: float, vapour_kpa: float) -> float:
    """Water vapour per cubic metre of air (ideal gas)."""
    return vapour_kpa * 1000.0 * WATER_MOLAR_MASS_KG_MOL / (
        R_J_PER_MOL_K * (temp_c + 273.15))


def _vapour_kpa(temp_c: float, density_kg_m3: float) -> float:
    return density_kg_m3 * R_J_PER_MOL_K * (temp_c + 273.15) / (
        1000.0 * WATER_MOLAR_MASS_KG_MOL)


def _saturation_density_kg_m3(temp_c: float) -> float:
    return vapour_density_kg_m3(temp_c, saturation_vapour_pressure_kpa(temp_c))


def _check_pct(name: str, value: float) -> float:
    if not 0.0 <= value <= 100.0:  # also rejects NaN
        raise ValueError(f"DryerModel.step: {name} must be within 0..100 %, got {value}")
    return value


class DryerModel:
    """One simulated dryer with one batch of beans.

    >>> from datetime import UTC, datetime
    >>> from firmware.simulation.weather import Weather
    >>> start = datetime(2026, 1, 5, 11, 0, tzinfo=UTC)   # 06:00 in Peru
    >>> model = DryerModel(Weather(seed=1), start=start)
    >>> model.step(datetime(2026, 1, 5, 17, 0, tzinfo=UTC), fan_speed_pct=0, vent_open_pct=0)
    >>> model.air_temp_c > model.ambient.temp_c     # closed greenhouse at noon
    True
    """

    def __init__(
        self,
        weather: AmbientSource,
        kind: DryerKind = "greenhouse",
        load_kg: float = 400.0,
        initial_moisture_pct_wb: float = 56.0,
        *,
        start: datetime,
        seed: int = 0,
        tray_sample_kg: float = 5.0,
        design: GreenhouseDesign | None = None,
        max_step_s: float = 60.0,
    ) -> None:
        if kind not in ("greenhouse", "open"):
            raise ValueError(f"DryerModel kind must be 'greenhouse' or 'open', got {kind!r}")
        if start.tzinfo is None:
            raise ValueError("DryerModel start must be timezone-aware")
        if not 0 < max_step_s <= 600:
            raise ValueError(f"DryerModel max_step_s must be within (0, 600] s, got {max_step_s}")
        if tray_sample_kg <= 0:
            raise ValueError(f"DryerModel tray_sample_kg must be > 0, got {tray_sample_kg}")
        self.kind: DryerKind = kind
        self.seed = seed
        self.design = design or GreenhouseDesign()
        self.max_step_s = max_step_s
        self._weather = weather
        self._time = start
        self._ambient = weather.at(start)
        self._tray_sample_kg = tray_sample_kg
        self._faults: dict[str, Fault] = {}
        self._fan_speed_pct = 0.0
        self._vent_open_pct = 0.0
        self._batch = 0
        self.condensed_kg = 0.0
        # Inside air starts as outside air.
        self._air_temp_c = self._open_air_temp_c(self._ambient)
        self._vapour_kg_m3 = self._ambient_vapour_kg_m3(self._ambient, self._air_temp_c)
        self._start_batch(initial_moisture_pct_wb, load_kg)

    @classmethod
    def from_config(cls, config: SimulationConfig, start: datetime,
                    utc_offset_h: float = -5.0) -> DryerModel:
        """The dryer a node's ``[simulation]`` section describes, under seeded Tarapoto weather
        (season from the calendar)."""
        weather = Weather(config.seed, "auto", utc_offset_h)
        return cls(weather, config.dryer, config.load_kg, config.initial_moisture_pct_wb,
                   start=start, seed=config.seed)

    # --- batch ---------------------------------------------------------------------------------

    def _start_batch(self, moisture_pct_wb: float, mass_kg: float) -> None:
        if mass_kg <= 0:
            raise ValueError(f"DryerModel: batch mass must be > 0 kg, got {mass_kg}")
        self._moisture_db = wet_to_dry_basis(moisture_pct_wb)
        self._dry_matter_kg = mass_kg / (1.0 + self._moisture_db)
        self._initial_mass_kg = mass_kg
        rng = random.Random(f"cacao-lot:{self.seed}:{self._batch}")
        self._lot_rate_factor = rng.uniform(1 - LOT_RATE_SPREAD, 1 + LOT_RATE_SPREAD)

    def load_new_batch(self, moisture_pct_wb: float, mass_kg: float, now: datetime) -> None:
        """Bring the dryer up to ``now`` with the current actuator settings, then replace the
        beans with a fresh batch (the sample tray is refilled in proportion)."""
        self.step(now, self._fan_speed_pct, self._vent_open_pct)
        self._batch += 1
        self._start_batch(moisture_pct_wb, mass_kg)

    # --- state ---------------------------------------------------------------------------------

    @property
    def time(self) -> datetime:
        """The moment the state below describes."""
        return self._time

    @property
    def ambient(self) -> AmbientConditions:
        return self._ambient

    @property
    def raining(self) -> bool:
        return self._ambient.raining

    @property
    def air_temp_c(self) -> float:
        """Air inside the dryer, above the beans (open drying: air just above the beans)."""
        return self._air_temp_c

    @property
    def air_rh_pct(self) -> float:
        return relative_humidity_pct(self._air_temp_c,
                                     _vapour_kpa(self._air_temp_c, self._vapour_kg_m3))

    @property
    def bean_temp_c(self) -> float:
        """Greenhouse: a thin layer at the temperature of the air above it. Open sun: beans
        warmed by the sun above the air temperature."""
        if self.kind == "greenhouse" or self.beans_covered:
            return self._air_temp_c
        return self._ambient.temp_c + OPEN_BEAN_HEATING_K_PER_W_M2 * self._ambient.solar_w_m2

    @property
    def bean_moisture_db(self) -> float:
        """kg water per kg dry matter."""
        return self._moisture_db

    @property
    def bean_moisture_pct_wb(self) -> float:
        return dry_to_wet_basis(self._moisture_db)

    @property
    def equilibrium_moisture_pct_wb(self) -> float:
        """Where the beans are heading in the current inside air (GAB [Sandoval2020])."""
        return gab_equilibrium_moisture_pct_wb(self.air_rh_pct)

    @property
    def bean_mass_kg(self) -> float:
        return self._dry_matter_kg * (1.0 + self._moisture_db)

    @property
    def tray_mass_kg(self) -> float:
        """Beans on the load-cell sample tray: a fixed share of the load, losing water with it."""
        return self._tray_sample_kg * self.bean_mass_kg / self._initial_mass_kg

    @property
    def beans_covered(self) -> bool:
        """Open drying only: beans heaped under a tarp (night, rain)."""
        return self.kind == "open" and self._covered(self._ambient)

    @property
    def air_changes_per_h(self) -> float:
        """Ventilation of a greenhouse at the current fan and vent settings."""
        return self._air_changes_per_h(self._fan_speed_pct, self._vent_open_pct)

    # --- sensor faults on demand ---------------------------------------------------------------

    def inject_fault(self, sensor: str, kind: FaultKind, until: datetime | None = None) -> None:
        """Make the sensor named ``sensor`` (its config name) fail as ``kind`` until ``until``
        (or until cleared): dead, stuck, noisy or checksum (see docs/simulator.md)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        if until is not None and until.tzinfo is None:
            raise ValueError("inject_fault until must be timezone-aware")
        self._faults[sensor] = Fault(kind, until)

    def clear_fault(self, sensor: str) -> None:
        self._faults.pop(sensor, None)

    def fault(self, sensor: str, now: datetime) -> FaultKind | None:
        """The fault active on ``sensor`` at ``now``, if any (expired faults are dropped)."""
        fault = self._faults.get(sensor)
        if fault is None:
            return None
        if fault.until is not None and now >= fault.until:
            del self._faults[sensor]
            return None
        return fault.kind

    # --- integration ---------------------------------------------------------------------------

    def step(self, now: datetime, fan_speed_pct: float, vent_open_pct: float) -> None:
        """Integrate from the model's time to ``now`` with these actuator settings."""
        if now.tzinfo is None:
            raise ValueError("DryerModel.step needs a timezone-aware datetime")
        if now < self._time:
            raise ValueError(f"DryerModel.step: time went backwards ({now} < {self._time})")
        self._fan_speed_pct = _check_pct("fan_speed_pct", fan_speed_pct)
        self._vent_open_pct = _check_pct("vent_open_pct", vent_open_pct)
        total_s = (now - self._time).total_seconds()
        if total_s == 0:
            return
        steps = math.ceil(total_s / self.max_step_s)
        step_s = total_s / steps
        start = self._time
        for i in range(steps):
            midpoint = start + timedelta(seconds=(i + 0.5) * step_s)
            ambient = self._weather.at(midpoint)
            if self.kind == "greenhouse":
                self._greenhouse_step(ambient, step_s)
            else:
                self._open_step(ambient, step_s)
        self._time = now
        self._ambient = self._weather.at(now)
        if self.kind == "open":
            self._air_temp_c = self._open_air_temp_c(self._ambient)
            self._vapour_kg_m3 = self._ambient_vapour_kg_m3(self._ambient, self._air_temp_c)

    def _rate_per_s(self, temp_c: float, equilibrium_db: float) -> float:
        k_day = K_REF_PER_DAY[self.kind] * EXPOSED_RATE_FACTOR[self.kind] * self._lot_rate_factor
        k = arrhenius_rate(k_day, temp_c, K_REF_TEMP_C[self.kind]) / SECONDS_PER_DAY
        return k * REWET_RATE_FACTOR if self._moisture_db < equilibrium_db else k

    def _kinetic_water_kg(self, temp_c: float, rh_pct: float, step_s: float) -> float:
        """Water the beans give off (negative: take up) in ``step_s`` by Newton kinetics toward
        the GAB equilibrium at ``rh_pct``; exact over the step, so it never overshoots Xe."""
        equilibrium_db = wet_to_dry_basis(gab_equilibrium_moisture_pct_wb(rh_pct))
        k = self._rate_per_s(temp_c, equilibrium_db)
        return self._dry_matter_kg * (self._moisture_db - equilibrium_db) * (
            1.0 - math.exp(-k * step_s))

    def _greenhouse_step(self, ambient: AmbientConditions, step_s: float) -> None:
        d = self.design
        flow_m3_s = d.air_volume_m3 * self.air_changes_per_h / 3600.0
        saturation = _saturation_density_kg_m3(self._air_temp_c)

        water_kg = self._kinetic_water_kg(self._air_temp_c, self.air_rh_pct, step_s)
        if water_kg > 0:
            mass_transfer_m_s = (d.still_mass_transfer_m_s
                                 + d.fan_mass_transfer_m_s * self._fan_speed_pct / 100.0)
            air_can_take_kg = (mass_transfer_m_s * d.floor_area_m2
                               * max(0.0, saturation - self._vapour_kg_m3) * step_s)
            water_kg = min(water_kg, air_can_take_kg)
        evaporation_kg_s = water_kg / step_s

        # Energy: exact first-order response to constant forcing over the sub-step.
        loss_w_k = d.cover_loss_w_k + AIR_HEAT_CAPACITY_J_M3_K * flow_m3_s
        heat_j_k = (d.structure_heat_j_k + AIR_HEAT_CAPACITY_J_M3_K * d.air_volume_m3
                    + BEAN_HEAT_CAPACITY_J_KG_K * self.bean_mass_kg)
        net_gain_w = (d.solar_gain_fraction * d.floor_area_m2 * ambient.solar_w_m2
                      - LATENT_HEAT_J_KG * evaporation_kg_s)
        settle_c = ambient.temp_c + net_gain_w / loss_w_k
        self._air_temp_c = settle_c + (self._air_temp_c - settle_c) * math.exp(
            -step_s * loss_w_k / heat_j_k)

        # Vapour: ventilation exchanges it with outside air, the beans add E.
        # Outside air keeps its vapour pressure as it warms up inside.
        settle_kg_m3 = (self._ambient_vapour_kg_m3(ambient, self._air_temp_c)
                        + evaporation_kg_s / flow_m3_s)
        self._vapour_kg_m3 = max(0.0, settle_kg_m3 + (self._vapour_kg_m3 - settle_kg_m3)
                                 * math.exp(-step_s * flow_m3_s / d.air_volume_m3))
        saturation = _saturation_density_kg_m3(self._air_temp_c)
        if self._vapour_kg_m3 > saturation:   # dew on the cover
            self.condensed_kg += (self._vapour_kg_m3 - saturation) * d.air_volume_m3
            self._vapour_kg_m3 = saturation

        self._moisture_db -= water_kg / self._dry_matter_kg

    def _open_step(self, ambient: AmbientConditions, step_s: float) -> None:
        self._air_temp_c = self._open_air_temp_c(ambient)
        self._vapour_kg_m3 = self._ambient_vapour_kg_m3(ambient, self._air_temp_c)
        if self._covered(ambient):
            return
        # The beans exchange water with the air film at their own, sun-warmed temperature.
        bean_temp_c = ambient.temp_c + OPEN_BEAN_HEATING_K_PER_W_M2 * ambient.solar_w_m2
        film_rh_pct = relative_humidity_pct(
            bean_temp_c, saturation_vapour_pressure_kpa(ambient.temp_c) * ambient.rh_pct / 100)
        water_kg = self._kinetic_water_kg(bean_temp_c, film_rh_pct, step_s)
        self._moisture_db -= water_kg / self._dry_matter_kg

    # --- helpers -------------------------------------------------------------------------------

    def _air_changes_per_h(self, fan_speed_pct: float, vent_open_pct: float) -> float:
        d = self.design
        vent = vent_open_pct / 100.0
        fan = fan_speed_pct / 100.0
        fan_path = d.fans_closed_fraction + (1.0 - d.fans_closed_fraction) * vent
        return d.leak_ach + d.vents_ach * vent + d.fans_ach * fan * fan_path

    def _open_air_temp_c(self, ambient: AmbientConditions) -> float:
        if self.kind == "greenhouse":
            return ambient.temp_c
        return ambient.temp_c + OPEN_SURFACE_HEATING_K_PER_W_M2 * ambient.solar_w_m2

    @staticmethod
    def _ambient_vapour_kg_m3(ambient: AmbientConditions, at_temp_c: float) -> float:
        """Outside air's water vapour per m³ once brought to ``at_temp_c`` (same pressure)."""
        return vapour_density_kg_m3(at_temp_c, saturation_vapour_pressure_kpa(ambient.temp_c)
                                    * ambient.rh_pct / 100.0)

    @staticmethod
    def _covered(ambient: AmbientConditions) -> bool:
        return ambient.raining or ambient.solar_w_m2 < OPEN_COVER_BELOW_W_M2
