#!/usr/bin/env bash
# Fill a wheelhouse with every wheel the image needs (torch 2.13.0, the project's
# dependencies with its pipeline extra, and setuptools/wheel to build the project), so the
# image build installs with --no-index and needs no network inside the container.
#   docker/wheelhouse.sh OUT_DIR [PYTHON]
# PYTHON (default python3.11) must be CPython 3.11 on Linux x86_64, like the image; its pip
# decides which torch build is taken (on this machine class, the local CPU build).
set -euo pipefail
out="${1:?usage: docker/wheelhouse.sh OUT_DIR [PYTHON]}"
py="${2:-python3.11}"
cd "$(dirname "$0")/.."
stamp="$out/.inputs"
inputs="$(sha256sum pyproject.toml docker/wheelhouse.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "wheelhouse: $out is up to date ($(ls "$out"/*.whl | wc -l) wheels)"
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
echo "wheelhouse: building wheels into $out with $py"
# The CPU build of torch, asked for by its local version: a plain torch==2.13.0 resolves to
# the CUDA build on PyPI (several GB of CUDA libraries in a "CPU" image). Where the +cpu wheel
# is not on a find-links path, point pip at PyTorch's CPU index, e.g.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make wheelhouse
if ! "$py" -m pip wheel -q --wheel-dir "$out" "torch==2.13.0+cpu" ".[pipeline]" "setuptools>=68" wheel; then
  echo "wheelhouse: could not get torch==2.13.0+cpu (the CPU build); set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
  exit 1
fi
if ls "$out" | grep -qiE '^(nvidia|triton)[-_]'; then
  echo "wheelhouse: CUDA wheels in the CPU wheelhouse: $(ls "$out" | grep -iE '^(nvidia|triton)[-_]' | tr '\n' ' ')" >&2
  exit 1
fi
rm -f "$out"/lcron_pipelines-*.whl  # the project is installed from its source in the image
echo "$inputs" > "$stamp"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)"
