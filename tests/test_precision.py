"""Training precision: fp32 unless bf16 is native (and, for "auto", measured faster); bf16 training checkpoints
fp32 weights and resumes exactly; the run config keeps the choice; the CLI refuses other values."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

import pixelforge.precision as precision
from pixelforge.cli import main
from pixelforge.precision import MIN_SPEEDUP, measure_speedup, pick_precision
from pixelforge.train import RunConfig, train
from pixelforge.train.checkpoint import list_checkpoints

CPU = torch.device("cpu")


def never(p: str) -> None:
    raise AssertionError("nothing should be timed here")


@pytest.fixture
def native(monkeypatch):
    """The CPU counts as having native bfloat16 (autocast runs on any CPU; only its speed differs)."""
    monkeypatch.setattr(precision, "bf16_support", lambda device: (True, "test: native"))


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(precision, "bf16_support", lambda device: (False, "test: emulated"))


# --- choosing -------------------------------------------------------------------------------------


def test_bf16_falls_back_to_fp32_with_a_warning_where_the_hardware_has_no_native_bfloat16(emulated):
    choice = pick_precision("bf16", CPU)
    assert choice.precision == "fp32" and choice.fell_back
    assert choice.describe().startswith("warning: precision fp32 (bf16 asked for, but this cpu has no native bfloat16")


def test_auto_takes_fp32_without_timing_anything_where_bf16_is_not_native(emulated):
    choice = pick_precision("auto", CPU, never)
    assert choice.precision == "fp32" and not choice.fell_back and choice.speedup is None


def test_bf16_on_native_hardware_is_bf16_without_timing(native):
    assert pick_precision("bf16", CPU, never).precision == "bf16"


@pytest.mark.parametrize("speedup, expected", [(0.9, "fp32"), (1.10, "fp32"), (MIN_SPEEDUP, "bf16"), (1.8, "bf16")])
def test_auto_takes_bf16_only_where_it_is_measured_enough_faster(native, monkeypatch, speedup, expected):
    monkeypatch.setattr(precision, "measure_speedup", lambda step, device: speedup)
    choice = pick_precision("auto", CPU, never)
    assert (choice.precision, choice.speedup) == (expected, speedup)
    assert f"{speedup:.2f}x" in choice.describe()


def test_measure_speedup_interleaves_both_and_keeps_each_ones_best_round():
    """A fake clock: fp32 steps take 2 s, bf16 steps 1 s, and the first timed round of each is slowed by
    other load; the ratio is that of the best rounds, 2.0, and the calls alternate between the two."""
    clock, calls = [0.0], []
    slow = {"fp32": 2, "bf16": 2}  # the warm-up call and the first timed round of each are slowed

    def step(p: str) -> None:
        calls.append(p)
        clock[0] += (2.0 if p == "fp32" else 1.0) * (3.0 if slow[p] else 1.0)
        slow[p] = max(0, slow[p] - 1)

    ratio = measure_speedup(step, CPU, trials=3, min_seconds=0.0, timer=lambda: clock[0])
    assert ratio == pytest.approx(2.0)
    assert calls == ["fp32", "bf16", "fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]


def test_cpu_flags_reads_the_bf16_flags_of_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(info) == ("avx512_bf16",)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_bf16 avx512_bf16\n")
    assert precision.cpu_flags(info) == ("avx512_bf16", "amx_bf16")
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert precision.cpu_flags(info) == ()
    assert precision.cpu_flags(tmp_path / "absent") == ()


def test_describe_cpu_names_the_model_and_its_bf16_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.6GHz\nflags\t\t: fpu amx_bf16 avx512_bf16\n")
    line = precision.describe_cpu(info)
    assert line.startswith("Example CPU @ 2.6GHz, ") and line.endswith("bf16 flags: avx512_bf16, amx_bf16")
    info.write_text("processor\t: 0\nmodel name\t: Plain CPU\nflags\t\t: fpu avx2\n")
    assert precision.describe_cpu(info).endswith("bf16 flags: none")
    assert precision.cpu_name(tmp_path / "absent")  # no /proc/cpuinfo: the platform's own name, never empty


@pytest.mark.parametrize("bad", ["fp8", "", None, "BF16"])
def test_pick_precision_refuses_other_values(bad):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, auto"):
        pick_precision(bad, CPU)


# --- the run config --------------------------------------------------------------------------------


def test_run_config_round_trips_precision_and_older_configs_read_as_fp32(make_run_config):
    cfg = make_run_config(precision="auto")
    assert RunConfig.from_dict(json.loads(cfg.to_json())).train.precision == "auto"
    older = json.loads(cfg.to_json())
    del older["train"]["precision"]
    assert RunConfig.from_dict(older).train.precision == "fp32"


def test_a_bad_precision_in_config_json_is_an_error_naming_the_field(make_run_config):
    d = json.loads(make_run_config().to_json())
    d["train"]["precision"] = "fp8"
    with pytest.raises(ValueError, match=r"config\.json: train: train\.precision must be one of fp32, bf16, fp16, auto, got 'fp8'"):
        RunConfig.from_dict(d, where="config.json")


def test_cli_refuses_an_unknown_precision_with_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["train", "digits", "--name", "x", "--runs-dir", str(tmp_path), "--precision", "fp8"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "invalid choice: 'fp8'" in err and "fp16" in err
    assert not (tmp_path / "x").exists()


# --- training --------------------------------------------------------------------------------------


def run(cfg, run_dir, cache, **kwargs):
    return train(cfg, run_dir, device="cpu", progress=False, cache_dir=cache, **kwargs)


def checkpoint_record(run_dir) -> dict:
    return json.loads(list_checkpoints(run_dir / "checkpoints")[-1].with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory, make_run_config):
    """A 6-step bf16 run straight through, the same stopped at step 3 and resumed, and an fp32 run."""
    mp = pytest.MonkeyPatch()
    mp.setattr(precision, "bf16_support", lambda device: (True, "test: native"))
    root = tmp_path_factory.mktemp("bf16")
    cache = root / "cache"
    cfg = make_run_config(steps=6, ckpt_every=3, val_every=3, precision="bf16")
    try:
        out = {"full": run(cfg, root / "full", cache), "first": run(cfg, root / "resumed", cache, stop_at=3),
               "second": run(cfg, root / "resumed", cache),
               "fp32": run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="fp32")), root / "fp32", cache)}
    finally:
        mp.undo()
    return {**out, "root": root}


def test_bf16_training_differs_from_fp32_so_autocast_is_on(bf16_runs):
    bf16, fp32 = bf16_runs["full"].losses, bf16_runs["fp32"].losses
    # step 0 agrees exactly: the network's last layer starts at zero, so its output is 0 in both
    assert all(bf16[s] != fp32[s] for s in range(1, 6))
    assert all(abs(bf16[s] - fp32[s]) < 0.05 * fp32[s] for s in range(6))  # but stays close


def test_bf16_run_checkpoints_fp32_weights_and_records_its_precision(bf16_runs):
    root = bf16_runs["root"]
    base = list_checkpoints(root / "full" / "checkpoints")[-1]
    with safe_open(str(base.with_suffix(".safetensors")), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys() if not k.startswith("rng/")}
    assert {d for k, d in dtypes.items() if k.startswith(("model/", "ema/"))} == {"F32"}
    assert not {k for k, d in dtypes.items() if d in ("BF16", "F16")}  # the optimiser's state too
    assert checkpoint_record(root / "full")["precision"] == "bf16"
    assert checkpoint_record(root / "fp32")["precision"] == "fp32"
    assert json.loads((root / "full" / "config.json").read_text())["train"]["precision"] == "bf16"


def test_bf16_run_resumes_exactly(bf16_runs):
    full, first, second = bf16_runs["full"], bf16_runs["first"], bf16_runs["second"]
    assert (first.step, second.step, second.stopped) == (3, 6, "finished")
    for s in range(3):
        assert first.losses[s] == full.losses[s], s
    for s in range(3, 6):
        assert second.losses[s] == full.losses[s], s


def test_auto_choosing_fp32_trains_exactly_as_fp32_and_resume_keeps_the_recorded_choice(tmp_path, make_run_config,
                                                                                    native, monkeypatch, capsys):
    """The timing runs real steps (on a copy): the run's weights, random streams and losses are untouched;
    a resumed run takes its checkpoint's precision without timing again."""

    def fake_measure(step, device):
        step("fp32")
        step("bf16")
        return 1.0

    monkeypatch.setattr(precision, "measure_speedup", fake_measure)
    cache = tmp_path / "cache"
    plain = run(make_run_config(steps=3, precision="fp32"), tmp_path / "plain", cache)
    cfg = make_run_config(steps=3, precision="auto")
    auto = run(cfg, tmp_path / "auto", cache, stop_at=2)
    assert "precision fp32 (auto: a training step measured 1.00x as fast" in capsys.readouterr().out
    assert auto.losses == {s: plain.losses[s] for s in range(2)}
    monkeypatch.setattr(precision, "measure_speedup", lambda step, device: pytest.fail("timed again on resume"))
    resumed = run(cfg, tmp_path / "auto", cache)
    assert resumed.losses[2] == plain.losses[2]
    assert "the run's checkpoint records fp32; its config asks auto" in capsys.readouterr().out


