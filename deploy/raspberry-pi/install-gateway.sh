#!/usr/bin/env bash
# Install the collection center's gateway on Raspberry Pi OS (bookworm, 64-bit), as root, from
# a clone of this repository. Safe to run again (upgrades the package, keeps your config).
#
#   sudo deploy/raspberry-pi/install-gateway.sh [options]
#
#   --example NAME    config to start from: sqlite (default: readings and metadata in SQLite,
#                     nothing else to set up), influxdb1 (readings in InfluxDB 1.x), or
#                     postgres (metadata in PostgreSQL, readings in InfluxDB 1.x)
#   --config FILE     install this gateway.toml instead; never replaces an existing one
#   --from SPEC       what pip installs: a wheel, a source folder or a PyPI version spec
#                     (default: cacao-dryer from PyPI)
#   --no-mosquitto    the broker runs elsewhere: do not install Mosquitto
#   --start           start the gateway now (default: enabled, started at the next boot)
#   --dry-run         print what would be done, change nothing
#
# It installs python3-venv and Mosquitto (InfluxDB and PostgreSQL when the example needs
# them), creates the system user cacao-dryer (no login shell), /opt/cacao-dryer/venv with
# cacao-dryer[gateway] (and [postgres]), /etc/cacao-dryer/gateway.toml (mode 0640
# root:cacao-dryer, only if absent; data_dir /var/lib/cacao-dryer/gateway), the data and
# backup folders owned by cacao-dryer, the systemd units (gateway; nightly backup timer) and
# a size-capped journal. Setting up Mosquitto's logins, InfluxDB and PostgreSQL: docs/deploy.md.
# DESTDIR=/some/folder puts the files there and skips system commands (tests).
set -euo pipefail
# shellcheck source=deploy/raspberry-pi/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GATEWAY_DATA=$DATA_DIR/gateway
BACKUPS=/var/backups/cacao-dryer
config=""
example=sqlite
mosquitto=1
START=0
while [ $# -gt 0 ]; do
  case "$1" in
    --example) example=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --from) SPEC=$2; shift 2 ;;
    --no-mosquitto) mosquitto=0; shift ;;
    --start) START=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option $1 (see --help)" ;;
  esac
done
case "$example" in
  sqlite) extras=gateway; packages=() ;;
  influxdb1) extras=gateway; packages=(influxdb influxdb-client) ;;
  postgres) extras=gateway,postgres; packages=(influxdb influxdb-client postgresql) ;;
  *) fail "--example must be sqlite, influxdb1 or postgres, not $example" ;;
esac
if [ -n "$config" ]; then
  [ -f "$config" ] || fail "$config: no such file"
  # A PostgreSQL URL in the given config needs the driver.
  grep -q '^url *= *"postgresql' "$config" && extras=gateway,postgres
fi
need_root "$@"
[ "$DRY_RUN" = 1 ] && say "dry run: nothing is changed"
check_machine

packages=(python3-venv "${packages[@]}")
[ "$mosquitto" = 1 ] && packages+=(mosquitto mosquitto-clients)
apt_install "${packages[@]}"
# shellcheck disable=SC2119  # no extra groups for the gateway
service_user
make_dir /opt/cacao-dryer 0755 root root
python_env "$extras"
make_dir "$CONFIG_DIR" 0750 root "$SERVICE_USER"
if [ -n "$config" ]; then
  put_config "$config" "$CONFIG_DIR/gateway.toml"
else
  # The example with this machine's folders: data in /var/lib/cacao-dryer/gateway, secrets
  # beside the config in /etc/cacao-dryer.
  put_config "$REPO/gateway/examples/$example.toml" "$CONFIG_DIR/gateway.toml" \
    "s|^data_dir *=.*|data_dir = \"$GATEWAY_DATA\"   # spool, SQLite databases, queues|; s|/etc/cacao-gateway/|$CONFIG_DIR/|g"
fi
make_dir "$DATA_DIR" 0750 "$SERVICE_USER" "$SERVICE_USER"
make_dir "$GATEWAY_DATA" 0750 "$SERVICE_USER" "$SERVICE_USER"
make_dir "$BACKUPS" 0700 "$SERVICE_USER" "$SERVICE_USER"
for unit in cacao-dryer-gateway.service cacao-dryer-dashboard.service \
            cacao-dryer-backup.service cacao-dryer-backup.timer; do
  put_file "$REPO/deploy/systemd/$unit" "/etc/systemd/system/$unit" 0644 root root
done
journald_dropin
systemd_enable cacao-dryer-gateway.service
run systemctl enable --now cacao-dryer-backup.timer

say ""
say "Next (docs/deploy.md): set up the broker's logins (deploy/mosquitto/README.md)$(
  [ "$example" = sqlite ] || printf ', InfluxDB')$([ "$example" = postgres ] && printf ' and PostgreSQL'),"
say "check $CONFIG_DIR/gateway.toml, create the first administrator:"
say "  sudo -u $SERVICE_USER $VENV/bin/cacao-dryer user add --config $CONFIG_DIR/gateway.toml --username admin --role admin"
say "then: systemctl restart cacao-dryer-gateway; journalctl -u cacao-dryer-gateway -f"
