"""The families benchmark: its scoring (held-out reference, real-vs-real spread, ranks with ties) and,
slow, its smoke mode end to end (CI runs those in the bounded step)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(ROOT / "bench" / "families.py")]


@pytest.fixture(scope="module")
def families():
    spec = importlib.util.spec_from_file_location("bench_families", ROOT / "bench" / "families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args, tmp_path):
    env = {**os.environ, "PIXELFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    return subprocess.run(BENCH + args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def test_rows_within_the_spread_share_a_rank_and_list_each_other_as_tied(families):
    rows = [{"family": name, "fid": fid} for name, fid in (("b", 0.41), ("a", 0.29), ("c", 1.00), ("d", 1.20))]
    families.rank_rows(rows, tie=0.23)
    got = {r["family"]: (r["rank"], r["tied_with"]) for r in rows}
    assert got == {"a": (1, ["b"]), "b": (1, ["a"]), "c": (3, ["d"]), "d": (3, ["c"])}


def test_real_spread_is_zero_for_the_reference_itself_and_grows_for_shifted_images(families):
    from pixelforge.data.bundled import load_bundled
    from pixelforge.metrics.features import load_extractor

    real = load_bundled("mnist").images[:200]  # (200, 1, 28, 28) uint8
    ext = load_extractor("mnist-classifier", device="cpu")
    same = families.real_spread(real, real, ext, n=200, draws=2)
    assert same["n"] == 200 and same["max"] < 1e-6  # the same images in another order
    shifted = families.real_spread(real.roll(4, dims=-1), real, ext, n=200, draws=2)  # every digit 4 px right
    assert shifted["min"] > 0.5, shifted
    part = families.real_spread(real[:150], real[150:], ext, n=1000, draws=3)  # n capped at the pool's size
    assert part["n"] == 150 and len(set(part["fids"])) == 1  # the whole pool each time: one value


@pytest.mark.slow
def test_quick_run_scores_against_held_out_images_prints_the_spread_and_uses_an_entrys_sampling_options(tmp_path):
    r = run(["--quick", "--families", "diffusion-dit,vae", "--out", "fam", "--runs-dir", "fam/runs", "--json",
             "--set", "diffusion-dit:depth=2", "--set", 'diffusion-dit:sample={"guidance": 2.5, "steps": 4}'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    rows, spread = {row["family"]: row for row in result["rows"]}, result["real_vs_real"]
    assert set(rows) == {"diffusion-dit", "vae"}
    assert rows["diffusion-dit"]["sample_options"] == {"sampler": "heun", "steps": 4, "guidance": 2.5, "schedule": "karras",
                                                  "rho": 7.0}
    assert rows["vae"]["bits_per_dim"] > 0 and rows["diffusion-dit"]["bits_per_dim"] is None
    # the 500 validation digits (10% of 5,000), not the 5,000 the models trained on; quick: 40 real vs them
    assert spread["n_reference"] == 500 and spread["n"] == 40 and len(spread["fids"]) == 5
    for row in rows.values():
        assert row["train_steps"] > 0 and row["n_real"] == 500
        assert row["fid"] > spread["max"]  # a few seconds of training is far from real digits
        assert (tmp_path / "fam" / row["grid"]).is_file()
    table = (tmp_path / "fam" / "families.md").read_text()
    assert "| diffusion-dit |" in table and "| vae |" in table and "rank (ties)" in table
    assert f"{spread['min']:.3f}-{spread['max']:.3f}" in table  # the real-vs-real spread beside the table
    assert "--families diffusion-dit,vae" in table and "--set diffusion-dit:depth=2" in table  # the command to repeat it


@pytest.mark.slow
def test_an_unknown_sampling_option_stops_before_training(tmp_path):
    r = run(["--quick", "--families", "gan", "--out", "fam", "--runs-dir", "fam/runs",
             "--set", 'gan:sample={"guidance": 2}'], tmp_path)
    assert r.returncode != 0
    assert "gan: unknown sampling option(s) ['guidance']" in r.stderr
    assert "training for" not in r.stdout
