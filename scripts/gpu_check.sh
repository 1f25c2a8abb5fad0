#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run sized for a short lease (about 5 minutes on an H200):
#   1. the GPU tests (tests/train/test_gpu.py: fused head loss in bf16/fp32, packing under SDPA on CUDA,
#      bf16 training against CPU fp32 with and without Liger, MFU/peak memory in the log);
#   2. bench/train.py on a Qwen2-0.5B-shaped model (random weights: no network there), HF Trainer +
#      PEFT vs instructglm, bf16, batch 16: tokens/s, MFU and peak GPU memory of both.
# Prepare here with `bash scripts/gpu_wheels.sh`, then on the GPU machine: `bash scripts/gpu_check.sh`
# with .whl carried. Results go to $OUT (or /tmp/gpu-check): device.txt, tests.log, train-gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
PY=${PYTHON:-python3}  # the image's python3 holds PyTorch there
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import sys, torch, transformers, peft, accelerate, datasets
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
} 2>&1 | tee "$OUT/device.txt"
"$PY" -m pytest -q -p no:cacheprovider tests/train/test_gpu.py 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
"$PY" bench/train.py --model "${BENCH_MODEL:-random:qwen2-0.5b}" --steps "${BENCH_STEPS:-30}" --batch-size 16 --out "$OUT/train-gpu.json" \
  > "$OUT/bench.log" 2>&1
bench=$?
tail -40 "$OUT/bench.log"
echo "gpu_check: tests exit $tests, bench exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
