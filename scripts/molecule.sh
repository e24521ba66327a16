#!/usr/bin/env bash
# Run the molecule scenarios (molecule/<name>) on real systemd containers under podman.
#   bash scripts/molecule.sh                 every scenario, MOLECULE_JOBS (default 3) at a time
#   bash scripts/molecule.sh redis agent     just those
#   MOLECULE_DESTROY=never bash scripts/molecule.sh fleet   keep the containers to look at
# Installs what it needs first: podman, runc and debootstrap (apt), the Ansible tools (the
# venv's deploy extra), the collections molecule's podman driver and the PKI role need (from the
# `ansible` wheel: Galaxy is not reachable from CI), the Debian 12 systemd image, and the
# wheelhouse the common role installs from.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x .venv/bin/molecule ] || bash scripts/setup.sh

# Plain logs: they are read by people and grepped below.
export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0
export CONTAINERS_CONF="$root/molecule/containers.conf"
export PATH="$root/.venv/bin:$PATH"

# Collections from the ansible wheel (kept in .ansible/collections, ignored by git).
collections=.ansible/collections/ansible_collections
if [ ! -d "$collections/containers/podman" ] || [ ! -d "$collections/ansible/posix" ] \
  || [ ! -d "$collections/community/crypto" ]; then
  tmp=$(mktemp -d)
  python -m pip download -q --no-deps --dest "$tmp" 'ansible==12.3.0' 2>/dev/null
  python - "$tmp"/ansible-12.3.0-py3-none-any.whl <<'PY'
import sys, zipfile
wanted = {("containers", "podman"), ("ansible", "posix"), ("community", "crypto")}
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        parts = name.split("/")
        if parts[0] == "ansible_collections" and len(parts) > 3 and (parts[1], parts[2]) in wanted:
            z.extract(name, ".ansible/collections")
PY
  rm -rf "$tmp"
fi

# MOLECULE_PREPARE_ONLY=1: just the tools and collections (for ansible-lint).
if [ "${MOLECULE_PREPARE_ONLY:-0}" = 1 ]; then exit 0; fi

# The Debian mirror this machine's apt uses (never a hard-coded host).
mirror=$( (apt-get indextargets --format '$(REPO_URI) $(CODENAME) $(TARGET_OF)' 2>/dev/null || true) \
  | awk '$2 == "bookworm" && $3 == "deb" && !found {print $1; found = 1}')
mirror=${mirror%/}
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }

# The systemd image: Debian 12 minbase with systemd and Python, from that mirror.
image=localhost/ffrtmp-debian12
if ! podman image exists "$image"; then
  echo "building $image from $mirror (about a minute)" >&2
  rootfs=$(mktemp -d)
  $SUDO debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,sudo,iproute2,procps,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
  $SUDO tar -C "$rootfs" -c . | podman import \
    --change 'CMD ["/lib/systemd/systemd"]' --change 'ENV container=podman' \
    --change 'STOPSIGNAL SIGRTMIN+3' - "$image" >/dev/null
  $SUDO rm -rf "$rootfs"
fi

bash scripts/build-wheelhouse.sh
# The fleet scenario upgrades the same code across two versions (local version suffixes).
base=$(sed -n -E 's/^version = "([^"+]+).*"$/\1/p' pyproject.toml)
export FFRTMP_TEST_V1="$base+up1" FFRTMP_TEST_V2="$base+up2"
for v in "$FFRTMP_TEST_V1" "$FFRTMP_TEST_V2"; do FFRTMP_WHEEL_VERSION=$v bash scripts/build-wheelhouse.sh; done

# The ffmpeg-source scenario builds the upstream release Debian ships (the mirror's copy of
# the upstream archive: ffmpeg.org is not reachable here), pinned by its checksum.
ver=$(apt-cache policy ffmpeg 2>/dev/null | awk '/Candidate:/ {print $2}' | sed -E 's/^[0-9]+://; s/-.*//')
export FFRTMP_TEST_FFMPEG_VERSION="$ver"
export FFRTMP_TEST_FFMPEG_URL="$mirror/pool/main/f/ffmpeg/ffmpeg_$ver.orig.tar.xz"
archive=dist/ffmpeg_$ver.orig.tar.xz
[ -s "$archive" ] || python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
  "$FFRTMP_TEST_FFMPEG_URL" "$archive"
export FFRTMP_TEST_FFMPEG_CHECKSUM="sha256:$(sha256sum "$archive" | cut -d' ' -f1)"

if [ $# -gt 0 ]; then
  scenarios=("$@")
else
  # The longest first, so the parallel run ends sooner.
  scenarios=(fleet ffmpeg-source agent coordinator prometheus alertmanager redis common logrotate ffmpeg gpu_drivers grafana)
fi
logs=dist/molecule-logs
mkdir -p "$logs"
jobs=${MOLECULE_JOBS:-3}
start=$(date +%s)
failed=$logs/failed
: > "$failed"
printf '%s\n' "${scenarios[@]}" | xargs -P "$jobs" -I{} bash -c '
  s={}; t0=$(date +%s)
  if molecule test -s "$s" --destroy "${MOLECULE_DESTROY:-always}" > "'"$logs"'/$s.log" 2>&1; then r=passed; else r=FAILED; echo "$s" >> "'"$failed"'"; fi
  echo "molecule $s: $r in $(( $(date +%s) - t0 )) s" >&2' || true
echo "molecule: ${#scenarios[@]} scenario(s) in $(( $(date +%s) - start )) s (logs in $logs)" >&2
if [ -s "$failed" ]; then
  while read -r s; do
    # The failed tasks with what they said, then how the scenario ended.
    echo "==== $s: failed tasks (from $logs/$s.log)" >&2
    grep -n -A 30 -E '(fatal|failed): \[' "$logs/$s.log" | head -n 120 >&2 || true
    echo "==== $s: last lines" >&2
    tail -n 15 "$logs/$s.log" >&2
  done < "$failed"
  exit 1
fi
