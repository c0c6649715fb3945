#!/usr/bin/env bash
# The commands that trained the committed shapes model (editing/assets/shapes-model), with its step counts.
# About 4 hours on 2 CPU cores. Every stage resumes from WORK if interrupted; run again to continue.
#
#   bash scripts/train_shapes_model.sh WORK [OUT]      # OUT defaults to editing/assets/shapes-model
#
# Step counts can be overridden: VAE_STEPS, UNET_STEPS, DECODER_STEPS, CONTROL_STEPS, and the UNet's
# continuation: MORE_PLAIN, MORE_MINSNR, MORE_LOWLR (steps of each of its three phases).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bash scripts/train_shapes_model.sh WORK [OUT]}
out=${2:-editing/assets/shapes-model}
py=${PYTHON:-.venv/bin/python}
VAE_STEPS=${VAE_STEPS:-4200}
UNET_STEPS=${UNET_STEPS:-5800}
MORE_PLAIN=${MORE_PLAIN:-1800}
MORE_MINSNR=${MORE_MINSNR:-5800}
MORE_LOWLR=${MORE_LOWLR:-1000}
DECODER_STEPS=${DECODER_STEPS:-2000}
CONTROL_STEPS=${CONTROL_STEPS:-1000}
train=("$py" -m shapes_world.train --vae-channels 32,64,64 --latent-channels 8 --unet-channels 64,128,128 --text-width 64)
only() {  # the step flags that run one stage
  local stage=$1 steps=$2 flags=(--vae-steps 0 --unet-steps 0 --decoder-steps 0 --control-steps 0)
  for i in "${!flags[@]}"; do [ "${flags[$i]}" = "--$stage-steps" ] && flags[$((i + 1))]=$steps; done
  echo "${flags[@]}"
}

# 1. The autoencoder, on both cores.
"${train[@]}" --out "$work/vae-model" --work "$work/vae" $(only vae "$VAE_STEPS") --threads 2

# 2. UNet + text encoder (batch 32), on both cores.
"${train[@]}" --init "$work/vae-model" --out "$work/unet-model" --work "$work/unet" $(only unet "$UNET_STEPS") --threads 2

# 2b. Continued from the saved (averaged) UNet with a fresh optimiser, in three phases sharing one work
#     folder (each resumes the previous phase's checkpoint: --unet-steps counts from the saved folder's
#     steps): plain loss, then Min-SNR-5 weighting, then the same at a fifth of the learning rate.
more=(--init "$work/unet-model" --out "$work/unet-more-model" --work "$work/unet-more" --threads 2)
"${train[@]}" "${more[@]}" $(only unet "$MORE_PLAIN")
"${train[@]}" "${more[@]}" $(only unet $((MORE_PLAIN + MORE_MINSNR))) --snr-gamma 5
"${train[@]}" "${more[@]}" $(only unet $((MORE_PLAIN + MORE_MINSNR + MORE_LOWLR))) --snr-gamma 5 --unet-lr 1e-4

# 3. The Canny ControlNet on one core and, on the other, the decoder alone (the encoder, so the latents
#    the UNet and ControlNet learnt on, stays fixed); then the two are joined into OUT (--vae-from checks
#    that the encoder is the same) and the quality figure is measured.
"${train[@]}" --init "$work/unet-more-model" --out "$work/control-model" --work "$work/control" $(only control "$CONTROL_STEPS") --threads 1 &
control=$!
"${train[@]}" --init "$work/vae-model" --out "$work/decoder-model" --work "$work/decoder" $(only decoder "$DECODER_STEPS") --threads 1 &
decoder=$!
wait "$control"
wait "$decoder"
"${train[@]}" --init "$work/control-model" --vae-from "$work/decoder-model" --out "$out" --work "$work/join" $(only none 0)
"$py" -m shapes_world.quality --model "$out" --per-caption 4 --sheet "$out/held-out-samples.png" --json "$out/quality.json"
