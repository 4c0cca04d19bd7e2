"""Specifications of the `pixelforge` command and the Python API, end to end on a tiny run trained on "digits"."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import pixelforge
from pixelforge import __version__
from pixelforge.cli import build_parser, main
from pixelforge.images import read_settings
from pixelforge.train.runs import bundled_models

TINY_TRAIN_FLAGS = [
    "--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
    "--batch-size", "16", "--steps", "4", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
    "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet",
]


@pytest.fixture(autouse=True)
def _isolated(pixelforge_cache):
    """Every test here prepares data under its own temporary $PIXELFORGE_CACHE."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run "tiny" trained through the CLI; (runs_dir, run_dir, stdout of the train command)."""
    root = tmp_path_factory.mktemp("cli")
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "digits", "--name", "tiny", "--runs-dir", str(runs), *TINY_TRAIN_FLAGS])
    assert code == 0, out.getvalue()
    return runs, runs / "tiny", out.getvalue()


@pytest.fixture(scope="module")
def sampled(trained, tmp_path_factory):
    """`pixelforge sample tiny -n 3 --label 2 --steps 3 --seed 5 -o OUT`; (out folder, exit code)."""
    runs, _, _ = trained
    out = tmp_path_factory.mktemp("samples")
    code = main(["sample", "tiny", "--runs-dir", str(runs), "-n", "3", "--label", "2", "--steps", "3",
                 "-o", str(out), "--seed", "5", "--device", "cpu"])
    return out, code


# --- help and listings ----------------------------------------------------------------------------


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_help_exits_0_and_mentions_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    commands = _commands()
    assert {"train", "sample", "info", "data", "datasets"} <= set(commands)
    for command in commands:
        assert command in out, command


def test_no_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    assert "usage: pixelforge" in capsys.readouterr().out


def test_train_help_exits_0_and_documents_the_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--steps", "--name", "--lr", "--batch-size", "--image-size", "--patience", "--init-from"):
        assert flag in out, flag


