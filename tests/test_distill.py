"""Specifications of few-step distillation (`pixelforge distill RUN --steps-out N`): progressive distillation of a
diffusion run into a student that samples in N network evaluations, its teacher frozen and never saved with it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import pytest
import torch

import pixelforge
from pixelforge.cli import main
from pixelforge.condition import Cond
from pixelforge.models import DiffusionModel
from pixelforge.models.distill import progressive_distillation_loss
from pixelforge.runs import RunConfig, list_checkpoints, load_checkpoint, load_weights, read_tensors
from pixelforge.runs.latent import load_frozen_parts, load_reference_parts
from pixelforge.sampling import get_sampler, karras_sigmas, nested_sigmas
from pixelforge.distillation import new_distill_run_config

from conftest import train_straight_and_resumed

TINY = ["--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--batch-size", "16", "--steps", "4", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
        "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]
DISTIL = ["--iterations", "4", "--batch-size", "8", "--ckpt-every", "2", "--val-every", "2", "--val-images", "8",
          "--sample-every", "4", "--log-every", "1", "--lr", "1e-3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder with "t" (4 tiny steps on the 8x8 digits, sampled with guidance 2) and "d", its distillation to
    2 steps by `pixelforge distill t --steps-out 2` (4 iterations)."""
    root = tmp_path_factory.mktemp("distill")
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        assert main(["train", "digits", "--name", "t", "--runs-dir", str(root / "runs"), *TINY]) == 0
        (root / "runs" / "t" / "sample_defaults.json").write_text('{"guidance": 2.0}')
        assert main(["distill", "t", "--steps-out", "2", "--name", "d", "--runs-dir", str(root / "runs"), *DISTIL]) == 0
    return root / "runs"


def teacher_file(runs):
    return list_checkpoints(runs / "t" / "checkpoints")[-1].with_suffix(".safetensors")


def started(cfg: RunConfig) -> DiffusionModel:
    """A distillation's model as the training loop starts it: the student copied from the teacher, the teacher read."""
    model = DiffusionModel(cfg.model_config(), cfg.optim, seed=cfg.train.seed)
    load_frozen_parts(model)
    load_reference_parts(model)
    return model


# --- the schedule and the loss ------------------------------------------------------------------------


def test_nested_grids_hold_every_other_point_of_the_grid_of_twice_the_steps():
    for n in (1, 2, 4, 8):
        fine, coarse = nested_sigmas(2 * n), nested_sigmas(n)
        assert torch.allclose(fine[::2], coarse, rtol=1e-12, atol=0)
        assert coarse[0] == 80.0 and coarse[-1] == 0 and bool((coarse[:-1] > 0.002).all())
        assert bool((coarse[1:] < coarse[:-1]).all())
    # karras ends with a step from sigma_min to 0, which changes next to nothing; the nested grid's last step does work
    assert karras_sigmas(4)[-2] == pytest.approx(0.002) and nested_sigmas(4)[-2] > 0.1


def test_the_loss_is_zero_for_a_student_that_matches_the_teachers_steps_and_not_otherwise():
    # Data at a single point (0): the exact denoiser is 0, every solver step scales x by sigma_next / sigma, and the
    # student's DDIM step lands where the teacher's steps do exactly when its denoised estimate is 0 too.
    x = torch.zeros(6, 1, 4, 4)
    zero = lambda z, s, c: torch.zeros_like(z)  # noqa: E731
    grid = nested_sigmas(8)
    for sampler in ("heun", "ddim"):
        loss = progressive_distillation_loss(zero, zero, get_sampler(sampler), x, Cond(), grid, 2, 0.5,
                                             torch.Generator().manual_seed(0))
        assert loss.shape == (6,) and float(loss.abs().max()) < 1e-9  # float rounding of the grid alone
    off = lambda z, s, c: torch.full_like(z, 0.1)  # noqa: E731
    loss = progressive_distillation_loss(off, zero, get_sampler("heun"), x, Cond(), grid, 2, 0.5,
                                         torch.Generator().manual_seed(0))
    assert bool((loss > 1e-3).all())


# --- the command and its run --------------------------------------------------------------------------


def test_the_run_records_its_teacher_by_name_and_weights_hash_and_the_distilled_sampler(runs):
    cfg = RunConfig.load(runs / "d" / "config.json")
    d = cfg.model["distill"]
    assert (d["method"], d["teacher"], d["steps_out"], d["span"]) == ("progressive", "t", 2, 2)
    assert d["teacher_sha256"] == hashlib.sha256(teacher_file(runs).read_bytes()).hexdigest()
    assert (d["teacher_sampler"], d["guidance"]) == ("heun", 2.0)  # the teacher's own defaults, guidance folded in
    teacher = RunConfig.load(runs / "t" / "config.json")
    assert {k: v for k, v in cfg.model.items() if k != "distill"} == {k: v for k, v in teacher.model.items() if k != "distill"}
    assert cfg.data == teacher.data
    defaults = json.loads((runs / "d" / "sample_defaults.json").read_text())
    assert defaults == {"sampler": "ddim", "steps": 2, "schedule": "nested", "guidance": 1.0}


