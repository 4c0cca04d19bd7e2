"""Training extras: fp16 with a gradient scaler, --compile, --workers (batches prepared by background threads),
pinned host-to-GPU copies, and evaluation sharded over the processes of a torchrun job.

This machine has no GPU: fp16 runs here on the CPU under a patched fp16_support (CPU autocast takes float16 and
torch.amp.GradScaler works on CPU tensors), which exercises the trainer's own fp16 path; a real CUDA run is left
to a GPU machine."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from pathlib import Path

import pytest
import torch

from pixelforge.cli import main
from pixelforge.models.optim import OptimConfig, update
from pixelforge.precision import pick_precision
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint
from test_distributed import assert_same, free_port, run_config, run_forked


def train(cfg, run_dir: Path, cache: Path, **kwargs):
    """loop.train in this process; (result, the trained model's final weights)."""
    import pixelforge.train.loop as loop

    models = []
    build = loop.build_model
    loop.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]
    try:
        result = loop.train(cfg, run_dir, device="cpu", progress=False, cache_dir=cache, **kwargs)
    finally:
        loop.build_model = build
    return result, {k: v.clone() for k, v in models[-1].state_dict().items()}


# --- fp16 and the gradient scaler --------------------------------------------------------------------

def _net_and_loss(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(6, 4, generator=gen)
    return net, lambda part: net(x[part]).square().mean()


def test_a_gradient_scaler_changes_no_update_and_is_unscaled_before_clipping():
    # Scaling by a power of two and back is exact in fp32: the same weights as without a scaler, over
    # accumulated micro-batches and a clipping norm the scaled gradients would exceed by far.
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=0.5)
    plain, plain_loss = _net_and_loss()
    scaled, scaled_loss = _net_and_loss()
    opt_a, opt_b = torch.optim.Adam(plain.parameters(), lr=1e-2), torch.optim.Adam(scaled.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for step in range(3):
        for i, part in enumerate((slice(0, 3), slice(3, 6))):
            norm_a = update(opt_a, plain_loss(part), step, cfg, micro=(i, 2))
            norm_b = update(opt_b, scaled_loss(part), step, cfg, micro=(i, 2), scaler=scaler)
        assert norm_b == pytest.approx(norm_a, rel=1e-6) and norm_a > cfg.grad_clip  # unscaled, then clipped
    assert_same(dict(scaled.named_parameters()), dict(plain.named_parameters()))
    assert scaler.get_scale() == 2.0**16  # no overflow: the scale stays (it grows after 2000 good steps)


def test_a_step_whose_scaled_gradients_overflow_is_skipped_and_the_scale_halved():
    net, _ = _net_and_loss()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    loss = net(torch.ones(2, 4)).sum() * 1e35  # finite gradients (about 1e35), beyond fp32's range once scaled
    norm = update(opt, loss, 0, OptimConfig(warmup_steps=0), scaler=scaler)
    assert not math.isfinite(norm)
    assert_same(net.state_dict(), before)
    assert scaler.get_scale() == 2.0**15


def test_fp16_is_for_cuda_gpus_and_a_cpu_trains_in_fp32_with_a_warning(monkeypatch):
    choice = pick_precision("fp16", torch.device("cpu"))
    assert choice.precision == "fp32" and choice.fell_back
    assert choice.describe().startswith("warning: precision fp32 (fp16 asked for, but cpu: fp16 with a gradient scaler")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    cuda = pick_precision("fp16", torch.device("cuda"))
    assert cuda.precision == "fp16" and not cuda.fell_back and "gradient scaler" in cuda.reason


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """fp16 offered on this CPU, each optimiser's scaler growing every step (the scale then changes as the run
    goes, so a resume that lost it would show)."""
    import pixelforge.precision as precision
    import pixelforge.train.loop as loop

    monkeypatch.setattr(precision, "fp16_support", lambda device: (True, "test: fp16 on a CPU"))
    monkeypatch.setattr(loop, "grad_scaler", lambda device: torch.amp.GradScaler(device.type, init_scale=2.0**8,
                                                                                  growth_interval=1))


def test_fp16_training_keeps_its_scalers_in_checkpoints_and_resumes_exactly(fp16_on_cpu, tmp_path):
    cfg = run_config("diffusion", steps=4, ckpt_every=2, val_every=2, precision="fp16")
    _, whole = train(cfg, tmp_path / "whole", tmp_path / "cache")
    train(cfg, tmp_path / "cut", tmp_path / "cache", stop_at=2)
    resumed, cut = train(cfg, tmp_path / "cut", tmp_path / "cache")
    assert resumed.step == 4
    assert_same(cut, whole)
    states = []
    for run in ("whole", "cut"):
        _, state = load_checkpoint(list_checkpoints(tmp_path / run / "checkpoints")[-1])
        assert state["precision"] == "fp16"
        states.append(state["grad_scalers"])
    assert states[0] == states[1] and states[0]["net"]["scale"] > 2.0**8  # it moved, and went on where it was
    assert all(p.dtype == torch.float32 for p in whole.values() if p.is_floating_point())


@pytest.mark.parametrize("name", ["diffusion", "gan", "pixelcnn", "transformer", "vqvae"])
def test_every_optimiser_of_a_family_steps_through_its_own_scaler_under_fp16(name):
    # the GAN's D and G, the transformer's VQ-VAE (a family module inside it) and prior: each update finds its scaler
    from test_precision import FAMILY_FIELDS

    from pixelforge.condition import Cond
    from pixelforge.models import FAMILIES
    from pixelforge.models.family import set_grad_scalers, set_precision

    family = FAMILIES[name]
    names = {f.name for f in dataclasses.fields(family.Config)}
    shape = {k: v for k, v in {"image_size": 8, "channels": 1, "num_classes": 10}.items() if k in names}
    model = family(family.Config(**shape, **FAMILY_FIELDS[name]), OptimConfig(lr=1e-3, warmup_steps=1), seed=0)
    set_precision(model, "fp16")
    scalers = {opt: torch.amp.GradScaler("cpu") for opt in model.optimizers()}
    set_grad_scalers(model, scalers)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1  # (B, 1, 8, 8)
    cond = Cond(labels=torch.randint(0, 10, (8,), generator=gen)) if "labels" in model.takes() else Cond()
    losses = [model.training_step(x, cond, step)["loss"] for step in range(3)]
    assert all(math.isfinite(v) for v in losses), losses
    assert {opt: s._scale is not None for opt, s in scalers.items()} == {opt: True for opt in scalers}  # each was used
    assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float32}


