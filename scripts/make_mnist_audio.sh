#!/usr/bin/env bash
# Make the mnist-audio model (a spoken digit -> an image of that digit) and export it as a bundled model:
#   1. the spoken-digit set: espeak-ng speaks "zero".."nine" in 7 English voices x 5 variants x 2 speeds x
#      2 pitches (1,400 clips at 8 kHz); the voices en-029 and en-gb-x-gbcwmd are held out for testing
#      (scripts/make_spoken_digits.py; its manifest.json records the recipe);
#   2. the audio encoder: a small CNN on log-mel spectrograms trained as a spoken-digit classifier on the
#      training voices, its held-out-voice accuracy printed (pixelforge audio-encoder);
#   3. the diffusion model: the mnist-diffusion recipe (base width 32, 1-2-2, batch 64, P_mean -1.2), started
#      from the bundled mnist-diffusion (--init-from: every weight but the label embedding), with the
#      frozen encoder's embedding of a training clip of each image's digit as its only condition (a new clip
#      drawn every step), 10 % of the clips dropped (--label-dropout) so guidance works;
#   4. `pixelforge export` into pixelforge/assets/models/mnist-audio, and held-out-voice accuracy
#      (bench/audio_digits.py) written into the model's card.
#   STEPS        diffusion optimiser steps in all (default 3000)
#   ENCODER_STEPS  audio encoder steps (default 1500)
#   MAX_MINUTES  a wall-clock budget for the diffusion training of this call (default: none); run the script
#                again to continue (the set and the encoder are made once and then reused)
#   RUNS_DIR     where the run, the set (RUNS_DIR/spoken-digits) and the encoder (RUNS_DIR/mnist-audio-encoder) go
#   EXPORT=0     train only; 1 (default) then exports and benchmarks
#   BENCH_IMAGES images per held-out clip in the benchmark (default 1: 400 images)
#   BENCH_ARGS   more options for bench/audio_digits.py (e.g. --quick: 20 clips, for a smoke run)
#   PIXELFORGE   the command to run (default .venv/bin/pixelforge; e.g. "python -m pixelforge.cli")
#   PYTHON       the interpreter for the scripts (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-3000}
ENCODER_STEPS=${ENCODER_STEPS:-1500}
RUNS_DIR=${RUNS_DIR:-runs}
EXPORT=${EXPORT:-1}
BENCH_IMAGES=${BENCH_IMAGES:-1}
read -ra PYTHON <<< "${PYTHON:-.venv/bin/python}"
read -ra PIXELFORGE <<< "${PIXELFORGE:-.venv/bin/pixelforge}"
SET="$RUNS_DIR/spoken-digits"
ENCODER="$RUNS_DIR/mnist-audio-encoder"
OUT=pixelforge/assets/models/mnist-audio
budget=()
if [ -n "${MAX_MINUTES:-}" ]; then budget=(--max-minutes "$MAX_MINUTES"); fi

if [ ! -f "$SET/manifest.json" ]; then
  "${PYTHON[@]}" scripts/make_spoken_digits.py "$SET"
fi
if [ ! -f "$ENCODER/model.safetensors" ]; then
  "${PIXELFORGE[@]}" audio-encoder "$SET" -o "$ENCODER" --steps "$ENCODER_STEPS" --seed 0
fi
"${PIXELFORGE[@]}" train mnist --model diffusion --name mnist-audio --runs-dir "$RUNS_DIR" --condition audio \
  --audio-encoder "$ENCODER" --audio-set "$SET" --no-labels --init-from mnist-diffusion \
  --steps "$STEPS" --batch-size 64 --lr 5e-4 --base-channels 32 --channel-mult 1,2,2 --num-res-blocks 1 \
  --label-dropout 0.1 --ema-decay 0.999 --val-every 500 --sample-every 500 --ckpt-every 250 --log-every 50 \
  --seed 0 --set P_mean=-1.2 --precision auto "${budget[@]}"
if [ "$EXPORT" = 1 ]; then
  echo '{"guidance": 2.0}' > "$RUNS_DIR/mnist-audio/sample_defaults.json"
  "${PIXELFORGE[@]}" export mnist-audio "$OUT" --runs-dir "$RUNS_DIR"
  # the card (MODEL.md) states the recipe, the licences and the figures just measured
  "${PYTHON[@]}" bench/audio_digits.py "$OUT" --audio-set "$SET" --images "$BENCH_IMAGES" --json "$OUT/bench.json" \
    --card "$OUT/MODEL.md" --recipe-steps "$STEPS" ${BENCH_ARGS:-}
fi
