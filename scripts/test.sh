#!/usr/bin/env bash
# Set everything up, then run the linters and the whole test suite (unit, integration, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
