"""The learning rate's linear cool-down (--cooldown): its schedule, where runs of steps, budget runs and adapter runs
take it from, and how a resumed run given a new total moves it."""

from __future__ import annotations

import csv

import pytest

import pixelforge
from pixelforge.cli import main
from pixelforge.models.optim import OptimConfig, lr_at, with_cooldown_end
from pixelforge.runs import new_run_config
from pixelforge.train import RunConfig

TINY = ["--image-size", "8", "--base-channels", "8", "--channel-mult", "1", "--batch-size", "8", "--device", "cpu",
        "--quiet", "--log-every", "1", "--val-every", "100", "--sample-every", "100"]


def test_the_rate_warms_up_stays_then_falls_linearly_to_0_at_the_end_and_stays_there():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, cooldown_steps=20, cooldown_end=100)
    rates = [lr_at(step, cfg) for step in range(120)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == rates[50] == rates[80] == 1.0
    assert rates[90] == pytest.approx(0.5) and rates[99] == pytest.approx(0.05) and rates[100:] == [0.0] * 20
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))  # never rises after the warm-up
    plain = OptimConfig(lr=1.0, warmup_steps=10)
    assert [lr_at(step, plain) for step in range(10, 120)] == [1.0] * 110  # none by default
    moved = with_cooldown_end(cfg, 200)  # a new total: the same share, ending there
    assert (moved.cooldown_steps, moved.cooldown_end) == (40, 200)
    assert with_cooldown_end(plain, 200) == plain


@pytest.mark.parametrize("fields, message", [(dict(cooldown_steps=-1), "cooldown_steps"),
                                             (dict(cooldown_steps=11, cooldown_end=10), "at most optim.cooldown_end")])
def test_bad_cooldown_fields_are_refused_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**fields)


def test_new_run_config_takes_a_share_of_the_runs_steps(pixelforge_cache):
    cfg = new_run_config("digits", image_size=8, steps=1000, cooldown=0.2)
    assert (cfg.optim.cooldown_steps, cfg.optim.cooldown_end) == (200, 1000)
    assert new_run_config("digits", image_size=8, steps=1000).optim.cooldown_steps == 0
    for bad in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match=r"cooldown \(--cooldown\) must be a share"):
            new_run_config("digits", image_size=8, cooldown=bad)


def test_a_run_of_steps_logs_the_falling_rate_and_a_new_total_moves_the_end(tmp_path, pixelforge_cache, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "digits", "--name", "c", "--runs-dir", str(runs), "--steps", "8", "--warmup", "1",
                 "--lr", "1e-3", "--cooldown", "0.5", *TINY]) == 0
    cfg = RunConfig.load(runs / "c" / "config.json")
    assert (cfg.optim.cooldown_steps, cfg.optim.cooldown_end) == (4, 8)
    with open(runs / "c" / "metrics.csv") as f:
        logged = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")}
    # the metrics row of step s (1-based: s steps done) logs the rate of the update that made it, lr_at(s - 1)
    assert logged and all(rate == pytest.approx(lr_at(step - 1, cfg.optim)) for step, rate in logged.items())
    assert logged[8] == pytest.approx(1e-3 / 4) and logged[4] == pytest.approx(1e-3)
    result = pixelforge.train("digits", name="c", runs_dir=runs, steps=16, device="cpu", progress=False)
    assert result.step == 16
    cfg = RunConfig.load(runs / "c" / "config.json")
    assert (cfg.optim.cooldown_steps, cfg.optim.cooldown_end) == (8, 16)
    for flag in ("1", "-0.1", "x"):
        with pytest.raises(SystemExit):
            main(["train", "digits", "--name", "d", "--runs-dir", str(runs), "--cooldown", flag, *TINY])
        assert "--cooldown" in capsys.readouterr().err
