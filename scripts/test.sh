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
# The molecule scenarios run beside the pytest suite (their output is printed when both have
# ended): one after the other they took longer than CI's 90 minutes, and both are meant to pass
# on a busy machine.
molecule_pid=""
if [ "${FFRTMP_SKIP_MOLECULE:-0}" != 1 ]; then
  mkdir -p dist
  bash scripts/molecule.sh > dist/molecule.out 2>&1 &
  molecule_pid=$!
fi
status=0
# line and branch coverage of the three packages, subprocesses included (pyproject.toml)
.venv/bin/pytest -q -p no:cacheprovider --cov --cov-report=term "$@" || status=1
.venv/bin/python scripts/coverage_by_package.py || status=1
if [ -n "$molecule_pid" ]; then
  wait "$molecule_pid" || status=1
  cat dist/molecule.out
fi
exit "$status"
