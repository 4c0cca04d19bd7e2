"""End-to-end checks of the command line as a person uses it (slow: CI runs them in a separate step)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "pixelforge.cli"]


def run(args, cwd, **kw):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PIXELFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}


def test_demo_writes_a_grid_and_a_page_and_prints_their_paths(tmp_path, env):
    r = run(["demo", "--per-class", "2", "--steps", "8", "-o", "demo"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert Path(lines["grid"]).is_file() and Path(lines["page"]).is_file()
    page = Path(lines["page"]).read_text()
    assert "grid.png" in page and page.count("<figure>") == 20


def test_train_interrupt_resume_sample_regenerate_info_evaluate(tmp_path, env):
    args = ["train", "mnist", "--name", "e2e", "--steps", "60", "--batch-size", "16", "--base-channels", "8",
            "--channel-mult", "1,2,2", "--num-res-blocks", "1", "--ckpt-every", "1000", "--sample-every", "30",
            "--val-every", "20", "--log-every", "5"]
    proc = subprocess.Popen(CLI + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "e2e" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: save a checkpoint and exit cleanly
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out
    ckpts = sorted((tmp_path / "runs" / "e2e" / "checkpoints").glob("step_*.safetensors"))
    assert len(ckpts) == 1 and int(ckpts[0].stem.split("_")[1]) < 60

    r = run(args, tmp_path, env=env)  # the same command resumes
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout + r.stderr and "finished at step 60" in r.stdout
    steps = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 60

    r = run(["sample", "e2e", "-n", "4", "--label", "7", "--steps", "4", "--seed", "3", "-o", "out"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    pngs = sorted((tmp_path / "out").glob("seed*.png"))
    assert len(pngs) == 4 and (tmp_path / "out" / "grid.png").is_file()
    r = run(["sample", "--from", str(pngs[2]), "-o", "again"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(pngs[2]).tobytes() == Image.open(tmp_path / "again" / pngs[2].name).tobytes()

    r = run(["info", "e2e"], tmp_path, env=env)
    assert r.returncode == 0 and "step 60 of 60" in r.stdout

    r = run(["evaluate", "e2e", "-n", "40", "--steps", "4", "--json"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["n_fake"] == 40 and figures["fid"] >= 0 and "mnist-classifier" in figures["extractor"]
