#!/usr/bin/env bash
# Train mnist-sketch-adapter (a ControlNet-style adapter that steers the bundled mnist-diffusion by an edge map
# or a hand drawing) and export it as a bundled model. The base stays frozen: its labels still work, and a
# sketch adds the shape (`pixelforge sample mnist-sketch-adapter --sketch drawing.png --label 3`). The settings
# are those of scripts/make_mnist_sketch.sh (batch 64, lr 5e-4, EMA 0.999, 10 % of the conditions dropped so
# guidance contrasts sketch and no sketch) on the base's own data, the bundled MNIST digits, with Canny edges.
#   STEPS        optimiser steps in all (default 3000)
#   MINUTES      a time budget for the whole run instead of STEPS (default: none; trains until it is spent,
#                over as many calls as it takes)
#   MAX_MINUTES  a wall-clock budget for this call (default: none); run the script again to continue
#   RUNS_DIR     where the run is kept (default ./runs)
#   EXPORT=0     train only; 1 (default) then writes the EMA weights, base and adapter in one
#                model.safetensors, to pixelforge/assets/models/mnist-sketch-adapter
#   PIXELFORGE   the command to run (default .venv/bin/pixelforge; e.g. "python -m pixelforge.cli")
# Running it again resumes the run where its last checkpoint left off.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3000}
RUNS_DIR=${RUNS_DIR:-runs}
EXPORT=${EXPORT:-1}
read -ra PIXELFORGE <<< "${PIXELFORGE:-.venv/bin/pixelforge}"
budget=(--steps "$STEPS")
if [ -n "${MINUTES:-}" ]; then budget=(--minutes "$MINUTES"); fi
if [ -n "${MAX_MINUTES:-}" ]; then budget+=(--max-minutes "$MAX_MINUTES"); fi

"${PIXELFORGE[@]}" train mnist-diffusion --adapter edges --edge-detector canny --name mnist-sketch-adapter \
  --runs-dir "$RUNS_DIR" --batch-size 64 --lr 5e-4 --label-dropout 0.1 --ema-decay 0.999 --val-every 500 \
  --sample-every 500 --ckpt-every 500 --log-every 50 --seed 0 "${budget[@]}"
if [ "$EXPORT" = 1 ]; then
  "${PIXELFORGE[@]}" export mnist-sketch-adapter pixelforge/assets/models/mnist-sketch-adapter --runs-dir "$RUNS_DIR"
fi
