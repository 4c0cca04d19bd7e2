"""Specifications of the ControlNet-style adapter (`pixelforge train BASE --adapter edges`): a trainable copy of
a frozen diffusion run's UNet encoder, steered by an edge map, that starts as the base exactly and never moves it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.models import DiffusionConfig, DiffusionModel
from pixelforge.runs import RunConfig, load_weights, resolve_run
from pixelforge.runs.adapter import new_adapter_run_config
from pixelforge.runs.latent import load_frozen_parts
from pixelforge.train import train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint
from pixelforge.train.loop import _ema_update

from conftest import train_straight_and_resumed

from test_sketch import TINY, ring

pytest.importorskip("cv2")

ADAPTER_TRAIN = ["--steps", "4", "--batch-size", "16", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
                 "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder with "base" (4 tiny steps on the 8x8 digits, with their labels) and "ad", an adapter trained
    on it for 4 steps by `pixelforge train base --adapter edges`."""
    root = tmp_path_factory.mktemp("adapter")
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        assert main(["train", "digits", "--name", "base", "--runs-dir", str(root / "runs"), *TINY]) == 0
        assert main(["train", "base", "--adapter", "edges", "--name", "ad", "--runs-dir", str(root / "runs"),
                     *ADAPTER_TRAIN]) == 0
    return root / "runs"


def new_config(runs, **settings) -> RunConfig:
    return new_adapter_run_config("base", "edges", runs_dir=runs, steps=8, batch_size=16, log_every=1, val_every=4,
                                  sample_every=8, ckpt_every=4, warmup_steps=2, lr=1e-3, **settings)


def started(cfg: RunConfig) -> DiffusionModel:
    model = DiffusionModel(cfg.model_config(), cfg.optim, seed=cfg.train.seed)
    load_frozen_parts(model)
    return model