def test_the_distilled_run_samples_in_steps_out_network_evaluations_and_every_image_records_it(runs):
    g = pixelforge.load("d", runs_dir=runs, device="cpu")
    calls = []
    network = g.model.network
    g.model.network = lambda *a, **k: calls.append(a[0].shape[0]) or network(*a, **k)
    images, settings = g.generate_tensor(3, label=4, seed=0)
    assert images.shape == (3, 1, 8, 8) and calls == [3, 3]  # 2 evaluations of the batch, no guidance pass
    s = settings[0]
    assert (s["sampler"], s["steps"], s["schedule"], s["guidance"]) == ("ddim", 2, "nested", 1.0)
    assert s["distilled"] == {"teacher": "t", "teacher_sha256": RunConfig.load(runs / "d" / "config.json").model[
        "distill"]["teacher_sha256"], "method": "progressive", "steps_out": 2, "guidance": 2.0}


def test_distilled_sampling_is_deterministic_per_seed_whatever_the_batch(runs):
    g = pixelforge.load("d", runs_dir=runs, device="cpu")
    a, _ = g.generate_tensor(3, labels=[1, 2, 3], seed=7)
    b, _ = g.generate_tensor(3, labels=[1, 2, 3], seed=7)
    alone, _ = g.generate_tensor(1, labels=[2], seeds=[8])
    other, _ = g.generate_tensor(3, labels=[1, 2, 3], seed=8)
    assert torch.equal(a, b) and torch.allclose(a[1:2], alone, atol=1e-5)  # batch size changes float rounding only
    assert not torch.equal(a, other)
    unconditional, _ = g.generate_tensor(2, seed=7)  # no label: the student learnt the teacher's unguided steps too
    assert unconditional.shape == (2, 1, 8, 8)


def test_the_teacher_is_frozen_outside_the_state_the_optimiser_and_the_ema_and_stays_bit_identical(runs):
    teacher_before = read_tensors(teacher_file(runs))
    cfg = RunConfig.load(runs / "d" / "config.json")
    model = started(cfg)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(own[k], v) for k, v in load_weights(runs / "t").items() if k.startswith("net."))  # student = teacher
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith("teacher") for k in model.state_dict())  # never in a checkpoint or an export
    optimised = {id(p) for group in model.optimizers()["net"].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}
    assert not {id(p) for p in model.parameters()} & {id(p) for p in model.teacher.parameters()}  # the EMA's list
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    for step in range(2):
        model.training_step(x, Cond(labels=torch.arange(8) % 10), step)
    assert not all(torch.equal(own[k], v) for k, v in model.state_dict().items())  # the student moved
    teacher_now = model.teacher.net.state_dict()
    reference = {k[len("net."):]: v for k, v in load_weights(runs / "t").items() if k.startswith("net.")}
    assert teacher_now.keys() == reference.keys() and all(torch.equal(teacher_now[k], v) for k, v in reference.items())
    assert read_tensors(teacher_file(runs)).keys() == teacher_before.keys()
    assert hashlib.sha256(teacher_file(runs).read_bytes()).hexdigest() == cfg.model["distill"]["teacher_sha256"]
    # the run's own weights are the student's alone: the size of the teacher's network, not twice it
    (ckpt,) = list_checkpoints(runs / "d" / "checkpoints")[-1:]
    parts, _ = load_checkpoint(ckpt)
    assert set(parts["ema"]) == set(load_weights(runs / "t"))


def test_a_distillation_resumes_exactly_and_reads_its_teacher_again(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    cfg = new_distill_run_config("t", 2, runs_dir=runs, steps=4, batch_size=8, ckpt_every=2, val_every=2, val_images=8,
                                 sample_every=4, log_every=1)
    full, second, a, b = train_straight_and_resumed(cfg, tmp_path, stop_at=2)
    assert all(second.losses[s] == full.losses[s] for s in range(2, 4))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_the_cli_resumes_a_distillation_with_a_new_total(runs, tmp_path, capsys):
    out = tmp_path / "d2"
    args = ["distill", "t", "--steps-out", "2", "-o", str(out), "--runs-dir", str(runs), *DISTIL[2:]]
    assert main([*args, "--iterations", "2"]) == 0
    assert main([*args, "--iterations", "4"]) == 0
    assert "finished at step 4" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(out / "checkpoints")][-1] == "step_0000004"


