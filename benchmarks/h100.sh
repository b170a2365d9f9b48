#!/usr/bin/env bash
# The benchmarks issue's GPU acceptance run: ~110M parameters (d=768, 12 layers, 12 heads,
# vocab 32,000, SwiGLU 2048; ../shared/ANCHORS.md), 65,536 tokens per step, bf16 autocast, eager.
#
#   bash benchmarks/h100.sh STAGE
#
# STAGE (each fits one 10-minute command; run them in this order):
#   headline  T = 32,768 and 1,048,576, every variant side by side, plus one profiled step of
#             plasticlm's segment trainer, the same model under full autograd and the Transformer
#   sweep     T = 1,024, 4,096, 16,384, 131,072
#   infer     prefill and generation at batch 1 and 64, memory against context up to 1M
#   paths     the memory's naive / chunk / kernel paths at T = 4,096
#   foundation  every GPU-marked test (fla kernel vs chunk path on outputs, final state and all
#             gradients, in fp32 and bf16), then peak training memory against T = 8k ... 1M
#             (benchmarks/memory_flat.py --preset base)
#
# fla (for the GLA and Mamba-2 baselines and plasticlm's kernel path) is not on the GPU image;
# fetch its wheels once on a machine with an index, into the ignored folder .whl/:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0
# and carry .whl to the GPU machine; this script installs them (einops is on the image).
#
# Results: DATE_HARDWARE_h100_STAGE.{json,md}, PNGs and profiles, rewritten after every job
# (an OOM is a row, not a crash) in benchmarks/results, or in $OUT/results where the device tool
# sets $OUT, so a command cut off at its limit still returns what it measured. Rerunning a stage
# with its JSON in benchmarks/results resumes it (--resume): copy $OUT/results/* there first.
# BENCH_EXTRA adds flags, e.g. BENCH_EXTRA="--job-seconds 10 --variants plasticlm-rev/segment,transformer/full".
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-headline}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import fla" 2>/dev/null || echo "h100.sh: fla is not importable: GLA / Mamba-2 fall back to backend=torch, plasticlm to its chunk path" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

res=benchmarks/results
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/results"
  cp benchmarks/results/*"_$stage.json" "$OUT/results/" 2>/dev/null || true
  res="$OUT/results"
fi
# shellcheck disable=SC2206
bench=(python3 -m plasticlm.cli bench --preset h100 --tag "$stage" --out "$res" --resume --no-progress
       --time-budget 480 ${BENCH_EXTRA:-})
case "$stage" in
  headline) "${bench[@]}" --suite train --seq-lens 32768,1048576 ;;
  sweep) "${bench[@]}" --suite train --seq-lens 1024,4096,16384,131072 --profile "" ;;
  infer) "${bench[@]}" --suite infer ;;
  paths) "${bench[@]}" --suite paths ;;
  foundation)
    # shellcheck disable=SC2046
    python3 -m pytest -q -m gpu -s -rs $(grep -rl "mark.gpu" tests) 2>&1 | tee "$res/gpu_tests.log"
    python3 benchmarks/memory_flat.py --preset base --device cuda --out "$res" ;;
  *) echo "usage: bash benchmarks/h100.sh headline|sweep|infer|paths|foundation" >&2; exit 2 ;;
esac
