"""The GAN within a time budget: `pixelforge train shapes --model gan --minutes M` for each budget M, a fresh run
each, then FID, KID and precision/recall (k=3) of its samples against the bundled shapes set.

Training: `pixelforge train shapes --model gan --minutes M --seed S --name gan-Mmin-sS` in a subprocess with
  --threads torch threads (OMP_NUM_THREADS); the planner (pixelforge/train/budget.py) chooses the network width,
  batch, augmentation, EMA and cadence; --extra adds arguments to every call (e.g. `--set diffaugment=...`, to
  compare a setting against the plan's) and --label names such a variant in the table. Each row records the
  steps made, images seen and training time (metrics.csv), the subprocess's wall and CPU seconds and the load
  average before and after, since on a shared machine a budget buys fewer steps under load.
Scoring: SAMPLES images per run, seeds 0..n-1, labels balanced over the six classes, through the public API
  (pixelforge.load(...).generate_tensor, the EMA generator), scored with the Inception extractor against the
  set's first --real shapes at 32x32 (default 1,000 of its 3,000: the features of all take about 8 CPU minutes
  at one thread; pixelforge.metrics.evaluate.evaluate_images, what `pixelforge evaluate` uses). A grid
  per run (a row of GRID_COLS per class) is saved in --out, and with --docs as docs/images/gan-budget-Mmin.png.
Results merge into --out/results.json keyed by label, budget and seed; --out/results.md is the table of all.

Usage:
    nice -n 19 .venv/bin/python bench/gan_budget.py --threads 1 --budgets 2,5,10,20 --docs
    nice -n 19 .venv/bin/python bench/gan_budget.py --threads 1 --budgets 5 --seeds 1
    .venv/bin/python bench/gan_budget.py --quick          # smoke run; figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):  # run from a checkout without `pip install -e .`; sibling bench modules
    if _p not in sys.path:
        sys.path.insert(0, _p)

from pixelforge.images import make_grid, to_pil  # noqa: E402
from pixelforge.metrics.evaluate import EvalOptions, balanced_labels, evaluate_images, to_uint8  # noqa: E402
from pixelforge.precision import describe_cpu  # noqa: E402
from pixelforge.progress import image_bar  # noqa: E402
# the helpers both budget benchmarks share: a budget as the command line takes it, a run's metrics.csv, results
# merged across invocations, a number or "-", a comma-separated option
from time_to_quality import _num, fmt, merge_results, parse_list, read_metrics  # noqa: E402,F401  (bench/time_to_quality.py)

DATA = "shapes"
GRID_COLS = 10
DEFAULT_BUDGETS = (2.0, 5.0, 10.0, 20.0)
DEFAULT_SAMPLES = 500
QUICK_BUDGETS = (0.1,)
QUICK_SAMPLES = 24
DEFAULT_REAL = 1000  # real images scored against: the set's first 1,000 (Inception on all 3,000 takes ~8 CPU minutes)
QUICK_REAL = 200  # real images a --quick run scores against
RECALL_GOAL = 0.3  # below this the samples miss most of the set's modes (the table marks it)
SHAPE_DISTANCE = 60.0  # RGB distance (0-255 levels) from the background beyond which a pixel counts as the shape's




def run_name(label: str, minutes: float, seed: int) -> str:
    return f"{label}-{fmt(minutes).replace('.', 'p')}min-s{seed}"


def row_key(label: str, minutes: float, seed: int) -> str:
    return f"{label}@{fmt(minutes)}/s{seed}"


def train_argv(minutes: float, seed: int, name: str, runs_dir: Path, extra: list[str], device: str = "auto") -> list[str]:
    """The `pixelforge` arguments of one budget run."""
    return ["train", DATA, "--model", "gan", "--minutes", fmt(minutes), "--seed", str(seed), "--name", name,
            "--runs-dir", str(runs_dir), "--device", device, *extra]




def read_plan(run_dir: Path) -> dict:
    """What the planner chose, from the run's config.json: width, depth, batch, augmentation, lr, EMA, precision
    (a run of another family, `--extra "--model diffusion"`, has no depth, augmentation or R1: None)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    model, train, optim = cfg["model"], cfg["train"], cfg["optim"]
    return {"base_channels": model["base_channels"], "depth": model.get("depth", 1), "batch_size": train["batch_size"],
            "diffaugment": model.get("diffaugment"), "r1_gamma": model.get("r1_gamma"), "lr": optim["lr"],
            "betas": [optim["beta1"], optim["beta2"]], "ema_decay": train["ema_decay"],
            "precision": train["precision"], "planned_steps": train["steps"]}


