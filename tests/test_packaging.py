"""A node installs and loads only what a node needs (Pi Zero 2 W: small disk, 40 MB goal)."""

import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
SERVER_PACKAGES = ("fastapi", "uvicorn", "influxdb", "sqlalchemy", "alembic", "psycopg", "rich",
                   "typer")


def test_node_install_pulls_no_server_packages():
    project = PYPROJECT["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["node"] + \
        project["optional-dependencies"]["pi"]
    assert not [req for req in wanted if req.lower().startswith(SERVER_PACKAGES)]


def test_node_run_loads_no_server_or_terminal_ui_modules():
    code = ("import sys, cacao_dryer.cli, firmware.node; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout.split()
    assert not [name for name in loaded if name.startswith(SERVER_PACKAGES)]
    for hardware_library in ("adafruit_dht", "board", "adafruit_ads1x15", "hx711"):
        assert hardware_library not in loaded  # imported lazily, on a Pi only
