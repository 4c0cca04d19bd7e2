"""The guidance sweep benchmark runs end to end in its smoke mode (slow: CI runs it in the bounded step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelforge.cli import main
from pixelforge.metrics.adherence import ATTRIBUTES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_quick_sweep_of_a_tiny_text_run_prints_every_scale_and_saves_the_plot(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    assert main(["train", "shapes", "--name", "st", "--runs-dir", str(tmp_path / "runs"), "--text", "--no-labels",
                 "--steps", "4", "--batch-size", "8", "--image-size", "16", "--base-channels", "8",
                 "--channel-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "8", "--val-every", "4",
                 "--ckpt-every", "4", "--sample-every", "4", "--quiet", "--device", "cpu"]) == 0
    command = [sys.executable, str(ROOT / "bench" / "guidance_sweep.py"), "st", "--runs-dir", "runs", "--quick",
               "--plot", "sweep.png", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([*command, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert [row["guidance"] for row in result["rows"]] == [1.0, 3.0]
    for row in result["rows"]:
        assert set(row["adherence"]) == {"caption", "paraphrased", "other nouns"}
        assert set(row["adherence"]["caption"]) == {*ATTRIBUTES, "all"}
        assert row["diversity"] > 0 and 0 <= row["recall"] <= 1
    assert result["real_diversity"] > 0  # the default prompt's real shapes differ (jitter), so recall means something
    assert result["features"].startswith("pixels") and "--quick" in result["command"]
    assert (tmp_path / "sweep.png").stat().st_size > 0

    r = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| guidance | prompts | shape |" in r.stdout and "| other nouns |" in r.stdout
    assert "Command: `" in r.stdout and "load average" in r.stdout
