"""Specifications of the time budget (`pixelforge train --minutes`): the planner's choices from given step times,
the timing on this machine, a run that ends at its budget with a checkpoint, and an exact resume to the budget."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

import pixelforge
import pixelforge.train.loop as loop
from pixelforge.cli import main
from pixelforge.models import DiffusionModel, get_family
from pixelforge.models.diffusion import DiffusionConfig
from pixelforge.runs import new_run_config
from pixelforge.train import RunConfig, TrainConfig, train
from pixelforge.train import budget
from pixelforge.train.budget import (MIN_STEPS, StepTiming, describe_plan, measure_step_times, plan_budget, plan_schedule,
                                     size_candidates)
from pixelforge.train.checkpoint import list_checkpoints, load_checkpoint


def timing(base: int, parameters: int, s16: float, s32: float) -> StepTiming:
    return StepTiming({"base_channels": base}, parameters, ((16, s16), (32, s32)))


# seconds per step growing with the batch, as on a CPU: at batch 64 0.08 s, 0.24 s and 1.0 s
CPU_LIKE = [timing(16, 180_000, 0.02, 0.04), timing(32, 1_100_000, 0.06, 0.12), timing(64, 6_600_000, 0.25, 0.5)]


# --- the planner, from given step times ------------------------------------------------------------------


def test_a_short_budget_picks_a_smaller_network_than_a_long_one():
    plans = {m: plan_budget(m, 5000, CPU_LIKE) for m in (2, 10, 60)}
    assert [plans[m].model_fields["base_channels"] for m in (2, 10, 60)] == [16, 32, 64]
    assert plans[2].parameters < plans[10].parameters < plans[60].parameters
    # each is the largest network that gets MIN_STEPS: 2 min = 108 s of steps. A step's time is proportional to
    # the batch here, so batch 64 trains no more images a second than 32: a diffusion plan takes 32 and twice the steps
    assert (plans[2].batch_size, plans[2].steps) == (32, 2700)  # 0.04 s a step; the medium one gets only 900 at 32
    assert (plans[10].batch_size, plans[10].steps) == (32, 4500)  # 540 s / 0.12 s
    assert (plans[60].batch_size, plans[60].steps) == (32, 6480)  # 3240 s / 0.5 s
    # batch_gain 0 (a GAN's plan): the largest batch that gets MIN_STEPS, as before
    assert [plan_budget(m, 5000, CPU_LIKE, batch_gain=0).batch_size for m in (2, 10, 60)] == [32, 64, 64]
    assert not any(p.short for p in plans.values())


def test_more_time_gives_the_same_network_more_steps_a_longer_ema_and_sparser_cadence():
    one = [CPU_LIKE[1]]
    short, long = plan_budget(5, 5000, one), plan_budget(10, 5000, one)
    assert short.model_fields == long.model_fields and short.batch_size == long.batch_size == 32
    assert long.steps == 2 * short.steps == 4500
    assert long.ema_decay > short.ema_decay
    assert long.ckpt_every > short.ckpt_every and long.sample_every > short.sample_every
    assert long.warmup_steps > short.warmup_steps


def test_a_budget_too_short_for_the_step_floor_takes_the_smallest_network_at_batch_16_and_says_so():
    plan = plan_budget(0.5, 5000, CPU_LIKE)  # 27 s: 1350 steps of 0.02 s at batch 16, the most any choice gets
    assert (plan.model_fields["base_channels"], plan.batch_size, plan.steps, plan.short) == (16, 16, 1350, True)
    assert plan.steps < MIN_STEPS
    cfg = new_run_config("digits", image_size=8, minutes=0.5, **plan.settings())
    assert any("fewer than 1,500 steps" in line for line in describe_plan(cfg, plan))


def test_a_gpu_whose_step_time_hardly_grows_with_the_batch_gets_the_largest_network_at_batch_64():
    gpu = [timing(16, 180_000, 0.004, 0.0041), timing(32, 1_100_000, 0.006, 0.0062), timing(64, 6_600_000, 0.012, 0.0125)]
    plan = plan_budget(10, 50_000, gpu)
    assert (plan.model_fields["base_channels"], plan.batch_size) == (64, 64)
    assert plan.seconds_per_step == pytest.approx(0.0135)  # 0.0115 + 64 * 0.5e-3 / 16
    assert plan.steps == int(540 / 0.0135)


@pytest.mark.parametrize("s64, batch", [(0.06, 64), (0.075, 64), (0.085, 32), (0.12, 32)])
def test_batch_64_only_where_it_trains_one_and_a_half_times_the_images_a_second_of_32(s64, batch):
    # 0.06 s a step at batch 32: 64 images in 0.075 s are 1.6x its rate, in 0.085 s 1.41x
    t = StepTiming({"base_channels": 32}, 1_100_000, ((32, 0.06), (64, s64)))
    assert plan_budget(20, 5000, [t]).batch_size == batch
    assert plan_budget(20, 5000, [t], batch_gain=0).batch_size == 64


def test_a_step_time_is_the_one_measured_at_that_batch_else_the_line_through_the_nearest_two():
    t = StepTiming({}, 1000, ((16, 0.10), (32, 0.15), (64, 0.30)))
    assert [t.seconds_per_step(b) for b in (16, 32, 64)] == [0.10, 0.15, 0.30]
    assert t.seconds_per_step(48) == pytest.approx(0.225)  # between 32 and 64
    assert t.seconds_per_step(128) == pytest.approx(0.60)  # above: the line through the two largest
    assert t.seconds_per_step(8) == pytest.approx(0.075)  # below: the line through the two smallest
    # two points: the line through them, 64 extrapolated (what the planner had alone before it timed 64 too)
    assert StepTiming({}, 1000, ((16, 0.10), (32, 0.15))).seconds_per_step(64) == pytest.approx(0.25)


@pytest.mark.parametrize("at_64, batch", [(0.030, 32), (0.012, 64)])
def test_a_batch_taken_above_those_timed_is_timed_before_the_plan_stands(pixelforge_cache, at_64, batch):
    """16 and 32 are timed; 64, where the line through them says it trains 1.69x the images a second of 32, is timed
    alone before the plan takes it: measured slower (0.030 s, 0.73x) the plan takes 32, measured as fast (0.012 s,
    1.83x) it keeps 64, with the measured time."""
    calls, said = [], []

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        calls.append((batch_size, [dict(c) for c in candidates], precisions))
        points = ((64, at_64),) if batch_size == 64 else ((16, 0.010), (32, 0.011))
        return [StepTiming(dict(c), 1000 * c["num_res_blocks"], points) for c in candidates]

    cfg, plan = budget.plan_run("shapes", 1, image_size=8, measure=measure, init_from="none", say=said.append)
    largest = size_candidates(8)[-1]
    assert [c[0] for c in calls] == [None, 64] and calls[1][1:] == ([largest], ("fp32",))
    assert any("batch 64 timed too: " + f"{at_64:.3f} s a step (the line through the smaller batches gave 0.013)" in line
               for line in said)
    assert (plan.batch_size, cfg.train.batch_size) == (batch, batch) and largest.items() <= plan.model_fields.items()
    seconds = {32: 0.011, 64: at_64}[batch]
    assert plan.seconds_per_step == pytest.approx(seconds) and plan.steps == int(54 / seconds + 1e-6)
    # a batch given, or one the points hold, is not timed again
    calls.clear()
    budget.plan_run("shapes", 1, image_size=8, measure=measure, init_from="none", batch_size=32)
    assert [c[0] for c in calls] == [32]


def test_a_given_batch_size_is_the_only_batch_planned_and_none_exceeds_the_training_images():
    assert plan_budget(10, 5000, CPU_LIKE, batch_size=16).batch_size == 16
    small_set = plan_budget(60, 20, CPU_LIKE)
    assert small_set.batch_size == 20
    assert small_set.seconds_per_step == pytest.approx(CPU_LIKE[-1].seconds_per_step(20))


def test_the_schedule_follows_the_expected_steps():
    # 10,000 steps: the defaults of a run of steps (warm-up 200, EMA 0.999 averaging 1,000 steps, a 10th of the run)
    s = plan_schedule(10_000)
    assert (s["warmup_steps"], s["ema_decay"], s["log_every"]) == (200, 0.999, 25)
    assert (s["ckpt_every"], s["sample_every"], s["val_every"]) == (1000, 2000, 500)
    s = plan_schedule(1640)  # cadences rounded to two significant digits
    assert (s["warmup_steps"], s["ckpt_every"], s["sample_every"], s["val_every"], s["log_every"]) == (82, 160, 330, 82, 8)
    assert 1 / (1 - s["ema_decay"]) == pytest.approx(164, rel=0.01)
    assert plan_schedule(3)["ema_decay"] == 0.9 and plan_schedule(3)["warmup_steps"] == 1


def test_a_short_run_at_a_small_batch_validates_and_samples_only_as_often_as_takes_5_percent_of_its_time():
    # 21 steps at batch 16: a validation (256 images, forward only) costs about 5.3 steps' time and a grid (16
    # images, 35 network evaluations) about 11.7: every 5% of the run would spend more time on them than on training
    s = plan_schedule(21, 16)
    assert (s["val_every"], s["sample_every"]) == (110, 230)  # 5.33 / 0.05 and 11.7 / 0.05, to two digits
    assert s["val_every"] > 21 and s["sample_every"] > 21  # so none comes before the budget's end
    assert plan_schedule(21, 16)["ckpt_every"] == 2  # checkpoints cost little: every 10% still
    # at batch 64 and 1,640 steps the 5% rule binds nowhere: every 5% and 20% of the run
    assert (plan_schedule(1640, 64)["val_every"], plan_schedule(1640, 64)["sample_every"]) == (82, 330)


def test_candidates_fit_the_image_side_and_fields_the_user_gives_win():
    assert [c["channel_mult"] for c in size_candidates(32)] == [(1, 2), (1, 2, 2), (1, 2, 2)]
    assert [c["base_channels"] for c in size_candidates(32)] == [16, 32, 64]
    assert {c["channel_mult"] for c in size_candidates(8)} == {(1, 2)}  # 8 -> 4 -> 2 would leave a 2-pixel level
    assert {c["channel_mult"] for c in size_candidates(6)} == {(1,)}
    assert [c["base_channels"] for c in size_candidates(32, {"base_channels": 48})] == [48, 48, 48]
    given = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1}
    assert size_candidates(32, given) == [given]


def test_bad_budgets_are_refused_with_the_field_named():
    for bad in (0, -1, math.nan, True, "10", 10**7):
        with pytest.raises(ValueError, match=r"train\.minutes \(--minutes\)"):
            TrainConfig(minutes=bad)
    with pytest.raises(ValueError, match="at least one network"):
        plan_budget(10, 100, [])


# --- timing on this machine ---------------------------------------------------------------------------------


def test_timing_measures_the_smallest_network_first_and_stops_where_the_budget_cannot_reach_the_floor(pixelforge_cache,
                                                                                                   monkeypatch):
    monkeypatch.setattr(budget, "PROBE_MIN_SECONDS", 0.0)  # one timed step a batch size is enough here
    cfg = new_run_config("digits", image_size=8)
    candidates = size_candidates(8)
    state = torch.get_rng_state()
    tiny = measure_step_times(cfg, candidates, torch.device("cpu"), minutes=0.001, n_train=1700)
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is untouched
    assert [t.model_fields for t in tiny] == candidates[:1]  # 0.06 s allows no 1,500 steps: larger ones not timed
    (t,) = tiny
    assert [b for b, _ in t.points] == [16, 32] and all(s > 0 for _, s in t.points)
    small = DiffusionModel(DiffusionConfig(**{**cfg.model, **candidates[0]}), cfg.optim, seed=0)
    assert t.parameters == sum(p.numel() for p in small.parameters())
    # a given batch is the only one timed, and never more than the training images
    (t,) = measure_step_times(cfg, candidates, torch.device("cpu"), minutes=0.001, n_train=1700, batch_size=8)
    assert [b for b, _ in t.points] == [8]
    (t,) = measure_step_times(cfg, candidates, torch.device("cpu"), minutes=0.001, n_train=20)
    assert [b for b, _ in t.points] == [16, 20]


def test_a_step_time_is_the_median_of_at_least_three_steps_so_one_slow_step_does_not_move_it(monkeypatch):
    clock = SimpleNamespace(now=0.0)
    durations = iter([2.0, 0.25, 0.25])  # the first step slow (another program's burst, say)

    class Model(SimpleNamespace):
        def training_step(self, x, cond, step):
            clock.now += next(durations)

    monkeypatch.setattr(budget, "_probe_batch", lambda model, batch, generator: (None, None))
    monkeypatch.setattr(budget, "PROBE_MIN_STEPS", 3)
    model = Model(device=torch.device("cpu"))
    # 2 s is past PROBE_MIN_SECONDS after the first step: still three are timed, and the slow one is not the answer
    seconds, step = budget._time_steps(model, 16, 5, lambda: clock.now)
    assert (seconds, step) == (0.25, 8)
    # fast steps repeat until PROBE_MIN_SECONDS
    clock.now, durations = 0.0, iter([0.125] * 20)
    seconds, step = budget._time_steps(model, 16, 0, lambda: clock.now)
    assert (seconds, step) == (0.125, 4)


# --- a run with a budget: the loop, with a clock that moves 1.25 s per training step -------------------------


def _install_step_clock(mp: pytest.MonkeyPatch, per_step: float, model_class: type = DiffusionModel) -> SimpleNamespace:
    """The training loop's clock made to move only when a training step runs, `per_step` seconds each: a run's
    length in steps then follows from its budget exactly."""
    clock = SimpleNamespace(now=1000.0)
    mp.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    step = model_class.training_step

    def timed(self, *args, **kwargs):
        clock.now += per_step
        return step(self, *args, **kwargs)

    mp.setattr(model_class, "training_step", timed)
    return clock


@pytest.fixture
def step_clock(monkeypatch):
    """step_clock(per_step=1.25, model_class=DiffusionModel): _install_step_clock for one test."""
    return lambda per_step=1.25, model_class=DiffusionModel: _install_step_clock(monkeypatch, per_step, model_class)


def run(cfg, run_dir, cache, **kwargs):
    return train(cfg, run_dir, device="cpu", progress=False, cache_dir=cache, **kwargs)


def test_a_budget_run_trains_past_its_expected_steps_and_stops_within_one_step_of_the_budget(tmp_path, make_run_config,
                                                                                            step_clock, capsys):
    step_clock(1.25)
    cfg = make_run_config(steps=3, minutes=0.1, ckpt_every=100, val_every=100)  # 6 s; 3 steps were expected
    result = train(cfg, tmp_path / "r", device="cpu", progress=True, cache_dir=tmp_path / "cache")
    bar = capsys.readouterr().err.splitlines()[-1]
    # the bar's total follows the budget (the steps it allows at the rate so far), and it shows the time left
    assert "| 5/5 [" in bar and "left=00:00 (time budget)" in bar
    assert (result.stopped, result.step) == ("finished", 5)  # 5 x 1.25 s = 6.25 s: the first step past 6 s
    assert result.last_checkpoint.name == "step_0000005.safetensors"
    _, meta = load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[-1])
    assert 6 < meta["elapsed_s"] <= 6 + 1.25
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["minutes"] == 0.1
    assert (tmp_path / "r" / "samples" / "step_0000005.png").is_file()
    # its images are sampled by default as budget runs sample: Euler at the family default's 35 evaluations
    assert json.loads((tmp_path / "r" / "sample_defaults.json").read_text()) == budget.BUDGET_SAMPLING
    assert pixelforge.load(tmp_path / "r", device="cpu").sample_options["sampler"] == "euler"


def test_a_budget_run_ends_where_its_cooldown_reaches_0_and_a_larger_budget_moves_it(tmp_path, make_run_config,
                                                                                      step_clock, capsys):
    step_clock(1.25)
    cfg = make_run_config(steps=3, minutes=0.1, ckpt_every=100, val_every=100, optim={"cooldown_steps": 1, "cooldown_end": 3})
    result = train(cfg, tmp_path / "r", device="cpu", progress=False, cache_dir=tmp_path / "cache")
    assert (result.stopped, result.step) == ("finished", 3)  # 3.75 s of the 6: past step 3 the rate is 0
    assert result.last_checkpoint.name == "step_0000003.safetensors"
    assert "cool-down reached 0 at step 3: the run ends there, 2 s before its budget" in capsys.readouterr().out
    result = pixelforge.train("digits", name="r", runs_dir=tmp_path, minutes=0.2, device="cpu", progress=False)
    assert (result.stopped, result.step) == ("finished", 6)  # the end moved with the budget (3 x 0.2 / 0.1)


def test_budget_sampling_goes_only_to_new_diffusion_budget_runs_and_keeps_a_users_file(tmp_path, make_run_config):
    timed, stepped = make_run_config(steps=3, minutes=0.1), make_run_config(steps=3)
    assert budget.BUDGET_SAMPLING == {"sampler": "euler", "steps": 35, "rho": 2.0}  # 35 evaluations, as Heun with 18 steps
    assert not budget.write_budget_sampling(stepped, tmp_path / "a") and not (tmp_path / "a").exists()
    other = dataclasses.replace(timed, family="vae")
    (tmp_path / "b").mkdir()
    assert not budget.write_budget_sampling(other, tmp_path / "b") and not list((tmp_path / "b").iterdir())
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "sample_defaults.json").write_text('{"guidance": 2.0}')
    assert not budget.write_budget_sampling(timed, tmp_path / "c")
    assert (tmp_path / "c" / "sample_defaults.json").read_text() == '{"guidance": 2.0}'
    (tmp_path / "d").mkdir()
    assert budget.write_budget_sampling(timed, tmp_path / "d")


@pytest.fixture(scope="module")
def budget_pair(tmp_path_factory, make_run_config):
    """The same 12-second run trained twice: straight through, and stopped at step 4 then resumed."""
    root = tmp_path_factory.mktemp("budget")
    cfg = make_run_config(steps=2, minutes=0.2, batch_size=16, ckpt_every=3, log_every=1, val_every=3)
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        _install_step_clock(mp, 1.25)
        full = run(cfg, root / "full", cache)
        first = run(cfg, root / "resumed", cache, stop_at=4)
        second = run(cfg, root / "resumed", cache)
    return {"cfg": cfg, "cache": cache, "full": full, "first": first, "second": second, "root": root}


def test_a_resumed_budget_run_continues_to_the_stored_budget_and_repeats_the_straight_run_exactly(budget_pair):
    full, first, second = budget_pair["full"], budget_pair["first"], budget_pair["second"]
    assert (full.stopped, full.step) == ("finished", 10)  # 10 x 1.25 s = 12.5 s
    assert (first.stopped, first.step) == ("interrupted", 4)
    assert (second.stopped, second.step) == ("finished", 10)  # 5 s spent before, 7 s left: 6 steps more
    assert sorted(second.losses) == list(range(4, 10))
    for step in range(10):
        assert (first.losses if step < 4 else second.losses)[step] == full.losses[step], step
    a, meta_a = load_checkpoint(list_checkpoints(budget_pair["root"] / "full" / "checkpoints")[-1])
    b, meta_b = load_checkpoint(list_checkpoints(budget_pair["root"] / "resumed" / "checkpoints")[-1])
    assert meta_a["elapsed_s"] == meta_b["elapsed_s"] == 12.5
    for part in ("ema", "model", "optim.net"):
        assert set(a[part]) == set(b[part])
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_a_spent_budget_trains_no_more_and_a_larger_one_continues(budget_pair, tmp_path, step_clock):
    step_clock(1.25)
    cache, cfg = budget_pair["cache"], budget_pair["cfg"]
    shutil.copytree(budget_pair["root"] / "full", tmp_path / "run")  # the 12-second run, spent at step 10
    again = run(cfg, tmp_path / "run", cache)
    assert (again.stopped, again.step, again.losses) == ("finished", 10, {})
    more = run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, minutes=0.25)), tmp_path / "run", cache)
    assert (more.stopped, more.step) == ("finished", 13)  # 15 s: 2.5 s left after 12.5 s, passed by the third step


def test_max_minutes_ends_one_call_of_a_budget_run_and_the_next_call_finishes_it(tmp_path, make_run_config, step_clock):
    step_clock(1.25)
    cfg = make_run_config(steps=2, minutes=0.2, ckpt_every=100, val_every=100)  # 12 s in all
    first = run(cfg, tmp_path / "r", tmp_path / "cache", max_seconds=3.0)  # this call: 3 s
    assert (first.stopped, first.step) == ("time-budget", 3)  # 3.75 s, not the run's end
    second = run(cfg, tmp_path / "r", tmp_path / "cache")
    assert (second.stopped, second.step) == ("finished", 10)  # 3.75 s + 7 steps = 12.5 s


# --- the command and the API ------------------------------------------------------------------------------------


def test_minutes_with_steps_is_refused_naming_both(tmp_path, capsys, pixelforge_cache):
    runs = tmp_path / "runs"
    assert main(["train", "digits", "--name", "x", "--runs-dir", str(runs), "--minutes", "1", "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "--minutes" in err and "--steps" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match=r"minutes \(--minutes\) and steps \(--steps\) cannot both be given"):
        pixelforge.train("digits", name="x", runs_dir=runs, minutes=1, steps=10)
    assert not runs.exists()


def _canned(seconds_at_16: float):
    """A measure_step_times that times nothing: each candidate's step takes seconds_at_16 x its residual blocks
    at batch 16, in proportion to the batch."""

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=lambda text: None):
        batch = batch_size or 16
        return [StepTiming(dict(c), 1000 * c["num_res_blocks"], ((batch, seconds_at_16 * c["num_res_blocks"] * batch / 16),))
                for c in candidates]

    return measure


def test_train_minutes_plans_the_run_says_what_it_chose_keeps_the_flags_given_and_resumes_to_a_new_total(
        tmp_path, capsys, monkeypatch, step_clock, pixelforge_cache):
    monkeypatch.setattr(budget, "measure_step_times", _canned(0.0001))
    step_clock(1.25)
    runs = tmp_path / "runs"
    flags = ["train", "digits", "--name", "b", "--runs-dir", str(runs), "--image-size", "8", "--device", "cpu", "--quiet"]
    assert main([*flags, "--minutes", "0.1", "--base-channels", "8", "--batch-size", "8", "--warmup", "3",
                 "--cooldown", "0.25"]) == 0
    out = capsys.readouterr().out
    cfg = RunConfig.load(runs / "b" / "config.json")
    # given: base width, batch and warm-up; planned: the deeper of the two candidates left, EMA and cadence
    assert (cfg.model["base_channels"], cfg.train.batch_size, cfg.optim.warmup_steps) == (8, 8, 3)
    assert cfg.model["num_res_blocks"] == 2 and cfg.train.minutes == 0.1
    # 5.4 s of steps at 0.0001 s x 2 blocks x 8 / 16: 54,000 steps expected
    assert cfg.train.steps == 54_000 and cfg.train.ema_decay == plan_schedule(54_000)["ema_decay"]
    assert (cfg.train.ckpt_every, cfg.train.val_every) == (5400, 2700)
    assert (cfg.optim.cooldown_steps, cfg.optim.cooldown_end) == (13_500, 54_000)  # a share of the steps expected
    block = out[out.index("time budget 0.1 min:"):]
    for text in ("2,000 parameters (UNet base 8, channel_mult 1,2, 2 res block(s) per level)", "batch     8",
                 "about 54,000 expected (0.0001 s/step measured), about 253.1 epochs of 1,707 images",
                 "lr        0.0005, warm-up 3 step(s), falling to 0 over the last 13,500 of the 54,000 expected (--cooldown)",
                 "decay 0.99981", "checkpoint every 5400 steps, samples every 11000, "
                 "validation every 2700, metrics every 25"):
        assert text in block, (text, block)
    assert "finished at step 5" in out  # the budget ended it: 5 steps of 1.25 s
    assert "precision fp32 (as the time budget's plan says)" in out and "as asked" not in out
    assert main(["info", "b", "--runs-dir", str(runs)]) == 0
    info = capsys.readouterr().out
    assert "a 0.1-minute budget (about 54000 steps planned)" in info
    assert "0.1 of 0.1 minutes spent" in info

    # the same name resumes with the stored budget; --minutes gives it a new total
    assert main([*flags]) == 0
    assert "finished at step 5" in capsys.readouterr().out
    result = pixelforge.train("digits", name="b", runs_dir=runs, minutes=0.15, device="cpu", progress=False)
    assert (result.stopped, result.step) == ("finished", 8)  # 9 s: 3 steps more after 6.25 s
    resumed = RunConfig.load(runs / "b" / "config.json")
    assert resumed.train.minutes == 0.15
    assert (resumed.optim.cooldown_steps, resumed.optim.cooldown_end) == (20_250, 81_000)  # moved with the budget


def test_minutes_refuses_the_transformer_whose_stages_are_counted_in_steps(tmp_path, pixelforge_cache):
    with pytest.raises(ValueError, match=r"minutes \(--minutes\): a transformer model trains in stages counted in "
                                         r"steps \(the VQ-VAE for stage1_steps, then the prior\); train it with --steps"):
        pixelforge.train("digits", name="t", runs_dir=tmp_path / "runs", model="transformer", minutes=1, device="cpu")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("family", ["vae", "pixelcnn"])  # the GAN: tests/test_gan_budget.py
def test_other_families_keep_their_size_and_get_batch_schedule_and_budget_planned(tmp_path, capsys, monkeypatch, step_clock,
                                                                                 pixelforge_cache, family):
    seen = {}

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        seen["candidates"] = candidates
        return [StepTiming(dict(c), 1000, ((16, 0.001), (32, 0.002))) for c in candidates]

    monkeypatch.setattr(budget, "measure_step_times", measure)
    step_clock(1.25, get_family(family))
    runs = tmp_path / "runs"
    result = pixelforge.train("digits", name=family, runs_dir=runs, model=family, minutes=0.1, image_size=8, device="cpu",
                              progress=False)
    assert seen["candidates"] == [{}] and (result.stopped, result.step) == ("finished", 5)  # 6 s of 1.25 s steps
    cfg = RunConfig.load(runs / family / "config.json")
    # 5.4 s of steps: 1,350 at batch 64 (0.004 s on the line through the two points) is below the floor; 2,700 at 32
    assert cfg.family == family and cfg.train.minutes == 0.1 and (cfg.train.batch_size, cfg.train.steps) == (32, 2700)
    assert f"{family}, its default size or the one given" in capsys.readouterr().out


# --- precision: timed in what the run trains in ---------------------------------------------------------------


def _precision_clock(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """_time_steps made to report `seconds[precision]` per step, the precision the model is set to; returns
    the precisions in the order they were timed."""
    order: list[str] = []

    def timed(model, batch, step, clock):
        precision = next(m.__dict__.get("_precision", "fp32") for m in model.modules() if hasattr(m, "training_step"))
        order.append(precision)
        return seconds[precision] * batch / 16, step + 1

    monkeypatch.setattr(budget, "_time_steps", timed)
    return order


@pytest.mark.parametrize("bf16_seconds, expected", [(0.05, "bf16"), (0.09, "fp32")])
def test_auto_times_each_candidate_in_both_precisions_interleaved_and_keeps_bf16_only_where_it_is_faster_enough(
        monkeypatch, pixelforge_cache, bf16_seconds, expected):
    order = _precision_clock(monkeypatch, {"fp32": 0.1, "bf16": bf16_seconds})
    cfg = new_run_config("digits", image_size=8)
    (t,) = measure_step_times(cfg, size_candidates(8)[:1], torch.device("cpu"), minutes=0.001, n_train=1700,
                              precisions=("fp32", "bf16"))
    assert order == ["fp32", "bf16", "fp32", "bf16"]  # batch 16 in both, then batch 32 in both
    assert t.precision == expected and t.speedup == pytest.approx(0.1 / bf16_seconds)
    assert t.seconds_per_step(16) == pytest.approx(0.1 if expected == "fp32" else bf16_seconds)
    plan = plan_budget(10, 1700, [t])
    assert plan.precision == expected and plan.settings()["precision"] == expected
    assert plan.seconds_per_step == pytest.approx(t.seconds_per_step(plan.batch_size))


def test_timed_precisions_fall_back_to_fp32_where_bf16_is_not_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(budget, "bf16_available", lambda device: False)
    assert {budget.timed_precisions(p, cpu) for p in (None, "auto", "bf16", "fp32")} == {("fp32",)}
    monkeypatch.setattr(budget, "bf16_available", lambda device: True)
    assert [budget.timed_precisions(p, cpu) for p in (None, "auto", "bf16", "fp32")] == [
        ("fp32", "bf16"), ("fp32", "bf16"), ("bf16",), ("fp32",)]


def test_a_budget_run_trains_in_the_precision_it_was_planned_in_unless_one_is_given(tmp_path, monkeypatch, pixelforge_cache):
    monkeypatch.setattr(budget, "BASE_MODELS", ())
    seen = {}

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        seen["precisions"] = precisions
        return [StepTiming(dict(c), 1000, ((16, 0.01), (32, 0.02)), precision=precisions[-1], speedup=1.6) for c in candidates]

    monkeypatch.setattr(budget, "bf16_available", lambda device: True)
    cfg, plan = budget.plan_run("digits", 1, image_size=8, measure=measure)
    assert seen["precisions"] == ("fp32", "bf16") and cfg.train.precision == plan.precision == "bf16"
    assert any("precision bf16 (a step measured 1.60x as fast" in line for line in describe_plan(cfg, plan))
    cfg, _ = budget.plan_run("digits", 1, image_size=8, measure=measure, precision="auto")
    assert cfg.train.precision == "bf16"  # "auto" is decided by the timing, not timed again by the loop
    cfg, _ = budget.plan_run("digits", 1, image_size=8, measure=measure, precision="fp32")
    assert seen["precisions"] == ("fp32",) and cfg.train.precision == "fp32"


def test_a_plan_that_timed_one_precision_says_why(monkeypatch, pixelforge_cache):
    monkeypatch.setattr(budget, "BASE_MODELS", ())

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        return [StepTiming(dict(c), 1000, ((16, 0.01), (32, 0.02)), precision=precisions[-1]) for c in candidates]

    def line(**settings):
        cfg, plan = budget.plan_run("digits", 1, image_size=8, measure=measure, device="cpu", **settings)
        return next(text for text in describe_plan(cfg, plan) if text.lstrip().startswith("precision"))

    monkeypatch.setattr(budget, "bf16_support", lambda device: (True, "CPU AVX512, oneDNN bf16 yes"))
    monkeypatch.setattr(budget, "bf16_available", lambda device: True)
    assert line(precision="fp32").endswith("precision fp32 (as given: --precision fp32)")
    assert line(precision="bf16").endswith("precision bf16 (as given: --precision bf16)")
    assert line(precision="fp16").endswith("precision fp32 (fp16 asked; cpu: fp16 with a gradient scaler is offered "
                                           "on CUDA GPUs only)")
    monkeypatch.setattr(budget, "bf16_support", lambda device: (False, "CPU AVX2, oneDNN bf16 no"))
    monkeypatch.setattr(budget, "bf16_available", lambda device: False)
    assert line().endswith("precision fp32 (bf16 autocast not timed: not native here (CPU AVX2, oneDNN bf16 no))")
    assert line(precision="bf16").endswith("(bf16 autocast not timed: not native here (CPU AVX2, oneDNN bf16 no); "
                                           "bf16 asked)")


# --- the starting point: a bundled base model where it fits ---------------------------------------------------


@pytest.fixture
def base_run(tmp_path, pixelforge_cache):
    """A tiny 8x8 RGB diffusion run on the bundled shapes (6 classes), standing in for a bundled base model."""
    pixelforge.train("shapes", name="base", runs_dir=tmp_path / "src", image_size=8, steps=2, batch_size=4,
                     model_fields={"base_channels": 8, "channel_mult": (1, 2)}, device="cpu", progress=False)
    return tmp_path / "src" / "base"


def test_a_budget_run_starts_from_the_base_model_that_fits_and_times_only_its_network(base_run, monkeypatch):
    monkeypatch.setattr(budget, "BASE_MODELS", ("no-such-model", str(base_run)))
    seen = {}

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        seen["candidates"] = candidates
        return [StepTiming(dict(c), 1000, ((16, 0.01), (32, 0.02))) for c in candidates]

    cfg, plan = budget.plan_run("shapes", 1, image_size=8, measure=measure)
    assert plan.init_from == str(base_run)
    assert seen["candidates"] == [{"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 2}]
    assert (cfg.model["base_channels"], tuple(cfg.model["channel_mult"])) == (8, (1, 2))
    assert any(f"from {base_run}'s weights (--init-from none" in line for line in describe_plan(cfg, plan))
    # "none" trains from scratch with every size timed; contradicting fields, grey images or text: no base
    _, plan = budget.plan_run("shapes", 1, image_size=8, measure=measure, init_from="none")
    assert plan.init_from is None and len(seen["candidates"]) == len(size_candidates(8)) == 3
    _, plan = budget.plan_run("shapes", 1, image_size=8, measure=measure, model_fields={"base_channels": 16})
    assert plan.init_from is None
    _, plan = budget.plan_run("shapes", 1, image_size=8, channels=1, measure=measure)
    assert plan.init_from is None
    # another image side does not fit either
    _, plan = budget.plan_run("shapes", 1, image_size=16, measure=measure)
    assert plan.init_from is None


def test_a_colour_pixel_diffusion_budget_run_trains_at_the_budget_noise_levels_unless_told_otherwise(pixelforge_cache):
    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        return [StepTiming(dict(c), 1000, ((16, 0.01), (32, 0.02))) for c in candidates]

    plan_run = lambda **kw: budget.plan_run("shapes", 1, image_size=8, measure=measure, init_from="none", **kw)  # noqa: E731
    cfg, plan = plan_run()
    assert cfg.model["P_mean"] == budget.BUDGET_P_MEAN != DiffusionConfig.P_mean
    assert any(line.startswith(f"  noise     P_mean {budget.BUDGET_P_MEAN:g} (") for line in describe_plan(cfg, plan))
    given, plan = plan_run(model_fields={"P_mean": 0.5})  # given: it wins, and the plan says nothing of it
    assert given.model["P_mean"] == 0.5 and not any("noise" in line for line in describe_plan(given, plan))
    # kinds not measured keep the family's: grey images, a text prompt, another family
    grey, _ = plan_run(channels=1)
    assert grey.model_config().P_mean == DiffusionConfig.P_mean
    text, _ = plan_run(text=True)
    assert text.model["text_dim"] and text.model_config().P_mean == DiffusionConfig.P_mean
    steps_run = new_run_config("shapes", image_size=8)  # and a run of steps
    assert steps_run.model_config().P_mean == DiffusionConfig.P_mean


def test_a_labelled_budget_run_from_a_base_model_learns_its_labels_at_the_budget_rate(base_run, monkeypatch):
    monkeypatch.setattr(budget, "BASE_MODELS", (str(base_run),))

    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        return [StepTiming(dict(c), 1000, ((16, 0.01), (32, 0.02))) for c in candidates]

    plan_run = lambda **kw: budget.plan_run("shapes", 1, image_size=8, measure=measure, **kw)  # noqa: E731
    cfg, plan = plan_run()
    assert plan.init_from == str(base_run) and cfg.model["label_lr_scale"] == budget.BUDGET_LABEL_LR_SCALE == 10
    assert any(line.startswith("  labels    learnt at 10x the rate") for line in describe_plan(cfg, plan))
    # from scratch its rows start apart: the family's rate; given, it wins and the plan says nothing of it
    scratch, plan = plan_run(init_from="none")
    assert scratch.model_config().label_lr_scale == 1.0 and not any("labels" in x for x in describe_plan(scratch, plan))
    given, _ = plan_run(model_fields={"label_lr_scale": 3})
    assert given.model["label_lr_scale"] == 3
    unlabelled, _ = plan_run(labels=False)
    assert unlabelled.model_config().num_classes == 0 and unlabelled.model_config().label_lr_scale == 1.0


def test_starting_from_a_model_of_other_classes_gives_every_class_its_no_label_row(base_run, tmp_path):
    source = loop.load_weights(base_run)
    cfg = new_run_config("textures", image_size=8, channels=3, model_fields={"base_channels": 8, "channel_mult": (1, 2)},
                         steps=1)
    model = loop.build_model(cfg, torch.device("cpu"))
    ema = loop.copy.deepcopy(model)
    skipped = loop._init_from(model, ema, str(base_run))
    rows = model.state_dict()["net.label_embed.embed.weight"]  # (3 + 1, dim): textures has 3 classes
    assert rows.shape[0] == 4 and source["net.label_embed.embed.weight"].shape[0] == 7
    assert torch.equal(rows, source["net.label_embed.embed.weight"][-1:].expand_as(rows))
    assert skipped == [] and torch.equal(ema.state_dict()["net.label_embed.embed.weight"], rows)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if k != "net.label_embed.embed.weight")


def test_init_from_none_trains_from_scratch(tmp_path, pixelforge_cache):
    runs = tmp_path / "runs"
    assert main(["train", "digits", "--name", "s", "--runs-dir", str(runs), "--image-size", "8", "--steps", "1",
                 "--base-channels", "8", "--channel-mult", "1,2", "--batch-size", "4", "--init-from", "none",
                 "--device", "cpu", "--quiet"]) == 0
    assert list_checkpoints(runs / "s" / "checkpoints")


def test_init_from_a_run_name_is_looked_up_in_the_runs_dir_given(tmp_path, pixelforge_cache, capsys):
    runs = tmp_path / "elsewhere"
    flags = ["--runs-dir", str(runs), "--image-size", "8", "--base-channels", "8", "--channel-mult", "1,2",
             "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(["train", "digits", "--name", "src", "--steps", "1", *flags]) == 0
    assert main(["train", "digits", "--name", "tuned", "--steps", "1", "--init-from", "src", *flags]) == 0
    assert "initialised from src" in capsys.readouterr().out
