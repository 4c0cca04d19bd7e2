"""The shapes adherence checker: reading images back, reading prompts, and the share that obeys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from pixelforge.data.shapes import make_shapes, shape_attributes
from pixelforge.metrics.adherence import (
    ATTRIBUTES,
    adherence,
    caption_of,
    held_out_combinations,
    held_out_prompts,
    parse_prompt,
    read_shape,
)


@pytest.fixture(scope="module")
def drawn():
    # Seeds other than the bundled set's 0: images the checker was never tuned on.
    sets = [make_shapes(80, size=32, seed=seed) for seed in (101, 202, 303)]
    images = torch.cat([s.images for s, _ in sets])  # (240, 3, 32, 32) uint8
    attributes = [a for _, attrs in sets for a in attrs]
    return images, attributes


def test_reader_reads_every_attribute_of_freshly_drawn_shapes(drawn):
    images, attributes = drawn
    read = [read_shape(image) for image in images]
    for name in ATTRIBUTES:
        accuracy = np.mean([r[name] == a[name] for r, a in zip(read, attributes)])
        assert accuracy >= 0.98, f"{name}: {accuracy:.3f}"


def _accuracy(images, attributes) -> dict[str, float]:
    read = [read_shape(image) for image in images]
    return {name: float(np.mean([r[name] == a[name] for r, a in zip(read, attributes)])) for name in ATTRIBUTES}


def test_stray_noisy_pixels_do_not_move_the_shape(drawn):
    # Generated images are not clean: Gaussian noise (sigma 8 of 255) leaves specks far from the
    # background colour, which must not pull the shape's centroid off its template.
    images, attributes = drawn
    rng = np.random.default_rng(0)
    noisy = [np.clip(x.permute(1, 2, 0).numpy() + rng.normal(0, 8, (32, 32, 3)), 0, 255).round().astype(np.uint8)
             for x in images]
    assert min(_accuracy(noisy, attributes).values()) >= 0.98


def test_colour_is_read_from_blurred_edges_too(drawn):
    # A blurred shape has few pure pixels; its colour is the one whose mixes with the background fit.
    images, attributes = drawn
    blurred = [Image.fromarray(x.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(0.8)) for x in images]
    assert _accuracy(blurred, attributes)["colour"] >= 0.995


def test_reader_works_at_other_sides():
    image_set, attributes = make_shapes(30, size=64, seed=404)
    correct = [read_shape(image) == {k: a[k] for k in ATTRIBUTES} for image, a in zip(image_set.images, attributes)]
    assert np.mean(correct) >= 0.95


def test_reader_takes_pil_numpy_and_model_range_tensors_alike(drawn):
    image = drawn[0][0]  # (3, 32, 32) uint8
    expected = read_shape(image)
    hwc = image.permute(1, 2, 0).numpy()
    assert read_shape(hwc) == expected
    assert read_shape(Image.fromarray(hwc)) == expected
    assert read_shape(image.float() / 127.5 - 1.0) == expected


def test_a_blank_image_reads_as_its_background_only():
    blank = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert read_shape(blank) == {"shape": None, "colour": None, "size": None, "position": None, "background": "gray"}


def test_reader_rejects_images_it_cannot_read():
    with pytest.raises(ValueError, match=r"image: expected a \(3, H, W\) tensor"):
        read_shape(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="image: expected a square image"):
        read_shape(np.zeros((32, 40, 3), dtype=np.uint8))


def test_parse_prompt_reads_the_captions():
    for i in range(300):
        a = shape_attributes(i, seed=7)
        assert parse_prompt(a["caption"]) == {k: a[k] for k in ATTRIBUTES}, a["caption"]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a big blue star in the upper right, on black",
         {"size": "large", "colour": "blue", "shape": "star", "position": "top right", "background": "black"}),
        ("a tiny crimson disc with a grey background, top-left corner",
         {"size": "small", "colour": "red", "shape": "circle", "position": "top left", "background": "gray"}),
        ("cream background, a mid-sized green plus sign at the middle left",
         {"background": "beige", "size": "medium", "colour": "green", "shape": "cross", "position": "left"}),
        ("a purple rhombus in the lower part, centred", {"colour": "purple", "shape": "diamond", "position": "bottom"}),
        ("something in the middle", {"position": "centre"}),
        ("a white star on black", {"colour": "white", "shape": "star", "background": "black"}),
        ("a picture", {}),
    ],
)
def test_parse_prompt_reads_paraphrases_and_only_what_is_stated(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_held_out_prompts_parse_back_to_their_combinations():
    for prompt, attributes in held_out_prompts(300, seed=3):
        assert parse_prompt(prompt) == attributes, prompt
    for prompt, attributes in held_out_prompts(20, seed=3, paraphrased=False):
        assert prompt == caption_of(attributes)


def test_paraphrases_name_the_shape_as_the_captions_do_and_other_nouns_otherwise():
    from pixelforge.metrics.adherence import OTHER_NOUN_SHAPES, _SAY_SHAPE

    assert set(OTHER_NOUN_SHAPES) == {"circle", "diamond", "cross"}
    for prompt, attributes in held_out_prompts(200, seed=4):
        assert f" {attributes['shape']} " in f" {prompt} ".replace(",", " "), prompt
        assert not any(w in prompt for names in _SAY_SHAPE.values() for w in names[1:]), prompt
    other = held_out_prompts(200, seed=4, nouns=True)
    assert {a["shape"] for _, a in other} == set(OTHER_NOUN_SHAPES)
    for prompt, attributes in other:
        assert parse_prompt(prompt) == attributes, prompt
        assert attributes["shape"] not in prompt and any(w in prompt for w in _SAY_SHAPE[attributes["shape"]][1:]), prompt
    with pytest.raises(ValueError, match="needs paraphrased=True"):
        held_out_prompts(5, paraphrased=False, nouns=True)


def test_held_out_combinations_are_never_drawn_by_the_set():
    drawn = {tuple(shape_attributes(i, seed=0)[k] for k in ATTRIBUTES) for i in range(200)}
    held_out = held_out_combinations(n=200, seed=0)
    assert len(held_out) == 6 * 9 * 3 * 9 * 4 - len(drawn)
    assert not drawn & {tuple(c[k] for k in ATTRIBUTES) for c in held_out}


def test_adherence_is_one_with_own_captions_and_low_with_shuffled_ones(drawn):
    images, attributes = drawn
    images, attributes = images[:120], attributes[:120]
    captions = [a["caption"] for a in attributes]
    own = adherence(images, captions)
    assert own == {name: 1.0 for name in (*ATTRIBUTES, "all")}
    shuffled = adherence(images, captions[1:] + captions[:1])
    assert max(shuffled[name] for name in ATTRIBUTES) < 0.5
    assert shuffled["all"] < 0.05


def test_adherence_counts_only_the_attributes_a_prompt_states(drawn):
    images, attributes = drawn
    prompts = [f"a {a['colour']} thing" for a in attributes[:10]]
    assert adherence(images[:10], prompts) == {"colour": 1.0, "all": 1.0}
    with pytest.raises(ValueError, match="adherence: 10 images but 9 prompts"):
        adherence(images[:10], prompts[:9])


def test_an_image_whose_shape_colour_matches_its_background_reads_no_place():
    # Two equal patches of opposite colours on gray: their median colour is the background itself.
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    image[8:16, 8:16] = (255, 0, 0)
    image[16:24, 16:24] = (0, 255, 255)
    read = read_shape(image)
    assert read["background"] == "gray" and read["position"] is None and read["shape"] is None


def test_caption_variants_state_every_attribute_in_words_the_paraphrase_evaluation_never_uses():
    """The shapes set's other wordings (trained on) and adherence's paraphrases (evaluated on) share
    no phrase beyond the captions' own words, so adherence to other wordings stays a held-out measure."""
    from pixelforge.data.shapes import _VARY_BACKGROUND, _VARY_COLOUR, _VARY_PLACE, _VARY_SHAPE, _VARY_SIZE, caption_variants
    from pixelforge.metrics import adherence

    evaluated = [w for say in (adherence._SAY_SIZE, adherence._SAY_SHAPE, adherence._SAY_BACKGROUND)
                 for words in say.values() for w in words[1:]]
    evaluated += [w for words in adherence._SAY_PLACE.values() for w in words]
    shapes, _ = make_shapes(60, variants=4)
    for a, caption, variants in zip((shape_attributes(i) for i in range(60)), shapes.captions, shapes.caption_variants):
        assert len(variants) == 4 and caption not in variants
        for v in variants:
            for table, key in ((_VARY_SIZE, "size"), (_VARY_SHAPE, "shape"), (_VARY_COLOUR, "colour"),
                               (_VARY_PLACE, "position"), (_VARY_BACKGROUND, "background")):
                assert any(word in v for word in table[a[key]]), (key, v)
            assert not [w for w in evaluated if f" {w}" in f" {v}"], v
    assert caption_variants(shape_attributes(3), seed=(0, 3, 1)) == shapes.caption_variants[3]  # reproducible
