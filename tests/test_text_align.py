"""Contrastive alignment of the text conditioner's token pooling with the training images
(text_align_steps): it learns what tells the images apart, the place included, is frozen afterwards,
and is stored with the weights so a resumed run goes on with it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelforge.condition.text_align import align_token_pool
from pixelforge.condition.text_embed import TextConditioner, TokenAttentionPool


def _placed_set(n: int = 64, seed: int = 0):
    """n 8x8 images with a bright 2x2 square left or right; the "text" of each is 5 random filler tokens
    and, at a random index, the token of its side (so the side is one word anywhere in the sentence)."""
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n,), generator=g)  # 0 left, 1 right
    images = -torch.ones(n, 1, 8, 8)
    for i, s in enumerate(side.tolist()):
        images[i, :, 3:5, 1 + 5 * s:3 + 5 * s] = 1.0
    words = torch.randn(2, 12, generator=g) * 0.3  # the two side words' states, close to each other
    tokens = torch.randn(n, 6, 12, generator=g)
    where = torch.randint(0, 6, (n,), generator=g)
    tokens[torch.arange(n), where] = words[side] + 0.05 * torch.randn(n, 12, generator=g)
    return images, side, tokens, torch.ones(n, 6, dtype=torch.bool)


def test_alignment_learns_to_tell_the_images_apart_by_a_word_anywhere_in_the_prompt():
    images, side, tokens, mask = _placed_set()
    torch.manual_seed(0)
    pool = TokenAttentionPool(12, 16)

    def separation() -> float:  # between-side distance of the pooled prompts over their within-side spread
        with torch.no_grad():
            z = torch.nn.functional.normalize(pool(tokens, mask), dim=-1)
        a, b = z[side == 0], z[side == 1]
        within = ((a - a.mean(0)).norm(dim=1).mean() + (b - b.mean(0)).norm(dim=1).mean()) / 2
        return float((a.mean(0) - b.mean(0)).norm() / within)

    before = separation()
    wordings, counts = torch.arange(len(images))[:, None], torch.ones(len(images), dtype=torch.int64)
    loss = align_token_pool(pool, images, (tokens, mask), wordings, counts, steps=150, seed=0,
                            device=torch.device("cpu"), progress=False)
    assert loss < 0.9 * np.log(len(images))  # below chance: images and prompts are matched
    assert separation() > 3 * before, (before, separation())
    assert all(p.requires_grad for p in pool.parameters())  # as it was


def test_alignment_depends_on_the_seed_alone():
    images, _, tokens, mask = _placed_set(16)
    wordings, counts = torch.arange(16)[:, None], torch.ones(16, dtype=torch.int64)
    pools = []
    for _ in range(2):
        torch.manual_seed(0)
        pool = TokenAttentionPool(12, 8)
        torch.manual_seed(123)  # the global state must not matter
        align_token_pool(pool, images, (tokens, mask), wordings, counts, steps=3, seed=5, device=torch.device("cpu"),
                         progress=False)
        pools.append(pool.state_dict())
    assert all(torch.equal(v, pools[1][k]) for k, v in pools[0].items())


def test_an_aligned_conditioner_freezes_its_pooling_and_needs_attention_pooling():
    cond = TextConditioner(12, 10, pool="attention", aligned=True)
    assert not any(p.requires_grad for p in cond.token_pool.parameters())
    assert all(p.requires_grad for p in cond.pool_vector.parameters())
    with pytest.raises(ValueError, match="needs text_pool 'attention'"):
        TextConditioner(12, 10, pool="mean", aligned=True)


def test_a_text_run_aligns_once_keeps_the_pooling_frozen_and_resumes_with_it(tmp_path, pixelforge_cache):
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    from safetensors.torch import load_file

    from pixelforge.cli import main
    from pixelforge.runs.config import RunConfig, build_model

    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(12):
        right = i % 2
        a = np.zeros((8, 8, 3), np.uint8)
        a[3:5, 1 + 5 * right:3 + 5 * right] = (255, 0, 0)
        Image.fromarray(a).save(data / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": [f"a red square on the {'right' if right else 'left'}",
                                                                  f"{'right' if right else 'left'} side: red square"]}))
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    runs = tmp_path / "runs"
    args = ["train", str(data), "--name", "al", "--runs-dir", str(runs), "--text", "--image-size", "8", "--steps", "4",
            "--batch-size", "4", "--base-channels", "8", "--channel-mult", "1", "--num-res-blocks", "1",
            "--attn-resolutions", "8", "--val-every", "4", "--ckpt-every", "4", "--sample-every", "4", "--quiet",
            "--device", "cpu", "--set", "text_pool=attention", "--set", "text_align_steps=10"]
    assert main(args) == 0
    ckpts = lambda: sorted((runs / "al" / "checkpoints").glob("*.safetensors"))  # noqa: E731
    first = load_file(str(ckpts()[-1]))
    pool_keys = [k for k in first if k.startswith("model/text_cond.token_pool.")]
    assert pool_keys
    cfg = RunConfig.load(runs / "al" / "config.json")
    unaligned = dataclasses.replace(cfg, model={**cfg.model, "text_align_steps": 0})
    built = build_model(unaligned, torch.device("cpu")).state_dict()  # the same model before alignment
    assert any(not torch.equal(first[f"model/{k}"], v) for k, v in built.items() if k.startswith("text_cond.token_pool."))
    steps = args.index("--steps")
    assert main(args[: steps + 1] + ["8"] + args[steps + 2:]) == 0  # resumed from step 4: no new alignment
    last = load_file(str(ckpts()[-1]))
    assert all(torch.equal(last[k], first[k]) for k in pool_keys)  # frozen through training and the resume
    vector_keys = [k for k in first if k.startswith("model/text_cond.pool_vector.")]
    assert any(not torch.equal(last[k], first[k]) for k in vector_keys)  # what maps it to the vector trains


def test_text_align_steps_need_attention_pooling_in_every_family():
    from pixelforge.models import FAMILIES

    for name, cls in FAMILIES.items():
        if "text" not in cls.inputs:
            continue
        with pytest.raises(ValueError, match="text_align_steps 5 aligns the token pooling: it needs text_pool 'attention'"):
            cls.Config(text_encoder="e", text_dim=12, text_align_steps=5)
