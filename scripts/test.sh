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
# line and branch coverage of the three packages, subprocesses included (pyproject.toml)
.venv/bin/pytest -q -p no:cacheprovider --cov --cov-report=term "$@"
.venv/bin/python scripts/coverage_by_package.py
if [ "${FFRTMP_SKIP_MOLECULE:-0}" != 1 ]; then
  bash scripts/molecule.sh
fi
