#!/usr/bin/env bash
# The demo: a whole collection center on this machine — a private Mosquitto broker, simulated
# dryers on accelerated time, the gateway (SQLite) and the dashboard on http://127.0.0.1:8080,
# with one login per role printed on the console. Ctrl-C stops everything.
# Extra arguments go to `cacao-dryer demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/cacao-dryer demo "$@"
