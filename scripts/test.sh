#!/usr/bin/env bash
# Set everything up, then run every check: ruff, yamllint and ansible-lint, the pytest suite
# (unit, integration, e2e), and the molecule scenarios on real systemd containers.
# FFRTMP_SKIP_MOLECULE=1 leaves the molecule scenarios out (CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/yamllint -s .
bash scripts/ansible-lint.sh
.venv/bin/pytest -q -p no:cacheprovider "$@"
if [ "${FFRTMP_SKIP_MOLECULE:-0}" != 1 ]; then
  bash scripts/molecule.sh
fi
