"""The one table of measurements a dryer node reports.

Each row drives the MQTT payload field, its validation range, the InfluxDB field (later) and
the dashboard label key. Adding a measurement = adding one row here.

Ranges are *physical plausibility* ranges: a value outside is a sensor fault, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    key: str          # payload / database field name, unit in the name
    unit: str         # unit shown to people
    minimum: float    # physically plausible range (inclusive)
    maximum: float
    label: str        # translation key for dashboards
    description: str  # one line for docs and JSON Schema


MEASUREMENTS: tuple[Measurement, ...] = (
    # DHT22 datasheet range is -40..80 °C; a solar dryer never sees below -10 °C in Peru.
    Measurement("air_temp_c", "°C", -10.0, 90.0, "air_temperature",
                "Air temperature inside the dryer, above the beans"),
    Measurement("air_rh_pct", "%", 0.0, 100.0, "air_humidity",
                "Relative humidity of the air inside the dryer"),
    Measurement("ambient_temp_c", "°C", -10.0, 60.0, "ambient_temperature",
                "Outside (ambient) air temperature, in the shade"),
    Measurement("ambient_rh_pct", "%", 0.0, 100.0, "ambient_humidity",
                "Outside (ambient) air relative humidity"),
    Measurement("bean_moisture_pct_wb", "% w.b.", 0.0, 80.0, "bean_moisture",
                "Bean moisture content, wet basis"),
    Measurement("moisture_probe_v", "V", -0.5, 6.5, "moisture_probe_voltage",
                "Raw moisture-probe voltage (for calibration against a hand meter)"),
    Measurement("tray_mass_kg", "kg", 0.0, 200.0, "tray_mass",
                "Mass of the load-cell sample tray's beans"),
)

MEASUREMENTS_BY_KEY: dict[str, Measurement] = {m.key: m for m in MEASUREMENTS}
