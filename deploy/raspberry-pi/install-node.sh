#!/usr/bin/env bash
# Install a dryer node on Raspberry Pi OS (bookworm, 64-bit), as root, from a clone of this
# repository. Safe to run again (upgrades the package, keeps your config).
#
#   sudo deploy/raspberry-pi/install-node.sh [options]
#
#   --config FILE     install this node.toml (e.g. from `cacao-dryer node provision`)
#                     instead of an example; never replaces an existing one
#   --example NAME    example to start from (default pi-dht22-probe-pwm; see firmware/examples)
#   --from SPEC       what pip installs: a wheel, a source folder or a PyPI version spec
#                     (default: cacao-dryer from PyPI)
#   --start           start the node now (default: enabled, started at the next boot)
#   --dry-run         print what would be done, change nothing
#
# It installs python3-venv, creates the system user cacao-dryer (no login shell; groups gpio
# and i2c), /opt/cacao-dryer/venv with cacao-dryer[node,pi], /etc/cacao-dryer/node.toml
# (mode 0640 root:cacao-dryer, only if absent), /var/lib/cacao-dryer (the outbox, owned by
# cacao-dryer), the systemd unit (watchdog, restart) and a size-capped journal.
# DESTDIR=/some/folder puts the files there and skips system commands (tests).
set -euo pipefail
# shellcheck source=deploy/raspberry-pi/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config=""
example=pi-dht22-probe-pwm
START=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --example) example=$2; shift 2 ;;
    --from) SPEC=$2; shift 2 ;;
    --start) START=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option $1 (see --help)" ;;
  esac
done
if [ -z "$config" ]; then
  config="$REPO/firmware/examples/$example.toml"
  if [ ! -f "$config" ]; then
    known=$(cd "$REPO/firmware/examples" && for name in pi-*.toml; do printf '%s ' "${name%.toml}"; done)
    fail "no example $example; choose one of: $known"
  fi
fi
[ -f "$config" ] || fail "$config: no such file"
need_root "$@"
[ "$DRY_RUN" = 1 ] && say "dry run: nothing is changed"
check_machine

packages=(python3-venv python3-dev)
# lgpio's Python binding builds against liblgpio (Raspberry Pi OS's archive) when piwheels has
# no wheel for it.
if apt-cache show liblgpio-dev >/dev/null 2>&1; then
  packages+=(liblgpio-dev swig)
fi
apt_install "${packages[@]}"
service_user gpio i2c
make_dir /opt/cacao-dryer 0755 root root
python_env node,pi
make_dir "$CONFIG_DIR" 0750 root "$SERVICE_USER"
put_config "$config" "$CONFIG_DIR/node.toml"
make_dir "$DATA_DIR" 0750 "$SERVICE_USER" "$SERVICE_USER"
put_file "$REPO/firmware/systemd/cacao-dryer-node.service" \
  /etc/systemd/system/cacao-dryer-node.service 0644 root root
journald_dropin
systemd_enable cacao-dryer-node.service

say ""
say "Next: put the broker password in $CONFIG_DIR/mqtt-password (one line; mode 0640"
say "root:$SERVICE_USER), check node_id, site_id, sensors and pins in $CONFIG_DIR/node.toml:"
say "  $VENV/bin/cacao-dryer node check-config --config $CONFIG_DIR/node.toml"
say "then: systemctl restart cacao-dryer-node; journalctl -u cacao-dryer-node -f"
