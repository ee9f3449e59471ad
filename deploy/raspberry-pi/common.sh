# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this
# Shared by install-node.sh and install-gateway.sh (sourced, not run). Every step prints what
# it does; with --dry-run nothing changes and each step says what it would do. With DESTDIR
# set (tests, image builders), files go under $DESTDIR and commands that change the system
# (apt-get, useradd, pip, systemctl, chown) are printed and skipped.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVICE_USER=cacao-dryer         # the user the shipped units run as (firmware/systemd too)
VENV=/opt/cacao-dryer/venv
CONFIG_DIR=/etc/cacao-dryer
DATA_DIR=/var/lib/cacao-dryer
DRY_RUN=0
DESTDIR=${DESTDIR:-}
SPEC=""                          # what pip installs; each script sets its default

say() { printf '%s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 2; }

# run CMD...: a command that changes the system.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    say "would run: $*"
  elif [ -n "$DESTDIR" ]; then
    say "skipped (DESTDIR): $*"
  else
    say "+ $*"
    "$@"
  fi
}

# owner_args OWNER GROUP: install(1) ownership options, none under DESTDIR.
owner_args() {
  if [ -z "$DESTDIR" ]; then
    printf '%s\n' "-o" "$1" "-g" "$2"
  fi
}

# make_dir PATH MODE OWNER GROUP
make_dir() {
  local path=$1 mode=$2 owner=$3 group=$4
  if [ "$DRY_RUN" = 1 ]; then
    say "would create folder $path (mode $mode, $owner:$group)"
    return 0
  fi
  local -a owners
  mapfile -t owners < <(owner_args "$owner" "$group")
  install -d -m "$mode" "${owners[@]}" "$DESTDIR$path"
  say "folder $path (mode $mode, $owner:$group)"
}

# put_file SOURCE TARGET MODE OWNER GROUP: ours (units, drop-ins): replaced on every run.
put_file() {
  local source=$1 target=$2 mode=$3 owner=$4 group=$5
  [ -f "$source" ] || fail "$source is missing (run this script from a clone of the repository)"
  if [ "$DRY_RUN" = 1 ]; then
    say "would install $target from ${source#"$REPO"/} (mode $mode, $owner:$group)"
    return 0
  fi
  local -a owners
  mapfile -t owners < <(owner_args "$owner" "$group")
  install -D -m "$mode" "${owners[@]}" "$source" "$DESTDIR$target"
  say "installed $target (mode $mode)"
}

# put_config SOURCE TARGET [SED_SCRIPT]: the operator's file: written only if absent, never
# overwritten; mode 0640 root:cacao-dryer (the service reads it, cannot change it).
put_config() {
  local source=$1 target=$2 script=${3:-}
  [ -f "$source" ] || fail "$source is missing"
  if [ -e "$DESTDIR$target" ]; then
    say "kept $target (exists; never overwritten)"
    return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "would write $target from ${source#"$REPO"/} (mode 0640, root:$SERVICE_USER)"
    return 0
  fi
  local temporary
  temporary=$(mktemp)
  if [ -n "$script" ]; then
    sed -e "$script" "$source" > "$temporary"
  else
    cat "$source" > "$temporary"
  fi
  local -a owners
  mapfile -t owners < <(owner_args root "$SERVICE_USER")
  install -D -m 0640 "${owners[@]}" "$temporary" "$DESTDIR$target"
  rm -f "$temporary"
  say "wrote $target from ${source#"$REPO"/} (mode 0640, root:$SERVICE_USER): edit it"
}

# apt_install PACKAGE...: only what is missing.
apt_install() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present: $*"
    return 0
  fi
  run apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"
}

# service_user GROUP...: the system user the services run as (no login shell, no home
# to log into), in those of GROUPs that exist (gpio, i2c only on Raspberry Pi OS).
service_user() {
  local groups=() group
  for group in "$@"; do
    getent group "$group" >/dev/null && groups+=("$group")
  done
  if id "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
    if [ ${#groups[@]} -gt 0 ]; then
      run usermod --append --groups "$(IFS=,; echo "${groups[*]}")" "$SERVICE_USER"
    fi
    return 0
  fi
  local -a options=(--system --user-group --home-dir "$DATA_DIR" --no-create-home
                    --shell /usr/sbin/nologin)
  if [ ${#groups[@]} -gt 0 ]; then
    options+=(--groups "$(IFS=,; echo "${groups[*]}")")
  fi
  run useradd "${options[@]}" "$SERVICE_USER"
}

# python_env EXTRAS: /opt/cacao-dryer/venv with the package (SPEC: PyPI name, wheel or
# source folder) and its extras.
python_env() {
  local extras=$1 target
  case "$SPEC" in
    "") target="cacao-dryer[$extras]" ;;
    *.whl|/*|./*|../*) target="$(realpath -m "$SPEC")[$extras]" ;;
    *) target="${SPEC}[$extras]" ;;
  esac
  if [ ! -x "$DESTDIR$VENV/bin/python" ]; then
    run python3 -m venv "$VENV"
  else
    say "venv $VENV exists"
  fi
  run "$VENV/bin/pip" install --upgrade --quiet "$target"
}

# systemd_enable UNIT... : reload units, enable (start with START=1).
systemd_enable() {
  run systemctl daemon-reload
  if [ "${START:-0}" = 1 ]; then
    run systemctl enable --now "$@"
  else
    run systemctl enable "$@"
  fi
}

# journald: size-capped, persistent journal (docs/deploy.md#logs).
journald_dropin() {
  put_file "$REPO/deploy/journald/cacao-dryer.conf" \
    /etc/systemd/journald.conf.d/cacao-dryer.conf 0644 root root
  run systemctl try-restart systemd-journald
}

# Warnings about this machine (never changed by the script).
check_machine() {
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    [ "${VERSION_CODENAME:-}" = bookworm ] \
      || say "warning: made for Raspberry Pi OS / Debian bookworm; this is ${PRETTY_NAME:-unknown}"
  fi
  case "$(uname -m)" in
    aarch64) ;;
    *) say "warning: made for 64-bit Raspberry Pi OS (aarch64); this is $(uname -m)" ;;
  esac
  if command -v findmnt >/dev/null && ! findmnt -no OPTIONS / | grep -q noatime; then
    say "warning: / is mounted without noatime: every file read is also a write on the SD card (docs/deploy.md#sd-card)"
  fi
}

need_root() {
  if [ "$DRY_RUN" = 0 ] && [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    fail "run as root: sudo $0 $*"
  fi
}
