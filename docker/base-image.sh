#!/usr/bin/env bash
# Make a local Python 3.11 base image (Debian bookworm, minbase + python3-venv) for machines
# that cannot pull python:3.11-slim from a public registry. Needs root, debootstrap and a
# reachable Debian mirror; the image is made with `docker import` (no registry involved).
#   docker/base-image.sh NAME:TAG [MIRROR]
set -euo pipefail
name="${1:?usage: docker/base-image.sh NAME:TAG [MIRROR]}"
mirror="${2:-http://deb.debian.org/debian}"
if ! docker info >/dev/null 2>&1; then
  echo "base-image: no Docker engine answers (start one: dockerd --iptables=false --ip-masq=false --bridge=none &, see docs/docker.md)" >&2
  exit 2
fi
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base-image: $name already exists (docker rmi $name to rebuild it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "base-image: debootstrap needs root" >&2; exit 2; }
rootfs="$(mktemp -d /tmp/lcron-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap bookworm from $mirror into $rootfs"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1; then
  tail -n 20 "$rootfs.log" >&2
  echo "base-image: debootstrap failed (is the Debian mirror $mirror reachable? pass another as MIRROR)" >&2
  exit 1
fi
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$name"
echo "base-image: $name ($(docker image inspect --format '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
