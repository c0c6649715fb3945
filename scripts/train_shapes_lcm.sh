#!/usr/bin/env bash
# The command that distilled the committed LCM-LoRA for the shapes model (editing/assets/shapes-lcm-lora).
# Resumes from WORK's checkpoint if interrupted (run again to continue); STEPS can be raised to continue a
# finished run. One thread at lowest priority, as it ran: on a shared 2-core machine.
#
#   bash scripts/train_shapes_lcm.sh WORK [OUT]      # OUT defaults to editing/assets/shapes-lcm-lora
#   INIT=FOLDER bash scripts/train_shapes_lcm.sh ...  # a new WORK starts from a saved LoRA folder (its steps)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bash scripts/train_shapes_lcm.sh WORK [OUT]}
out=${2:-editing/assets/shapes-lcm-lora}
py=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-1200}
BATCH=${BATCH:-8}
MINUTES=${MINUTES:-0}  # stop (saved, resumable) after this many minutes of wall time; 0 = run all STEPS
INIT=${INIT:-}  # a saved LoRA folder a new WORK starts from
OMP_NUM_THREADS=1 nice -n 19 "$py" -m shapes_world.train_lcm --out "$out" --work "$work" \
  --steps "$STEPS" --batch "$BATCH" --lr 1e-3 --warmup 20 --rank 16 --guidance 5 --threads 1 --checkpoint-every 100 --minutes "$MINUTES" --init "$INIT"
