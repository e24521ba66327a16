#!/usr/bin/env bash
# Soak: the chaos run (tests/integration/test_chaos.py) for longer, with more jobs.
#   bash bench/soak.sh [SECONDS] [JOBS] [SEED]      defaults: 1800 s, 1200 jobs, a random seed
# Prints the chaos events and the outcome counts; exits non-zero if any invariant broke
# (a job lost or not terminal, two runs of one job overlapping, a workload failure retried).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
jobs=${2:-1200}
seed=${3:-$RANDOM}
echo "soak: ${seconds}s of chaos, ${jobs} jobs, seed ${seed}" >&2
FFRTMP_CHAOS_SECONDS=$seconds FFRTMP_CHAOS_JOBS=$jobs FFRTMP_CHAOS_SEED=$seed \
  exec .venv/bin/pytest -q -s -p no:cacheprovider tests/integration/test_chaos.py
