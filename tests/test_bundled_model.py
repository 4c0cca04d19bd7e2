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


@pytest.mark.slow  # 40 s on a 2-core CPU without AVX-512; tests/test_adherence_eval.py checks the asked digit in seconds
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


def test_bundled_upscaler_restores_held_out_digits_far_better_than_lanczos():
    """mnist-upscale, given 14x14 versions of validation digits it never trained on, comes closer to the
    28x28 originals than Lanczos does by several dB of PSNR."""
    from PIL import Image

    from pixelforge.data.prepare import split_indices

    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = pixelforge.load("mnist-upscale")
    data = load_bundled("mnist")
    _, val = split_indices(len(data.images), 0.05, 0)
    originals = data.images[val[:20]]  # (20, 1, 28, 28) uint8
    small = [Image.fromarray(o[0].numpy(), "L").resize((14, 14), Image.BICUBIC) for o in originals]
    up, _ = g.upscale_tensor(small, seed=0, steps=12)
    lanczos = torch.stack([torch.from_numpy(np.asarray(s.resize((28, 28), Image.LANCZOS)))[None] for s in small])

    def psnr(x: torch.Tensor) -> float:  # x (N, 1, 28, 28) in [0, 255]
        mse = ((x.float() - originals.float()) ** 2).mean()
        return float(10 * torch.log10(255.0 ** 2 / mse))

    model = psnr((up.clamp(-1, 1) + 1) * 127.5)
    assert model > psnr(lanczos) + 4.0, f"model {model:.2f} dB against Lanczos {psnr(lanczos):.2f} dB"


def test_bundled_audio_model_draws_the_digit_spoken_by_voices_it_never_heard(digit_classifier):
    """mnist-audio, given the shipped clips (two voices held out of its training), draws the spoken digit;
    the classifier reads most of them as it."""
    from pathlib import Path

    torch.set_num_threads(max(1, torch.get_num_threads()))
    clips = sorted((Path(pixelforge.__file__).parent / "assets" / "audio" / "spoken-digits").glob("*.wav"))
    assert len(clips) == 10
    spoken = np.array([int(c.name.split("-")[0]) for c in clips])
    g = pixelforge.load("mnist-audio")
    images = g.generate(len(clips), audio=[str(c) for c in clips], seed=0, steps=12, watermark=False)
    x = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255.0 for im in images])
    accuracy = float((digit_classifier.predict(x) == spoken).mean())
    assert accuracy >= 0.7, f"only {accuracy:.0%} of the images are read as the spoken digit"


def test_bundled_distilled_model_draws_digits_of_the_label_in_four_network_evaluations(digit_classifier):
    """mnist-distilled (pixelforge distill mnist-diffusion --steps-out 4): its defaults are the distilled sampler,
    4 evaluations of the network a batch, and its samples are read as the asked digit."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    d = BUNDLED_MODELS_DIR / "mnist-distilled"
    assert (d / "model.safetensors").stat().st_size <= (BUNDLED_MODELS_DIR / DEFAULT_MODEL / "model.safetensors").stat().st_size
    g = pixelforge.load("mnist-distilled", device="cpu")
    calls = []
    network = g.model.network
    g.model.network = lambda *a, **k: calls.append(1) or network(*a, **k)
    labels = [c for c in range(10) for _ in range(6)]
    images, settings = g.generate_tensor(len(labels), labels=labels, seed=0)
    assert len(calls) == 4 and (settings[0]["sampler"], settings[0]["steps"]) == ("ddim", 4)
    assert settings[0]["distilled"]["teacher"] == DEFAULT_MODEL
    x = ((images + 1) / 2).reshape(len(labels), -1).numpy()
    accuracy = float((digit_classifier.predict(x) == np.array(labels)).mean())
    assert accuracy >= 0.8, f"only {accuracy:.0%} of the samples are read as their label"
