"""The families benchmark runs end to end in its smoke mode (slow: CI runs it in the bounded step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(ROOT / "bench" / "families.py")]


def run(args, tmp_path):
    env = {**os.environ, "PIXELFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    return subprocess.run(BENCH + args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def test_quick_run_writes_the_table_grids_and_uses_an_entrys_sampling_options(tmp_path):
    r = run(["--quick", "--families", "diffusion-dit,vae", "--out", "fam", "--runs-dir", "fam/runs", "--json",
             "--set", "diffusion-dit:depth=2", "--set", 'diffusion-dit:sample={"guidance": 2.5, "steps": 4}'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["family"]: row for row in json.loads(r.stdout.strip().splitlines()[-1])}
    assert set(rows) == {"diffusion-dit", "vae"}
    assert rows["diffusion-dit"]["sample_options"] == {"sampler": "heun", "steps": 4, "guidance": 2.5, "schedule": "karras"}
    assert rows["vae"]["bits_per_dim"] > 0 and rows["diffusion-dit"]["bits_per_dim"] is None
    for row in rows.values():
        assert row["train_steps"] > 0 and row["fid"] > 0
        assert (tmp_path / "fam" / row["grid"]).is_file()
    table = (tmp_path / "fam" / "families.md").read_text()
    assert "| diffusion-dit |" in table and "| vae |" in table
    assert "--families diffusion-dit,vae" in table and "--set diffusion-dit:depth=2" in table  # the command to repeat it


def test_an_unknown_sampling_option_stops_before_training(tmp_path):
    r = run(["--quick", "--families", "gan", "--out", "fam", "--runs-dir", "fam/runs",
             "--set", 'gan:sample={"guidance": 2}'], tmp_path)
    assert r.returncode != 0
    assert "gan: unknown sampling option(s) ['guidance']" in r.stderr
    assert "training for" not in r.stdout