# --- every family ----------------------------------------------------------------------------------

FAMILY_FIELDS = {
    "diffusion": {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1},
    "autoencoder": {"base_channels": 8, "channel_mult": (1, 2)},
    "gan": {"base_channels": 8},
    "vae": {"base_channels": 8},
    "vqvae": {"base_channels": 8, "downsample": 2},
    "pixelcnn": {"hidden_channels": 8, "num_layers": 3},
    "transformer": {"stage1_steps": 1, "d_model": 32, "depth": 2, "heads": 2,
                    "vq": {"downsample": 2, "codebook_size": 16, "code_dim": 8, "base_channels": 8}},
}


@pytest.mark.parametrize("name", sorted(FAMILY_FIELDS))
def test_every_family_trains_under_bf16_with_fp32_weights(name):
    """Each family's losses run under bf16 autocast (FamilyModule.parallel) and still train: the weights and
    buffers stay fp32 (a VQ-VAE's codebook statistics too) and the loss moves (a likelihood summed in
    bfloat16 would not: the PixelCNN's stayed at 7.96875 bits/dim)."""
    from pixelforge.condition import Cond
    from pixelforge.models import FAMILIES, OptimConfig
    from pixelforge.models.family import set_precision

    family = FAMILIES[name]
    names = {f.name for f in dataclasses.fields(family.Config)}
    shape = {k: v for k, v in {"image_size": 8, "channels": 1, "num_classes": 10}.items() if k in names}
    model = family(family.Config(**shape, **FAMILY_FIELDS[name]), OptimConfig(lr=1e-3, warmup_steps=1), seed=0)
    set_precision(model, "bf16")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=gen) * 2 - 1  # (B, 1, 8, 8)
    cond = Cond(labels=torch.randint(0, 10, (16,), generator=gen)) if "labels" in model.takes() else Cond()
    losses = [model.training_step(x, cond, step)["loss"] for step in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[2] != losses[1] != losses[0], losses
    dtypes = {k: v.dtype for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(dtypes.values()) == {torch.float32}, dtypes
