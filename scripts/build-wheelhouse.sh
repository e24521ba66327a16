#!/usr/bin/env bash
# Build dist/wheelhouse: the ffrtmp wheel and every wheel it depends on, for the common role
# to copy to hosts and install with no package index (ffrtmp_common_package_source=wheelhouse).
# The hosts need CPython 3.11 (Debian 12) on x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
py=".venv/bin/python"
[ -x "$py" ] || py=python3
out=dist/wheelhouse
rm -rf "$out.tmp"
"$py" -m pip wheel -q --wheel-dir "$out.tmp" . >&2
# pip evaluates dependency markers for the controller's Python only. Debian 12's Python is
# 3.11.2, where redis also needs async-timeout (python_full_version < "3.11.3"): add it.
"$py" -m pip download -q --no-deps --only-binary=:all: --dest "$out.tmp" 'async-timeout>=4.0.3' >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "wheelhouse: $out ($(ls "$out" | wc -l) wheels)" >&2
