#!/usr/bin/env bash
# Wheels that the lent GPU machine's image lacks (it has PyTorch, transformers, peft, accelerate,
# triton, pandas, ... but no network), downloaded here into .whl/ (git-ignored) for Python 3.12 on
# x86-64 Linux, the image's Python: datasets and what it needs beyond the image (pyarrow >= 24 among
# them: 55 MB, so the carried tree stays under the device tool's 64 MiB), orjson, liger-kernel.
# Then run scripts/gpu_check.sh there with .whl carried.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/*.whl
for spec in datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 orjson liger-kernel==0.8.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
ls -l .whl
