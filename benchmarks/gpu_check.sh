#!/usr/bin/env bash
# The GPU check of the interactive-speed issue, as one short script: the fast preset and the default edit
# at 512 px, 16 frames, fp16, with sd15-random (random weights: cost does not depend on their values),
# seconds per frame and peak GPU memory each (benchmarks/speed.py).
#
#   bash benchmarks/gpu_check.sh wheels   # here, with pip and the package index: the packages a bare GPU
#                                         # machine lacks, as wheels for its Python 3.12, into .whl/
#   bash benchmarks/gpu_check.sh          # there: install .whl/ if present, then run the check
#
# Results go to stdout and, where $OUT is set, to $OUT/gpu_check.md. About 2-4 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "wheels" ]]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for pin in diffusers av open_clip_torch ftfy wcwidth huggingface_hub peft transformers; do
    spec=$(grep -i -E "^${pin//_/[-_]}==" requirements.lock)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$spec"
  done
  du -sh .whl
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 benchmarks/speed.py --device cuda --dtype fp16 --size 512 --frames 16 --steps 10 \
  --settings default,fast | tee "${OUT:-/tmp}/gpu_check.md"
