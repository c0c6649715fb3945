#!/usr/bin/env bash
# The GPU check, as one short script: every number a GPU user needs, at 512 px, 16 frames, fp16, with
# sd15-random (random weights: cost does not depend on their values):
#   1. benchmarks/speed.py: seconds per output frame, UNet evaluations and peak GPU memory for every-frame,
#      the default (keyframes 8), fast and fast+keyframes, with and without the step cache (DeepCache);
#   2. benchmarks/gpu_peers.py: the first look (seconds from request to the first edited frame for
#      "Preview first frame" and "Fast preview", with and without the step cache), and the same clip
#      through diffusers' AnimateDiffVideoToVideoPipeline (random motion adapter) and Text2Video-Zero's
#      processor, as the peers' rows.
#
#   bash benchmarks/gpu_check.sh wheels   # here, with pip and the package index: the packages a bare GPU
#                                         # machine lacks, as wheels for its Python 3.12, into .whl/
#   bash benchmarks/gpu_check.sh          # there: install .whl/ if present, then run the check
#
# Results go to stdout and, where $OUT is set, to $OUT/gpu_check.md, $OUT/gpu_peers.md and the JSON of both
# (copy them to benchmarks/results/ for the docs). Meant to finish in one call of at most 8 minutes.
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
out=${OUT:-/tmp}
python3 benchmarks/speed.py --device cuda --dtype fp16 --size 512 --frames 16 --steps 10 \
  --settings every-frame,every-frame+deepcache-3,default,default+deepcache-3,fast,fast+deepcache-2,fast-keyframes-8 \
  --json "$out/speed-gpu.json" | tee "$out/gpu_check.md"
python3 benchmarks/gpu_peers.py --device cuda --dtype fp16 --size 512 --frames 16 --steps 10 --step-cache deepcache:3 \
  --json "$out/peers-gpu.json" | tee "$out/gpu_peers.md"
