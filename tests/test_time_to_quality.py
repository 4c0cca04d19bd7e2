"""The time-to-quality benchmark's pieces: the photo folder it trains on, the training commands of each config,
the peer's training loop and DDIM sampling on a tiny UNet2DModel, and the merging of results across runs.
No benchmark is run here (it takes minutes a budget)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos():
    return _load("photos")


@pytest.fixture(scope="module")
def ttq():
    return _load("time_to_quality")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_photos_writes_170_colour_crops_of_64px_per_class_the_same_bytes_for_the_same_seed(photos, tmp_path):
    a = _files(photos.make_photos(tmp_path / "a", seed=0))
    b = _files(photos.make_photos(tmp_path / "b", seed=0))
    assert a == b
    assert len(a) == 510
    for name in ("cat", "tissue", "galaxies"):
        assert sum(k.startswith(f"{name}/") for k in a) == 170
    for path in (tmp_path / "a" / "cat" / "000.png", tmp_path / "a" / "galaxies" / "169.png"):
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    c = _files(photos.make_photos(tmp_path / "c", seed=1, per_class=5))
    assert c["cat/000.png"] != a["cat/000.png"]


def test_photo_classes_differ_in_colour(photos, tmp_path):
    photos.make_photos(tmp_path, seed=0, per_class=20)
    mean = {name: np.mean([np.asarray(Image.open(p), dtype=float).mean((0, 1)) for p in (tmp_path / name).glob("*.png")], 0)
            for name in photos.PHOTOS}  # each (3,) mean RGB
    assert np.abs(mean["galaxies"] - mean["tissue"]).max() > 20  # a dark sky against stained tissue


def test_photo_classes_come_from_photos_no_bundled_set_uses(photos):
    from pixelforge.data.bundled import TEXTURE_CLASSES

    assert not set(photos.PHOTOS.values()) & set(TEXTURE_CLASSES)
    assert set(photos.PHOTOS) == {"cat", "tissue", "galaxies"}
    second = photos.PHOTO_SETS["second"]
    assert not set(second.values()) & (set(TEXTURE_CLASSES) | set(photos.PHOTOS.values()))  # other photos than the first


def test_the_second_photo_set_writes_its_own_classes_and_an_unknown_set_is_refused(photos, tmp_path):
    out = photos.make_photos(tmp_path / "s", seed=0, per_class=3, photos="second")
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "coffee", "rocket"]
    assert all(len(list((out / name).glob("*.png"))) == 3 for name in ("astronaut", "coffee", "rocket"))
    with pytest.raises(ValueError, match="photos must be one of first, second"):
        photos.make_photos(tmp_path / "x", photos="third")


def test_budget_configs_are_a_fresh_minutes_run_per_budget_with_their_own_options(ttq):
    cmds = {c: ttq.train_commands(c, "PH", "RUNS", [2, 5, 10, 20]) for c in ("minutes", "scratch", "fp32", "batch32")}
    minutes = dict((b, argv) for b, _, argv in cmds["minutes"])
    argv = minutes[10]
    assert argv[:2] == ["train", "PH"] and argv[argv.index("--minutes") + 1] == "10"
    assert argv[argv.index("--image-size") + 1] == "32" and argv[argv.index("--seed") + 1] == "0"
    assert "--init-from" not in argv and "--precision" not in argv and "--steps" not in argv
    assert len({name for _, name, _ in cmds["minutes"]}) == 4  # one run each
    scratch = cmds["scratch"][0][2]
    assert scratch[scratch.index("--init-from") + 1] == "none"
    fp32 = cmds["fp32"][3][2]
    assert fp32[fp32.index("--precision") + 1] == "fp32" and fp32[fp32.index("--minutes") + 1] == "20"
    batch32 = cmds["batch32"][3][2]
    assert batch32[batch32.index("--batch-size") + 1] == "32" and "--batch-size" not in argv
    hflip = ttq.train_commands("hflip", "PH", "RUNS", [10])[0][2]
    assert "--hflip" in hflip and "--hflip" not in argv
    cooldown, lownoise = (ttq.train_commands(c, "PH", "RUNS", [10])[0][2] for c in ("cooldown", "lownoise"))
    assert cooldown[cooldown.index("--cooldown") + 1] == "0.2" and lownoise[lownoise.index("--set") + 1] == "P_mean=-0.4"


def test_gan_configs_train_a_gan_in_pixels_or_latents_and_sample_it_in_one_call(ttq, tmp_path, monkeypatch):
    from run_files import cli  # tests/run_files.py

    gan, latent = (ttq.train_commands(c, "PH", "RUNS", [10])[0][2] for c in ("gan", "gan-latent"))
    assert gan[gan.index("--model") + 1] == "gan" and "latent=ae-32" not in gan
    assert latent[latent.index("--model") + 1] == "gan" and latent[latent.index("--set") + 1] == "latent=ae-32"
    # a GAN takes no sampler and no guidance: the scoring draws it with its own options, one network call an image
    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    cli("train", "digits", "--model", "gan", "--name", "g", "--steps", "1", "--image-size", "8", "--batch-size", "8",
        "--set", "base_channels=8", "--set", "z_dim=8", "--runs-dir", tmp_path, "--device", "cpu", "--quiet")
    images, labels, used = ttq.sample_ours(tmp_path / "g", 20, "cpu")
    assert images.shape == (20, 1, 8, 8) and float(images.abs().max()) <= 1.0 and sorted(set(labels)) == list(range(10))
    assert used["evaluations"] == 1 and "guidance" not in used and "sampler" not in used


def test_guided_sampling_reaches_generate_and_counts_both_halves(ttq, tmp_path, monkeypatch):
    from run_files import cli  # tests/run_files.py

    monkeypatch.setenv("PIXELFORGE_CACHE", str(tmp_path / "cache"))
    cli("train", "digits", "--name", "d", "--steps", "1", "--image-size", "8", "--batch-size", "8",
        "--set", "base_channels=8", "--set", "channel_mult=[1]", "--runs-dir", tmp_path, "--device", "cpu", "--quiet")
    # `used` is what generate_tensor was called with (after the family resolved it), with the count
    _, _, used_plain = ttq.sample_ours(tmp_path / "d", 4, "cpu", ttq.parse_sampling("euler:3:2"))
    images, _, used = ttq.sample_ours(tmp_path / "d", 4, "cpu", ttq.parse_sampling("euler:3:2:3"))
    assert used_plain["guidance"] == 1.0 and used_plain["evaluations"] == 3
    assert used["guidance"] == 3.0 and used["evaluations"] == 6 and used["steps"] == 3 and used["rho"] == 2.0
    assert images.shape == (4, 1, 8, 8) and bool(torch.isfinite(images).all())


def test_a_training_seed_reaches_the_command_and_names_its_runs_and_rows_apart(ttq):
    (_, name0, argv0), = ttq.train_commands("minutes", "PH", "RUNS", [10])
    (_, name1, argv1), = ttq.train_commands("minutes", "PH", "RUNS", [10], seed=1)
    assert argv0[argv0.index("--seed") + 1] == "0" and argv1[argv1.index("--seed") + 1] == "1"
    assert name0 == "minutes-10min" and name1 == "minutes-s1-10min"
    assert argv1[argv1.index("--name") + 1] == name1
    (_, continued, _), = ttq.train_commands("readme", "PH", "RUNS", [10], seed=2)
    assert continued == "readme-s2"
    # a seeded row sorts with its config: after `minutes`, before `peer`, whatever its sampling
    assert [ttq.base_config(x) for x in ("minutes-s1", "minutes-s1+heun18", "gan-latent", "peer-s3")] == [
        "minutes", "minutes", "gan-latent", "peer"]
    assert ttq.parse_args(["--seed", "3"]).seed == 3


def test_readme_config_continues_one_run_of_steps_by_the_budget_differences(ttq):
    cmds = ttq.train_commands("readme", "PH", "RUNS", [5, 2, 20, 10])
    assert [b for b, _, _ in cmds] == [2, 5, 10, 20]
    assert len({name for _, name, _ in cmds}) == 1
    assert [argv[argv.index("--max-minutes") + 1] for _, _, argv in cmds] == ["2", "3", "5", "10"]
    assert all(argv[argv.index("--steps") + 1] == "10000" and "--minutes" not in argv for _, _, argv in cmds)
    assert [argv[argv.index("--max-minutes") + 1] for _, _, argv in ttq.train_commands("readme", "P", "R", [0.1, 0.2])] \
        == ["0.1", "0.1"]
    with pytest.raises(ValueError, match="peer"):
        ttq.train_commands("peer", "PH", "RUNS", [2])


def test_score_only_scores_a_continued_run_once_as_its_last_budget_and_each_budget_run_by_its_own(ttq, tmp_path,
                                                                                                   monkeypatch, capsys):
    runs = tmp_path / "runs"
    for name in ("readme", "minutes-2min", "minutes-10min"):
        (runs / name / "checkpoints").mkdir(parents=True)
    scored = []
    monkeypatch.setattr(ttq, "read_metrics", lambda run: {"steps": 10000, "images": 640000, "train_s": 9600.0})
    monkeypatch.setattr(ttq, "sample_ours", lambda run, n, device, sampling: (run.name, None, {"evaluations": 35}))
    a = ttq.parse_args(["--budgets", "2,10,240", "--score-only"])
    finish = lambda row, images, labels: scored.append((row["config"], row["budget_min"], images))  # noqa: E731
    ttq.score_again("readme", "readme", a, "PH", runs, tmp_path, finish)
    assert scored == [("readme", 240, "readme")]  # the one run's end, not a row per budget
    assert "240-min row" in capsys.readouterr().out
    scored.clear()
    ttq.score_again("minutes", "minutes", a, "PH", runs, tmp_path, finish)
    assert scored == [("minutes", 2, "minutes-2min"), ("minutes", 10, "minutes-10min")]
    assert "no run" in capsys.readouterr().out  # minutes-240min was never trained: said, and skipped


def test_read_metrics_takes_the_last_step_images_and_training_seconds(ttq, tmp_path):
    (tmp_path / "metrics.csv").write_text("step,images,loss,elapsed_s\n10,640,0.5,3.0\n20,1280,0.4,6.5\n25,1600,0.3,\n")
    assert ttq.read_metrics(tmp_path) == {"steps": 25, "images": 1600, "train_s": 6.5}
    with pytest.raises(ValueError, match="metrics.csv"):
        ttq.read_metrics(tmp_path / "missing")
    (tmp_path / "metrics.csv").write_text("step,images,loss,elapsed_s\n")  # stopped before its first row
    assert ttq.read_metrics(tmp_path) == {"steps": None, "images": None, "train_s": None}


def test_results_of_separate_invocations_merge_into_one_table(ttq, tmp_path):
    path = tmp_path / "results.json"
    row = {"steps": 100, "images": 6400, "fid": 120.5, "precision": 0.2, "recall": 0.1, "train_s": 120.0,
           "wall_s": 150.0, "cpu_s": 140.0, "load_before": [1.0, 1, 1], "load_after": [1.5, 1, 1]}
    ttq.merge_results(path, {"configs": ["minutes"]}, {"minutes@2": {**row, "config": "minutes", "budget_min": 2.0},
                                                       "minutes@5": {**row, "config": "minutes", "budget_min": 5.0}})
    later = {"peer@2": {**row, "config": "peer", "budget_min": 2.0, "fid": 200.25},
             "minutes@5": {**row, "config": "minutes", "budget_min": 5.0, "fid": 99.0},
             "scratch@2": {"config": "scratch", "budget_min": 2.0, "error": "no run named 'none'"}}
    ttq.merge_results(path, {"configs": ["peer"]}, {})
    results = ttq.merge_results(path, {"configs": ["peer"]}, later)  # the same invocation saving again
    assert set(results["rows"]) == {"minutes@2", "minutes@5", "peer@2", "scratch@2"}
    assert results["rows"]["minutes@5"]["fid"] == 99.0  # the newer row of the same config and budget wins
    assert len(results["runs"]) == 2
    lines = ttq.table(results["rows"]).splitlines()
    body = lines[2:]
    assert [line.split("|")[1].strip() for line in body] == ["minutes", "minutes", "scratch", "peer"]  # CONFIGS order
    assert "| 120.50 |" in body[0] and "| 99.00 |" in body[1] and "skipped: no run named 'none'" in body[2]
    assert "6,400" in body[0] and "1.0/1.5" in body[0]


def test_bad_configs_and_budgets_are_refused_naming_the_option(ttq, capsys):
    for argv, option in ((["--configs", "minutes,nope"], "--configs"), (["--budgets", "2,x"], "--budgets"),
                         (["--budgets", "0"], "--budgets")):
        with pytest.raises(SystemExit) as e:
            ttq.parse_args(argv)
        assert e.value.code == 2 and option in capsys.readouterr().err
    quick = ttq.parse_args(["--quick"])
    assert quick.budgets == list(ttq.QUICK_BUDGETS) and quick.samples == ttq.QUICK_SAMPLES


def test_sampling_is_parsed_counted_in_network_evaluations_and_labels_its_rows(ttq, capsys):
    a = ttq.parse_args(["--sampling", "heun:18", "--score-only"])
    assert a.sampling == {"sampler": "heun", "steps": 18, "rho": 7.0, "guidance": 1.0} and a.score_only
    assert ttq.sampling_label(a.sampling) == "heun18"
    assert ttq.sampling_label(ttq.parse_sampling("euler:35:2")) == "euler35rho2"
    assert ttq.sampling_label(ttq.parse_sampling("euler:35:2:1")) == "euler35rho2"  # guidance 1 is none
    guided = ttq.parse_sampling("euler:17:2:2.5")
    assert guided["guidance"] == 2.5 and ttq.sampling_label(guided) == "euler17rho2g2.5"
    assert ttq.evaluations("heun", 18) == ttq.EVALS == ttq.evaluations("euler", 35) == ttq.evaluations("ddim", 35)
    assert ttq.evaluations("euler", 17, 2.0) == 34 and ttq.evaluations("heun", 9, 0.0) == 34  # both halves count
    assert ttq.parse_args([]).sampling is None  # each run's own defaults
    for bad in ("heun", "nope:18", "euler:0", "euler:x", "euler:35:0.5", "euler:35:x", "euler:35:2:x", "euler:35:2:-1",
                "euler:35:2:1:1"):
        with pytest.raises(SystemExit):
            ttq.parse_args(["--sampling", bad])
        assert "--sampling" in capsys.readouterr().err
    rows = {"minutes+heun18@10": {"config": "minutes+heun18", "budget_min": 10.0, "fid": 141.5},
            "peer@10": {"config": "peer", "budget_min": 10.0, "fid": 375.4},
            "minutes@10": {"config": "minutes", "budget_min": 10.0, "fid": 130.9}}
    body = ttq.table(rows).splitlines()[2:]
    assert [line.split("|")[1].strip() for line in body] == ["minutes", "minutes+heun18", "peer"]  # with its config


def test_class_agreement_is_the_share_of_samples_whose_nearest_folder_image_has_their_label(ttq):
    class Pixels:  # an extractor whose features are the pixels
        def features(self, images, batch_size=64):
            return images.flatten(1).double().numpy()

    scorer = object.__new__(ttq.Scorer)
    scorer.extractor, scorer._real_features = Pixels(), None
    scorer.real = torch.stack([torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (0, 10, 240, 250)])
    scorer.real_labels = torch.tensor([0, 0, 1, 1])
    fake = torch.stack([torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (5, 2, 245, 230)])
    assert scorer.class_agreement(fake, [0, 1, 1, 0]) == 0.5  # the first and third agree
    assert scorer.class_agreement(fake, [0, 0, 1, 1]) == 1.0
    assert scorer.class_agreement(fake, None) is None  # the peer: unconditional
    scorer.real_labels = None
    assert scorer.class_agreement(fake, [0, 0, 1, 1]) is None  # a folder without classes


def test_class_rows_put_one_class_per_grid_row(ttq):
    images = torch.stack([torch.full((3, 2, 2), float(k) / 3 - 0.5) for k in [0, 1, 2] * 12])  # (36, 3, 2, 2), label = i % 3
    picked = ttq.class_rows(images, [i % 3 for i in range(36)], cols=10)
    values = [np.asarray(im)[0, 0, 0] for im in picked]
    assert len(picked) == 30 and values[:10] == [values[0]] * 10 and values[10] != values[0] and values[20] != values[10]


TINY_UNET = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": (8, 16),
             "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D"),
             "norm_num_groups": 4}


def test_peer_trains_two_steps_as_the_diffusers_example_and_samples_with_ddim_per_seed(ttq):
    pytest.importorskip("diffusers")
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trainer = ttq.PeerTrainer(TINY_UNET, images, torch.device("cpu"), batch_size=2, epochs=2, warmup=4)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batches = trainer.batches()
    x = next(batches)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    losses = [trainer.step(x), trainer.step(next(batches))]
    assert all(np.isfinite(losses)) and trainer.steps == 2 and trainer.images == 4
    assert trainer.step_fn.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 2 / 4)  # linear warm-up
    assert trainer.ema.optimization_step == 2
    ema = trainer.ema_copy()
    name = "conv_in.weight"
    assert not torch.equal(trainer.model.state_dict()[name], start[name])
    assert not torch.equal(ema.state_dict()[name], trainer.model.state_dict()[name])  # the EMA lags the weights
    a = ttq.sample_peer(ema, 3, torch.device("cpu"), batch_size=3)
    b = ttq.sample_peer(ema, 3, torch.device("cpu"), batch_size=2)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 8, 8)
    # image i depends on seed i alone, whatever the batch (up to one level where float rounding in a batch differs)
    assert (a.int() - b.int()).abs().max() <= 1
    assert not torch.equal(a[0], a[1])


def test_a_failed_training_call_reports_its_error_line_and_times(ttq, tmp_path):
    res = ttq.run_pixelforge(["train", str(tmp_path / "no-such-folder"), "--name", "x", "--runs-dir", str(tmp_path)], 1)
    assert res["rc"] == 2
    assert res["error"].startswith("pixelforge train: error:") and "no-such-folder" in res["error"]
    assert res["wall_s"] > 0 and res["cpu_s"] > 0 and len(res["load_before"]) == 3
