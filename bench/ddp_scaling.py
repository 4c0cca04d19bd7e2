"""Distributed data parallel scaling: training images/s with 1, 2, ... processes and the scaling efficiency.

Method (bench/README.md has the long form): for each process count N the real command runs,
`python -m torch.distributed.run --standalone --nproc_per_node=N -m pixelforge train ...`, on the bundled
digits (or --data), with the same batch per process (weak scaling: the effective batch is N x
--per-process-batch). The loop's own metrics.csv gives images/s per window of --log-every steps, timed
inside the loop (no start-up, data preparation or final checkpoint); the first window (warm-up) is
dropped and the median of the others kept. Efficiency(N) = images/s(N) / (N x images/s(1)) per unit of
compute: per GPU on CUDA, per thread on a CPU.

On a CPU each process gets --threads threads (default: the cores divided by N), so N processes use the
same cores one process does: the figure then says what DDP's gradient averaging costs, not what more
cores give. On GPUs (--device cuda) process i takes GPU i (torchrun's LOCAL_RANK).

Usage:
    .venv/bin/python bench/ddp_scaling.py                           # 1 and 2 processes on this CPU
    .venv/bin/python bench/ddp_scaling.py --nproc 1,2,4,8 --device cuda --per-process-batch 128
    .venv/bin/python bench/ddp_scaling.py --quick                   # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(nproc: int, a, runs_dir: Path) -> dict:
    """Train on nproc processes; images/s from the run's metrics.csv."""
    threads = a.threads or max(1, (os.cpu_count() or 1) // nproc)
    name = f"scale{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "pixelforge",
           "train", a.data, "--model", "diffusion", "--name", name, "--runs-dir", str(runs_dir),
           "--steps", str(a.steps), "--batch-size", str(nproc * a.per_process_batch), "--log-every", str(a.log_every),
           "--val-every", str(10 * a.steps), "--sample-every", str(10 * a.steps), "--ckpt-every", str(10 * a.steps),
           "--base-channels", str(a.base_channels), "--device", a.device, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed:\n{done.stderr[-3000:]}")
    with open(runs_dir / name / "metrics.csv", newline="") as f:
        rates = [float(r["img_per_s"]) for r in csv.DictReader(f) if r.get("img_per_s")]
    timed = rates[1:] or rates  # the first window holds the warm-up steps
    return {"processes": nproc, "threads_per_process": threads, "batch": nproc * a.per_process_batch,
            "img_per_s": statistics.median(timed), "windows": len(timed)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", default="1,2", help="process counts to measure, comma-separated (1 first: the baseline)")
    p.add_argument("--per-process-batch", type=int, default=32, help="images per process per step (weak scaling)")
    p.add_argument("--steps", type=int, default=40, help="training steps per process count")
    p.add_argument("--log-every", type=int, default=10, help="steps per timed window")
    p.add_argument("--base-channels", type=int, default=32, help="UNet width (the default diffusion model's)")
    p.add_argument("--data", default="digits", help="data set: a bundled name or a folder")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for one GPU per process")
    p.add_argument("--threads", type=int, default=0, help="threads per process (0: the cores divided by N)")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny model, few steps; its figures mean nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.quick:
        a.per_process_batch, a.steps, a.log_every, a.base_channels = 8, 6, 2, 8
    counts = [int(n) for n in a.nproc.split(",")]
    if not counts or counts[0] != 1 or any(n < 1 for n in counts):
        p.error("--nproc must start with 1 (the baseline) and hold positive counts, e.g. 1,2,4")
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        rows = [run(n, a, Path(tmp)) for n in counts]
    # Efficiency per unit of compute: a GPU per process on CUDA; on a CPU the threads of all processes (the
    # same cores for every row by default, so the ideal there is the baseline's own images/s, not N times it).
    def units(r: dict) -> int:
        return r["processes"] * (r["threads_per_process"] if a.device == "cpu" else 1)

    base = rows[0]["img_per_s"] / units(rows[0])
    load = os.getloadavg()[0]
    for r in rows:
        r["efficiency"] = r["img_per_s"] / (units(r) * base)
    if a.json:
        print(json.dumps({"device": a.device, "cpu_count": os.cpu_count(), "load_after": load, "rows": rows}, indent=1))
        return 0
    print(f"device {a.device}, {os.cpu_count()} cores, per-process batch {a.per_process_batch}, "
          f"diffusion base_channels {a.base_channels}, {a.steps} steps; load average (1 min) after: {load:.2f}")
    print("efficiency: images/s per " + ("thread (all processes') against 1 process's" if a.device == "cpu"
                                          else "process (one GPU each) against 1 process's"))
    print(f"{'processes':>9} {'threads':>7} {'batch':>6} {'img/s':>9} {'efficiency':>10}")
    for r in rows:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['batch']:>6} {r['img_per_s']:>9.1f} {r['efficiency']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
