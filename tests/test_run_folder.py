"""Specifications of a run folder's lifecycle: one training at a time (a lock), plain run names, durable
and cleaned-up temporary files, no half-made folders, and an elapsed time that counts on across resumes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_api import TINY_TRAIN_FLAGS

from pixelforge.cli import main
from pixelforge.train import loop, train
from pixelforge.train.checkpoint import atomic_write_text, list_checkpoints
from pixelforge.train.lock import LOCK_NAME
from pixelforge.train.runs import check_run_name

LOCK_PY = Path(loop.__file__).with_name("lock.py")

# Holds the lock of the folder argv[1] until killed; lock.py is loaded alone, so this starts in well
# under a second (the pixelforge package would import torch).
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[2])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
with lock.run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module", autouse=True)
def _shared_cache(tmp_path_factory):
    """One prepared copy of the bundled digits for the whole module, outside the home folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def cli_train(runs: Path, name: str, data: str = "digits", *flags: str) -> int:
    return main(["train", data, "--name", name, "--runs-dir", str(runs), *TINY_TRAIN_FLAGS, *flags])


def api_train(cfg, run_dir: Path, **kwargs):
    return train(cfg, run_dir, device="cpu", progress=False, **kwargs)


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- the lock -------------------------------------------------------------------------------------


def test_a_second_training_of_a_locked_run_fails_naming_the_owner_and_a_killed_owners_lock_is_taken_over(tmp_path, capsys):
    runs = tmp_path / "runs"
    run_dir = runs / "busy"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(LOCK_PY)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert cli_train(runs, "busy", "digits", "--steps", "2") == 1
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "in use by another training" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written beside the owner
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # kill -9 left the lock file naming the dead owner; the OS released its lock, so the next training takes it over
    assert str(holder.pid) in (run_dir / LOCK_NAME).read_text()
    assert cli_train(runs, "busy", "digits", "--steps", "2") == 0
    out = capsys.readouterr().out
    assert f"taking over the stale lock of {run_dir}: pid {holder.pid}" in out
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000002"]
    assert not (run_dir / LOCK_NAME).exists()  # released at the end


# --- run names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "a\\b", "ABSOLUTE", "x" * 256])
def test_a_run_name_that_is_not_a_plain_name_is_refused_and_nothing_is_written(tmp_path, capsys, name):
    runs = tmp_path / "base" / "runs"
    runs.mkdir(parents=True)
    if name == "ABSOLUTE":
        name = str(tmp_path / "elsewhere")
    assert cli_train(runs, name, "digits", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a plain name" in err
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [Path("base"), Path("base/runs")]


@pytest.mark.parametrize("name", ["digits", "run-2_v1.5", ".hidden", "...", "x" * 255])
def test_plain_run_names_are_accepted(name):
    assert check_run_name(name) == name


# --- temporary files ------------------------------------------------------------------------------


def test_a_resumed_run_removes_the_temporary_files_a_killed_write_left(tmp_path, make_run_config):
    cfg = make_run_config(steps=2, ckpt_every=2, val_every=100)
    run_dir = tmp_path / "r"
    api_train(cfg, run_dir)
    stale = [run_dir / "checkpoints" / ".tmp-k1ll3d.safetensors", run_dir / "checkpoints" / ".tmp-abc", run_dir / "samples" / ".tmp-x.png"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    kept = run_dir / "checkpoints" / "notes.txt"
    kept.write_text("mine")

    longer = make_run_config(steps=3, ckpt_every=2, val_every=100)
    assert api_train(longer, run_dir).step == 3
    assert [p for p in stale if p.exists()] == []
    assert kept.read_text() == "mine"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000002", "step_0000003"]


def test_an_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    calls = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_size, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(target, "12345")
    # the whole new file is on disk before it takes the name; then the folder entry of the rename
    assert calls == [("file", 5, False), ("folder", calls[1][1], True)]


# --- half-made run folders ------------------------------------------------------------------------


def test_training_on_an_empty_folder_leaves_no_run_folder(tmp_path, capsys):
    empty = tmp_path / "images"
    empty.mkdir()
    runs = tmp_path / "runs"
    assert cli_train(runs, "nothing", str(empty)) == 2
    assert "no usable image" in capsys.readouterr().err
    assert not (runs / "nothing").exists()


def test_a_model_that_cannot_be_built_leaves_no_run_folder(tmp_path, make_run_config, monkeypatch):
    def build_model(cfg, device):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(loop, "build_model", build_model)
    with pytest.raises(RuntimeError, match="allocate"):
        api_train(make_run_config(steps=1), tmp_path / "runs" / "huge")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_failed_training_never_removes_a_folder_that_existed_before(tmp_path, capsys):
    empty = tmp_path / "images"
    empty.mkdir()
    run_dir = tmp_path / "runs" / "mine"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("keep me")
    assert cli_train(tmp_path / "runs", "mine", str(empty)) == 2
    assert (run_dir / "notes.txt").read_text() == "keep me"


# --- elapsed time ---------------------------------------------------------------------------------


def _elapsed(rows: list[dict]) -> list[float]:
    return [float(r["elapsed_s"]) for r in rows if r["elapsed_s"]]


def test_elapsed_s_counts_on_across_a_resume(tmp_path, make_run_config):
    cfg = make_run_config(steps=4, ckpt_every=2, log_every=1, val_every=100)
    run_dir = tmp_path / "r"
    api_train(cfg, run_dir, stop_at=2)
    ckpt = list_checkpoints(run_dir / "checkpoints")[-1].with_suffix(".json")
    state = json.loads(ckpt.read_text())
    assert state["elapsed_s"] >= _elapsed(metrics(run_dir))[-1]
    # pretend the first call trained for 1000 s: the resumed rows count on from there
    ckpt.write_text(json.dumps({**state, "elapsed_s": 1000.0}))
    api_train(cfg, run_dir)
    rows = metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert _elapsed(rows)[:2] == sorted(_elapsed(rows)[:2]) and _elapsed(rows)[1] < 1000
    assert all(1000 <= e for e in _elapsed(rows)[2:]) and _elapsed(rows)[2:] == sorted(_elapsed(rows)[2:])
    assert json.loads(list_checkpoints(run_dir / "checkpoints")[-1].with_suffix(".json").read_text())["elapsed_s"] >= 1000


def test_a_checkpoint_without_elapsed_s_counts_on_from_the_last_metrics_row(tmp_path, make_run_config):
    cfg = make_run_config(steps=4, ckpt_every=2, log_every=1, val_every=100)
    run_dir = tmp_path / "r"
    api_train(cfg, run_dir, stop_at=2)
    ckpt = list_checkpoints(run_dir / "checkpoints")[-1].with_suffix(".json")
    state = json.loads(ckpt.read_text())
    state.pop("elapsed_s", None)  # as a checkpoint written before the field was stored
    ckpt.write_text(json.dumps(state))
    rows = metrics(run_dir)
    rows[-1]["elapsed_s"] = "500.0"
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    api_train(cfg, run_dir)
    assert all(e >= 500 for e in _elapsed(metrics(run_dir))[2:])
