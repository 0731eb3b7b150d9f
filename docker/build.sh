#!/usr/bin/env bash
# Build one project image with a message that names what to fix when the engine or the
# base image is missing.   docker/build.sh DOCKERFILE IMAGE_REF BASE_IMAGE [NETWORK] [WHEELHOUSE]
# The build context is a fresh folder holding only what the images take: pyproject.toml,
# README.md, lcron/ and WHEELHOUSE (default wheelhouse/) as wheelhouse/ (hard links, so a
# GPU wheelhouse of several GB is not copied, and the CPU build never ships it).
# NETWORK (default none) is the build's network: the CPU image installs from its wheelhouse
# only; the GPU image also takes gcc from the base's Debian mirror (host).
set -euo pipefail
dockerfile="${1:?usage: docker/build.sh DOCKERFILE IMAGE_REF BASE_IMAGE [NETWORK] [WHEELHOUSE]}"
ref="${2:?}"
base="${3:?}"
network="${4:-none}"
wheels="${5:-wheelhouse}"
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
if [ ! -f "$wheels/.inputs" ]; then
  echo "image: $wheels/ is missing or incomplete; run 'make wheelhouse' (CPU) or 'make wheelhouse-gpu' first" >&2
  exit 2
fi
mkdir -p build
ctx="$(mktemp -d build/docker-context.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
cp pyproject.toml README.md "$ctx/"
cp -r lcron "$ctx/lcron"
find "$ctx/lcron" -name __pycache__ -prune -exec rm -rf {} +
cp -al "$wheels" "$ctx/wheelhouse" 2>/dev/null || cp -r "$wheels" "$ctx/wheelhouse"
start=$(date +%s)
docker build --network "$network" --build-arg "BASE_IMAGE=$base" -f "$dockerfile" -t "$ref" "$ctx"
size=$(docker image inspect --format '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')
echo "image: built $ref from $base in $(( $(date +%s) - start )) s ($size)"
