#!/usr/bin/env bash
# The GPU call in one command (benchmarks/gpu.py says what it runs, in which order, in which time):
#
#   bash benchmarks/gpu.sh [--out DIR] [--budget SECONDS] [--only STAGE,...] [--dry-run]
#
# fla is not on the GPU image and the machine has no package index: bring its wheels in the
# ignored folder .whl/ (fetched once here, where pip reaches the index) and carry it along:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0
# einops and triton are on the image. Afterwards, here: python benchmarks/gpu.py --collect FILES_AT
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python3 benchmarks/gpu.py "$@"
