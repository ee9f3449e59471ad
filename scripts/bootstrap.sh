#!/usr/bin/env bash
# Install everything this project needs on Debian/Raspberry Pi OS (bookworm). Idempotent and
# quick when nothing changed. Used by scripts/demo.sh, scripts/test.sh and .ci/run, so a fresh
# machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Mosquitto (the broker the tests and the demo start privately), InfluxDB
# 1.x (Debian's `influxdb`, what Raspberry Pi OS installs; tests start private influxd's),
# PostgreSQL's server binaries (tests initdb and start a private cluster) and Chromium (the
# dashboard's browser tests drive it headless; no browser is ever downloaded at run time).
apt_packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_packages+=(mosquitto)
command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || apt_packages+=(influxdb)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_packages+=(postgresql)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
command -v shellcheck >/dev/null 2>&1 || apt_packages+=(shellcheck)          # deploy/ scripts
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)        # unit checks
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3 python3-venv)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${apt_packages[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${apt_packages[@]}" >/dev/null
fi

# Python: a virtualenv in .venv with the project (editable) and its test/demo extras.
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.cacao-dryer-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages (pip)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[node,gateway,dev,demo]"
  echo "$want" > "$stamp"
fi
