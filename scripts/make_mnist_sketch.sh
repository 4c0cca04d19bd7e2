#!/usr/bin/env bash
# Train the mnist-sketch model (edge map or hand drawing -> digit) and export it as a bundled model.
# It is the mnist-diffusion network (docs: pixelforge/assets/models/mnist-diffusion/MODEL.md) with the
# Canny edge map of each digit as its condition instead of the label; 10 % of the edge maps are dropped
# in training (--label-dropout, the family's condition dropout) so guidance works. The number of steps
# comes from a time budget (--minutes): a few timed steps choose the steps, warm-up, EMA and precision.
#   MINUTES      the time budget (default 45; the bundled model was made with 45 on a 2-core CPU)
#   STEPS        a fixed number of optimiser steps instead of MINUTES (e.g. 9000, as mnist-diffusion)
#   MAX_MINUTES  with STEPS: a wall-clock budget for this call; run the script again to continue
#   RUNS_DIR     where the run is kept (default ./runs)
#   EXPORT=0     train only; 1 (default) then writes the EMA weights to pixelforge/assets/models/mnist-sketch
#   PIXELFORGE   the command to run (default .venv/bin/pixelforge; e.g. "python -m pixelforge.cli")
# Running it again resumes the run where its last checkpoint left off.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-45}
RUNS_DIR=${RUNS_DIR:-runs}
EXPORT=${EXPORT:-1}
read -ra PIXELFORGE <<< "${PIXELFORGE:-.venv/bin/pixelforge}"
budget=(--minutes "$MINUTES")
if [ -n "${STEPS:-}" ]; then
  budget=(--steps "$STEPS" --ema-decay 0.999 --val-every 500 --sample-every 1000 --ckpt-every 500 --log-every 50)
  if [ -n "${MAX_MINUTES:-}" ]; then budget+=(--max-minutes "$MAX_MINUTES"); fi
fi

"${PIXELFORGE[@]}" train mnist --model diffusion --name mnist-sketch --runs-dir "$RUNS_DIR" --condition edges --no-labels \
  --batch-size 64 --lr 5e-4 --base-channels 32 --channel-mult 1,2,2 --num-res-blocks 1 --label-dropout 0.1 \
  --seed 0 "${budget[@]}"
if [ "$EXPORT" = 1 ]; then
  "${PIXELFORGE[@]}" export mnist-sketch pixelforge/assets/models/mnist-sketch --runs-dir "$RUNS_DIR"
fi
