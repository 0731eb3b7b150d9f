#!/usr/bin/env bash
# Build one project image with a message that names what to fix when the engine or the
# base image is missing.   docker/build.sh DOCKERFILE IMAGE_REF BASE_IMAGE [NETWORK]
# NETWORK (default none) is the build's network: the CPU image installs from wheelhouse/
# only; the GPU image needs the package indexes (host).
set -euo pipefail
dockerfile="${1:?usage: docker/build.sh DOCKERFILE IMAGE_REF BASE_IMAGE}"
ref="${2:?}"
base="${3:?}"
network="${4:-none}"
cd "$(dirname "$0")/.."
[ -f "$dockerfile" ] || { echo "image: $dockerfile does not exist" >&2; exit 2; }
if ! docker info >/dev/null 2>&1; then
  echo "image: no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}; install and start one" \
       "(apt-get install docker.io; dockerd --iptables=false --ip-masq=false --bridge=none &), see docs/docker.md" >&2
  exit 2
fi
if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull "$base" >/dev/null 2>&1; then
  echo "image: base image $base is neither local nor pullable (registry unreachable?); make a local one with" \
       "'make base-image' and build with 'make image BASE_IMAGE=lcron-base:bookworm'" >&2
  exit 2
fi
if grep -q "COPY wheelhouse" "$dockerfile" && [ ! -d wheelhouse ]; then
  echo "image: wheelhouse/ is missing; run 'make wheelhouse' first" >&2
  exit 2
fi
start=$(date +%s)
docker build --network "$network" --build-arg "BASE_IMAGE=$base" -f "$dockerfile" -t "$ref" .
size=$(docker image inspect --format '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')
echo "image: built $ref from $base in $(( $(date +%s) - start )) s ($size)"
