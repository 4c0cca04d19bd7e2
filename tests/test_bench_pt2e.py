"""The PT2E int8 benchmark needs torchao, which the project does not install: without it, --help still
works and a run stops at once with one line saying how to install it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(ROOT / "bench" / "pt2e_int8.py")]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchao") is not None,
                                reason="torchao is installed here: the bench would run for minutes")


def run(args, tmp_path):
    env = {**os.environ, "PIXELFORGE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(BENCH + args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_help_works_without_torchao(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--calibration-images" in out.stdout and "torchao" in out.stdout


def test_a_run_without_torchao_stops_with_the_install_line(tmp_path):
    out = run([], tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("bench/pt2e_int8.py needs torchao")
    assert "pip install --no-deps --target DIR torchao==0.18.0" in out.stderr
    assert not (tmp_path / "bench-pt2e").exists()  # stopped before writing the ONNX variant
