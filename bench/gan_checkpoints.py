"""Score every kept checkpoint of GAN runs on the shapes set, as bench/gan_budget.py scores a run's last one: does a
run's figure belong to the run, or to the moment its budget ended?

Each checkpoint gets a run folder of its own under --work (links to the run's files and to that one checkpoint), so
sampling reads it as it reads a run's newest (pixelforge.load); then SAMPLES images, seeds 0..n-1, labels balanced,
scored with the Inception extractor against the set's first --real shapes (gan_budget.Scorer: FID, KID,
precision/recall with k = 3, pairs covered by palette). Results are printed, one line a checkpoint, and saved as
--out (JSON).

Usage:
    .venv/bin/python bench/gan_checkpoints.py RUN_DIR [RUN_DIR ...] --out scores.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):  # run from a checkout without `pip install -e .`; sibling bench modules
    if _p not in sys.path:
        sys.path.insert(0, _p)

from gan_budget import DEFAULT_REAL, DEFAULT_SAMPLES, Scorer, sample_run  # noqa: E402  (bench/gan_budget.py)
from pixelforge.train.checkpoint import list_checkpoints  # noqa: E402

FIGURES = ("fid", "kid", "precision", "recall", "pairs_covered")


def checkpoint_runs(run_dir: Path, work: Path) -> list[Path]:
    """One folder per kept checkpoint of run_dir, oldest first: work/RUN-step_N holding links to the run's own files
    and to that checkpoint alone (its .safetensors and .json), which is then the folder's newest."""
    folders = []
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        folder = work / f"{run_dir.name}-{ckpt.stem}"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "checkpoints").mkdir(parents=True)
        for f in run_dir.iterdir():
            if f.is_file():
                os.symlink(f.resolve(), folder / f.name)
        for suffix in (".safetensors", ".json"):
            os.symlink(ckpt.with_suffix(suffix).resolve(), folder / "checkpoints" / (ckpt.stem + suffix))
        folders.append(folder)
    return folders


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="GAN run folders trained on shapes")
    p.add_argument("--work", default="/tmp/pixelforge-gan-checkpoints", help="where the per-checkpoint folders go")
    p.add_argument("--out", default=str(BENCH / "results" / "gan_checkpoints.json"))
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    p.add_argument("--real", type=int, default=DEFAULT_REAL, help="real images scored against: the set's first")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    from pixelforge.device import pick_device

    device = str(pick_device(args.device))
    scorer = Scorer(device, args.real)
    scores = {}
    for run in map(Path, args.runs):
        for folder in checkpoint_runs(run, Path(args.work)):
            fake, _ = sample_run(folder, args.samples, device)
            scores[folder.name] = scorer(fake)
            print(folder.name, "  ".join(f"{k} {scores[folder.name][k]:.3f}" for k in FIGURES), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(scores, indent=1))
    return scores


if __name__ == "__main__":
    main()
