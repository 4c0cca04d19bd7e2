"""Specifications of the training loop: exact resume, checkpoint files, config checks, early stop, init_from, Ctrl-C."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal

import pytest
import torch
from safetensors import safe_open

from pixelforge.models import DiffusionModel
from pixelforge.train import RunConfig, train
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint


def run(cfg, run_dir, cache, **kwargs):
    return train(cfg, run_dir, device="cpu", progress=False, cache_dir=cache, **kwargs)


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_steps(run_dir) -> list[int]:
    return [int(p.name.split("_")[1]) for p in list_checkpoints(run_dir / "checkpoints")]


@pytest.fixture(scope="module")
def resume_pair(tmp_path_factory, make_run_config):
    """The same 12-step run trained twice: once straight through, once stopped at step 6 and resumed."""
    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    cfg = make_run_config(steps=12, batch_size=16, ckpt_every=4, log_every=1, val_every=4, sample_every=100,
                          keep_checkpoints=2)
    full = run(cfg, root / "full", cache)
    first = run(cfg, root / "resumed", cache, stop_at=6)
    after_stop = checkpoint_steps(root / "resumed")
    second = run(cfg, root / "resumed", cache)
    return {"cfg": cfg, "full": full, "first": first, "second": second, "after_stop": after_stop,
            "full_dir": root / "full", "resumed_dir": root / "resumed"}


# --- resume ---------------------------------------------------------------------------------------


def test_stop_at_ends_the_run_with_a_checkpoint_at_that_step(resume_pair):
    first = resume_pair["first"]
    assert first.stopped == "interrupted"
    assert first.step == 6
    assert resume_pair["after_stop"][-1] == 6  # although 6 is not a multiple of ckpt_every
    assert first.last_checkpoint.name == "step_0000006.safetensors"
    assert sorted(first.losses) == list(range(6))


def test_resumed_run_repeats_the_uninterrupted_losses_exactly(resume_pair):
    full, first, second = resume_pair["full"], resume_pair["first"], resume_pair["second"]
    assert full.stopped == second.stopped == "finished"
    assert full.step == second.step == 12
    assert sorted(second.losses) == list(range(6, 12))
    for step in range(6):
        assert first.losses[step] == full.losses[step], step
    for step in range(6, 12):
        assert second.losses[step] == full.losses[step], step


def test_resumed_run_ends_with_the_same_weights_ema_and_optimiser_state(resume_pair):
    a, _ = load_checkpoint(list_checkpoints(resume_pair["full_dir"] / "checkpoints")[-1])
    b, _ = load_checkpoint(list_checkpoints(resume_pair["resumed_dir"] / "checkpoints")[-1])
    assert set(a) == set(b)
    for part in ("ema", "model", "optim.net"):
        assert set(a[part]) == set(b[part])
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}/{name}"


def test_resumed_metrics_have_each_step_once_and_match_the_uninterrupted_run(resume_pair):
    full_rows, resumed_rows = metrics(resume_pair["full_dir"]), metrics(resume_pair["resumed_dir"])
    steps = [int(r["step"]) for r in resumed_rows]
    assert steps == list(range(1, 13))
    full_by_step = {int(r["step"]): r for r in full_rows}
    for row in resumed_rows:
        step = int(row["step"])
        assert row["loss"] == full_by_step[step]["loss"], step
        assert row["images"] == str(step * 16)
    for step in (4, 8, 12):  # the validations of the straight run happen in the resumed one too
        assert resumed_rows[step - 1]["val_loss"] == full_by_step[step]["val_loss"] != ""


# --- files ----------------------------------------------------------------------------------------


def test_checkpoints_are_safetensors_and_json_and_only_the_newest_are_kept(resume_pair):
    for key in ("full_dir", "resumed_dir"):
        ckpt_dir = resume_pair[key] / "checkpoints"
        names = sorted(p.name for p in ckpt_dir.iterdir())
        assert names == ["step_0000008.json", "step_0000008.safetensors", "step_0000012.json", "step_0000012.safetensors"]
        meta = json.loads((ckpt_dir / "step_0000012.json").read_text())
        assert meta["format_version"] == 1
        assert meta["step"] == 12
        assert meta["images_seen"] == 12 * 16
        with safe_open(str(ckpt_dir / "step_0000012.safetensors"), framework="pt") as f:
            keys = list(f.keys())
            assert f.metadata()["format_version"] == "1"
        assert any(k.startswith("ema/") for k in keys) and any(k.startswith("optim.net/") for k in keys)
        assert "rng/train_generator" in keys


def test_run_folder_holds_config_split_samples_and_no_temporary_files(resume_pair):
    run_dir = resume_pair["full_dir"]
    saved = RunConfig.load(run_dir / "config.json")
    assert saved.to_json() == resume_pair["cfg"].resolved().to_json()
    # every model field is written out, defaults included, so a later default change leaves the run as it was
    assert set(saved.model) == {f.name for f in dataclasses.fields(resume_pair["cfg"].model_config())}
    assert saved.model_config() == resume_pair["cfg"].model_config()
    split = json.loads((run_dir / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["train"]) + len(split["val"]) == 1797
    assert json.loads((run_dir / "classes.json").read_text()) == [str(d) for d in range(10)]
    assert (run_dir / "samples" / "step_0000012.png").is_file()
    for folder in (resume_pair["full_dir"], resume_pair["resumed_dir"]):
        leftovers = [p for p in folder.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]
        assert leftovers == []


# --- config checks --------------------------------------------------------------------------------


def test_changing_the_model_config_of_an_existing_run_is_refused(tmp_path, make_run_config):
    cfg = make_run_config(steps=1)
    run(cfg, tmp_path / "r", tmp_path / "cache")
    wider = dataclasses.replace(cfg, model={**cfg.model, "base_channels": 16})
    with pytest.raises(ValueError, match="another model or data config"):
        run(wider, tmp_path / "r", tmp_path / "cache")
    assert RunConfig.load(tmp_path / "r" / "config.json").model_config().base_channels == 8  # left as it was


def test_more_steps_on_an_existing_run_resumes_it(tmp_path, make_run_config):
    cfg = make_run_config(steps=1)
    run(cfg, tmp_path / "r", tmp_path / "cache")
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3))
    result = run(longer, tmp_path / "r", tmp_path / "cache")
    assert result.step == 3 and sorted(result.losses) == [1, 2]


def test_run_config_round_trips_through_json(tmp_path, make_run_config):
    cfg = make_run_config(steps=7, patience=2)
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again.to_json() == cfg.to_json()
    assert again.model_config() == cfg.model_config()
    assert (again.data, again.optim, again.train) == (cfg.data, cfg.optim, cfg.train)
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert RunConfig.load(path).to_json() == cfg.to_json()


@pytest.mark.parametrize("section, field", [("train", "stepz"), ("optim", "learning_rate"), ("data", "size"), ("model", "widht")])
def test_unknown_config_field_error_names_the_field(make_run_config, section, field):
    d = json.loads(make_run_config().to_json())
    d[section][field] = 1
    with pytest.raises(ValueError, match=field) as err:
        RunConfig.from_dict(d)
    assert section in str(err.value)


def test_bad_config_values_and_versions_are_refused_clearly(tmp_path, make_run_config):
    d = json.loads(make_run_config().to_json())
    with pytest.raises(ValueError, match="format version 99"):
        RunConfig.from_dict({**d, "format_version": 99})
    with pytest.raises(ValueError, match="missing field 'data'"):
        RunConfig.from_dict({k: v for k, v in d.items() if k != "data"})
    with pytest.raises(ValueError, match="train.steps"):
        RunConfig.from_dict({**d, "train": {**d["train"], "steps": 0}})
    with pytest.raises(ValueError, match="divisible"):
        RunConfig.from_dict({**d, "model": {**d["model"], "image_size": 9}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunConfig.load(tmp_path / "bad.json")


# --- early stop, init_from, Ctrl-C ----------------------------------------------------------------


def test_patience_stops_early_when_the_validation_loss_stops_improving(tmp_path, make_run_config):
    # With lr 1e-9 the weights cannot move by more than float rounding, so the second validation
    # cannot beat the first by the required 1e-6.
    cfg = make_run_config(steps=10, val_every=1, patience=1, ckpt_every=100, optim={"lr": 1e-9})
    result = run(cfg, tmp_path / "r", tmp_path / "cache")
    assert result.stopped == "early-stopped"
    assert result.step == 2
    assert checkpoint_steps(tmp_path / "r") == [2]
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_0000002.json").read_text())
    assert state["bad_vals"] == 1


def test_init_from_copies_the_weights_of_another_run(tmp_path, make_run_config):
    cache = tmp_path / "cache"
    source = run(make_run_config(steps=3), tmp_path / "source", cache)
    source_ema, _ = load_checkpoint(source.last_checkpoint.with_suffix(""))
    # One step with a vanishing learning rate: the new run's weights are still the copied ones.
    result = run(make_run_config(steps=1, optim={"lr": 1e-12}), tmp_path / "tuned", cache, init_from=str(tmp_path / "source"))
    tuned, _ = load_checkpoint(result.last_checkpoint.with_suffix(""))
    assert set(tuned["ema"]) == set(source_ema["ema"])
    for name, value in source_ema["ema"].items():
        torch.testing.assert_close(tuned["model"][name], value, rtol=0, atol=1e-7, msg=name)
        torch.testing.assert_close(tuned["ema"][name], value, rtol=0, atol=1e-7, msg=name)
    # ... and not a fresh initialisation, whose output layer is all zeros
    assert tuned["ema"]["net.conv_out.weight"].abs().max() > 0


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_stops(tmp_path, make_run_config, monkeypatch):
    original = DiffusionModel.training_step

    def training_step(self, x, cond, step):
        figures = original(self, x, cond, step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return figures

    monkeypatch.setattr(DiffusionModel, "training_step", training_step)
    handler_before = signal.getsignal(signal.SIGINT)
    cfg = make_run_config(steps=10, ckpt_every=100, val_every=100)
    result = run(cfg, tmp_path / "r", tmp_path / "cache")
    assert result.stopped == "interrupted"
    assert result.step == 4
    assert checkpoint_steps(tmp_path / "r") == [4]
    assert signal.getsignal(signal.SIGINT) is handler_before

    monkeypatch.setattr(DiffusionModel, "training_step", original)
    resumed = run(cfg, tmp_path / "r", tmp_path / "cache")
    assert resumed.stopped == "finished" and sorted(resumed.losses) == list(range(4, 10))


def test_init_from_says_which_weights_differ_in_shape_and_which_the_source_lacks():
    from pixelforge.train.loop import NotCopied

    note = NotCopied(["audio_proj.weight", "net.label_embed.embed.weight"], ["net.label_embed.embed.weight"])
    assert note == ["audio_proj.weight", "net.label_embed.embed.weight"]
    assert note.describe() == (" (not copied, shapes differ: net.label_embed.embed.weight; "
                               "not in the source: audio_proj.weight)")
    assert NotCopied([], []).describe() == ""