def randomise_adapter_outputs(model: DiffusionModel, seed: int = 0) -> None:
    """Random weights for the adapter's zero-initialised convolutions (a few steps hardly move them), so the
    sketch visibly steers the image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (model.adapter.hint.zero_out, *model.adapter.zero_convs):
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


# --- the config and the network -------------------------------------------------------------------


def test_an_adapter_run_records_its_base_by_name_and_weights_hash_and_takes_its_model_and_data(runs):
    import hashlib

    cfg = RunConfig.load(runs / "ad" / "config.json")
    base = RunConfig.load(runs / "base" / "config.json")
    a = cfg.model["adapter"]
    assert (a["kind"], a["base"]) == ("edges", "base")
    newest = list_checkpoints(runs / "base" / "checkpoints")[-1].with_suffix(".safetensors")
    assert a["base_sha256"] == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert cfg.data == base.data
    model, base_model = cfg.model_config(), base.model_config()
    assert (model.spatial_condition, model.edge_detector) == ("edges", "canny") and model.sketch_stroke_width > 0
    same = [f.name for f in dataclasses.fields(base_model) if f.name not in ("spatial_condition", "sketch_stroke_width", "adapter")]
    assert all(getattr(model, f) == getattr(base_model, f) for f in same)


def test_at_the_start_the_adapted_model_is_the_base_exactly(runs):
    model = started(new_config(runs)).eval()
    base = pixelforge.load("base", runs_dir=runs, device="cpu").model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    labels = torch.tensor([0, 3, -1, 9])
    sketch = Cond(labels=labels, spatial=(torch.rand(4, 1, 8, 8, generator=gen) > 0.7).float())
    with torch.no_grad():
        want = base.denoise(x, sigma, Cond(labels=labels))
        assert torch.equal(model.denoise(x, sigma, sketch), want)
        assert torch.equal(model.denoise(x, sigma, sketch.empty()), base.denoise(x, sigma, Cond(labels=labels).empty()))
        # and the copy's encoder starts as the base's: same weights under the same names
        copy = model.adapter.copy.state_dict()
        assert copy and all(torch.equal(v, model.net.state_dict()[k]) for k, v in copy.items())
        # with the zero convolutions moved, the sketch does change the output (the residuals reach the base)
        randomise_adapter_outputs(model)
        assert not torch.equal(model.denoise(x, sigma, sketch), want)


def test_only_the_adapter_is_trained_optimised_and_averaged(runs):
    model = started(new_config(runs))
    adapter = {id(p) for p in model.adapter.parameters()}
    (opt,) = model.optimizers().values()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == adapter
    assert all(not p.requires_grad for p in model.net.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    model.training_step(x, Cond(labels=torch.tensor([1, 2, 3, 4]), spatial=(x > 0).float()), 0)
    assert all(p.grad is None for p in model.net.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.adapter.parameters())
    # the trainer's EMA moves the trained weights only: a frozen weight is left as the EMA copy holds it
    ema = started(new_config(runs))
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    frozen_before = {k: v.clone() for k, v in ema.net.state_dict().items()}
    _ema_update(ema, model, 0.5)
    assert all(torch.equal(frozen_before[k], v) for k, v in ema.net.state_dict().items())
    moved = dict(ema.adapter.named_parameters())
    assert all(not torch.equal(moved[k], p) for k, p in model.adapter.named_parameters())


def test_after_training_the_base_is_bit_identical_and_the_adapter_moved(runs):
    base = load_weights(runs / "base")
    parts, _ = load_checkpoint(list_checkpoints(runs / "ad" / "checkpoints")[-1])
    for part in ("model", "ema"):
        frozen = {k: v for k, v in parts[part].items() if k.startswith("net.")}
        assert frozen.keys() == {k for k in base if k.startswith("net.")}
        assert all(torch.equal(v, base[k]) for k, v in frozen.items()), part
    zero = [k for k in parts["model"] if k.startswith("adapter.zero_convs.") or k.startswith("adapter.hint.zero_out.")]
    assert zero and all(parts["model"][k].any() for k in zero)  # the zero convolutions trained
    trained = [k for k in parts["model"] if k.startswith("adapter.")]
    assert any(not torch.equal(parts["model"][k], parts["ema"][k]) for k in trained)  # EMA averages the adapter


def test_an_adapter_run_resumes_exactly(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    cfg = new_config(runs)
    full, second, a, b = train_straight_and_resumed(cfg, tmp_path, stop_at=4)
    assert all(second.losses[s] == full.losses[s] for s in range(4, 8))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert (tmp_path / "full" / "samples" / "step_0000008.png").is_file()  # a grid of edge maps and samples


# --- sampling, export, info -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def steered(runs):
    g = pixelforge.load("ad", runs_dir=runs, device="cpu")
    randomise_adapter_outputs(g.model)
    return g


def test_a_sketch_steers_the_adapter_deterministically_per_seed_with_the_bases_labels(steered):
    drawing, blank = ring(8, 1, bright=False), Image.new("L", (8, 8), 255)
    assert steered.inputs == ("labels", "spatial")
    one, settings = steered.generate_tensor(2, sketch=drawing, label=3, seed=5, steps=2)
    again, _ = steered.generate_tensor(2, sketch=drawing, label=3, seed=5, steps=2)
    assert torch.equal(one, again) and settings[0]["label"] == 3 and len(settings[0]["sketch_sha256"]) == 64
    assert not torch.equal(one, steered.generate_tensor(2, sketch=blank, label=3, seed=5, steps=2)[0])
    assert not torch.equal(one, steered.generate_tensor(2, sketch=drawing, label=7, seed=5, steps=2)[0])
    assert not torch.equal(one, steered.generate_tensor(2, sketch=drawing, label=3, seed=6, steps=2)[0])
    # image i depends on its seed alone; guidance contrasts sketch and no sketch as for an edge run
    alone, _ = steered.generate_tensor(1, sketch=drawing, label=3, seeds=[6], steps=2)
    assert torch.equal(alone[0], one[1])
    guided, _ = steered.generate_tensor(1, sketch=drawing, label=3, seed=5, steps=2, guidance=3.0)
    assert not torch.equal(guided[0], one[0])


def test_sample_sketch_and_sample_from_work_for_an_adapter_run(runs, tmp_path):
    drawing = tmp_path / "drawing.png"
    ring(32, 3, bright=False).save(drawing)
    out = tmp_path / "out"
    assert main(["sample", "ad", "--runs-dir", str(runs), "--sketch", str(drawing), "--label", "2", "-n", "2",
                 "--steps", "2", "-o", str(out), "--device", "cpu"]) == 0
    again = tmp_path / "again"
    assert main(["sample", "--from", str(out / "seed000001-label2.png"), "--runs-dir", str(runs), "-o", str(again),
                 "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(again / "seed000001-label2.png")),
                          np.asarray(Image.open(out / "seed000001-label2.png")))


def test_an_exported_adapter_carries_base_and_adapter_and_samples_as_the_run(runs, tmp_path, capsys):
    from pixelforge.runs.checkpoint import read_tensors

    out = tmp_path / "exported"
    assert main(["export", "ad", str(out), "--runs-dir", str(runs)]) == 0
    tensors = read_tensors(out / "model.safetensors")
    assert any(k.startswith("net.") for k in tensors) and any(k.startswith("adapter.") for k in tensors)
    assert json.loads((out / "config.json").read_text())["model"]["adapter"]["base"] == "base"
    drawing = ring(8, 1, bright=False)
    run = pixelforge.load("ad", runs_dir=runs, device="cpu").generate_tensor(2, sketch=drawing, label=1, seed=0, steps=2)
    shipped = pixelforge.load(out, device="cpu").generate_tensor(2, sketch=drawing, label=1, seed=0, steps=2)
    assert torch.equal(run[0], shipped[0])
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    trainable = sum(v.numel() for k, v in tensors.items() if k.startswith("adapter."))
    frozen = sum(v.numel() for k, v in tensors.items() if k.startswith("net."))
    assert f"trained:  {trainable / 1e6:.2f} M parameters trainable, {frozen / 1e6:.2f} M frozen" in text
    assert "adapter:  edges (ControlNet-style) on base" in text


# --- clear errors -----------------------------------------------------------------------------------


def fake_run(folder, family: str, model: dict) -> None:
    """A run folder holding only config.json (the base checks come before any weights are read)."""
    from pixelforge.data import DataConfig

    folder.mkdir(parents=True)
    cfg = RunConfig(family=family, model=model, data=DataConfig(source="digits", image_size=8, channels=1))
    (folder / "config.json").write_text(cfg.to_json())


def test_a_base_that_cannot_take_an_adapter_is_a_clear_error(runs, tmp_path, capsys):
    fake_run(tmp_path / "gan", "gan", {"image_size": 8, "channels": 1})
    fake_run(tmp_path / "sketchy", "diffusion", {"image_size": 8, "channels": 1, "spatial_condition": "edges"})
    fake_run(tmp_path / "dit", "diffusion", {"image_size": 8, "channels": 1, "backbone": "dit"})
    for base, message in ((tmp_path / "gan", "is a gan run; an adapter trains on top of a diffusion run"),
                          (tmp_path / "sketchy", "was trained with --condition edges: it takes a sketch already"),
                          (tmp_path / "dit", "has a dit backbone"),
                          (runs / "ad", "is itself an adapter run (on base); train the adapter on its base, base")):
        assert main(["train", str(base), "--adapter", "edges", "--name", "x", "--runs-dir", str(tmp_path / "r"),
                     *ADAPTER_TRAIN]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("pixelforge train: error: --adapter: ") and message in err, err
    assert main(["train", "base", "--adapter", "depth", "--name", "x", "--runs-dir", str(runs)]) == 2
    assert "error: adapter 'depth' is not known; choose one of: edges" in capsys.readouterr().err
    with pytest.raises(ValueError, match="adapter 'depth' is not known; choose one of: edges"):
        new_adapter_run_config("base", "depth", runs_dir=runs)
    cooled = new_config(runs, cooldown=0.5).optim  # an adapter's own optimiser takes a cool-down of its 8 steps
    assert (cooled.cooldown_steps, cooled.cooldown_end) == (4, 8) and new_config(runs).optim.cooldown_steps == 0
    fields = json.loads((runs / "ad" / "config.json").read_text())["model"]
    with pytest.raises(ValueError, match="adapter: adapter kind 'depth' is not known; choose one of: edges"):
        DiffusionConfig(**{**fields, "adapter": {**fields["adapter"], "kind": "depth"}})
    assert main(["train", "base", "--adapter", "edges", "--image-size", "16", "--name", "x", "--runs-dir", str(runs)]) == 2
    assert "--adapter takes the model and the data from its base: --image-size cannot be given" in capsys.readouterr().err
    assert not (tmp_path / "r" / "x").exists() and not (runs / "x").exists()


def test_a_sketch_for_the_base_alone_is_still_the_existing_error(runs, tmp_path):
    with pytest.raises(ValueError, match=r"^base takes no sketch \(it was not trained with --condition edges\); "
                                         "the conditions it takes: labels$"):
        pixelforge.load("base", runs_dir=runs, device="cpu").generate_tensor(1, sketch=ring(8, 1, bright=False))


def test_a_base_whose_weights_changed_since_the_run_was_made_is_refused_at_its_start(runs, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    shutil.copytree(runs / "base", tmp_path / "base")
    cfg = new_adapter_run_config(tmp_path / "base", "edges")
    newest = list_checkpoints(tmp_path / "base" / "checkpoints")[-1].with_suffix(".safetensors")
    newest.write_bytes(newest.read_bytes()[:-1] + b" ")  # one byte of a weight changed
    with pytest.raises(ValueError, match="its SHA-256 is not the .* recorded when this run was made"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()
    assert resolve_run(tmp_path / "base") == tmp_path / "base"


def test_the_server_takes_a_sketch_and_a_label_for_an_adapter_run(runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app
    from serve_jobs import b64, encoded, run_job

    app = create_app(["ad"], runs_dir=runs, device="cpu", allowed_hosts=["testserver"], db_path=tmp_path / "r.sqlite")
    drawing = ring(8, 1, bright=False)
    with TestClient(app) as client:
        (listed,) = client.get("/api/v1/models").json()["models"]
        supported = {i["name"]: i["supported"] for i in listed["inputs"]}
        assert supported["sketch"] and supported["label"]
        job = run_job(client, {"model": "ad", "n": 1, "seed": 4, "label": 2, "sketch": b64(encoded(drawing)),
                               "options": {"steps": 2}})
        served = np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]).content)))
    same = app.state.generators["ad"].generate(1, sketch=drawing, label=2, seeds=[4], steps=2)[0]
    assert job["settings"][0]["label"] == 2 and len(job["settings"][0]["sketch_sha256"]) == 64
    assert np.array_equal(served, np.asarray(same))


# --- a base with a prompt ------------------------------------------------------------------------------


def text_config(**fields) -> DiffusionConfig:
    return DiffusionConfig(image_size=8, channels=1, num_classes=0, base_channels=8, channel_mult=(1, 2),
                           num_res_blocks=1, attn_resolutions=(4,), text_encoder="encoder", text_dim=16, text_tokens=4,
                           text_whiten=True, **fields)


def test_an_adapter_on_a_text_base_starts_as_it_and_its_prompts_reach_the_copy():
    from conftest import _randomize_zero_init
    from pixelforge.condition.text_embed import text_condition
    from pixelforge.models.diffusion import spatial_input

    base = _randomize_zero_init(DiffusionModel(text_config())).eval()
    model = DiffusionModel(text_config(spatial_condition="edges", adapter={"kind": "edges"}), seed=1).eval()
    model.net.load_state_dict(base.net.state_dict())  # what the run's start copies (frozen_parts, copied_parts)
    model.text_cond.load_state_dict(base.text_cond.state_dict())
    model.adapter.copy.load_state_dict({k: v for k, v in base.net.state_dict().items() if k in model.adapter.copy.state_dict()})
    gen = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([0.3, 3.0])
    prompt = dict(text=torch.randn(2, 16, generator=gen), text_tokens=torch.randn(2, 4, 16, generator=gen),
                  text_mask=torch.ones(2, 4, dtype=torch.bool))
    sketch = (torch.rand(2, 1, 8, 8, generator=gen) > 0.7).float()
    with torch.no_grad():
        assert torch.equal(model.denoise(x, sigma, Cond(**prompt, spatial=sketch)), base.denoise(x, sigma, Cond(**prompt)))
        randomise_adapter_outputs(model)
        other = {**prompt, "text_tokens": torch.randn(2, 4, 16, generator=gen)}
        # the copy cross-attends to the prompt's tokens: tokens of another prompt change its residuals
        other = {**prompt, "text_tokens": torch.randn(2, 4, 16, generator=gen)}
        hint = spatial_input(Cond(spatial=sketch), 1, x)  # (2, 2, 8, 8): the map and its flag
        residuals = []
        for p in (prompt, other):
            vector, tokens, mask = text_condition(model.text_cond, Cond(**p), 2, x.device)
            residuals.append(model.adapter(x, sigma.log() / 4, None, vector=vector, tokens=tokens, token_mask=mask,
                                           hint=hint))
        assert not torch.equal(residuals[0][-1], residuals[1][-1])


def test_a_frozen_text_conditioner_keeps_its_statistics_when_a_run_starts():
    from pixelforge.condition.text_embed import fit_text_statistics

    model = DiffusionModel(text_config(spatial_condition="edges", adapter={"kind": "edges"}))
    trainable = DiffusionModel(text_config())
    pooled = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    for m in (model, trainable):
        fit_text_statistics(m, pooled)
    assert not model.text_cond.pooled_mean.any()  # the adapter's base keeps what it came with
    assert trainable.text_cond.pooled_mean.any()


def test_an_adapter_model_exports_to_onnx_with_its_base_and_the_graph_holds_both(tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import _randomize_zero_init
    from pixelforge.compress.load import graph_free_shapes
    from pixelforge.compress.onnx_export import export_onnx, parity

    fields = dict(image_size=8, channels=1, num_classes=10, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    model = _randomize_zero_init(DiffusionModel(DiffusionConfig(**fields, spatial_condition="edges",
                                                                adapter={"kind": "edges"}))).eval()
    export_onnx(model, tmp_path / "m.onnx")
    assert parity(model, tmp_path / "m.onnx", batch=5) < 1e-4
    assert not graph_free_shapes(model)  # base and adapter weights are all in the graph, none left beside it
