"""Distributed data parallel training: several processes (gloo on this CPU, loopback only) train one run.

The fast tests fork two processes from the test itself (torch already imported: they start at once) and
give each the environment torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, ...); the slow ones start the
real `python -m torch.distributed.run ... -m pixelforge train` command."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from pixelforge.data import DataConfig, load_dataset
from pixelforge.models import FAMILIES, OptimConfig
from pixelforge.train import RunConfig, TrainConfig
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint

# Tiny models of 8x8 digits, each family's randomness and every update it makes exercised in 3 steps.
FAMILY_MODELS = {
    "diffusion": {"num_classes": 10, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1},
    "gan": {"num_classes": 10, "base_channels": 8, "z_dim": 16, "r1_every": 2},  # R1 at steps 0 and 2
    "vae": {"num_classes": 10, "base_channels": 8, "channel_mult": (1, 2), "latent_dim": 8, "kl_warmup_steps": 2},
    "vqvae": {"base_channels": 8, "downsample": 2, "codebook_size": 32, "code_dim": 8, "dead_code_threshold": 0.5},
    "pixelcnn": {"num_classes": 10, "hidden_channels": 8, "num_layers": 3},
    "transformer": {"num_classes": 10, "stage1_steps": 2, "d_model": 16, "depth": 1, "heads": 2,
                    "vq": {"downsample": 2, "codebook_size": 16, "code_dim": 8, "base_channels": 8}},
    "autoencoder": {"base_channels": 8, "channel_mult": (1, 2)},
}
TIMEOUT_S = 300  # no test here waits longer for its processes (a loaded machine is slow)


def run_config(family: str, model: dict | None = None, **train) -> RunConfig:
    fields = {"steps": 3, "batch_size": 8, "log_every": 1, "val_every": 3, "val_images": 16, "sample_every": 3,
              "sample_count": 4, "ckpt_every": 3, "seed": 0}
    fields.update(train)
    shape = {"image_size": 8, "channels": 1}
    return RunConfig(family=family, model={**shape, **FAMILY_MODELS[family], **(model or {})},
                     data=DataConfig(source="digits", image_size=8, channels=1, val_fraction=0.05),
                     optim=OptimConfig(lr=1e-3, warmup_steps=2), train=TrainConfig(**fields))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_forked(target, args_of_rank, world: int = 2) -> None:
    """target(*args_of_rank(r)) on `world` forked processes, waited for up to TIMEOUT_S; one still running
    then is killed (its report is then missing, which the test sees)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=args_of_rank(r)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill()
            p.join()


def _process(rank: int, world: int, port: int, cfg: RunConfig, run_dir: Path, out: Path, options: dict) -> None:
    """One process of a job, as torchrun would start it; reports to out/rank{rank}.json and .safetensors."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), PIXELFORGE_DIST_TIMEOUT=str(options.get("timeout", 60)))
    import pixelforge.train.loop as loop

    writes: list[str] = []
    if options.get("audit"):  # every file this process writes, creates, renames or removes in the run folder
        def hook(event, args):
            if event == "open" and args[0] is not None and str(run_dir) in str(args[0]) and (
                    (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                    or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
                writes.append(f"{event} {args[0]}")
            elif event in ("os.rename", "os.mkdir", "os.remove", "os.chmod", "shutil.rmtree") and (
                    str(run_dir) in str(args[:2])):  # os.replace is an os.rename event (src, dst, ...)
                writes.append(f"{event} {args[:2]}")

        sys.addaudithook(hook)
    models = []
    build = loop.build_model
    loop.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]
    kill_at = options.get("kill_at", {}).get(str(rank))
    stall_at = options.get("stall_at", {}).get(str(rank))
    if kill_at is not None or stall_at is not None:
        cls = FAMILIES[cfg.family]
        original = cls.training_step

        def training_step(self, x, cond, step):
            if step == kill_at:  # this process dies (SIGKILL: no clean-up) in the middle of step kill_at
                os.kill(os.getpid(), signal.SIGKILL)
            if stall_at is not None and step == stall_at[0]:  # it hangs for a while, alive
                time.sleep(stall_at[1])
            return original(self, x, cond, step)

        cls.training_step = training_step
    report: dict = {"rank": rank}
    try:
        # like pixelforge.api.train: rank 0 alone holds the evaluator; a FID that never improves
        evaluator = (lambda ema, step: {"fid": 7.0}) if options.get("evaluator") and rank == 0 else None
        result = loop.train(cfg, run_dir, device="cpu", progress=False, cache_dir=out.parent / "cache",
                            stop_at=options.get("stop_at"), evaluator=evaluator)
        report.update(stopped=result.stopped, step=result.step, losses={str(k): v for k, v in result.losses.items()})
        gc.collect()  # what is left of the job once train() returns: no DDP wrapper, no process group
        report.update(wrappers_left=sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()),
                      group_left=torch.distributed.is_initialized())
        save_file({k: v.contiguous() for k, v in models[-1].state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    except BaseException as e:  # noqa: BLE001 - reported to the test, which decides
        report.update(error=type(e).__name__, message=str(e))
    report["writes"] = writes
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0)


def launch(cfg: RunConfig, run_dir: Path, out: Path, world: int = 2, **options) -> list[dict]:
    """Train cfg in run_dir on `world` forked processes; each one's report (None for a killed one)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*"):
        old.unlink()
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_process, args=(r, world, port, cfg, run_dir, out, options)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert not hung, f"{len(hung)} process(es) still running after {TIMEOUT_S} s"
    reports = []
    for r in range(world):
        path = out / f"rank{r}.json"
        reports.append(json.loads(path.read_text()) if path.exists() else None)
    return reports


def weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"rank{rank}.safetensors"))


def ok(reports: list[dict]) -> list[dict]:
    for rep in reports:
        assert rep is not None and "error" not in rep, rep
    return reports


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The digits set prepared once, before any process starts."""
    root = tmp_path_factory.mktemp("ddp")
    load_dataset(DataConfig(source="digits", image_size=8, channels=1), cache_dir=root / "cache", progress=False)
    return root


def single(cfg: RunConfig, run_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """The same run trained in this process alone (no torchrun environment): its final weights."""
    import pixelforge.train.loop as loop

    models = []
    build = loop.build_model
    loop.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]
    try:
        loop.train(cfg, run_dir, device="cpu", progress=False, cache_dir=out.parent / "cache")
    finally:
        loop.build_model = build
    return {k: v.clone() for k, v in models[-1].state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0 if atol == 0 else 1e-4, atol=atol, msg=k)


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_every_family_trains_on_two_processes_and_both_hold_the_same_weights(family, cache):
    assert set(FAMILY_MODELS) == set(FAMILIES)
    out = cache / family
    cfg = run_config(family)
    reports = ok(launch(cfg, out / "run", out))
    assert [r["step"] for r in reports] == [3, 3] and reports[0]["losses"] == reports[1]["losses"]
    # the group was left with nothing holding it: a wrapper freed only at interpreter exit took gloo's
    # threads down with it there, now and then aborting a finished job
    assert [(r["wrappers_left"], r["group_left"]) for r in reports] == [(0, False), (0, False)]
    assert_same(weights(out, 0), weights(out, 1))
    # and it is one training: the checkpoint rank 0 wrote holds those weights
    parts, state = load_checkpoint(list_checkpoints(out / "run" / "checkpoints")[-1])
    assert_same(parts["model"], weights(out, 0))
    assert state["processes"] == 2 and state["images_seen"] == 3 * 8


@pytest.mark.parametrize("family", ["pixelcnn", "vqvae"])
def test_two_processes_train_what_one_does_with_the_same_global_batch(family, cache, tmp_path):
    # Neither draws a random number for its loss (an unconditional PixelCNN; the VQ-VAE draws only for
    # its codebook, which rank 0 does for all, from the whole batch): the same weights within rounding.
    model = {"num_classes": 0} if family == "pixelcnn" else {}
    cfg = run_config(family, model, steps=4)
    alone = single(cfg, tmp_path / "alone", cache)
    out = tmp_path / "ddp"
    ok(launch(cfg, out / "run", out))
    assert_same(weights(out, 0), alone, atol=2e-5)
    # and a different training would not pass: one more step moves the weights by far more than that
    further = single(run_config(family, model, steps=5), tmp_path / "further", cache)
    assert max(float((further[k] - alone[k]).abs().max()) for k in alone if alone[k].is_floating_point()) > 1e-3


def test_gradient_accumulation_trains_what_the_whole_batch_does(cache, tmp_path):
    cfg = run_config("pixelcnn", {"num_classes": 0}, steps=3)
    whole = single(cfg, tmp_path / "whole", cache)
    accumulated = single(run_config("pixelcnn", {"num_classes": 0}, steps=3, grad_accum=4), tmp_path / "acc", cache)
    assert_same(accumulated, whole, atol=2e-5)
    # two processes of two micro-batches each: the same again
    out = tmp_path / "ddp"
    ok(launch(run_config("pixelcnn", {"num_classes": 0}, steps=3, grad_accum=2), out / "run", out))
    assert_same(weights(out, 0), whole, atol=2e-5)


def test_only_rank_0_writes_files(cache, tmp_path):
    out = tmp_path / "w"
    reports = ok(launch(run_config("diffusion"), out / "run", out, audit=True))
    assert reports[1]["writes"] == []
    assert any("config.json" in w for w in reports[0]["writes"])  # the audit does see writes
    assert (out / "run" / "metrics.csv").exists() and list((out / "run" / "samples").glob("*.png"))


def test_early_stopping_on_rank_0s_figure_stops_every_process_at_the_same_step(cache, tmp_path):
    out = tmp_path / "e"
    cfg = run_config("diffusion", steps=8, eval_every=1, early_stop_on="fid", patience=2, val_every=100)
    reports = ok(launch(cfg, out / "run", out, evaluator=True))
    assert [(r["stopped"], r["step"]) for r in reports] == [("early-stopped", 3)] * 2
    rows = (out / "run" / "metrics.csv").read_text().splitlines()
    assert sum(",7," in r for r in rows) == 3  # rank 0's figure, logged once per evaluation


def test_a_killed_job_resumes_exactly(cache, tmp_path):
    cfg = run_config("diffusion", steps=6, ckpt_every=2, val_every=2)
    whole = tmp_path / "whole"
    ok(launch(cfg, whole / "run", whole))
    cut = tmp_path / "cut"
    # both processes die in the middle of step 3, after the checkpoint of step 2
    assert launch(cfg, cut / "run", cut, kill_at={"0": 3, "1": 3}) == [None, None]
    assert [p.name for p in list_checkpoints(cut / "run" / "checkpoints")] == ["step_0000002"]
    reports = ok(launch(cfg, cut / "run", cut))
    assert sorted(map(int, reports[0]["losses"])) == [2, 3, 4, 5]
    assert_same(weights(cut, 0), weights(whole, 0))
    assert_same(weights(cut, 1), weights(whole, 1))


def test_a_killed_process_fails_the_others_with_a_clear_message_not_a_hang(cache, tmp_path):
    out = tmp_path / "k"
    started = time.monotonic()
    reports = launch(run_config("diffusion", steps=6), out / "run", out, kill_at={"1": 2}, timeout=20)
    assert reports[1] is None
    assert reports[0]["error"] == "DistributedFailure", reports[0]
    assert "lost contact with the other processes" in reports[0]["message"]
    assert time.monotonic() - started < 60


@pytest.mark.slow  # waits out the timeout: ~13 s
def test_a_stalled_process_fails_the_others_after_the_timeout(cache, tmp_path):
    out = tmp_path / "s"
    started = time.monotonic()
    reports = launch(run_config("diffusion", steps=6), out / "run", out, stall_at={"1": [2, 12]}, timeout=5)
    assert reports[0]["error"] == "DistributedFailure", reports[0]
    assert "PIXELFORGE_DIST_TIMEOUT (5 s)" in reports[0]["message"]
    assert time.monotonic() - started < 90


def test_the_effective_batch_must_split_evenly(cache, tmp_path):
    out = tmp_path / "b"
    reports = launch(run_config("diffusion", batch_size=6, grad_accum=2), out / "run", out)
    assert all("train.batch_size 6" in r["message"] and "2 x 2 = 4" in r["message"] for r in reports)


def test_a_gan_refuses_gradient_accumulation(cache, tmp_path):
    from pixelforge.train.loop import train

    with pytest.raises(ValueError, match="train.grad_accum 2: gan models cannot accumulate"):
        train(run_config("gan", grad_accum=2), tmp_path / "g", device="cpu", progress=False, cache_dir=cache / "cache")


def test_learning_rate_scaling_follows_the_effective_batch():
    from pixelforge.models.optim import scaled_lr

    assert scaled_lr(OptimConfig(lr=1e-3), 256) == 1e-3
    assert scaled_lr(OptimConfig(lr=1e-3, lr_scaling="linear", lr_base_batch=64), 256) == pytest.approx(4e-3)
    assert scaled_lr(OptimConfig(lr=1e-3, lr_scaling="sqrt", lr_base_batch=64), 256) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="optim.lr_scaling must be one of none, linear, sqrt"):
        OptimConfig(lr_scaling="cubic")


def test_each_rank_draws_its_own_stream_and_rank_0_the_single_process_one():
    from pixelforge.distributed import rank_seed

    assert rank_seed(5, 0) == 5
    assert len({rank_seed(5, r) for r in range(8)}) == 8 and rank_seed(5, 1) != rank_seed(6, 1)


def test_python_m_pixelforge_is_the_command():
    done = subprocess.run([sys.executable, "-m", "pixelforge", "train", "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0 and "torchrun --nproc_per_node=N -m pixelforge train" in " ".join(done.stdout.split())


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    from pixelforge.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert pick_device("auto") == torch.device("cuda", 2) and pick_device("cuda") == torch.device("cuda", 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    monkeypatch.delenv("LOCAL_RANK")
    assert pick_device("auto") == torch.device("cuda")


def _torchrun(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pixelforge", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow
def test_torchrun_starts_the_train_command_on_two_processes(tmp_path, pixelforge_cache):
    common = ["train", "digits", "--name", "r", "--runs-dir", tmp_path, "--batch-size", "8", "--base-channels", "8",
              "--channel-mult", "1,2", "--num-res-blocks", "1", "--val-every", "2", "--ckpt-every", "2",
              "--log-every", "1", "--sample-every", "2", "--device", "cpu", "--quiet"]
    done = _torchrun(*common, "--steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished at step 2") == 1  # rank 0 alone reports
    assert "2 process(es) (gloo): effective batch 8 = 2 x 4 per process" in done.stdout + done.stderr
    resumed = _torchrun(*common, "--steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr and "finished at step 4" in resumed.stdout
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # one writer: no row twice


@pytest.mark.slow
def test_torchrun_reports_a_killed_process_and_ends(tmp_path, pixelforge_cache):
    # torchrun ends the job when a process dies, and names it; nothing waits for the gloo timeout
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "pixelforge", "train", "digits", "--name", "r", "--runs-dir", str(tmp_path),
                             "--batch-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
                             "--steps", "100000", "--ckpt-every", "1", "--device", "cpu", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PIXELFORGE_DIST_TIMEOUT": "30"})
    try:
        deadline = time.monotonic() + 600
        while not list_checkpoints(tmp_path / "r" / "checkpoints") and time.monotonic() < deadline:
            time.sleep(0.5)
        # torchrun's processes, whichever of its threads started them
        children = sorted(int(p) for task in Path(f"/proc/{proc.pid}/task").iterdir()
                          for p in (task / "children").read_text().split())
        assert len(children) == 2
        os.kill(children[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL)" in err or "exitcode  : -9" in err, err[-3000:]


def _text_process(rank: int, port: int, family: str, out: Path) -> None:
    """Process `rank` of 2 trains a text-conditioned model of `family` directly (no data set) for 3 steps."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    report: dict = {}
    try:
        from test_family_text import prompts, text_model

        from pixelforge.distributed import setup, teardown
        from pixelforge.train.loop import data_parallel

        setup(torch.device("cpu"))
        extra = {"stage1_steps": 1} if family == "transformer" else {}
        model = text_model(family, **extra) if family != "diffusion" else FAMILIES[family](
            FAMILIES[family].Config(image_size=8, channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                    attn_resolutions=(4,), text_encoder="e", text_dim=12, text_tokens=4), seed=0)
        data_parallel(model, rank)
        gen = torch.Generator().manual_seed(rank)  # each process its own images and prompts
        for step in range(3):
            x = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
            model.training_step(x, prompts(4, seed=10 * step + rank), step)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
        teardown()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        report.update(error=f"{type(e).__name__}: {e}")
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0)


@pytest.mark.slow  # seconds each on an idle machine, but five of them
@pytest.mark.parametrize("family", ["diffusion", "gan", "vae", "pixelcnn", "transformer"])
def test_text_conditioned_models_train_under_ddp_with_every_weight_averaged(family, tmp_path):
    # a prompt's learned "no prompt" vector and token, cross-attention: every weight must reach DDP's
    # averaging whichever the family uses in a step, or the processes drift apart (or DDP refuses)
    port = free_port()
    run_forked(_text_process, lambda r: (r, port, family, tmp_path))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert reports == [{}, {}], reports
    assert_same(weights(tmp_path, 0), weights(tmp_path, 1))
