#!/usr/bin/env bash
# The demo: a simulated collection center (broker + simulated dryers + live view).
# Extra arguments go to `cacao-dryer demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/cacao-dryer demo "$@"
