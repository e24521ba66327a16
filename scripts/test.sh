#!/usr/bin/env bash
# Set everything up, then run every check: ruff, yamllint and ansible-lint, the pytest suite
# (unit, integration, e2e), and the molecule scenarios on real systemd containers.
# FFRTMP_SKIP_MOLECULE=1 leaves the molecule scenarios out (CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web console's tests drive a real headless Chromium (test-only, so not in setup.sh).
if ! command -v chromium >/dev/null; then
  SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing system packages: chromium" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
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
