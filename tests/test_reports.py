"""What the commands print and draw: ratings of the page's default comparison, help defaults, the
evaluation report's KID settings, labelled training sample grids and the demo page."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.cli import main


def test_ratings_of_one_models_settings_are_shown_without_by(tmp_path, capsys):
    from pixelforge.serve.ratings import RatingsDB

    # what the page's default comparison stores: two settings of one model
    db = RatingsDB(tmp_path / "r.sqlite")
    db.add("mnist-diffusion", {"steps": 6, "seed": 1}, "mnist-diffusion", {"steps": 18, "seed": 1}, "b")
    db.add("mnist-diffusion", {"steps": 6, "seed": 2}, "mnist-diffusion", {"steps": 18, "seed": 2}, "tie")
    assert main(["ratings", "--db", str(tmp_path / "r.sqlite"), "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist-diffusion (steps=18)" in out and "mnist-diffusion (steps=6)" in out
    assert "2 ratings, scored by settings" in out
    assert "no ratings to score" not in out


def test_ratings_by_model_says_where_one_models_comparisons_are(tmp_path, capsys):
    from pixelforge.serve.ratings import RatingsDB

    db = RatingsDB(tmp_path / "r.sqlite")
    db.add("m", {"steps": 6}, "m", {"steps": 18}, "b")
    assert main(["ratings", "--db", str(tmp_path / "r.sqlite"), "--runs-dir", str(tmp_path), "--by", "model"]) == 0
    out = capsys.readouterr().out
    assert "no ratings to score by model (1 stored; 1 compare one model's sampling settings: see --by settings)" in out


def test_train_help_shows_the_defaults_of_every_option_that_has_one(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    helps = dict(re.findall(r"^  (--[\w-]+)[^\n]*?\s{2,}([^\n]*)$", out, flags=re.M))
    assert "(default: 64)" in helps["--batch-size"]
    assert "(default: 0.999)" in helps["--ema-decay"]
    assert "(default: 0)" in helps["--seed"]
    assert "default: the family's" in helps["--dropout"]


def test_report_prints_the_kid_subset_size_the_computation_used(tmp_path, make_run_config):
    from pixelforge.evaluate import evaluate_run
    from pixelforge.metrics.evaluate import EvalOptions
    from pixelforge.train import train

    train(make_run_config(steps=1, val_every=1, ckpt_every=1), tmp_path / "run", progress=False,
          cache_dir=tmp_path / "cache")
    texts = {}
    for n in (12, 16):  # fewer images than the 1,000 asked for: KID caps its subsets at n
        report = tmp_path / f"report{n}.html"
        figures = evaluate_run(str(tmp_path / "run"), n=n, device="cpu", report=report, cache_dir=tmp_path / "feats",
                               progress=False, options=EvalOptions(kid_subsets=3, kid_subset_size=1000), steps=2)
        assert figures["settings"]["kid_subset_size"] == n
        texts[n] = report.read_text()
    assert "<th>KID subsets</th><td>3 x 12</td>" in texts[12]
    assert "<th>KID subsets</th><td>3 x 16</td>" in texts[16]


class _ByLabel:
    """A stand-in model: each image is one grey level given by its label (0 black, 1 grey, 2 white)."""

    def sample(self, n, cond, *, seed):
        return (cond.labels.float() - 1).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()

    def takes(self):
        return ("labels",)


def test_training_grid_has_one_labelled_row_per_class(tmp_path, make_run_config):
    from pixelforge.data import ImageSet
    from pixelforge.train.conditions import TrainingConditions
    from pixelforge.train.loop import _save_samples

    cfg = make_run_config(sample_count=16)  # 8x8 images, drawn at scale 2
    data = ImageSet(images=torch.zeros(3, 1, 8, 8, dtype=torch.uint8), labels=torch.tensor([0, 1, 2]),
                    class_names=["cat", "dog", "eel"], captions=None, source="x")
    path = _save_samples(_ByLabel(), data, TrainingConditions(data, _ByLabel()), cfg, tmp_path, 1)
    grid = np.asarray(Image.open(path).convert("L")).astype(int)
    pad, side, per = 2, 16, 6  # ceil(16 / 3) images per class
    assert grid.shape[0] == 3 * side + 4 * pad  # three rows, none ragged
    strip = grid.shape[1] - (per * side + (per + 1) * pad)
    assert strip > 0
    for row, level in enumerate((0, 128, 255)):
        top = pad + row * (side + pad)
        tiles = grid[top + side // 2, strip + pad::side + pad][:per]
        assert np.all(np.abs(tiles - level) <= 1), (row, tiles)
        assert (grid[top:top + side, :strip] < 128).any(), f"row {row} has no label"


def test_demo_page_shows_settings_without_json_quotes(tmp_path):
    from pixelforge.html import gallery_page

    (tmp_path / "grid.png").write_bytes(b"")
    settings = [{"model": "mnist-diffusion", "sampler": "heun", "steps": 18, "guidance": 2.0, "seed": 0}]
    page = gallery_page("demo", tmp_path / "grid.png", [tmp_path / "a.png"], settings, tmp_path / "index.html").read_text()
    assert "<td>mnist-diffusion</td>" in page and "<td>heun</td>" in page and "<td>18</td>" in page
    assert "&quot;" not in page and '"heun"' not in page