def test_the_cli_takes_precision_fp16(tmp_path, capsys, pixelforge_cache):
    code = main(["train", "digits", "--name", "h", "--runs-dir", str(tmp_path), "--precision", "fp16", "--steps", "1",
                 "--batch-size", "4", "--base-channels", "8", "--channel-mult", "1", "--num-res-blocks", "1",
                 "--device", "cpu", "--quiet", "--val-every", "1", "--sample-every", "1"])
    assert code == 0
    assert "warning: precision fp32 (fp16 asked for" in capsys.readouterr().out
    assert json.loads((tmp_path / "h" / "config.json").read_text())["train"]["precision"] == "fp16"


# --- --compile -----------------------------------------------------------------------------------------

def test_compile_compiles_each_trained_network_of_the_family(monkeypatch, tmp_path, capsys):
    from pixelforge.train.compiled import compiled_networks

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    _, weights = train(run_config("diffusion", steps=2), tmp_path / "c", tmp_path / "cache", compile=True)
    _, eager = train(run_config("diffusion", steps=2), tmp_path / "e", tmp_path / "cache")
    assert_same(weights, eager)
    assert "compile: torch.compile of net" in capsys.readouterr().out
    assert len(compiled) == 2 and type(compiled[0]).__name__ == type(compiled[1]).__name__  # the trial copy's, the run's
    from pixelforge.models import FAMILIES

    transformer = FAMILIES["transformer"](FAMILIES["transformer"].Config(
        image_size=8, channels=1, num_classes=10, stage1_steps=2, d_model=16, depth=1, heads=2,
        vq={"downsample": 2, "codebook_size": 16, "code_dim": 8, "base_channels": 8}), OptimConfig(), seed=0)
    names = [name for name, _ in compiled_networks(transformer)]
    assert "prior" in names and any(n.startswith("vq.") for n in names) and "vq" not in names


