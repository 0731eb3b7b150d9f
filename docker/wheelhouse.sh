#!/usr/bin/env bash
# Fill a wheelhouse with exactly the files of an image's lock (docker/lock-VARIANT.txt, made
# by `make lock`; every file checked against its sha256), so the image build installs with
# --no-index and needs no network inside the container.
#   docker/wheelhouse.sh OUT_DIR [PYTHON] [VARIANT]
# VARIANT cpu (default): torch 2.13.0+cpu, no CUDA library; it comes from a find-links folder
# (this machine class has it on disk) or from PyTorch's CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make wheelhouse
# VARIANT gpu: torch 2.13.0 from the package index, the CUDA 13.0 build, with its CUDA
# libraries as pinned wheels (several GB). PYTHON must be CPython 3.11 on Linux x86_64, like
# the images.
set -euo pipefail
out="${1:?usage: docker/wheelhouse.sh OUT_DIR [PYTHON] [VARIANT]}"
py="${2:-python3.11}"
variant="${3:-cpu}"
cd "$(dirname "$0")/.."
lock="docker/lock-$variant.txt"
[ -f "$lock" ] || { echo "wheelhouse: no $lock; run make lock" >&2; exit 1; }
stamp="$out/.inputs"
inputs="$(sha256sum "$lock" docker/wheelhouse.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "wheelhouse: $out is up to date ($(ls "$out"/*.whl | wc -l) wheels from $lock)"
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
echo "wheelhouse: $variant wheels of $lock into $out with $py"
opts=(--require-hashes --no-deps)
if [ "$variant" = gpu ]; then
  # The package index only: a local CPU torch on a find-links path must not be taken.
  opts+=(--isolated)
fi
if ! env -u PIP_CONSTRAINT "$py" -m pip wheel -q "${opts[@]}" --wheel-dir "$out" -r "$lock"; then
  [ "$variant" = cpu ] && echo "wheelhouse: for torch==2.13.0+cpu set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
  exit 1
fi
if [ "$variant" = cpu ] && ls "$out" | grep -qiE '^(nvidia|cuda|triton)[-_]'; then
  echo "wheelhouse: CUDA wheels in the CPU wheelhouse: $(ls "$out" | grep -iE '^(nvidia|cuda|triton)[-_]' | tr '\n' ' ')" >&2
  exit 1
fi
echo "$inputs" > "$stamp"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)"
