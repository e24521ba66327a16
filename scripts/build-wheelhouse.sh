#!/usr/bin/env bash
# Build dist/wheelhouse: the ffrtmp wheel and every wheel it depends on, for the common role
# to copy to hosts and install with no package index (ffrtmp_common_package_source=wheelhouse).
# Built for the controller's Python; the hosts need the same Python minor version (Debian 12:
# 3.11) and CPU architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
py=".venv/bin/python"
[ -x "$py" ] || py=python3
out=dist/wheelhouse
rm -rf "$out.tmp"
"$py" -m pip wheel -q --wheel-dir "$out.tmp" . >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "wheelhouse: $out ($(ls "$out" | wc -l) wheels)" >&2