def test_a_folder_holding_another_run_is_not_taken_for_this_distillation(runs, capsys):
    assert main(["distill", "t", "--steps-out", "4", "--name", "d", "--runs-dir", str(runs), "--quiet"]) == 2
    assert "holds a distillation to 2 steps: choose another --name" in capsys.readouterr().err
    assert main(["distill", "mnist-diffusion", "--name", "t", "--runs-dir", str(runs), "--quiet"]) == 2
    assert "holds a run that is not distilled" in capsys.readouterr().err


def test_the_python_api_distils_and_resumes_the_same_way(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    settings = dict(runs_dir=runs, batch_size=8, val_every=1, val_images=8, sample_every=4, progress=False, device="cpu")
    first = pixelforge.distill("t", 2, out=tmp_path / "api", iterations=1, **settings)
    again = pixelforge.distill("t", 2, out=tmp_path / "api", iterations=2, **settings)
    assert (first.step, again.step, again.stopped) == (1, 2, "finished") and list(again.losses) == [1]
    assert pixelforge.load(tmp_path / "api", device="cpu").generate_tensor(1, label=0)[1][0]["steps"] == 2


def test_a_changed_teacher_is_refused_when_the_distillation_restarts(runs, tmp_path):
    shutil.copytree(runs / "t", tmp_path / "t")
    cfg = new_distill_run_config(tmp_path / "t", 2, steps=2)
    ckpt = list_checkpoints(tmp_path / "t" / "checkpoints")[-1].with_suffix(".safetensors")
    ckpt.write_bytes(ckpt.read_bytes() + b" ")  # any change to the file
    model = DiffusionModel(cfg.model_config(), cfg.optim, seed=0)
    with pytest.raises(ValueError, match="SHA-256"):
        load_reference_parts(model)


def test_the_distilled_run_evaluates_edits_and_is_served(runs, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.evaluate import evaluate_run
    from pixelforge.serve import create_app
    from serve_jobs import run_job

    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    result = evaluate_run(str(runs / "d"), n=20, extractor="mnist-classifier", device="cpu", progress=False, report=False)
    assert result["fid"] >= 0
    g = pixelforge.load("d", runs_dir=runs, device="cpu")
    (edited,) = g.edit([pixelforge.images.to_pil(torch.zeros(1, 1, 8, 8))[0]], strength=0.5, label=3)
    assert edited.info["pixelforge"]["distilled"]["steps_out"] == 2
    app = create_app(["d"], runs_dir=runs, device="cpu", allowed_hosts=["testserver"], db_path=tmp_path / "r.sqlite")
    with TestClient(app) as client:
        job = run_job(client, {"model": "d", "n": 1, "seed": 4, "label": 2})
    s = job["settings"][0]
    assert (s["sampler"], s["steps"], s["schedule"]) == ("ddim", 2, "nested") and s["distilled"]["teacher"] == "t"


# --- clear errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--steps-out", "0"], "steps_out must be a whole number in 1..16"),
    (["--steps-out", "17"], "steps_out must be a whole number in 1..16"),
    (["--span", "1"], "span must be a whole number in 2..8"),
    (["--teacher-sampler", "ancestral"], "teacher sampler 'ancestral' is not one of"),
])
def test_the_cli_refuses_bad_options_in_one_line(runs, tmp_path, capsys, args, message):
    assert main(["distill", "t", "-o", str(tmp_path / "x"), "--runs-dir", str(runs), *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixelforge distill: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("teacher, message", [
    ("shapes-text", "has a text encoder"),
    ("mnist-sketch", "has a spatial condition"),
    ("mnist-upscale", "is an upscaler"),
])
def test_teachers_it_cannot_distil_are_refused_by_what_they_have(teacher, message, capsys, tmp_path):
    assert main(["distill", teacher, "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_a_run_of_another_family_is_refused(runs, tmp_path, capsys):
    from pixelforge.runs import new_run_config

    (tmp_path / "g").mkdir()
    gan = new_run_config("digits", model="gan", image_size=8, steps=2)
    (tmp_path / "g" / "config.json").write_text(gan.to_json())
    assert main(["distill", str(tmp_path / "g"), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    assert "is a gan run; only diffusion runs are distilled" in capsys.readouterr().err


def test_a_further_round_halves_the_distilled_steps(runs):
    with pytest.raises(ValueError, match="is distilled to 2 steps; a further round takes steps_out \\* span = 2"):
        new_distill_run_config("d", 2, runs_dir=runs)
    cfg = new_distill_run_config("d", 1, runs_dir=runs)  # the student's own sampler is the next teacher's
    d = cfg.model_config().distill
    assert (d.teacher, d.steps_out, d.teacher_sampler, d.guidance) == ("d", 1, "ddim", 1.0)
