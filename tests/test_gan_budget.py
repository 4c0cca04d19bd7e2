"""Specifications of a GAN's time budget (`pixelforge train DATA --model gan --minutes M`): the widths it times,
the width and augmentation it plans, and settings given winning over the plan; and bench/gan_budget.py's table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pixelforge.models.gan import GANConfig
from pixelforge.train import budget
from pixelforge.train.budget import (GAN_AUGMENT_EPOCHS, GAN_SHORT_AUGMENT, GAN_WIDTHS, StepTiming, describe_plan,
                                     gan_augment, gan_candidates)

ROOT = Path(__file__).resolve().parent.parent


def _measure(seconds: dict[int, float], seen: dict):
    """A measure_step_times stand-in: each width's seconds per step at batch 32 (half that at 16)."""
    def measure(cfg, candidates, device, *, minutes, n_train, batch_size=None, precisions=("fp32",), say=print):
        seen["candidates"] = candidates
        return [StepTiming(dict(c), c.get("base_channels", 32) * 1000,
                           ((16, seconds[c.get("base_channels", 32)] / 2), (32, seconds[c.get("base_channels", 32)])))
                for c in candidates]
    return measure


# a CPU: 4x the time per step for each doubling of the width
CPU = {16: 0.05, 32: 0.2, 64: 0.8}


def test_a_gan_budget_times_every_width_and_takes_the_largest_that_gets_the_step_floor(pixelforge_cache):
    seen = {}
    cfg, plan = budget.plan_run("digits", 2, model="gan", image_size=8, measure=_measure(CPU, seen), progress=False)
    assert seen["candidates"] == [{"base_channels": w} for w in GAN_WIDTHS] == gan_candidates()
    # 108 s of steps: width 16 gets 2,160 at batch 32, width 32 only 540: the default width would be too slow
    assert (cfg.model["base_channels"], cfg.train.batch_size, cfg.train.steps) == (16, 32, 2160)
    cfg, plan = budget.plan_run("digits", 10, model="gan", image_size=8, measure=_measure(CPU, seen), progress=False)
    # 540 s: width 32 gets 2,700 steps at batch 32 (1,350 at 64), width 64 only 675
    assert (cfg.model["base_channels"], cfg.train.batch_size, cfg.train.steps) == (32, 32, 2700)
    assert any("GAN base width 32" in line for line in describe_plan(cfg, plan))


def test_a_short_gan_budget_augments_by_translation_alone_and_a_long_one_by_the_default_policy():
    n_train = 3000
    short_steps = int(GAN_AUGMENT_EPOCHS * n_train / 32) - 1  # just under the epochs where memorising starts
    assert gan_augment(short_steps, 32, n_train) == GAN_SHORT_AUGMENT == "translation"
    assert gan_augment(short_steps + 2, 32, n_train) == GANConfig.diffaugment == "color,translation,cutout"


def test_the_plans_augmentation_is_in_the_run_config_and_one_given_wins(pixelforge_cache):
    seen = {}
    cfg, plan = budget.plan_run("digits", 2, model="gan", image_size=8, measure=_measure(CPU, seen), progress=False)
    # 2,160 steps of 32 on the digits' training images: far fewer passes than GAN_AUGMENT_EPOCHS
    assert cfg.model["diffaugment"] == plan.model_fields["diffaugment"] == "translation"
    assert any("DiffAugment translation" in line for line in describe_plan(cfg, plan))
    gpu = {16: 0.001, 32: 0.0011, 64: 0.0012}  # a step time that hardly grows: many passes over the set
    cfg, _ = budget.plan_run("digits", 2, model="gan", image_size=8, measure=_measure(gpu, seen), progress=False)
    assert (cfg.model["base_channels"], cfg.model["diffaugment"]) == (64, GANConfig.diffaugment)
    cfg, _ = budget.plan_run("digits", 2, model="gan", image_size=8, measure=_measure(CPU, seen), progress=False,
                             model_fields={"diffaugment": "", "base_channels": 32})
    assert seen["candidates"] == [{"base_channels": 32}]  # a given width is the only one timed
    assert (cfg.model["base_channels"], cfg.model["diffaugment"]) == (32, "")


