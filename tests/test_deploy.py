"""The Raspberry Pi install scripts, systemd units and journald settings in deploy/.

The scripts run for real into a temporary DESTDIR (every file written, with its mode; the
commands that change the machine — apt-get, useradd, pip, systemctl — printed and skipped),
and with --dry-run (nothing written at all). The units are checked key by key and with
``systemd-analyze verify`` in a private root."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cacao_dryer.cli import build_parser
from firmware.config import load_node_config
from gateway.backup import run_backup
from gateway.config import InfluxDB1Storage, SqliteStorage, load_gateway_config

ROOT = Path(__file__).parent.parent
PI = ROOT / "deploy" / "raspberry-pi"
UNITS = ROOT / "deploy" / "systemd"
NODE_UNIT = ROOT / "firmware" / "systemd" / "cacao-dryer-node.service"
SCRIPTS = sorted(PI.glob("*.sh"))
GATEWAY_DATA = "/var/lib/cacao-dryer/gateway"


def install(script: str, destdir: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DESTDIR"}
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
    return subprocess.run(["bash", str(PI / script), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(path.read_text())
    return parser


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the scripts ------------------------------------------------------------------------------

def test_scripts_are_valid_strict_bash() -> None:
    assert {path.name for path in SCRIPTS} >= {"install-node.sh", "install-gateway.sh",
                                               "common.sh", "sd-writes.sh"}
    for path in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        if path.name != "common.sh":  # sourced: it takes the caller's options
            assert "set -euo pipefail" in path.read_text(), path.name
            assert os.access(path, os.X_OK), f"{path.name} is not executable"
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is needed (scripts/bootstrap.sh installs it)"
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout


def test_gateway_install_writes_its_files_with_the_right_modes(tmp_path: Path) -> None:
    done = install("install-gateway.sh", tmp_path)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "etc" / "cacao-dryer" / "gateway.toml"
    assert mode(config) == 0o640 and mode(config.parent) == 0o750
    for folder, wanted in ((GATEWAY_DATA, 0o750), ("/var/lib/cacao-dryer", 0o750),
                           ("/var/backups/cacao-dryer", 0o700)):
        assert mode(tmp_path / folder.lstrip("/")) == wanted, folder
    for name in ("cacao-dryer-gateway.service", "cacao-dryer-dashboard.service",
                 "cacao-dryer-backup.service", "cacao-dryer-backup.timer"):
        installed = tmp_path / "etc" / "systemd" / "system" / name
        assert installed.read_bytes() == (UNITS / name).read_bytes() and mode(installed) == 0o644
    journald = tmp_path / "etc" / "systemd" / "journald.conf.d" / "cacao-dryer.conf"
    assert journald.read_bytes() == (ROOT / "deploy" / "journald" / "cacao-dryer.conf"
                                     ).read_bytes()
    # Nothing of the machine was touched: each such command was only named.
    for command in ("useradd",
                    "python3 -m venv /opt/cacao-dryer/venv",
                    "/opt/cacao-dryer/venv/bin/pip install --upgrade --quiet "
                    "cacao-dryer[gateway]",
                    "systemctl enable cacao-dryer-gateway.service",
                    "systemctl enable --now cacao-dryer-backup.timer"):
        assert f"skipped (DESTDIR): {command}" in done.stdout, command
    assert "+ " not in done.stdout


@pytest.mark.parametrize("example", ["sqlite", "influxdb1", "postgres"])
def test_gateway_config_comes_from_the_example_with_this_machines_folders(
        tmp_path: Path, example: str) -> None:
    done = install("install-gateway.sh", tmp_path, "--example", example)
    assert done.returncode == 0, done.stderr
    settings = load_gateway_config(tmp_path / "etc" / "cacao-dryer" / "gateway.toml")
    assert str(settings.data_dir) == GATEWAY_DATA
    if isinstance(settings.storage, SqliteStorage):
        assert settings.storage.path == Path(GATEWAY_DATA) / "readings.sqlite3"
    else:
        assert isinstance(settings.storage, InfluxDB1Storage)
    if example == "postgres":
        assert settings.metadata.url.startswith("postgresql+psycopg://")
        assert str(settings.metadata.password_file) == "/etc/cacao-dryer/postgres-password"
        assert "cacao-dryer[gateway,postgres]" in done.stdout
    else:
        assert settings.metadata.url == f"sqlite:///{GATEWAY_DATA}/metadata.sqlite3"
    if settings.mqtt.password_file is not None:
        assert str(settings.mqtt.password_file) == "/etc/cacao-dryer/mqtt-password"
    # The unit runs the gateway on this very file, and may write its data_dir.
    service = unit(UNITS / "cacao-dryer-gateway.service")["Service"]
    assert shlex.split(service["ExecStart"])[-2:] == ["--config", "/etc/cacao-dryer/gateway.toml"]
    assert GATEWAY_DATA.startswith(service["ReadWritePaths"] + "/")
    assert f"/var/lib/{service['StateDirectory']}" == GATEWAY_DATA


def test_running_again_keeps_the_operators_config(tmp_path: Path) -> None:
    assert install("install-gateway.sh", tmp_path).returncode == 0
    config = tmp_path / "etc" / "cacao-dryer" / "gateway.toml"
    config.write_text(config.read_text() + '\n# edited by the technician\n')
    again = install("install-gateway.sh", tmp_path, "--example", "postgres")
    assert again.returncode == 0, again.stderr
    assert "kept /etc/cacao-dryer/gateway.toml (exists; never overwritten)" in again.stdout
    assert config.read_text().endswith("# edited by the technician\n")


def test_node_install_takes_a_provisioned_config_or_an_example(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle-node.toml"
    bundle.write_text((ROOT / "firmware" / "examples" / "pi-loadcell-relay.toml").read_text())
    given = install("install-node.sh", tmp_path / "given", "--config", str(bundle))
    assert given.returncode == 0, given.stderr
    installed = tmp_path / "given" / "etc" / "cacao-dryer" / "node.toml"
    assert installed.read_bytes() == bundle.read_bytes() and mode(installed) == 0o640
    unit_file = tmp_path / "given" / "etc" / "systemd" / "system" / "cacao-dryer-node.service"
    assert unit_file.read_bytes() == NODE_UNIT.read_bytes()
    assert "cacao-dryer[node,pi]" in given.stdout
    assert "skipped (DESTDIR): systemctl enable cacao-dryer-node.service" in given.stdout

    example = install("install-node.sh", tmp_path / "example")
    assert example.returncode == 0, example.stderr
    settings = load_node_config(tmp_path / "example" / "etc" / "cacao-dryer" / "node.toml")
    # The node's unit keeps its state where the config says.
    assert str(settings.data_dir) == f"/var/lib/{unit(NODE_UNIT)['Service']['StateDirectory']}"
    assert mode(tmp_path / "example" / "var" / "lib" / "cacao-dryer") == 0o750


def test_dry_run_writes_nothing_and_says_every_step(tmp_path: Path) -> None:
    for script, config in (("install-gateway.sh", "gateway.toml"),
                           ("install-node.sh", "node.toml")):
        done = install(script, tmp_path, "--dry-run")
        assert done.returncode == 0, done.stderr
        assert list(tmp_path.iterdir()) == [], f"{script} --dry-run wrote files"
        assert done.stdout.startswith("dry run: nothing is changed")
        assert f"would write /etc/cacao-dryer/{config}" in done.stdout
        assert "would create folder /var/lib/cacao-dryer (mode 0750, cacao-dryer:cacao-dryer)" \
            in done.stdout
        assert "would run: systemctl daemon-reload" in done.stdout
        assert "would install /etc/systemd/journald.conf.d/cacao-dryer.conf" in done.stdout


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    for script, args, message in (
            ("install-gateway.sh", ["--example", "mysql"],
             "error: --example must be sqlite, influxdb1 or postgres, not mysql"),
            ("install-node.sh", ["--example", "pi-zero"], "error: no example pi-zero; choose "
             "one of: pi-dht11-servo pi-dht22-probe-pwm pi-loadcell-relay"),
            ("install-node.sh", ["--colour"], "error: unknown option --colour (see --help)"),
            ("install-node.sh", ["--config", str(tmp_path / "missing.toml")],
             f"error: {tmp_path / 'missing.toml'}: no such file")):
        done = install(script, tmp_path, *args)
        assert done.returncode == 2, (script, args)
        assert done.stderr.strip() == message
    assert list(tmp_path.iterdir()) == []


def test_sd_writes_measures_a_running_process() -> None:
    """The tool docs/deploy.md uses for the bytes a service writes a day."""
    writer = subprocess.Popen(["python3", "-c", "import os, time\n"
                               "with open(os.devnull, 'wb') as sink:\n"
                               "    while True:\n"
                               "        sink.write(b'x' * 1000); time.sleep(0.01)"])
    try:
        done = subprocess.run(["bash", str(PI / "sd-writes.sh"), "--pid", str(writer.pid),
                               "--seconds", "1", "--speed", "2"], capture_output=True,
                              text=True, timeout=30)
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 0, done.stderr
    handed = float(done.stdout.split("MB written to disk (write_bytes), ")[1].split()[0])
    # At most 1 kB every 10 ms for 1 s, scaled to a day at twice the speed: at most
    # 100 kB x 43,200 = 4,320 MB a day handed to write().
    assert 500 < handed <= 4320, done.stdout


# --- the units --------------------------------------------------------------------------------

def test_gateway_unit_restarts_and_is_locked_down() -> None:
    parsed = unit(UNITS / "cacao-dryer-gateway.service")
    service = parsed["Service"]
    assert service["Restart"] == "always" and 1 <= int(service["RestartSec"]) <= 30
    assert int(parsed["Unit"]["StartLimitBurst"]) >= 5
    assert int(parsed["Unit"]["StartLimitIntervalSec"]) >= 60
    # The same user as the node (one user on a machine that runs both).
    assert service["User"] == unit(NODE_UNIT)["Service"]["User"] == "cacao-dryer"
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ReadWritePaths", "/var/lib/cacao-dryer"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")):
        assert service[key] == value, key
    # The gateway tells systemd it is ready and alive (tests/test_gateway_runtime.py proves it).
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 30


def test_backup_timer_runs_a_valid_backup_command_nightly() -> None:
    timer = unit(UNITS / "cacao-dryer-backup.timer")["Timer"]
    assert timer["OnCalendar"].startswith("*-*-* ") and timer["Persistent"] == "true"
    service = unit(UNITS / "cacao-dryer-backup.service")["Service"]
    assert service["Type"] == "oneshot" and service["User"] == "cacao-dryer"
    command = shlex.split(service["ExecStart"])
    assert command[0] == "/opt/cacao-dryer/venv/bin/cacao-dryer"
    args = build_parser().parse_args(command[1:])  # the real command line
    assert args.handler is run_backup
    assert str(args.config) == "/etc/cacao-dryer/gateway.toml" and args.keep == 14
    assert str(args.dest_dir) in service["ReadWritePaths"].split()


def test_journald_is_capped_for_the_sd_card() -> None:
    journal = unit(ROOT / "deploy" / "journald" / "cacao-dryer.conf")["Journal"]
    assert journal["Storage"] in ("persistent", "volatile")
    assert journal["SystemMaxUse"] == "64M" and journal["RuntimeMaxUse"].endswith("M")


def test_systemd_accepts_every_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` in a private root holding the units, the system's own units
    and stand-ins for the venv's programs: no warning at all."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (package systemd) is needed"
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)
    programs = tmp_path / "opt" / "cacao-dryer" / "venv" / "bin"
    programs.mkdir(parents=True)
    for name in ("cacao-dryer", "python"):
        (programs / name).write_text("#!/bin/sh\n")
        (programs / name).chmod(0o755)
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for source in (*UNITS.iterdir(), NODE_UNIT):
        shutil.copy(source, units / source.name)
    result = subprocess.run([analyze, "verify", f"--root={tmp_path}",
                             *map(str, sorted(units.iterdir()))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
