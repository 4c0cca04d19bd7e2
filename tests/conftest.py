"""Shared fixtures: tiny model and run configs (tests run in seconds on a CPU) and an isolated data cache."""

from __future__ import annotations

import os

import pytest
import torch

TINY_MODEL = {
    "image_size": 8,
    "channels": 1,
    "num_classes": 10,
    "base_channels": 8,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
}


@pytest.fixture
def pixelforge_cache(tmp_path, monkeypatch):
    """Point $PIXELFORGE_CACHE at a temporary folder so prepared data never lands in the home folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIXELFORGE_CACHE", str(cache))
    return cache


def _tiny_run_config(*, model: dict | None = None, optim: dict | None = None, **train):
    """A RunConfig on the bundled 8x8 "digits" set with a tiny UNet; keyword arguments override TrainConfig."""
    from pixelforge.data import DataConfig
    from pixelforge.models import OptimConfig
    from pixelforge.train import RunConfig, TrainConfig

    train_fields = {"steps": 4, "batch_size": 16, "log_every": 1, "val_every": 4, "val_images": 32,
                    "sample_every": 100, "sample_count": 4, "ckpt_every": 4, "keep_checkpoints": 3}
    train_fields.update(train)
    return RunConfig(
        family="diffusion",
        model={**TINY_MODEL, **(model or {})},
        data=DataConfig(source="digits", image_size=8, channels=1, val_fraction=0.05),
        optim=OptimConfig(**{"lr": 1e-3, "warmup_steps": 2, **(optim or {})}),
        train=TrainConfig(**train_fields),
    )


@pytest.fixture(scope="session")
def text_runs(tmp_path_factory):
    """A runs folder holding "st", a tiny text-conditioned run on shapes (test_text_conditioning.TINY_TEXT), trained
    once a session through the CLI with its own data cache: the text, serving, moderation and browser tests only
    read it (skipped without the text extra)."""
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    from pixelforge.cli import main
    from test_text_conditioning import TINY_TEXT

    runs = tmp_path_factory.mktemp("text-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("text-cache")))
        assert main(["train", "shapes", "--name", "st", "--runs-dir", str(runs), *TINY_TEXT]) == 0
    return runs


@pytest.fixture(scope="session")
def make_run_config():
    """Factory for tiny digits RunConfigs: make_run_config(steps=12, model={...}, optim={...})."""
    return _tiny_run_config


def _randomize_zero_init(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give the zero-initialised layers (output convs) small random weights, so a fresh network's
    output depends on its input, noise level and label as a trained one's does."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="session")
def randomize_zero_init():
    """randomize_zero_init(model, seed=0, std=0.05) -> the model, its all-zero parameters made random."""
    return _randomize_zero_init


@pytest.fixture(scope="module")
def tiny_unet_run(tmp_path_factory):
    """A run folder (config.json + model.safetensors) of a tiny labelled UNet on the 8x8 digits, its
    zero-initialised layers made random (so its outputs depend on their inputs): what compress and prune take."""
    from pixelforge.models.diffusion import DiffusionModel
    from pixelforge.runs.checkpoint import atomic_save_tensors

    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    cfg = _tiny_run_config()
    model = _randomize_zero_init(DiffusionModel(cfg.model_config(), seed=0))
    (run / "config.json").write_text(cfg.resolved().to_json())
    atomic_save_tensors(model.state_dict(), run / "model.safetensors")
    return run


def train_straight_and_resumed(cfg, root, stop_at: int):
    """cfg trained in root/"full" straight through, and in root/"resumed" stopped at step stop_at then
    resumed (the prepared data cached in root/"cache"): (full's TrainResult, the resumed call's TrainResult,
    full's last checkpoint parts, resumed's last checkpoint parts), for tests of exact resume."""
    from pixelforge.train import train
    from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

    def go(name: str, **kw):
        return train(cfg, root / name, device="cpu", progress=False, cache_dir=root / "cache", **kw)

    full = go("full")
    go("resumed", stop_at=stop_at)
    second = go("resumed")
    a, _ = load_checkpoint(list_checkpoints(root / "full" / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(root / "resumed" / "checkpoints")[-1])
    return full, second, a, b


def _assert_unsaturated(x: torch.Tensor, *, min_inside: float = 0.25) -> None:
    """Samples (B, C, H, W) that a clamp to [-1, 1] alone cannot make pass: at least `min_inside` of
    the values lie strictly inside (-1, 1), and the images are not all one image."""
    inside = float((x.abs() < 1).float().mean())
    assert inside >= min_inside, f"only {inside:.0%} of the values lie inside (-1, 1): the samples are saturated"
    assert len(x) < 2 or any(not torch.equal(x[0], x[i]) for i in range(1, len(x))), "every sample is the same image"


@pytest.fixture(scope="session")
def assert_unsaturated():
    """assert_unsaturated(x, min_inside=0.25): a share of the values strictly inside (-1, 1), images not all equal."""
    return _assert_unsaturated


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine the threads contend
    (a tiny training run took ten times longer with two threads on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _pixelforge_home(tmp_path_factory):
    """Keys made on first signing (and any other per-user state) go to a temporary $PIXELFORGE_HOME,
    never to the home folder of whoever runs the tests."""
    before = os.environ.get("PIXELFORGE_HOME")
    os.environ["PIXELFORGE_HOME"] = str(tmp_path_factory.mktemp("pixelforge-home"))
    yield
    if before is None:
        os.environ.pop("PIXELFORGE_HOME", None)
    else:
        os.environ["PIXELFORGE_HOME"] = before
