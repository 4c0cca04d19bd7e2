"""Post-processing (pixelforge/post.py): each step does what it claims, measurably; the options are checked and
named; the settings are recorded and regenerate; the CLI, the API, the server and evaluate all take them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import laplace
from scipy.stats import wasserstein_distance

import pixelforge
from pixelforge import api
from pixelforge import post as P
from pixelforge.cli import main
from pixelforge.images import read_settings
from pixelforge.post import PostError, PostSettings, apply_post

STEPS = 2  # sampler steps of the bundled model: the pixels do not matter here, only what post-processing does


def _clean(size: int = 32, mode: str = "RGB") -> Image.Image:
    """Flat shapes on a light background: an image with edges and flat areas, as the bundled models draw."""
    im = Image.new("RGB", (size, size), (230, 220, 200))
    d = ImageDraw.Draw(im)
    d.ellipse((size * 0.2, size * 0.2, size * 0.7, size * 0.7), fill=(200, 40, 40))
    d.rectangle((size * 0.55, size * 0.5, size * 0.9, size * 0.9), fill=(30, 60, 180))
    return im.convert(mode)


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float64)


def _rmse(a: Image.Image, b: Image.Image) -> float:
    return float(np.sqrt(((_px(a) - _px(b)) ** 2).mean()))


def _noisy(im: Image.Image, sigma: float = 15.0, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(_px(im) + rng.normal(0, sigma, _px(im).shape), 0, 255).round().astype(np.uint8), im.mode)


# --- each step --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("method", ["nlm", "bilateral"])
@pytest.mark.parametrize("size", [28, 64])
def test_denoise_lowers_the_error_against_the_clean_image(method, mode, size):
    clean = _clean(size, mode)
    noisy = _noisy(clean)
    (out,) = apply_post([noisy], {"denoise": method})
    assert out.mode == mode and out.size == clean.size
    # measured at the defaults: RMSE about 15 -> 4.6..6.6 (nlm), 6.1..8.9 (bilateral) on RGB
    assert _rmse(out, clean) < 0.7 * _rmse(noisy, clean)


def test_a_stronger_denoise_smooths_more():
    noisy = _noisy(_clean())
    weak, strong = (apply_post([noisy], {"denoise": "nlm", "denoise_strength": s})[0] for s in (2, 30))
    assert _rmse(weak, noisy) < _rmse(strong, noisy)


def _high_frequency_energy(im: Image.Image) -> float:
    a = _px(im.convert("L"))
    return float((laplace(a) ** 2).mean())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_sharpen_raises_high_frequency_energy_the_more_the_larger_the_amount(mode):
    soft = _clean(32, mode).filter(ImageFilter.GaussianBlur(1.0))
    e0 = _high_frequency_energy(soft)
    e1 = _high_frequency_energy(apply_post([soft], {"sharpen": 1.0})[0])
    e3 = _high_frequency_energy(apply_post([soft], {"sharpen": 3.0})[0])
    assert e0 * 1.5 < e1 < e3


def test_sharpen_is_pillows_unsharp_mask():
    soft = _clean().filter(ImageFilter.GaussianBlur(1.0))
    (out,) = apply_post([soft], {"sharpen": 2.0})
    want = soft.filter(ImageFilter.UnsharpMask(radius=P.SHARPEN_RADIUS, percent=200, threshold=0))
    assert np.array_equal(np.asarray(out), np.asarray(want))


def test_auto_color_moves_the_channel_means_together_on_a_colour_cast_image():
    cast = Image.fromarray(np.clip(_px(_clean()) * [1.3, 1.0, 0.6], 0, 255).round().astype(np.uint8), "RGB")
    (out,) = apply_post([cast], {"color": "auto"})
    before, after = _px(cast).reshape(-1, 3).mean(0), _px(out).reshape(-1, 3).mean(0)
    assert np.ptp(before) > 40 and np.ptp(after) < 2  # grey world: the three means end equal, to rounding and clipping


def test_match_makes_each_channels_histogram_closer_to_the_references(tmp_path):
    image = _noisy(Image.fromarray(np.clip(_px(_clean()) * [0.5, 0.8, 1.1] + 10, 0, 255).astype(np.uint8), "RGB"))
    ref = _noisy(_clean(48), 20, seed=1)
    ref.save(tmp_path / "ref.png")
    (out,) = apply_post([image], {"color": f"match:{tmp_path / 'ref.png'}"})
    for c in range(3):
        r = _px(ref)[..., c].ravel()
        before = wasserstein_distance(_px(image)[..., c].ravel(), r)
        after = wasserstein_distance(_px(out)[..., c].ravel(), r)
        assert after < 0.25 * before, (c, before, after)


def test_match_to_a_reference_given_as_bytes_is_match_to_the_file_of_those_bytes(tmp_path):
    image = _noisy(Image.fromarray(np.clip(_px(_clean()) * [0.5, 0.8, 1.1] + 10, 0, 255).astype(np.uint8), "RGB"))
    _noisy(_clean(48), 20, seed=1).save(tmp_path / "ref.png")
    data = (tmp_path / "ref.png").read_bytes()
    by_file = PostSettings(color=f"match:{tmp_path / 'ref.png'}")
    by_bytes = PostSettings(color="match", color_reference=bytearray(data))
    assert np.array_equal(np.asarray(apply_post([image], by_file)[0]), np.asarray(apply_post([image], by_bytes)[0]))
    record = by_bytes.to_record()  # the picture's hash, the one its file gets; never the picture
    assert record == {"color": "match", "color_reference_sha256": by_file.to_record()["color_reference_sha256"],
                      "order": ["color"]}
    for bad, text in [({"color": "auto", "color_reference": data}, "but color is 'auto'"),
                      ({"color": f"match:{tmp_path / 'ref.png'}", "color_reference": data}, "but color is 'match:"),
                      ({"color_reference": data}, "but color is None"),
                      ({"color": "match", "color_reference": "ref.png"}, "must be the bytes of an image file, got str"),
                      ({"color": "match", "color_reference": b"GIF89a not really"}, "color_reference: not an image")]:
        with pytest.raises(PostError, match=text) as e:
            P.as_post_settings(PostSettings(**bad))
        assert e.value.field == "color_reference"


def test_match_keeps_a_grayscale_image_grayscale(tmp_path):
    _noisy(_clean(40), 20).save(tmp_path / "ref.png")  # an RGB reference
    gray = _noisy(_clean(28, "L").point(lambda v: v // 2))
    (out,) = apply_post([gray], {"color": f"match:{tmp_path / 'ref.png'}"})
    ref = _px(Image.open(tmp_path / "ref.png").convert("L")).ravel()
    assert out.mode == "L"
    assert wasserstein_distance(_px(out).ravel(), ref) < 0.25 * wasserstein_distance(_px(gray).ravel(), ref)


@pytest.mark.parametrize("factor", [2, 3, 8])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_upscale_gives_the_exact_size_and_equals_pillows_lanczos(factor, mode):
    im = _noisy(_clean(28, mode))
    (out,) = apply_post([im], {"upscale": factor})
    assert out.size == (28 * factor, 28 * factor) and out.mode == mode
    assert np.array_equal(np.asarray(out), np.asarray(im.resize(out.size, Image.Resampling.LANCZOS)))


def test_the_steps_run_in_the_documented_order(tmp_path):
    im = _noisy(Image.fromarray(np.clip(_px(_clean()) * [1.2, 1.0, 0.7], 0, 255).astype(np.uint8)))
    (out,) = apply_post([im], {"upscale": 2, "sharpen": 1.5, "color": "auto", "denoise": "bilateral"})
    want = P.lanczos_upscale(P.sharpen(P.grey_world(P.denoise([im], "bilateral", 40.0)), 1.5), 2)[0]
    assert np.array_equal(np.asarray(out), np.asarray(want))
    other = P.denoise(P.sharpen(P.grey_world([im]), 1.5), "bilateral", 40.0)[0]  # sharpen before denoise
    assert not np.array_equal(np.asarray(P.lanczos_upscale([other], 2)[0]), np.asarray(out))


@pytest.mark.parametrize("settings", [{"denoise": "nlm"}, {"denoise": "bilateral"}, {"color": "auto"},
                                      {"sharpen": 2}, {"upscale": 2},
                                      {"denoise": "nlm", "color": "auto", "sharpen": 1, "upscale": 3}])
def test_a_grayscale_image_stays_grayscale(settings):
    (out,) = apply_post([_noisy(_clean(28, "L"))], settings)
    assert out.mode == "L"


def test_apply_post_leaves_its_inputs_as_they_are():
    im = _noisy(_clean())
    before = np.asarray(im).copy()
    apply_post([im], {"denoise": "nlm", "sharpen": 2})
    assert np.array_equal(np.asarray(im), before)


# --- the settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, field, text", [
    ({"upscale": 9}, "upscale", "from 2 to 8"),
    ({"upscale": 1}, "upscale", "from 2 to 8"),
    ({"upscale": 2.5}, "upscale", "integer"),
    ({"upscale": True}, "upscale", "integer"),
    ({"sharpen": 0}, "sharpen", "from 0.1 to 5"),
    ({"sharpen": float("nan")}, "sharpen", "from 0.1 to 5"),
    ({"sharpen": "lots"}, "sharpen", "from 0.1 to 5"),
    ({"denoise": "median"}, "denoise", "nlm, bilateral"),
    ({"denoise": "nlm", "denoise_strength": 500}, "denoise_strength", "from 1 to 100"),
    ({"denoise_strength": 5}, "denoise_strength", "needs denoise"),
    ({"color": "warm"}, "color", "auto or match:REF.png"),
    ({"color": "match:"}, "color", "auto or match:REF.png"),
    ({"color": "match:/no/such/ref.png"}, "color", "/no/such/ref.png"),
    ({"color": "match"}, "color_reference", "color 'match' needs its reference picture in color_reference"),
    ({"blur": 1}, "blur", "valid: denoise, denoise_strength, color, sharpen, upscale"),
])
def test_a_bad_option_is_an_error_naming_it_and_its_range(fields, field, text):
    with pytest.raises(PostError, match=text) as e:
        P.as_post_settings(fields)
    assert e.value.field == field and field in str(e.value)


def test_the_record_holds_the_steps_the_strength_used_and_the_order_and_reads_back(tmp_path):
    _clean().save(tmp_path / "ref.png")
    post = PostSettings(denoise="bilateral", color=f"match:{tmp_path / 'ref.png'}", upscale=4)
    record = post.to_record()
    assert "denoise_strength" not in record  # the default for each image's mode
    assert PostSettings(denoise="nlm").strength("L") == 20 and PostSettings(denoise="nlm").strength("RGB") == 10
    assert PostSettings(denoise="nlm", denoise_strength=7).to_record()["denoise_strength"] == 7
    assert record["order"] == ["denoise", "color", "upscale"] and "sharpen" not in record
    assert len(record["color_reference_sha256"]) == 64
    assert json.loads(json.dumps(record)) == record
    back = PostSettings.from_dict(record, recorded=True)
    assert back.to_record() == record
    with pytest.raises(PostError, match="order"):  # a record's own entries are no options a caller gives
        PostSettings.from_dict(record)
    assert P.as_post_settings({}) is None and P.as_post_settings(None) is None


# --- the API, the CLI, the server and evaluate on the bundled (grayscale, 28x28) model --------------------------


@pytest.fixture(scope="module")
def g():
    return pixelforge.load("mnist-diffusion", device="cpu")


def test_generate_post_processes_before_the_watermark_and_records_it(g):
    from pixelforge.provenance.marks import detect_image

    post = {"denoise": "nlm", "sharpen": 1.0, "upscale": 3}
    (plain,) = g.generate(1, label=3, seed=4, steps=STEPS, watermark=False)
    (out,) = g.generate(1, label=3, seed=4, steps=STEPS, post=post)
    assert out.mode == "L" and out.size == (84, 84)
    s = out.info["pixelforge"]
    assert s["post"] == PostSettings(**post).to_record()
    # a 28x28 image is too small to carry the mark: marked after the upscale, the 84x84 image carries it
    assert plain.size == (28, 28) and s["watermark"] is True
    assert detect_image(out).detected  # scores 18..20 (measured); never detected had the mark come first
    (unmarked,) = g.generate(1, label=3, seed=4, steps=STEPS, post=post, watermark=False)
    assert np.array_equal(np.asarray(unmarked), np.asarray(apply_post([plain], post)[0]))


def test_a_mark_embedded_before_post_processing_is_lost_and_one_embedded_after_is_found():
    """Why generation post-processes first and marks last (docs/post.md)."""
    from pixelforge.provenance.marks import detect_image, mark_image

    im, s, post = _noisy(_clean(64)), {"model": "m", "seed": 1}, {"denoise": "nlm", "upscale": 2}
    marked_first = apply_post([mark_image(im, settings=s)], post)[0]
    marked_last = mark_image(apply_post([im], post)[0], settings=s)
    assert not detect_image(marked_first).detected  # measured: score 4.4
    assert detect_image(marked_last).detected  # measured: score 20.4


def test_edit_post_processes_its_output(g):
    (digit,) = g.generate(1, label=5, seed=1, steps=STEPS, watermark=False)
    (edited,) = g.edit(digit, strength=0.3, steps=STEPS, seed=2, watermark=False)
    (out,) = g.edit(digit, strength=0.3, steps=STEPS, seed=2, watermark=False, post=PostSettings(sharpen=2.0))
    assert np.array_equal(np.asarray(out), np.asarray(apply_post([edited], {"sharpen": 2.0})[0]))
    assert out.info["pixelforge"]["post"]["sharpen"] == 2.0 and "image_sha256" in out.info["pixelforge"]


def test_a_bad_post_fails_before_any_sampling(g, monkeypatch):
    monkeypatch.setattr(g, "generate_tensor", lambda *a, **k: pytest.fail("sampled despite a bad post option"))
    with pytest.raises(PostError, match="upscale"):
        g.generate(1, post={"upscale": 20})


def test_sample_records_post_and_from_regenerates_it_identically(tmp_path):
    out = tmp_path / "out"
    assert main(["sample", "-n", "2", "--label", "7", "--steps", str(STEPS), "--denoise", "bilateral", "--sharpen",
                 "--upscale", "2", "-o", str(out), "--device", "cpu"]) == 0
    first = sorted(p for p in out.glob("seed*.png"))[1]
    s = read_settings(first)
    assert s["post"]["order"] == ["denoise", "sharpen", "upscale"] and s["post"]["sharpen"] == P.SHARPEN_DEFAULT
    with Image.open(first) as im:
        assert im.size == (56, 56) and im.mode == "L"
    assert main(["sample", "--from", str(first), "-o", str(tmp_path / "again"), "--device", "cpu"]) == 0
    (again,) = (tmp_path / "again").glob("*.png")
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert read_settings(again) == s


def test_from_refuses_a_changed_colour_reference(tmp_path):
    ref = tmp_path / "ref.png"
    _clean(28, "L").save(ref)
    out = tmp_path / "out"
    assert main(["sample", "-n", "1", "--steps", str(STEPS), "--color", f"match:{ref}", "-o", str(out),
                 "--device", "cpu"]) == 0
    (png,) = out.glob("seed*.png")
    _clean(28, "L").rotate(90).save(ref)
    with pytest.raises(ValueError, match="changed since"):
        api.regenerate(png, device="cpu")


@pytest.mark.parametrize("flags, named", [
    (["--upscale", "9"], "--upscale must be an integer from 2 to 8"),
    (["--sharpen", "x"], "--sharpen must be a number from 0.1 to 5"),
    (["--denoise", "median"], "--denoise must be one of nlm, bilateral"),
    (["--denoise-strength", "4"], "--denoise-strength needs denoise"),
    (["--color", "sepia"], "--color must be auto or match:REF.png"),
    (["--color", "match"], "--color match needs its reference file: --color match:REF.png"),
])
def test_sample_with_a_bad_post_option_exits_2_with_one_line_naming_it(flags, named, tmp_path, capsys):
    code = main(["sample", "-n", "1", "--steps", "1", "-o", str(tmp_path / "o"), "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"pixelforge sample: error: {err.split('error: ', 1)[1].strip()}"]
    assert named in err
    assert not (tmp_path / "o").exists()


def test_edit_command_takes_the_post_options(g, tmp_path):
    (digit,) = g.generate(1, label=2, seed=0, steps=STEPS)
    digit.save(tmp_path / "in.png")
    out = tmp_path / "out"
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--strength", "0.3", "--steps", str(STEPS),
                 "--upscale", "3", "-o", str(out), "--device", "cpu"]) == 0
    (png,) = out.glob("edit-*.png")
    assert read_settings(png)["post"]["upscale"] == 3
    with Image.open(png) as im:
        assert im.size == (84, 84)


def test_post_command_processes_files_keeps_their_settings_and_marks_them_again(g, tmp_path, capsys):
    (digit,) = g.generate(1, label=8, seed=2, steps=STEPS)
    src = tmp_path / "src"
    src.mkdir()
    digit.save(src / "digit.png")
    _noisy(_clean(40)).save(src / "photo.jpg")  # not made by pixelforge: no settings, no mark
    out = tmp_path / "out"
    assert main(["post", str(src / "digit.png"), str(src / "photo.jpg"), "-o", str(out), "--denoise",
                 "--upscale", "2"]) == 0
    assert "2 images (denoise, upscale)" in capsys.readouterr().out
    s = read_settings(out / "digit.png")
    assert s["seed"] == 2 and s["label"] == 8 and s["post"]["order"] == ["denoise", "upscale"]
    assert s["watermark"] is True  # 56x56 after the upscale: marked on its new pixels
    with Image.open(out / "digit.png") as im:
        assert im.size == (56, 56) and im.mode == "L"
    photo = read_settings(out / "photo.png")
    assert set(photo) == {"post"}
    with Image.open(out / "photo.png") as im, Image.open(src / "photo.jpg") as orig:
        assert im.size == (80, 80)
        want = apply_post([orig.convert("RGB")], {"denoise": "nlm", "upscale": 2})[0]
        assert np.array_equal(np.asarray(im), np.asarray(want))
    # a file post-processed already is refused: its record could not say how it was made
    assert main(["post", str(out / "digit.png"), "-o", str(tmp_path / "twice"), "--sharpen"]) == 2
    assert "post-processed already" in capsys.readouterr().err


def test_post_command_without_a_step_or_with_a_bad_file_exits_2(tmp_path, capsys):
    _clean().save(tmp_path / "a.png")
    assert main(["post", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")]) == 2
    assert "name at least one step" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["post", str(tmp_path / "broken.png"), "-o", str(tmp_path / "o"), "--sharpen"]) == 2
    assert "broken.png" in capsys.readouterr().err


# --- the server -------------------------------------------------------------------------------------------------


@pytest.fixture
def client(g, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import app as app_module
    from pixelforge.serve import create_app

    monkeypatch.setattr(app_module, "load", lambda name, **kw: g)
    with TestClient(create_app(["mnist-diffusion"], db_path=tmp_path / "ratings.sqlite", runs_dir=tmp_path,
                               device="cpu", allowed_hosts=["testserver"])) as c:
        yield c


@pytest.mark.parametrize("post, field", [
    ({"upscale": 9}, "upscale"), ({"sharpen": -1}, "sharpen"), ({"denoise": "median"}, "denoise"),
    ({"blur": 2}, "blur"), ({"color": "match:/etc/passwd"}, "color"),
])
def test_the_server_rejects_a_bad_post_with_422_naming_the_field(client, post, field):
    r = client.post("/api/v1/jobs", json={"model": "mnist-diffusion", "options": {"steps": 1}, "post": post})
    assert r.status_code == 422, r.json()
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "post", field]


def test_the_server_applies_a_good_post_and_returns_its_record(client):
    from tests.serve_jobs import run_job

    job = run_job(client, {"model": "mnist-diffusion", "n": 1, "seed": 3, "options": {"steps": STEPS},
                           "post": {"upscale": 2, "sharpen": 1.5}})
    (s,) = job["settings"]
    assert s["post"] == {"upscale": 2, "sharpen": 1.5, "order": ["sharpen", "upscale"]}
    png = client.get(job["images"][0])
    assert png.status_code == 200
    import io

    with Image.open(io.BytesIO(png.content)) as im:
        assert im.size == (56, 56) and im.mode == "L"
        assert json.loads(im.text["pixelforge"])["post"] == s["post"]
    # and its settings can be rated like any image's
    r = client.post("/api/v1/ratings", json={"a": {"model": "mnist-diffusion", "settings": s},
                                             "b": {"model": "mnist-diffusion", "settings": {}}, "winner": "a"})
    assert r.status_code == 201, r.json()
    assert client.get("/api/v1/ratings/scores", params={"by": "settings"}).status_code == 200


# --- evaluate ---------------------------------------------------------------------------------------------------


def test_evaluate_counts_the_post_processed_images_of_a_folder(g, tmp_path, capsys):
    fake, real = tmp_path / "fake", tmp_path / "real"
    images = g.generate(4, label=1, seed=0, steps=STEPS)
    for d in (fake, real):
        api.save_images(images, d, grid=False)
    assert main(["post", *map(str, sorted(real.glob("*.png"))[:2]), "-o", str(fake), "--overwrite", "--sharpen"]) == 0
    capsys.readouterr()
    from pixelforge.evaluate import post_processed

    assert post_processed(fake) == 2 and post_processed(real) == 0
    code = main(["evaluate", "--fake", str(fake), "--real", str(real), "--extractor", "mnist-classifier",
                 "--device", "cpu", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["post_processed"] == 2


def test_evaluate_of_a_run_post_processes_its_samples_when_asked(tmp_path):
    from pixelforge.evaluate import evaluate_run

    real = tmp_path / "real"
    api.save_images(pixelforge.load("mnist-diffusion", device="cpu").generate(4, seed=9, steps=STEPS), real,
                               grid=False)
    kwargs = dict(real=str(real), n=4, extractor="mnist-classifier", device="cpu", report=False, progress=False,
                  steps=STEPS)
    plain = evaluate_run("mnist-diffusion", **kwargs)
    posted = evaluate_run("mnist-diffusion", post={"denoise": "nlm", "denoise_strength": 60}, **kwargs)
    assert plain["post_processed"] == 0 and posted["post_processed"] == 4
    assert posted["sampling"]["post"]["denoise"] == "nlm"
    assert posted["fid"] != plain["fid"]  # the figures are of the post-processed images
