#!/usr/bin/env bash
# The whole test suite: lint, schema drift, unit, property and integration tests (real
# Mosquitto started privately by the tests). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
