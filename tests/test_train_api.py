"""`pixelforge.train(...)`, the Python API's training, is what `pixelforge train` runs; loading a model for
sampling imports no training code."""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pixelforge
import pixelforge.train.loop  # noqa: F401  (binds the name pixelforge.train to the package, as any test run does)
from pixelforge.cli import build_parser, main
from pixelforge.runs import load_weights, new_run_config

ROOT = Path(__file__).resolve().parent.parent

# The same tiny run as flags and as keyword arguments.
CLI_FLAGS = ["--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
             "--batch-size", "16", "--steps", "4", "--ckpt-every", "2", "--val-every", "2", "--log-every", "1",
             "--sample-every", "4", "--warmup", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]
API_SETTINGS = dict(image_size=8, batch_size=16, steps=4, ckpt_every=2, val_every=2, log_every=1, sample_every=4,
                    warmup_steps=2, lr=1e-3, device="cpu", progress=False,
                    model_fields={"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1})


@pytest.fixture(autouse=True)
def _isolated(pixelforge_cache):
    """Every test here prepares data under its own temporary $PIXELFORGE_CACHE."""


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert sorted(wa) == sorted(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "the EMA weights differ"


def test_pixelforge_train_makes_the_run_the_cli_makes_and_resumes_it_alike(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "digits", "--name", "cli", "--runs-dir", str(runs), *CLI_FLAGS]) == 0
    result = pixelforge.train("digits", name="api", runs_dir=runs, **API_SETTINGS)
    assert (result.run_dir, result.step, result.stopped) == (runs / "api", 4, "finished")
    assert (runs / "cli" / "config.json").read_text() == (runs / "api" / "config.json").read_text()
    _same_weights(runs / "cli", runs / "api")

    # the same name again resumes with the saved config, a new steps total being the only setting taken
    capsys.readouterr()
    assert main(["train", "digits", "--name", "cli", "--runs-dir", str(runs), "--steps", "6", "--device", "cpu",
                 "--quiet"]) == 0
    result = pixelforge.train("digits", name="api", runs_dir=runs, steps=6, batch_size=2, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert out.count("resuming with its saved config (family diffusion, 6 steps)") == 2
    assert out.count("from step 4") == 2
    assert (result.step, result.stopped) == (6, "finished")
    cfg = json.loads((runs / "api" / "config.json").read_text())
    assert cfg["train"]["steps"] == 6 and cfg["train"]["batch_size"] == 16
    assert (runs / "cli" / "config.json").read_text() == (runs / "api" / "config.json").read_text()
    _same_weights(runs / "cli", runs / "api")


def test_loading_and_exporting_a_model_import_no_training_code(tmp_path):
    script = f"""
import sys
import pixelforge
from pixelforge.runs import export_run, resolve_run
g = pixelforge.load(device="cpu")
g.generate(1, label=3, steps=2)
export_run(resolve_run("mnist-diffusion"), __import__("pathlib").Path({str(tmp_path / "export")!r}))
try:
    import pixelforge.serve.app  # the server, where its extra is installed
except ImportError:
    pass
print(sorted(m for m in sys.modules if m == "pixelforge.train" or m.startswith("pixelforge.train.")))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIXELFORGE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_the_cli_train_defaults_are_the_librarys():
    """--help shows each default, so the flags write them out: they must be the library's."""
    a = vars(build_parser().parse_args(["train", "digits", "--name", "x"]))
    a["labels"] = not a.pop("no_labels")
    a["warmup_steps"] = a.pop("warmup")
    params = inspect.signature(new_run_config).parameters
    shared = {k: v for k, v in a.items() if k in params and k != "data" and v is not None}  # None: left to the library
    assert len(shared) >= 13
    assert shared == {k: params[k].default for k in shared}
    # the flags left to the library (None, so that --minutes can tell a given value from a default) state its default
    commands = next(act for act in build_parser()._actions if isinstance(act, argparse._SubParsersAction))
    stated = {act.dest: act.help for act in commands.choices["train"]._actions
              if act.default is None and act.help and "(default: " in act.help}
    names = {"warmup": "warmup_steps"}
    checked = {names.get(dest, dest): text.split("(default: ")[1].split(";")[0].split(")")[0] for dest, text in stated.items()}
    checked = {k: v for k, v in checked.items() if k in params and params[k].default is not None}
    assert {"batch_size", "warmup_steps", "ema_decay", "val_every", "sample_every", "ckpt_every", "log_every", "steps"} <= set(checked)
    assert checked == {k: str(params[k].default) for k in checked}


def test_model_fields_are_the_familys_even_where_a_training_setting_has_the_same_name():
    cfg = new_run_config("digits", model="vqvae", model_fields={"ema_decay": 0.5}, ema_decay=0.9)
    assert cfg.model["ema_decay"] == 0.5 and cfg.train.ema_decay == 0.9


def test_bad_settings_are_refused_before_any_folder_is_made(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="model field 'z_dim' does not apply to diffusion models; their fields: .*base_channels"):
        pixelforge.train("digits", name="x", runs_dir=runs, model_fields={"z_dim": 4})
    with pytest.raises(ValueError, match=r"early_stop_on fid \(--early-stop-on\) needs eval_every"):
        pixelforge.train("digits", name="x", runs_dir=runs, early_stop_on="fid")
    with pytest.raises(ValueError, match="vqvae models take no text"):
        pixelforge.train("shapes", name="x", runs_dir=runs, model="vqvae", text=True)
    with pytest.raises(ValueError, match="is not a plain name"):
        pixelforge.train("digits", name="../x", runs_dir=runs)
    with pytest.raises(ValueError, match=r"caption_variants: -1 is not valid; use an integer in 0\.\.64"):
        pixelforge.train("shapes", name="x", runs_dir=runs, caption_variants=-1)
    assert not runs.exists()
    assert new_run_config("shapes", caption_variants=3).data.caption_variants == 3  # recorded with the run


def test_an_export_writes_every_model_field_of_this_version_even_where_the_run_predates_one(tmp_path):
    from pixelforge.runs import export_run, resolve_run
    from pixelforge.runs.config import RunConfig

    src = resolve_run("mnist-diffusion")
    old = tmp_path / "old"
    shutil.copytree(src, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["model"]["audio_net"], cfg["model"]["lowres"]  # a run made before the family had them
    (old / "config.json").write_text(json.dumps(cfg))
    export_run(old, tmp_path / "export")
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    full = RunConfig.load(src / "config.json").resolved()
    assert written["model"] == full.model and "audio_net" in written["model"] and "lowres" in written["model"]
    assert RunConfig.load(tmp_path / "export" / "config.json").model_config() == full.model_config()
