"""Specifications of the sampling user path: option ranges, output folders, settings kept by the Python
API's images, and `sample --from` finding the model from any working directory."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixelforge
from pixelforge.cli import MAX_SAMPLES, main
from pixelforge.images import read_settings
from test_cli_api import TINY_TRAIN_FLAGS

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(autouse=True)
def _isolated(pixelforge_cache, monkeypatch):
    """Own data cache, and no $PIXELFORGE_RUNS from the environment unless a test sets it."""
    monkeypatch.delenv("PIXELFORGE_RUNS", raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder holding a 4-step run "tiny" trained through the CLI."""
    root = tmp_path_factory.mktemp("sample-path")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(root / "cache"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "digits", "--name", "tiny", "--runs-dir", str(root / "runs"), *TINY_TRAIN_FLAGS])
    assert code == 0, out.getvalue()
    return root / "runs"


def _run(argv: list[str]) -> int:
    """main()'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if p.name != "grid.png")


# --- option ranges: 0 is a value, not "not given" ------------------------------------------------


@pytest.mark.parametrize("flag, value, valid_range", [
    ("--steps", "0", ">= 1"),
    ("--image-size", "0", "4..1024"),
    ("--batch-size", "0", ">= 1"),
    ("--max-minutes", "0", "> 0"),
])
def test_train_refuses_zero_naming_the_option_and_its_range(tmp_path, capsys, flag, value, valid_range):
    # "no-such-data" would fail too, but later and with another message: only the option check names the flag
    code = _run(["train", "no-such-data", "--name", "x", "--runs-dir", str(tmp_path / "runs"), flag, value])
    assert code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and valid_range in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["-n", str(MAX_SAMPLES + 1)], f"argument -n: must be an integer in 1..{MAX_SAMPLES}"),
    (["--guidance", "nan"], "argument --guidance: must be a finite number"),
    (["--guidance", "inf"], "argument --guidance: must be a finite number"),
    (["--option", "guidance=NaN"], "guidance must be a finite number"),
    (["--steps", "0"], "argument --steps: must be an integer >= 1"),
    (["--label", "99"], "label 99 out of range; valid labels are 0..9"),
])
def test_sample_refuses_out_of_range_options_and_writes_nothing(runs, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code = _run(["sample", "tiny", "--runs-dir", str(runs), "--device", "cpu", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not even an empty out/ folder


def test_api_refuses_a_non_finite_sampling_option(runs):
    g = pixelforge.load("tiny", runs_dir=runs, device="cpu")
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        g.generate(1, guidance=float("inf"), steps=1)


# --- output folders ------------------------------------------------------------------------------


def test_two_sample_calls_with_the_default_out_land_in_different_folders(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["sample", "tiny", "--runs-dir", str(runs), "-n", "2", "--steps", "1", "--device", "cpu"]) == 0
    folders = sorted((tmp_path / "out" / "tiny").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", folder.name), folder.name
        assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "seed000000.png", "seed000001.png"]


def test_sample_refuses_a_non_empty_out_folder_unless_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "seed000000.png").write_bytes(b"earlier result")
    argv = ["sample", "tiny", "--runs-dir", str(runs), "-n", "1", "--steps", "1", "--device", "cpu", "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"-o {out}" in err and "--overwrite" in err
    assert (out / "seed000000.png").read_bytes() == b"earlier result"
    assert main([*argv, "--overwrite"]) == 0
    assert read_settings(out / "seed000000.png")["seed"] == 0


# --- the README's Python example keeps the settings ----------------------------------------------


def _readme_python_snippet() -> str:
    text = README.read_text()
    start = text.index("The same in Python:")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, "README.md: no python block after 'The same in Python:'"
    return match.group(1)


def test_the_readme_python_snippet_writes_a_png_that_sample_from_regenerates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippet = _readme_python_snippet()
    assert 'images[0].save("three.png")' in snippet  # the natural path, as the README shows it
    exec(compile(snippet, str(README), "exec"), {})
    s = read_settings(tmp_path / "three.png")
    assert (s["model"], s["seed"], s["label"]) == ("mnist-diffusion", 0, 3)
    assert main(["sample", "--from", "three.png", "-o", "again", "--device", "cpu"]) == 0
    (again,) = _pngs(tmp_path / "again")
    assert np.array_equal(_pixels(again), _pixels(tmp_path / "three.png"))
    assert read_settings(again) == s


def test_settings_passed_to_save_png_win_over_the_images_own(runs, tmp_path):
    from pixelforge.images import save_png

    (image,) = pixelforge.load("tiny", runs_dir=runs, device="cpu").generate(1, steps=1)
    save_png(image, tmp_path / "other.png", {"seed": 123})
    assert read_settings(tmp_path / "other.png") == {"seed": 123}


# --- one naming, resolved from anywhere ----------------------------------------------------------


def test_a_run_is_named_by_its_name_under_the_runs_dir_and_by_its_path_elsewhere(runs, tmp_path):
    assert pixelforge.load("tiny", runs_dir=runs, device="cpu").name == "tiny"
    assert pixelforge.load(runs / "tiny", runs_dir=runs, device="cpu").name == "tiny"
    assert pixelforge.load("mnist-diffusion", device="cpu").name == "mnist-diffusion"
    elsewhere = tmp_path / "models" / "tiny-copy"
    shutil.copytree(runs / "tiny", elsewhere)
    g = pixelforge.load(elsewhere, runs_dir=runs, device="cpu")
    assert g.name == str(elsewhere)
    (image,) = g.generate(1, steps=1)
    s = image.info["pixelforge"]
    assert (s["model"], s["model_path"], s["checkpoint"]) == (str(elsewhere), str(elsewhere.resolve()), g.checkpoint_hash)


@pytest.fixture
def moved_png(runs, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A PNG sampled as `pixelforge sample tiny` from the folder holding ./runs, whose runs folder then
    moved (so the absolute path recorded in the PNG is stale); (png, the runs folder's new place)."""
    project = tmp_path / "project"
    shutil.copytree(runs / "tiny", project / "runs" / "tiny")
    monkeypatch.chdir(project)
    assert main(["sample", "tiny", "-n", "1", "--seed", "4", "--steps", "2", "-o", "first", "--device", "cpu"]) == 0
    (png,) = _pngs(project / "first")
    assert read_settings(png)["model"] == "tiny"
    moved = tmp_path / "moved-runs"
    shutil.move(project / "runs", moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return png, moved


def test_sample_from_resolves_the_run_through_runs_dir_from_another_folder(moved_png):
    png, moved = moved_png
    assert main(["sample", "--from", str(png), "--runs-dir", str(moved), "-o", "again", "--device", "cpu"]) == 0
    (again,) = _pngs(Path("again"))
    assert np.array_equal(_pixels(again), _pixels(png))
    before, after = read_settings(png), read_settings(again)
    assert after.pop("model_path") == str((moved / "tiny").resolve())  # the hint follows the run to its new place
    before.pop("model_path")
    assert after == before


def test_sample_from_resolves_the_run_through_pixelforge_runs(moved_png, monkeypatch):
    png, moved = moved_png
    monkeypatch.setenv("PIXELFORGE_RUNS", str(moved))
    assert main(["sample", "--from", str(png), "-o", "again", "--device", "cpu"]) == 0
    (again,) = _pngs(Path("again"))
    assert np.array_equal(_pixels(again), _pixels(png))


def test_sample_from_falls_back_to_the_recorded_path(runs, tmp_path, monkeypatch):
    elsewhere = tmp_path / "models" / "tiny-copy"
    shutil.copytree(runs / "tiny", elsewhere)
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "models/tiny-copy", "-n", "1", "--steps", "2", "-o", "first", "--device", "cpu"]) == 0
    (png,) = _pngs(tmp_path / "first")
    assert read_settings(png)["model"] == "models/tiny-copy"  # a relative path: it does not resolve from elsewhere
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert main(["sample", "--from", str(png), "--runs-dir", str(runs.parent / "none"), "-o", "again", "--device", "cpu"]) == 0
    (again,) = _pngs(Path("again"))
    assert np.array_equal(_pixels(again), _pixels(png))