def exit_reason(rc: int, stderr_lines: list[str]) -> str | None:
    """Why a subprocess failed: its last stderr line, else the signal that ended it or its exit status (a run
    killed from outside writes no error line); None when it succeeded."""
    if rc == 0:
        return None
    if stderr_lines:
        return stderr_lines[-1]
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}, no error line"
        except ValueError:  # not a signal this platform names
            return f"killed by signal {-rc}, no error line"
    return f"exit status {rc}, no error line"


def run_pixelforge(argv: list[str], threads: int) -> dict:
    """One `pixelforge` call in a subprocess with `threads` torch threads: exit status, last error line, wall and
    CPU seconds (getrusage of children), load average before and after."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pixelforge.cli", *argv, "--quiet"], env=env,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line.strip() for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    return {"rc": proc.returncode, "error": exit_reason(proc.returncode, lines),
            "wall_s": round(wall, 1), "cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def palette_attributes(images: torch.Tensor) -> tuple[list[str], list[str]]:
    """The background and shape colour of each uint8 image (N, 3, H, W), named as the shapes set names them
    (pixelforge/data/shapes.py BACKGROUNDS and COLOURS): the background is the palette entry nearest the median of
    the image's outer ring of pixels; the shape colour the COLOURS entry nearest the median of the pixels more
    than SHAPE_DISTANCE from that median (an image without such pixels gets "none"). Plain nearest-colour
    rules: a noisy or blurred output still gets the names its colours are nearest."""
    from pixelforge.data.shapes import BACKGROUNDS, COLOURS

    bg_names, bg = list(BACKGROUNDS), torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)  # (4, 3)
    fg_names, fg = list(COLOURS), torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (9, 3)
    x = images.float()  # (N, 3, H, W)
    ring = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=2)  # (N, 3, 4H - 4)
    ring_colour = ring.median(dim=2).values  # (N, 3)
    backgrounds = [bg_names[i] for i in torch.cdist(ring_colour, bg).argmin(dim=1).tolist()]
    colours = []
    for img, c in zip(x, ring_colour):
        pixels = img.flatten(1).T  # (H*W, 3)
        far = pixels[(pixels - c).norm(dim=1) > SHAPE_DISTANCE]
        colours.append("none" if len(far) == 0 else fg_names[int(torch.cdist(far.median(dim=0).values[None], fg).argmin())])
    return backgrounds, colours


def coverage(fake: torch.Tensor, real: torch.Tensor) -> dict:
    """How many of the (background, shape colour) pairs of the real images (palette_attributes) the fake ones
    have: a direct count of modes, which collapse to one kind of image shows at once, where Inception's recall
    also asks each sample to look like a real shape to the pixel (docs/gan-budget.md). pairs_covered is the
    share of the real set's pairs found in at least one fake image; backgrounds and colours the numbers of each
    found (of 4 and 9)."""
    real_pairs = set(zip(*palette_attributes(real)))
    fake_bg, fake_fg = palette_attributes(fake)
    found = set(zip(fake_bg, fake_fg)) & real_pairs
    return {"pairs_covered": round(len(found) / max(1, len(real_pairs)), 3), "backgrounds": len(set(fake_bg)),
            "colours": len(set(fake_fg) - {"none"})}


class Scorer:
    """FID, KID and precision/recall of uint8 samples against the shapes set, with the Inception extractor."""

    def __init__(self, device: str, n_real: int):
        from pixelforge.evaluate import load_real
        from pixelforge.metrics.features import load_extractor

        self.extractor = load_extractor("inception", device=device)
        real = load_real(DATA, extractor=self.extractor, progress=False)  # (3000, 3, 32, 32) uint8
        self.real = real[:n_real]  # (n_real, 3, 32, 32)

    def __call__(self, fake: torch.Tensor) -> dict:
        figures = evaluate_images(fake, self.real, self.extractor, options=EvalOptions(), real_label=DATA)
        return {**{k: figures[k] for k in ("fid", "kid", "precision", "recall", "extractor", "n_fake", "n_real")},
                **coverage(fake, self.real)}


def sample_run(run_dir: Path, n: int, device: str) -> tuple[torch.Tensor, list[int] | None]:
    """n images (n, 3, 32, 32) uint8 of a run through the public API, seeds 0..n-1, labels balanced."""
    import pixelforge

    g = pixelforge.load(run_dir, device=device)
    labels = balanced_labels(n, g.num_classes)
    bar, callback = image_bar(n, f"sampling {run_dir.name}")
    images, _ = g.generate_tensor(n, labels=labels, seed=0, callback=callback)  # (n, 3, 32, 32) in [-1, 1]
    callback(n, n)  # the GAN reports no progress of its own: end the bar at n
    bar.close()
    return to_uint8(images), labels


def class_grid(images: torch.Tensor, labels: list[int] | None, cols: int = GRID_COLS):
    """A grid of uint8 images (N, C, H, W): a row of `cols` per class where labels are given, else 6 rows."""
    if labels:
        picked = [i for k in sorted(set(labels)) for i in [j for j, y in enumerate(labels) if y == k][:cols]]
    else:
        picked = list(range(min(len(images), 6 * cols)))
    return make_grid(to_pil(images[picked].float() / 127.5 - 1), cols=cols, scale=2)






def table(rows: dict[str, dict]) -> str:
    """A markdown table of the rows, by label, budget and seed; recall below RECALL_GOAL is marked."""
    lines = ["| config | budget min | seed | width (depth) | batch | diffaugment | steps | images seen | train s | FID | KID | "
             "precision | recall | pairs covered | load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows.values(), key=lambda r: (r["label"], r["budget_min"], r["seed"])):
        load = f"{r['load_before'][0]:.1f}/{r['load_after'][0]:.1f}" if r.get("load_before") else "-"
        head = f"| {r['label']} | {fmt(r['budget_min'])} | {r['seed']} |"
        if r.get("error"):
            lines.append(f"{head} failed: {r['error']} | | | | | | | | | | | {load} |")
            continue
        recall = _num(r.get("recall"), ".3f")
        if r.get("recall") is not None and r["recall"] <= RECALL_GOAL:
            recall += " (low)"
        lines.append(f"{head} {r.get('base_channels', '-')} ({r.get('depth', 1)}) | {r.get('batch_size', '-')} | "
                     f"{r.get('diffaugment') or 'off'} | {_num(r.get('steps'), 'd')} | {_num(r.get('images'), ',')} | "
                     f"{_num(r.get('train_s'), '.0f')} | {_num(r.get('fid'), '.1f')} | {_num(r.get('kid'), '.3f')} | "
                     f"{_num(r.get('precision'), '.3f')} | {recall} | {_num(r.get('pairs_covered'), '.3f')} | {load} |")
    cpus: dict[str, list[str]] = {}  # the CPU each row was trained on: its steps depend on it
    for r in sorted(rows.values(), key=lambda r: (r["label"], r["budget_min"], r["seed"])):
        if r.get("cpu"):
            cpus.setdefault(r["cpu"], []).append(f"{r['label']} {fmt(r['budget_min'])} min seed {r['seed']}")
    lines += ["", *(f"- trained on {cpu}: {', '.join(names)}" for cpu, names in cpus.items())] if cpus else []
    return "\n".join(lines)




def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/pixelforge-gan-budget", help="where the runs are kept")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gan_budget"),
                   help="results.json, results.md and grids (default bench/results/gan_budget)")
    p.add_argument("--budgets", default=None, help="training minutes, comma-separated (default 2,5,10,20)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    p.add_argument("--samples", type=int, default=None, help=f"samples scored per run (default {DEFAULT_SAMPLES})")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training and scoring (default 1)")
    p.add_argument("--label", default="plan", help="the configuration's name in the table (default: plan)")
    p.add_argument("--extra", default="", help="more `pixelforge train` arguments for every run, one string")
    p.add_argument("--real", type=int, default=None, help=f"real images scored against, the set's first "
                   f"(default {DEFAULT_REAL})")
    p.add_argument("--reuse", action="store_true", help="score a run of the same name that is there already "
                   "instead of training it again (its row then has no wall, CPU or load figures)")
    p.add_argument("--device", default="auto")
    p.add_argument("--docs", action="store_true", help="also save each seed-0 grid as docs/images/gan-budget-Mmin.png")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {fmt(QUICK_BUDGETS[0])} min, {QUICK_SAMPLES} "
                   f"samples, {QUICK_REAL} real images; figures mean nothing")
    a = p.parse_args(argv)
    try:
        a.budgets = parse_list(a.budgets, "budgets", float) if a.budgets else list(QUICK_BUDGETS if a.quick else DEFAULT_BUDGETS)
        a.seeds = parse_list(a.seeds, "seeds", int)
    except ValueError as e:
        p.error(str(e))
    if not a.budgets or any(not (b > 0) for b in a.budgets) or len(set(a.budgets)) != len(a.budgets):
        p.error(f"--budgets: distinct minutes above 0, got {a.budgets}")
    if not a.seeds:
        p.error("--seeds: at least one seed")
    a.samples = a.samples or (QUICK_SAMPLES if a.quick else DEFAULT_SAMPLES)
    a.real = a.real or (QUICK_REAL if a.quick else DEFAULT_REAL)
    if a.real < 2:
        p.error("--real must be at least 2")
    if a.samples < 2:
        p.error("--samples must be at least 2")
    if a.threads < 1:
        p.error("--threads must be at least 1")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    work, out = Path(a.work), Path(a.out)
    runs_dir = work / "runs"
    extra = a.extra.split()
    print(f"GAN budget: {a.label} at {', '.join(map(fmt, a.budgets))} min, seeds {a.seeds}; {a.samples} samples; "
          f"{a.threads} thread(s); {os.cpu_count()} cores" + ("  [--quick: figures mean nothing]" if a.quick else ""),
          flush=True)
    scorer = Scorer(a.device, a.real)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "label": a.label, "extra": a.extra,
            "budgets": a.budgets, "seeds": a.seeds, "samples": a.samples, "threads": a.threads, "quick": a.quick,
            "nproc": os.cpu_count(), "torch": torch.__version__, "n_real": len(scorer.real),
            "extractor": "inception", "pr_k": EvalOptions().pr_k}
    rows: dict[str, dict] = {}
    for minutes in a.budgets:
        for seed in a.seeds:
            name = run_name(a.label, minutes, seed)
            argv_ = train_argv(minutes, seed, name, runs_dir, extra, a.device)
            print(f"{a.label} {fmt(minutes)} min seed {seed}: pixelforge {' '.join(argv_)}", flush=True)
            if a.reuse and (runs_dir / name / "checkpoints").is_dir():
                print("  (--reuse: scoring the run there)", flush=True)
                res = {"rc": 0, "error": None}
            else:
                shutil.rmtree(runs_dir / name, ignore_errors=True)  # a fresh run each
                res = run_pixelforge(argv_, a.threads)
            row = {"label": a.label, "budget_min": minutes, "seed": seed, "command": ["pixelforge", *argv_],
                   "quick": a.quick, **{k: v for k, v in res.items() if k not in ("rc", "error")}}
            if "wall_s" in res:  # trained here: the CPU its steps were bought on (a --reuse row keeps none)
                row["cpu"] = describe_cpu()
            if res["rc"] != 0:
                row["error"] = res["error"]  # exit_reason: never empty for a failed call
                print(f"  failed: {row['error']}", flush=True)
            else:
                row.update(read_metrics(runs_dir / name), **read_plan(runs_dir / name))
                images, labels = sample_run(runs_dir / name, a.samples, a.device)
                row.update(scorer(images))
                grid = class_grid(images, labels)
                row["grid"] = str(out / f"{name}.png")
                grid.save(row["grid"])
                if a.docs and seed == a.seeds[0] and not a.quick:
                    grid.save(ROOT / "docs" / "images" / f"gan-budget-{fmt(minutes).replace('.', 'p')}min.png")
                print(f"  {row['steps']} steps, {row['images']} images, FID {row['fid']:.1f}, precision "
                      f"{row['precision']:.3f}, recall {row['recall']:.3f}", flush=True)
            rows[row_key(a.label, minutes, seed)] = row
            merge_results(out / "results.json", meta, {row_key(a.label, minutes, seed): row})
    results = merge_results(out / "results.json", meta, rows)
    (out / "results.md").write_text(table(results["rows"]) + "\n")
    print()
    print(table(results["rows"]))
    print(f"\nresults: {out / 'results.json'}" + ("  [--quick rows: figures mean nothing]" if a.quick else ""))
    return results


if __name__ == "__main__":
    main()