# --- bench/gan_budget.py ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gan_budget", ROOT / "bench" / "gan_budget.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_bench_table_has_a_row_per_run_marks_low_recall_and_shows_failures(bench):
    row = {"label": "plan", "seed": 0, "base_channels": 16, "batch_size": 32, "diffaugment": "translation",
           "steps": 1200, "images": 38400, "train_s": 299.6, "fid": 41.23, "kid": 0.0312, "precision": 0.61,
           "recall": 0.45, "pairs_covered": 0.75, "load_before": [3.2, 2, 1], "load_after": [4.05, 3, 2]}
    rows = {"a": {**row, "budget_min": 5.0}, "b": {**row, "budget_min": 2.0, "recall": 0.3, "diffaugment": ""},
            "c": {"label": "plan", "seed": 1, "budget_min": 2.0, "error": "out of memory", "load_before": [1, 1, 1],
                  "load_after": [1, 1, 1]}}
    lines = bench.table(rows).splitlines()
    assert len(lines) == 5 and lines[0].startswith("| config | budget min | seed |")
    assert lines[2] == ("| plan | 2 | 0 | 16 (1) | 32 | off | 1200 | 38,400 | 300 | 41.2 | 0.031 | 0.610 | 0.300 (low) | "
                        "0.750 | 3.2/4.0 |")  # budgets in order; recall at the goal counts as low
    assert lines[3].startswith("| plan | 2 | 1 | failed: out of memory |")
    assert lines[4].endswith("| 0.450 | 0.750 | 3.2/4.0 |") and "| 5 | 0 |" in lines[4]
    rows["a"]["cpu"] = rows["b"]["cpu"] = "Example CPU, 2 cores, AVX512, bf16 flags: amx_bf16"  # rows trained here
    lines = bench.table(rows).splitlines()
    assert lines[-1] == "- trained on Example CPU, 2 cores, AVX512, bf16 flags: amx_bf16: plan 2 min seed 0, plan 5 min seed 0"


def test_the_bench_trains_a_fresh_gan_budget_run_per_budget_and_seed(bench, tmp_path):
    argv = bench.train_argv(2.0, 1, bench.run_name("plan", 2.0, 1), tmp_path, ["--set", "diffaugment="])
    assert argv[:8] == ["train", "shapes", "--model", "gan", "--minutes", "2", "--seed", "1"]
    assert argv[8:10] == ["--name", "plan-2min-s1"] and argv[-2:] == ["--set", "diffaugment="]
    assert bench.row_key("plan", 0.5, 0) == "plan@0.5/s0"


def test_a_failed_run_says_why_even_when_killed_without_an_error_line(bench):
    assert bench.exit_reason(0, ["a warning"]) is None
    assert bench.exit_reason(1, ["Traceback", "ValueError: shapes: no images"]) == "ValueError: shapes: no images"
    assert bench.exit_reason(-9, []) == "killed by SIGKILL, no error line"
    assert bench.exit_reason(-15, []) == "killed by SIGTERM, no error line"
    assert bench.exit_reason(2, []) == "exit status 2, no error line"


def test_palette_attributes_name_the_background_and_colour_the_shapes_set_drew(bench):
    from pixelforge.data.bundled import load_bundled
    from pixelforge.data.shapes import shape_attributes

    images = load_bundled("shapes").images[:60]  # (60, 3, 32, 32) uint8
    backgrounds, colours = bench.palette_attributes(images)
    truth = [shape_attributes(i) for i in range(60)]
    assert backgrounds == [t["background"] for t in truth]
    assert sum(c == t["colour"] for c, t in zip(colours, truth)) >= 57  # a small shape's antialiased edge may mislead
    # a plain image has no shape; a plain grey one is nearest the grey background
    assert bench.palette_attributes(torch.full((1, 3, 32, 32), 120, dtype=torch.uint8)) == (["gray"], ["none"])