def test_compile_that_fails_on_this_machine_says_so_and_trains_eagerly(monkeypatch, tmp_path, capsys):
    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler")

        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    result, weights = train(run_config("diffusion", steps=2), tmp_path / "c", tmp_path / "cache", compile=True)
    out = capsys.readouterr().out
    assert "warning: --compile: torch.compile failed on this machine (RuntimeError: InductorError: no working C++" in out
    assert "training eagerly" in out and result.stopped == "finished"
    _, eager = train(run_config("diffusion", steps=2), tmp_path / "e", tmp_path / "cache")
    assert_same(weights, eager)


@pytest.mark.slow  # torch.compile of even a tiny UNet takes minutes on a busy 2-core CPU
def test_a_compiled_training_matches_the_eager_one(tmp_path):
    _, compiled = train(run_config("diffusion", steps=3), tmp_path / "c", tmp_path / "cache", compile=True)
    _, eager = train(run_config("diffusion", steps=3), tmp_path / "e", tmp_path / "cache")
    assert_same(compiled, eager, atol=1e-5)


# --- --workers -----------------------------------------------------------------------------------------

def test_batches_made_by_two_worker_threads_train_the_same_weights_as_none(monkeypatch, tmp_path):
    import pixelforge.train.conditions as conditions  # where each batch is augmented (TrainingConditions.augmented)

    threads: set[str] = set()
    augment = conditions.augment

    def recording(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return augment(*args, **kwargs)

    monkeypatch.setattr(conditions, "augment", recording)
    # flips drawn per image and per step, two micro-batches a step, a second epoch from step 3 on
    cfg = run_config("diffusion", steps=5, batch_size=8, grad_accum=2, val_every=5, ckpt_every=5, sample_every=5)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, hflip=True))
    alone, inline = train(cfg, tmp_path / "w0", tmp_path / "cache")
    assert threads == {"MainThread"}
    threads.clear()
    ahead, prefetched = train(cfg, tmp_path / "w2", tmp_path / "cache", workers=2)
    assert threads and all(t.startswith("pixelforge-batches") for t in threads)
    assert ahead.losses == alone.losses
    assert_same(prefetched, inline)


def test_workers_must_be_a_count_in_range(tmp_path, capsys):
    from pixelforge.train.loop import train as train_loop

    with pytest.raises(ValueError, match=r"workers \(--workers\) must be an integer in \[0, 64\], got -1"):
        train_loop(run_config("diffusion"), tmp_path / "r", device="cpu", progress=False, workers=-1)
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as e:
        main(["train", "digits", "--name", "r", "--runs-dir", str(tmp_path), "--workers", "65"])
    assert e.value.code == 2 and "--workers" in capsys.readouterr().err


