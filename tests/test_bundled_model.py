"""The bundled model loads offline and its samples are recognisable digits of the asked class."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import pixelforge
from pixelforge.data.bundled import load_bundled
from pixelforge.train.runs import BUNDLED_MODELS_DIR, DEFAULT_MODEL


def test_bundled_model_ships_its_config_weights_and_card():
    d = BUNDLED_MODELS_DIR / DEFAULT_MODEL
    for name in ("config.json", "model.safetensors", "classes.json", "metrics.csv", "MODEL.md"):
        assert (d / name).is_file(), f"{name} missing from the bundled model"
    assert (d / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.fixture(scope="module")
def digit_classifier():
    # A k-NN classifier on the real digits: independent of the model, ~90% accurate on MNIST.
    data = load_bundled("mnist")
    x = data.images.reshape(len(data), -1).float().numpy() / 255.0
    return KNeighborsClassifier(n_neighbors=5).fit(x, data.labels.numpy())


def test_bundled_model_samples_are_recognisable_digits_of_the_requested_label(digit_classifier):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = pixelforge.load()
    labels = [c for c in range(10) for _ in range(6)]
    images = g.generate(len(labels), labels=labels, seed=0, sampler="heun", steps=18, guidance=2.0)
    assert images[0].size == (28, 28) and images[0].mode == "L"
    x = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255.0 for im in images])
    predicted = digit_classifier.predict(x)
    accuracy = float((predicted == np.array(labels)).mean())
    assert accuracy >= 0.8, f"only {accuracy:.0%} of the samples are read as their label"


def test_bundled_sketch_model_draws_the_digit_of_a_drawing_it_never_trained_on(digit_classifier):
    """mnist-sketch, given validation digits (held out from its training) as dark-on-white drawings of
    another size, draws digits read as the drawn one; with no sketch it draws whatever digit it likes."""
    from PIL import Image

    from pixelforge.data.prepare import split_indices

    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = pixelforge.load("mnist-sketch")
    data = load_bundled("mnist")
    _, val = split_indices(len(data.images), 0.05, 0)
    picks = [next(i for i in val.tolist() if int(data.labels[i]) == d) for d in range(10)] * 2
    drawings = [Image.fromarray(255 - data.images[i, 0].numpy(), "L").resize((112, 112), Image.LANCZOS)
                for i in picks]
    with pytest.warns(UserWarning, match="resized"):
        images = g.generate(len(picks), sketch=drawings, seed=0, sampler="heun", steps=12, watermark=False)
    x = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255.0 for im in images])
    drawn = np.array([int(data.labels[i]) for i in picks])
    accuracy = float((digit_classifier.predict(x) == drawn).mean())
    assert accuracy >= 0.8, f"only {accuracy:.0%} of the samples are read as the drawn digit"
    free = g.generate(len(picks), seed=0, sampler="heun", steps=12, watermark=False)
    x = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255.0 for im in free])
    assert float((digit_classifier.predict(x) == drawn).mean()) < 0.5