def test_coverage_counts_the_real_sets_background_and_colour_pairs_a_fake_set_has(bench):
    from pixelforge.data.bundled import load_bundled

    real = load_bundled("shapes").images[:300]
    pairs = len(set(zip(*bench.palette_attributes(real))))
    assert bench.coverage(real, real) == {"pairs_covered": 1.0, "backgrounds": 4, "colours": 9}
    collapsed = bench.coverage(real[:1].repeat(50, 1, 1, 1), real)  # one image fifty times
    assert collapsed == {"pairs_covered": round(1 / pairs, 3), "backgrounds": 1, "colours": 1}
    half = bench.coverage(real[:40], real)
    assert collapsed["pairs_covered"] < half["pairs_covered"] < 1.0


# --- bench/gan_steps.py -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steps_bench(bench):  # bench/gan_budget.py first: gan_steps imports it and time_to_quality by name
    spec = importlib.util.spec_from_file_location("bench_gan_steps", ROOT / "bench" / "gan_steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_fixed_length_run_has_the_planners_schedule_and_short_gan_and_its_own_arguments_last(steps_bench, tmp_path):
    argv = steps_bench.train_argv("lr", 1500, 16, tmp_path, ["--lr", "1e-3", "--set", "diffaugment="], "bf16")
    schedule = budget.plan_schedule(1500, 16)
    assert argv[:9] == ["train", "shapes", "--model", "gan", "--name", "lr", "--runs-dir", str(tmp_path), "--steps"]
    assert argv[argv.index("--warmup") + 1] == str(schedule["warmup_steps"]) == "75"
    assert argv[argv.index("--ema-decay") + 1] == str(schedule["ema_decay"])
    sets = [argv[i + 1] for i, x in enumerate(argv) if x == "--set"]
    assert sets == ["base_channels=16", f"diffaugment={GAN_SHORT_AUGMENT}", "diffaugment="]  # the run's own comes last
    assert argv[-4:-2] == ["--lr", "1e-3"]


def test_fixed_length_runs_need_distinct_names(steps_bench, capsys):
    with pytest.raises(SystemExit):
        steps_bench.parse_args(["--run", "a", "", "--run", "a", "--lr 1e-3"])
    assert "own name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        steps_bench.parse_args([])
    assert steps_bench.parse_args(["--reference"]).run == []  # the reference rows alone


def test_the_reference_sets_are_the_real_shapes_and_three_degraded_copies_of_them(steps_bench):
    from pixelforge.data.bundled import load_bundled

    real = load_bundled("shapes").images[:8]  # (8, 3, 32, 32) uint8
    sets = steps_bench.reference_sets(real, "cpu")
    assert list(sets) == ["reference", "reference+noise0.1", "reference+blur3", "reference+ae-32"]
    assert torch.equal(sets["reference"][1], real)
    for name, (_, images) in sets.items():
        assert images.shape == real.shape and images.dtype == torch.uint8, name
    err = {name: (images.float() - real.float()).abs().mean().item() for name, (_, images) in sets.items()}
    assert err["reference"] == 0
    assert 5 < err["reference+noise0.1"] < 15  # std 0.1 on [-1, 1] is 12.75 levels: mean |noise| about 10
    assert 0 < err["reference+blur3"] < err["reference+noise0.1"]  # a blur moves only the edges
    assert 0 < err["reference+ae-32"] < 20  # a reconstruction, not another image


def test_each_kept_checkpoint_gets_a_run_folder_whose_newest_checkpoint_it_is(bench, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gan_checkpoints", ROOT / "bench" / "gan_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from pixelforge.runs.store import weights_file

    run = tmp_path / "g"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for step in (900, 1800, 2000):
        for suffix in (".safetensors", ".json"):
            (run / "checkpoints" / f"step_{step:07d}{suffix}").write_text(f"{step}")
    folders = module.checkpoint_runs(run, tmp_path / "work")
    assert [f.name for f in folders] == ["g-step_0000900", "g-step_0001800", "g-step_0002000"]
    for folder, step in zip(folders, (900, 1800, 2000)):
        assert (folder / "config.json").read_text() == "{}"
        assert weights_file(folder).read_text() == str(step) and len(list((folder / "checkpoints").iterdir())) == 2
    assert module.checkpoint_runs(run, tmp_path / "work")[0].name == "g-step_0000900"  # made again over the old