def test_sample_from_refuses_a_same_named_run_with_other_weights(moved_png, tmp_path, capsys):
    png, moved = moved_png
    other = tmp_path / "other-runs"
    shutil.copytree(moved / "tiny", other / "tiny")
    newest = sorted((other / "tiny" / "checkpoints").glob("*.json"))[-1]
    newest.unlink()  # the step-2 checkpoint is left: other weights under the same name
    newest.with_suffix(".safetensors").unlink()
    assert main(["sample", "--from", str(png), "--runs-dir", str(other), "-o", "again", "--device", "cpu"]) == 2
    assert "cannot be reproduced exactly" in capsys.readouterr().err
    assert not Path("again").exists()


def test_sample_from_finds_a_run_recorded_as_runs_slash_name_by_older_versions(runs, tmp_path, monkeypatch, capsys):
    from pixelforge.images import save_png

    (image,) = pixelforge.load("tiny", runs_dir=runs, device="cpu").generate(1, seed=2, steps=2)
    old = {k: v for k, v in image.info["pixelforge"].items() if k != "model_path"} | {"model": "runs/tiny"}
    save_png(image, tmp_path / "old.png", old)
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--from", "old.png", "-o", "again", "--device", "cpu"]) == 2  # ./runs/tiny is not here
    assert "pass --runs-dir" in capsys.readouterr().err
    assert main(["sample", "--from", "old.png", "--runs-dir", str(runs), "-o", "again", "--device", "cpu"]) == 0
    (again,) = _pngs(tmp_path / "again")
    assert np.array_equal(_pixels(again), _pixels(tmp_path / "old.png"))
