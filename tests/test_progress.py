"""Progress output: a bar for every evaluation stage, whole images while sampling, and a training
bar whose postfix and ETA are there from the first step and follow the binding limit."""

from __future__ import annotations

import re

import pytest

from pixelforge.metrics.evaluate import EvalOptions
from pixelforge.progress import eta_seconds, train_postfix
from pixelforge.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_run_config):
    """A diffusion run of 2 steps on the bundled 8x8 digits (seconds on a CPU)."""
    root = tmp_path_factory.mktemp("progress")
    train(make_run_config(steps=2, val_every=2, ckpt_every=2), root / "run", progress=False, cache_dir=root / "cache")
    return root / "run"


def test_evaluate_shows_a_bar_with_eta_for_every_stage(tiny_run, tmp_path, capsys, monkeypatch):
    from pixelforge.evaluate import evaluate_run

    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    evaluate_run(str(tiny_run), n=12, seed=0, device="cpu", report=tmp_path / "report.html",
                 cache_dir=tmp_path / "features", progress=True, options=EvalOptions(kid_subsets=3), steps=2)
    err = capsys.readouterr().err
    for stage in ("sampling ", "features: real images", "features: fake images", "KID subsets",
                  "precision/recall", "nearest real neighbours"):
        assert re.search(re.escape(stage) + r".*\d+/\d+", err), f"no progress bar for stage {stage!r}:\n{err}"
    assert "<00:00" in err  # tqdm's ETA ("elapsed<remaining") is shown


def test_evaluate_without_progress_prints_nothing_on_stderr(tiny_run, tmp_path, capsys, monkeypatch):
    from pixelforge.evaluate import evaluate_run

    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    evaluate_run(str(tiny_run), n=12, seed=0, device="cpu", report=False, cache_dir=tmp_path / "features",
                 progress=False, options=EvalOptions(kid_subsets=3), steps=2)
    assert capsys.readouterr().err == ""


def test_sampling_bar_counts_whole_images_up_to_n(tiny_run, capsys):
    from pixelforge import api
    from pixelforge.cli import _progress_bar

    g = api.load(str(tiny_run), device="cpu")
    n = 11
    bar, callback = _progress_bar(n, "sampling")  # the bar of `pixelforge sample` and `demo`
    seen: list = []

    def spy(done, total):
        callback(done, total)
        seen.append(bar.n)

    reported: list[float] = []
    g.generate_tensor(n, seed=0, batch_size=4, callback=lambda d, t: (reported.append(d), spy(d, t)), steps=3)
    bar.close()
    assert any(d != int(d) for d in reported)  # the sampler itself reports fractions of images
    assert all(isinstance(v, int) for v in seen)
    assert seen == sorted(seen)
    assert seen[-1] == n
    err = capsys.readouterr().err
    assert "11/11" in err and not re.search(r"\d\.\d+/11", err), err


def test_training_eta_is_the_time_budget_when_it_ends_first():
    # 1,000 steps left at 0.5 s a step is 500 s, but only 60 s of --max-minutes remain
    assert eta_seconds(1000, 0.5, 60.0) == (60.0, "time budget")
    # the steps end first: 10 steps at 0.5 s
    assert eta_seconds(10, 0.5, 60.0) == (5.0, "steps")
    assert eta_seconds(10, 0.5, None) == (5.0, "steps")
    assert eta_seconds(10, 0.5, -3.0) == (0.0, "time budget")


def test_training_postfix_shows_loss_speed_and_the_binding_limit():
    post = train_postfix(0.12345, 64, 0.5, eta_seconds(1000, 0.5, 65.0))
    assert post == {"loss": "0.1235", "img_s": "128", "left": "01:05 (time budget)"}
    assert train_postfix(0.5, 16, 1.0, eta_seconds(10, 0.5, None))["left"] == "00:05"


def test_training_bar_shows_loss_and_speed_from_the_first_step(tmp_path, make_run_config, monkeypatch):
    import pixelforge.train.loop as loop

    shown: dict[int, str] = {}  # step -> the bar's postfix when it moved to that step

    class Recording(loop.tqdm):
        def update(self, n=1):
            shown[self.n + n] = self.postfix or ""
            return super().update(n)

    monkeypatch.setattr(loop, "tqdm", Recording)
    # log_every far beyond the run: the postfix must not wait for a metrics.csv row
    cfg = make_run_config(steps=3, log_every=1000, val_every=1000, ckpt_every=1000)
    train(cfg, tmp_path / "run", progress=True, cache_dir=tmp_path / "cache", max_seconds=3600)
    assert re.search(r"loss=\d", shown[1]) and "img_s=" in shown[1] and "left=" in shown[1], shown


def test_cas_shows_a_bar_for_sampling_and_each_classifier(tiny_run, capsys):
    from pixelforge.evaluate import classification_accuracy

    classification_accuracy(str(tiny_run), n_per_class=2, epochs=2, device="cpu", progress=True, steps=2)
    err = capsys.readouterr().err
    for stage in ("sampling ", "classifier on generated images", "classifier on real images"):
        assert re.search(re.escape(stage) + r".*\d+/\d+", err), f"no progress bar for stage {stage!r}:\n{err}"