def test_batch_indices_are_the_epoch_permutations_in_order():
    from pixelforge.train.loop import _batch_indices, _epoch_perm

    train_idx = torch.arange(100, 113)  # 13 images: batches of 5 cross epochs
    for step in range(8):
        expected = [train_idx[_epoch_perm(13, 3, pos // 13)[pos % 13]] for pos in range(step * 5, step * 5 + 5)]
        assert _batch_indices(train_idx, step, 5, 3).tolist() == [int(i) for i in expected]
    assert _batch_indices(torch.tensor([7]), 4, 3, 0).tolist() == [7, 7, 7]


def test_a_batch_goes_to_a_cuda_device_through_pinned_memory(monkeypatch):
    from pixelforge.train.batches import host_to_device

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", str(a[0]), k)) or self)
    host_to_device(torch.zeros(2), torch.device("cuda", 0))
    assert calls == ["pin", ("to", "cuda:0", {"non_blocking": True})]
    calls.clear()
    host_to_device(torch.zeros(2), torch.device("cpu"))
    assert calls == [("to", "cpu", {})]


# --- sharded evaluation --------------------------------------------------------------------------------

EVAL = {"n": 7, "extractor": "mnist-classifier", "device": "cpu", "report": False, "progress": False, "steps": 2}


def _evaluating_process(rank: int, ports: tuple[int, int], run_dir: Path, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", PIXELFORGE_DIST_TIMEOUT="120")
    report: dict = {}
    try:
        from pixelforge.distributed import setup, teardown
        from pixelforge.evaluate import evaluate_run

        report["evaluate"] = evaluate_run(str(run_dir), **EVAL)  # joins a process group, and leaves it
        os.environ["MASTER_PORT"] = str(ports[1])  # a new group: rank 1 may start it while rank 0 still reports
        setup(torch.device("cpu"))
        report["training"] = _training_figures(run_dir)
        teardown()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        report["error"] = f"{type(e).__name__}: {e}"
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0)


def _training_figures(run_dir: Path) -> dict:
    """The in-training evaluator's figures (pixelforge.api's, on 7 samples) of the run's model."""
    from pixelforge.api import load
    from pixelforge.evaluate import load_real
    from pixelforge.metrics.evaluate import make_training_evaluator
    from pixelforge.metrics.features import load_extractor

    g = load(str(run_dir), device="cpu")
    ext = load_extractor("mnist-classifier", data_source="digits", device="cpu")
    evaluator = make_training_evaluator(load_real("digits", extractor=ext, progress=False), ext, n=7, num_classes=10,
                                        sample_options={"steps": 2})
    return evaluator(g.model, 0)


def test_evaluation_under_two_processes_shards_the_samples_and_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    train(run_config("diffusion", steps=2), run_dir, tmp_path / "cache")
    from pixelforge.evaluate import evaluate_run

    alone = evaluate_run(str(run_dir), **EVAL)
    alone_training = _training_figures(run_dir)
    ports = (free_port(), free_port())
    run_forked(_evaluating_process, lambda r: (r, ports, run_dir, tmp_path))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all("error" not in r for r in reports), reports
    assert reports[1] == {"evaluate": {}, "training": {}}  # rank 0 reports for both
    sharded = reports[0]["evaluate"]
    assert sharded["processes"] == 2 and sharded["n_fake"] == alone["n_fake"] == 7
    for key in ("fid", "kid", "precision", "recall"):
        assert sharded[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-7), key
    for key in ("fid", "kid"):
        assert reports[0]["training"][key] == pytest.approx(alone_training[key], rel=1e-5, abs=1e-7), key


def test_shards_cover_the_items_in_order_and_none_is_empty():
    from pixelforge.distributed import World, shard

    for n, size in ((7, 2), (5, 4), (256, 3), (4, 4)):
        shares = [shard(n, World(rank, size)) for rank in range(size)]
        assert [i for s in shares for i in s] == list(range(n)) and all(len(s) for s in shares)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def _preparing_process(rank: int, port: int, cache: Path, out: Path) -> None:
    """Process `rank` of 2 loads out/images as the trainer does (_local_main_first) into an empty cache."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", PIXELFORGE_DIST_TIMEOUT="60")
    report: dict = {}
    try:
        import pixelforge.data.prepare as prepare
        from pixelforge.data import DataConfig, load_dataset
        from pixelforge.distributed import current, setup, teardown
        from pixelforge.train.loop import _local_main_first

        writes = []
        write = prepare._write_cache
        prepare._write_cache = lambda *a, **k: writes.append(rank) or write(*a, **k)
        setup(torch.device("cpu"))
        folder = DataConfig(source=str(out / "images"), image_size=8, channels=3)
        data = _local_main_first(current(), lambda: load_dataset(folder, cache_dir=cache, progress=False))
        report.update(writes=len(writes), images=int(data.images.sum()))
        teardown()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        report["error"] = f"{type(e).__name__}: {e}"
    (out / f"prep{rank}.json").write_text(json.dumps(report))
    os._exit(0)


def test_the_prepared_data_cache_is_made_once_per_machine_and_read_by_the_other_processes(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = torch.randint(0, 256, (12, 12, 3), dtype=torch.uint8, generator=gen).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
    port = free_port()
    run_forked(_preparing_process, lambda r: (r, port, tmp_path / "cache", tmp_path))
    reports = [json.loads((tmp_path / f"prep{r}.json").read_text()) for r in range(2)]
    assert [r.get("writes") for r in reports] == [1, 0], reports  # local rank 0 prepares, the other reads its file
    assert reports[0]["images"] == reports[1]["images"]
