"""`evaluate --adherence`: the share of samples that obey their condition (shapes prompts read by the
checker, digit labels read by the evaluation's classifier), and clear errors for runs it cannot measure."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixelforge.cli import main
from pixelforge.data.shapes import draw_shape, place_shape, random_jitter
from pixelforge.evaluate import PROMPT_KINDS, adherence_of
from pixelforge.metrics.adherence import ATTRIBUTES, held_out_prompts

TINY = ["--steps", "4", "--batch-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--val-every", "4", "--ckpt-every", "4", "--sample-every", "4", "--log-every", "2", "--quiet", "--device", "cpu"]


class DrawnShapes:
    """A stand-in generator that draws, for each prompt, the held-out combination it was phrased from
    (shift 0), or the combination of the prompt `shift` places further on (wrong for most)."""

    name = "drawn"
    inputs = ("text",)
    config = SimpleNamespace(data=SimpleNamespace(source="shapes", channels=3, image_size=32))

    def __init__(self, n: int, seed: int, shift: int = 0):
        self.shift = shift
        self.combination = {p: a for phrasing in PROMPT_KINDS.values() for p, a in held_out_prompts(n, seed=seed, **phrasing)}
        self.calls: list[dict] = []

    def resolve_options(self, **options):
        return {"guidance": 1.0, **options}

    def generate_tensor(self, n, *, prompts, seed, batch_size, callback, **options):
        self.calls.append({"n": n, "seed": seed, **options})
        combos = [self.combination[p] for p in prompts]
        combos = combos[self.shift:] + combos[:self.shift]
        rng = np.random.default_rng(seed)
        drawn = [np.asarray(draw_shape(place_shape(a["shape"], a["colour"], a["size"], a["position"], a["background"],
                                                   jitter=random_jitter(rng)), 32)) for a in combos]
        images = torch.from_numpy(np.stack(drawn)).permute(0, 3, 1, 2)  # (n, 3, 32, 32) uint8
        return images.float() / 127.5 - 1, [{} for _ in prompts]


def test_images_drawn_to_their_prompts_obey_them_all_and_shuffled_ones_mostly_do_not():
    right = adherence_of(DrawnShapes(60, seed=3), n=60, seed=3, progress=False, guidance=2.5)
    assert set(right["adherence"]) == {"caption", "paraphrased", "other nouns"}
    for shares in right["adherence"].values():
        assert shares == {a: 1.0 for a in (*ATTRIBUTES, "all")}
    assert right["n"] == 60 and right["settings"] == {"guidance": 2.5, "seed": 3}
    wrong = adherence_of(DrawnShapes(60, seed=3, shift=1), n=60, seed=3, progress=False)
    for shares in wrong["adherence"].values():
        assert shares["all"] < 0.1 and max(shares[a] for a in ATTRIBUTES) < 0.6, shares


def test_every_prompt_kind_uses_the_same_seeds_and_the_given_sampling_options():
    g = DrawnShapes(8, seed=5)
    adherence_of(g, n=8, seed=5, progress=False, steps=7)
    assert g.calls == [{"n": 8, "seed": 5, "guidance": 1.0, "steps": 7}] * len(PROMPT_KINDS)


@pytest.mark.parametrize("inputs, source, message", [
    (("text",), "mnist", "takes text but was trained on 'mnist': the adherence checker reads the shapes domain only"),
    (("labels",), "shapes", "takes labels but was trained on 'shapes': label adherence is measured with the digit "
                            "classifier, on the digit sets only (mnist, digits)"),
    ((), "shapes", "takes no condition (neither text nor labels)"),
])
def test_runs_the_checkers_cannot_read_are_clear_errors(inputs, source, message):
    g = DrawnShapes(4, seed=0)
    g.inputs, g.config = inputs, SimpleNamespace(data=SimpleNamespace(source=source, channels=3, image_size=32))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adherence_of(g, n=4, progress=False)
    assert g.calls == []  # refused before sampling


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny text run "st" on shapes (4 steps: it obeys nothing yet) and a tiny unconditional digits run "u"."""
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "shapes", "--name", "st", "--runs-dir", str(runs), "--text", "--no-labels",
                     "--image-size", "16", "--attn-resolutions", "8", *TINY]) == 0
        assert main(["train", "digits", "--name", "u", "--runs-dir", str(runs), "--no-labels", *TINY]) == 0
        yield runs


def test_evaluate_adherence_json_of_a_text_run_reports_shares_per_attribute_and_records_them(runs, capsys):
    code = main(["evaluate", "st", "--runs-dir", str(runs), "--adherence", "-n", "12", "--steps", "2",
                 "--guidance", "2", "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""  # --json: no progress bars
    result = json.loads(captured.out)
    assert result["n"] == 12 and result["checker"].startswith("pixelforge.metrics.adherence.read_shape")
    assert result["settings"]["steps"] == 2 and result["settings"]["guidance"] == 2.0 and result["settings"]["step"] == 4
    for shares in result["adherence"].values():
        assert set(shares) == {*ATTRIBUTES, "all"}
        assert all(0.0 <= v <= 1.0 for v in shares.values())
        assert shares["all"] < 0.25  # 4 training steps obey next to nothing
    record = json.loads((runs / "st" / "evaluations.jsonl").read_text().splitlines()[-1])
    assert record["evaluation"] == "adherence" and record["adherence"] == result["adherence"]


def test_evaluate_adherence_prints_a_table_per_prompt_kind(runs, capsys):
    code = main(["evaluate", "st", "--runs-dir", str(runs), "--adherence", "-n", "3", "--steps", "1",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("prompts"))
    assert header.split() == ["prompts", *ATTRIBUTES, "all"]
    assert any(line.startswith("caption ") for line in out.splitlines())
    assert any(line.startswith("paraphrased ") for line in out.splitlines())
    assert any(line.startswith("other nouns ") for line in out.splitlines())


def test_evaluate_adherence_of_an_unconditional_run_is_a_clear_error(runs, capsys):
    code = main(["evaluate", "u", "--runs-dir", str(runs), "--adherence", "-n", "4", "--device", "cpu"])
    assert code == 2
    assert "u takes no condition (neither text nor labels): adherence needs" in capsys.readouterr().err


def test_the_bundled_digit_model_draws_the_asked_digit_well_above_chance(capsys, pixelforge_cache):
    # 20 samples at 10 Heun steps and the model's guidance 2: 100% measured (95% at guidance 1).
    code = main(["evaluate", "mnist-diffusion", "--adherence", "-n", "20", "--steps", "10", "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["domain"] == "digits" and result["checker"].startswith("pixelforge-mnist-classifier")
    assert result["chance"] == 0.1 and set(result["per_class"]) == {str(d) for d in range(10)}
    assert result["accuracy"] >= 0.8
    assert result["real_accuracy"] >= 0.95 and result["n_real"] == 500


def test_adherence_with_cas_or_fake_is_a_clear_error(capsys, tmp_path):
    assert main(["evaluate", "mnist-diffusion", "--adherence", "--fake", str(tmp_path)]) == 2
    assert "--adherence measures a RUN's samples on their own: it does not combine with --fake" in capsys.readouterr().err
