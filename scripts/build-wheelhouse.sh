#!/usr/bin/env bash
# Build dist/wheelhouse (and the same as dist/wheelhouse.tar): the ffrtmp wheel and every wheel it depends on, for the common role
# to copy to hosts and install with no package index (ffrtmp_common_package_source=wheelhouse).
# The hosts need CPython 3.11 (Debian 12) on x86_64.
# FFRTMP_WHEEL_VERSION=0.1.0+b2 builds the same code under another version into
# dist/wheelhouse-<version>.tar (the molecule fleet scenario upgrades across two versions).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python3
src=.
out=dist/wheelhouse
tarball=dist/wheelhouse.tar
if [ -n "${FFRTMP_WHEEL_VERSION:-}" ]; then
  out=dist/wheelhouse-$FFRTMP_WHEEL_VERSION
  tarball=$out.tar
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  # What the wheel is built from, and only that: the test suite may be writing elsewhere in
  # the tree meanwhile (scripts/test.sh runs molecule beside it), which a copy of "." would
  # read half-written. Bytecode is left out (a Python import may write it during the copy).
  tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md ffrtmp agent coordinator \
    | tar -C "$src" -xf -
  sed -i -E "s/^version = \".*\"$/version = \"$FFRTMP_WHEEL_VERSION\"/" "$src/pyproject.toml"
fi
rm -rf "$out.tmp"
SOURCE_DATE_EPOCH=315532800 "$py" -m pip wheel -q --wheel-dir "$out.tmp" "$src" 2>&1 | grep -v "^WARNING: Location" >&2 || true
# pip evaluates dependency markers for the controller's Python only. Debian 12's Python is
# 3.11.2, where redis also needs async-timeout (python_full_version < "3.11.3"): add it.
"$py" -m pip download -q --no-deps --only-binary=:all: --dest "$out.tmp" 'async-timeout>=4.0.3' 2>&1 | grep -v "^WARNING: Location" >&2 || true
rm -rf "$out"
mv "$out.tmp" "$out"
# One file for the common role to copy (a directory copy costs a transfer per wheel).
tar -C "$out" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tarball" .
echo "wheelhouse: $out and $tarball ($(ls "$out" | wc -l) wheels)" >&2