def test_version_flag_prints_the_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_datasets_lists_the_bundled_sets(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "digits" in out


# --- data check -----------------------------------------------------------------------------------


def test_data_check_lists_the_corrupt_file_and_why(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 10).save(folder / "a.png")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "b.png")
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    (folder / "broken.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # cut off mid-stream
    assert main(["data", "check", str(folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "usable images : 2" in out
    line = next(line for line in out.splitlines() if "broken.png" in line)
    assert "truncated image" in line


def test_data_check_of_an_empty_folder_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty"), "--quiet"]) == 1
    assert "no usable image" in capsys.readouterr().out


# --- train, info ----------------------------------------------------------------------------------


def test_train_creates_config_checkpoints_metrics_and_samples(trained):
    _, run_dir, out = trained
    assert "finished at step 4" in out
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["base_channels"] == 8 and cfg["model"]["num_classes"] == 10
    assert cfg["train"]["steps"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_0000002.json", "step_0000002.safetensors", "step_0000004.json", "step_0000004.safetensors"]
    assert (run_dir / "metrics.csv").read_text().count("\n") == 1 + 4  # header and one row per step
    assert [p.name for p in (run_dir / "samples").iterdir()] == ["step_0000004.png"]


def test_train_again_with_the_same_name_resumes(trained, tmp_path, capsys):
    runs, run_dir, _ = trained
    # a copy, so the module's run stays as the other tests expect it
    shutil.copytree(run_dir, tmp_path / "runs" / "again")
    assert main(["train", "digits", "--name", "again", "--runs-dir", str(tmp_path / "runs"), "--steps", "5",
                 "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resuming with its saved config" in out and "finished at step 5" in out


def test_info_prints_the_step_and_the_model(trained, capsys):
    runs, _, _ = trained
    assert main(["info", "tiny", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "step 4 of 4" in out
    assert "diffusion" in out and "base_channels=8" in out


# --- sample ---------------------------------------------------------------------------------------


def test_sample_writes_pngs_carrying_their_settings_and_a_grid(sampled, trained):
    out, code = sampled
    assert code == 0
    pngs = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 3 and (out / "grid.png").is_file()
    settings = [read_settings(p) for p in pngs]
    assert [s["seed"] for s in settings] == [5, 6, 7]
    for s, png in zip(settings, pngs):
        assert {"model", "checkpoint", "seed", "sampler", "steps", "guidance", "label", "version"} <= set(s)
        assert (s["sampler"], s["steps"], s["guidance"], s["label"], s["version"]) == ("heun", 3, 1.0, 2, __version__)
        assert s["model"] == "tiny" and s["model_path"] == str(trained[1].resolve())
        assert len(s["checkpoint"]) == 12
        with Image.open(png) as im:
            assert im.size == (8, 8) and im.mode == "L"


def test_sample_from_a_png_regenerates_the_same_pixels(sampled, tmp_path):
    out, _ = sampled
    original = sorted(p for p in out.glob("*.png") if p.name != "grid.png")[1]  # seed 6, the middle of its batch
    assert main(["sample", "--from", str(original), "-o", str(tmp_path / "again"), "--device", "cpu"]) == 0
    (again,) = list((tmp_path / "again").glob("*.png"))
    assert again.name == original.name
    with Image.open(original) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert read_settings(again) == read_settings(original)


def test_a_png_records_its_batch_and_sample_from_computes_it_in_a_batch_of_that_size(sampled, tmp_path, monkeypatch):
    # some CPUs round one image alone unlike the same image in a batch (docs: replay_rows): the replay repeats it
    out, _ = sampled
    original = sorted(p for p in out.glob("*.png") if p.name != "grid.png")[2]
    assert read_settings(original)["batch"] == 3  # -n 3 in one batch
    from pixelforge.models.diffusion import DiffusionModel

    counts, real = [], DiffusionModel.sample

    def counting(self, n, cond=None, *, seeds=None, **kw):
        counts.append((n, list(seeds), None if cond is None else cond.labels.tolist()))
        return real(self, n, cond, seeds=seeds, **kw)

    monkeypatch.setattr(DiffusionModel, "sample", counting)
    assert main(["sample", "--from", str(original), "-o", str(tmp_path / "again"), "--device", "cpu"]) == 0
    assert counts == [(3, [7, 7, 7], [2, 2, 2])]  # seed 7, label 2: three copies of the one image, one kept
    (again,) = (tmp_path / "again").glob("*.png")
    with Image.open(original) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert read_settings(again)["batch"] == 3  # and it replays the same way again


def test_sample_from_refuses_a_recorded_batch_that_is_not_a_count(sampled, tmp_path, capsys):
    from pixelforge.images import save_png

    out, _ = sampled
    original = sorted(p for p in out.glob("*.png") if p.name != "grid.png")[0]
    for bad in (0, -2, 2.5, "3", 10**9):
        s = {**read_settings(original), "batch": bad}
        with Image.open(original) as im:
            save_png(im.copy(), tmp_path / "bad.png", s)
        assert main(["sample", "--from", str(tmp_path / "bad.png"), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "bad.png" in err and "batch" in err and repr(bad) in err


def test_batch_sizes_record_the_batch_each_image_was_sampled_in():
    from pixelforge.api import batch_sizes

    assert batch_sizes(5, 2) == [2, 2, 2, 2, 1]
    assert batch_sizes(3, 64) == [3, 3, 3]
    assert batch_sizes(1, 64, rows=7) == [7]  # a replay records the batch it repeated


def test_sample_with_a_label_out_of_range_exits_2_with_a_message(trained, tmp_path, capsys):
    runs, _, _ = trained
    code = main(["sample", "tiny", "--runs-dir", str(runs), "-n", "1", "--label", "12", "--steps", "2",
                 "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "label 12" in err and "0..9" in err
    assert not (tmp_path / "o").exists()


def test_sample_of_an_unknown_run_exits_2_and_lists_the_bundled_models(tmp_path, capsys):
    code = main(["sample", "no-such-run", "--runs-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no-such-run" in err and "bundled" in err
    for name in bundled_models():
        assert name in err


# --- Python API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(trained):
    return pixelforge.load(trained[1], device="cpu")


def test_api_generate_returns_pil_images_with_their_settings(generator):
    images = generator.generate(n=2, label=1, seed=0, steps=4)
    assert len(images) == 2
    for i, im in enumerate(images):
        assert isinstance(im, Image.Image)
        assert im.size == (8, 8) and im.mode == "L"
        assert im.info["pixelforge"]["seed"] == i and im.info["pixelforge"]["label"] == 1


def test_api_generate_is_deterministic_for_a_seed(generator):
    a = generator.generate(n=2, label=3, seed=9, steps=4)
    b = generator.generate(n=2, label=3, seed=9, steps=4)
    c = generator.generate(n=2, label=3, seed=10, steps=4)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_api_image_i_of_n_equals_generating_seed_plus_i_alone(generator):
    batch, _ = generator.generate_tensor(4, label=7, seed=30, steps=4)
    batch_images = generator.generate(4, label=7, seed=30, steps=4)
    for i in range(4):
        alone, settings = generator.generate_tensor(1, label=7, seed=30 + i, steps=4)
        np.testing.assert_allclose(batch[i : i + 1].numpy(), alone.numpy(), rtol=0, atol=1e-5)
        assert settings[0]["seed"] == 30 + i
        (alone_image,) = generator.generate(1, label=7, seed=30 + i, steps=4)
        assert np.array_equal(np.asarray(batch_images[i]), np.asarray(alone_image))


def test_api_batch_size_does_not_change_the_images(generator):
    a, _ = generator.generate_tensor(3, label=0, seed=2, steps=3, batch_size=64)
    b, _ = generator.generate_tensor(3, label=0, seed=2, steps=3, batch_size=2)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label=10), "0..9"),
        (dict(label="seven"), "valid labels"),
        (dict(sampler="rk4"), "heun"),
        (dict(steps=0), "steps"),
    ],
)
def test_api_rejects_bad_arguments_with_the_valid_choices(generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator.generate(1, **kwargs)
