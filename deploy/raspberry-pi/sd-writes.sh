#!/usr/bin/env bash
# How many bytes a running cacao-dryer service writes to the SD card per day.
#
#   sudo deploy/raspberry-pi/sd-writes.sh                       # the node, over 10 minutes
#   sudo deploy/raspberry-pi/sd-writes.sh --unit cacao-dryer-gateway --seconds 3600
#   deploy/raspberry-pi/sd-writes.sh --pid 1234 --seconds 144 --speed 600   # simulated node
#
# Reads the process's own counters in /proc/<pid>/io twice: write_bytes is the page cache it
# dirtied (what reaches the card, in 4 KiB pages), wchar what it handed to write(). The
# difference, scaled to 24 hours (and divided by --speed for a simulated node whose clock runs
# faster), is printed. journald's own writes (the service's log lines) are not included:
# see docs/deploy.md#sd-card.
set -euo pipefail

unit=cacao-dryer-node
pid=""
seconds=600
speed=1

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --unit) unit=$2; shift 2 ;;
    --pid) pid=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --speed) speed=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$pid" ]; then
  pid=$(systemctl show --property MainPID --value "$unit")
  if [ -z "$pid" ] || [ "$pid" = 0 ]; then
    echo "error: $unit is not running (systemctl status $unit)" >&2
    exit 1
  fi
fi

counter() {  # counter NAME: one value from /proc/<pid>/io
  awk -v key="$1:" '$1 == key { print $2 }' "/proc/$pid/io"
}

if ! [ -r "/proc/$pid/io" ]; then
  echo "error: cannot read /proc/$pid/io (not running, or run this with sudo)" >&2
  exit 1
fi
written_before=$(counter write_bytes)
handed_before=$(counter wchar)
sleep "$seconds"
written_after=$(counter write_bytes)
handed_after=$(counter wchar)

awk -v w=$((written_after - written_before)) -v c=$((handed_after - handed_before)) \
    -v s="$seconds" -v x="$speed" -v p="$pid" 'BEGIN {
  day = 86400 / (s * x)
  printf "pid %s over %s s (x%s): write_bytes %d, wchar %d\n", p, s, x, w, c
  printf "per day: %.1f MB written to disk (write_bytes), %.1f MB passed to write()\n",
         w * day / 1e6, c * day / 1e6
}'
