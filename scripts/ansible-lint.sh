#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) with the collections molecule.sh extracts.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_COLLECTIONS_PATH="$PWD/.ansible/collections"
if [ ! -d .ansible/collections/ansible_collections/containers/podman ] \
  || [ ! -d .ansible/collections/ansible_collections/community/crypto ]; then
  MOLECULE_PREPARE_ONLY=1 bash scripts/molecule.sh
fi
exec .venv/bin/ansible-lint -q
