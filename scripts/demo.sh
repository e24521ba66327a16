#!/usr/bin/env bash
# Set everything up, then start a local fleet (embedded Redis, coordinator, agent), generate a
# 1080p clip, transcode it to 720p with live progress, print where the output is, and stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ffrtmp demo "$@"
