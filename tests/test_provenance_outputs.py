"""Every PNG pixelforge writes or serves carries a signed C2PA manifest by default: `sample` (the images and the
grid), `edit`, `post`, the API's save_images and the server. --no-manifest / MarkSettings(manifest=False) turn it
off; the PNG's own settings survive signing (`sample --from`); without the provenance extra images are written
unsigned with one warning per process. Keys go to a temporary $PIXELFORGE_HOME, never the home folder."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelforge import api
from pixelforge.cli import build_parser, main
from pixelforge.images import read_settings
from pixelforge.provenance import outputs
from pixelforge.provenance.c2pa_manifest import TRAINED_ALGORITHMIC_MEDIA, verify
from pixelforge.provenance.keys import CERT_ENV, HOME_ENV, KEY_ENV
from pixelforge.provenance.marks import MarkSettings
from pixelforge.provenance.outputs import MISSING_EXTRA_WARNING, OutputSigner
from pixelforge.runs import BUNDLED_MODELS_DIR
from test_watermark import photo

pytest.importorskip("c2pa", reason="the provenance extra is not installed (scripts/setup.sh installs it)")

MODEL = "mnist-diffusion"
WEIGHTS_SHA256 = hashlib.sha256((BUNDLED_MODELS_DIR / MODEL / "model.safetensors").read_bytes()).hexdigest()
FAST = ["--steps", "2", "--device", "cpu", "--runs-dir"]  # --runs-dir: an empty folder, so the bundled model is used


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """This module's $PIXELFORGE_HOME: the default key is made there on the first signing."""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(folder))
        mp.delenv(CERT_ENV, raising=False)
        mp.delenv(KEY_ENV, raising=False)
        yield folder


@pytest.fixture(autouse=True)
def _home_env(home, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(home))  # the module's, whatever another test set


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def sampled(home, runs, tmp_path_factory) -> Path:
    """`pixelforge sample` of two 3s, once for the module (28x28 images: too small for the watermark; the grid,
    56 pixels a tile, carries one)."""
    out = tmp_path_factory.mktemp("sampled") / "out"
    assert main(["sample", MODEL, "-n", "2", "--label", "3", "-o", str(out), *FAST, str(runs)]) == 0
    return out


def ca(home: Path) -> Path:
    return home / "keys" / "signing-ca.pem"


def test_sample_signs_every_png_naming_generator_model_weights_settings_and_ai_source(sampled, home):
    names = sorted(p.name for p in sampled.iterdir())
    assert names == ["grid.png", "seed000000-label3.png", "seed000001-label3.png"]
    for name in names[1:]:
        r = verify(sampled / name)
        assert r.state == "Valid" and r.problems == ()
        assert verify(sampled / name, trust=ca(home)).state == "Trusted"
        assert r.generator.startswith("pixelforge ") and r.ai_generated
        assert any(a["action"] == "c2pa.created" and a["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
                   for a in r.actions)
        assert r.model == {"name": MODEL, "family": "diffusion", "weights_sha256": WEIGHTS_SHA256}
        own = read_settings(sampled / name)  # the PNG's own settings chunk survives signing
        assert r.settings == {k: v for k, v in own.items() if k != "model_path"}
        assert r.settings["steps"] == 2 and r.settings["label"] == 3 and "model_path" not in r.settings
    grid = verify(sampled / "grid.png", trust=ca(home))
    assert grid.state == "Trusted" and grid.model["weights_sha256"] == WEIGHTS_SHA256
    assert [t["seed"] for t in grid.settings["grid_of"]] == [0, 1]
    assert all("model_path" not in t for t in grid.settings["grid_of"])  # a local path is not the world's business


def test_the_manifest_adds_kilobytes_no_thumbnail(sampled, home, tmp_path):
    assert main(["sample", MODEL, "-n", "1", "--label", "3", "-o", str(tmp_path), "--no-manifest", *FAST,
                 str(tmp_path / "runs")]) == 0
    added = (sampled / "seed000000-label3.png").stat().st_size - (tmp_path / "seed000000-label3.png").stat().st_size
    assert 1000 < added < 8000  # a thumbnail would add tens of kilobytes


def test_verify_command_passes_signed_outputs_with_their_ca(sampled, home, capsys):
    assert main(["provenance", "verify", *map(str, sorted(sampled.iterdir())), "--trust", str(ca(home))]) == 0
    assert capsys.readouterr().out.count("manifest Trusted") == 3


def test_no_manifest_writes_none_and_makes_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "fresh-home"))
    out = tmp_path / "out"
    assert main(["sample", MODEL, "-n", "1", "-o", str(out), "--no-manifest", *FAST, str(tmp_path / "runs")]) == 0
    for p in out.iterdir():
        assert verify(p).manifest is False
    assert not (tmp_path / "fresh-home" / "keys").exists()


def test_the_flags_map_onto_mark_settings_for_sample_edit_post_and_serve():
    from pixelforge.cli import _marks

    parser = build_parser()
    for argv in (["sample"], ["edit", "--image", "x.png"], ["post", "x.png", "-o", "o", "--sharpen"], ["serve"]):
        assert _marks(parser.parse_args(argv)).manifest is True
        assert _marks(parser.parse_args([*argv, "--no-manifest"])) == MarkSettings(manifest=False)


def test_a_tampered_byte_makes_a_signed_output_invalid(sampled, tmp_path):
    path = tmp_path / "tampered.png"
    data = bytearray((sampled / "seed000000-label3.png").read_bytes())
    idat = data.index(b"IDAT") + 4
    data[idat + 10] ^= 0x01
    path.write_bytes(bytes(data))
    r = verify(path)
    assert r.state == "Invalid" and any("dataHash.mismatch" in p for p in r.problems)


def test_a_reencoded_output_loses_the_manifest_but_verify_still_finds_the_watermark(tmp_path, capsys):
    # a 96-pixel photograph-like image: the bundled model's 28-pixel digits are too small for the watermark
    (path,) = api.save_images([photo(96, seed=3)], tmp_path / "out", grid=False)["images"]
    assert verify(path).state == "Valid"
    reencoded = tmp_path / "reencoded.png"
    with Image.open(path) as im:
        im.save(reencoded)  # Pillow decodes and writes the pixels again: the manifest's hard binding is gone
    r = verify(reencoded)
    assert r.manifest is False and r.watermark["available"] and r.watermark["result"]["detected"]
    assert main(["provenance", "verify", str(reencoded)]) == 1
    assert "no C2PA manifest" in capsys.readouterr().out


def test_sample_from_a_signed_png_regenerates_it_identically(sampled, runs, tmp_path):
    src = sampled / "seed000001-label3.png"
    again = tmp_path / "again"
    assert main(["sample", "--from", str(src), "-o", str(again), "--device", "cpu", "--runs-dir", str(runs)]) == 0
    (out,) = again.iterdir()
    assert read_settings(out) == read_settings(src)
    with Image.open(out) as a, Image.open(src) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert verify(out).state == "Valid"


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255  # a "1"
    Image.fromarray(img, "L").save(path)
    return path


def test_edit_outputs_are_signed(digit_png, runs, tmp_path, home):
    out = tmp_path / "out"
    assert main(["edit", MODEL, "--image", str(digit_png), "-n", "1", "--strength", "0.5", "-o", str(out),
                 *FAST, str(runs)]) == 0
    r = verify(out / "edit-seed000000.png", trust=ca(home))
    assert r.state == "Trusted" and r.model["weights_sha256"] == WEIGHTS_SHA256
    assert r.settings["strength"] == 0.5 and r.settings["image_sha256"]
    assert verify(out / "grid.png").state == "Valid"


def test_post_outputs_of_pixelforge_images_are_signed_other_images_are_not_claimed(sampled, digit_png, tmp_path):
    out = tmp_path / "post"
    assert main(["post", str(sampled / "seed000000-label3.png"), str(digit_png), "-o", str(out), "--upscale", "2"]) == 0
    r = verify(out / "seed000000-label3.png")
    assert r.state == "Valid" and r.settings["post"]["order"] == ["upscale"] and r.settings["watermark"] is True
    assert r.model["weights_sha256"] == WEIGHTS_SHA256  # the bundled model found by its recorded name and checkpoint
    assert read_settings(out / "seed000000-label3.png")["post"]["order"] == ["upscale"]  # sample --from reads it
    assert verify(out / "digit.png").manifest is False  # not made by pixelforge: no claim that a model made it


def test_save_images_signs_by_default_and_not_with_manifest_off(tmp_path):
    g = api.load(MODEL, device="cpu", runs_dir=tmp_path / "runs")
    images = g.generate(2, seed=4, steps=2, label=1)
    signed = api.save_images(images, tmp_path / "on")
    assert all(verify(p).state == "Valid" for p in [*signed["images"], signed["grid"]])
    plain = api.save_images(images, tmp_path / "off", watermark=MarkSettings(manifest=False))
    assert not any(verify(p).manifest for p in [*plain["images"], plain["grid"]])
    # the same PNG but the manifest: the settings chunk and the pixels are what they were
    assert read_settings(plain["images"][0]) == read_settings(signed["images"][0])


def test_a_broken_configured_key_fails_before_any_file_is_written(tmp_path, monkeypatch):
    g = api.load(MODEL, device="cpu", runs_dir=tmp_path / "runs")
    images = g.generate(1, seed=0, steps=2)
    monkeypatch.setenv(CERT_ENV, str(tmp_path / "missing.pem"))
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(FileNotFoundError, match="missing.pem"):
        api.save_images(images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_info_names_the_weights_only_when_they_are_the_images(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(BUNDLED_MODELS_DIR / MODEL, run)
    signer = OutputSigner()
    s = {"model": "m", "family": "diffusion", "checkpoint": WEIGHTS_SHA256[:12], "model_path": str(run)}
    assert signer.model_info(s).weights_sha256 == WEIGHTS_SHA256
    assert signer.model_info({**s, "checkpoint": "0" * 12}).weights_sha256 is None  # other weights now
    assert signer.model_info({**s, "model_path": str(tmp_path / "gone")}).weights_sha256 is None
    assert signer.model_info({"seed": 1}) is None


def test_the_server_returns_signed_pngs_and_none_with_manifest_off(tmp_path, monkeypatch, home):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from serve_jobs import run_job

    from pixelforge.serve import app as app_module
    from pixelforge.serve import create_app

    bundled = api.load(MODEL, device="cpu", runs_dir=tmp_path / "runs")
    monkeypatch.setattr(app_module, "load", lambda name, **kw: bundled)

    def one_png(**kwargs) -> bytes:
        app = create_app([MODEL], db_path=tmp_path / "r.sqlite", runs_dir=tmp_path / "runs", device="cpu",
                         allowed_hosts=["testserver"], **kwargs)
        with TestClient(app) as client:
            job = run_job(client, {"model": MODEL, "n": 1, "label": 2, "seed": 5, "options": {"steps": 2}})
            response = client.get(f"/api/v1/jobs/{job['id']}/images/0.png")
            assert response.status_code == 200
            return response.content

    path = tmp_path / "served.png"
    path.write_bytes(one_png())
    r = verify(path, trust=ca(home))
    assert r.state == "Trusted" and r.model["weights_sha256"] == WEIGHTS_SHA256
    assert r.settings == read_settings(path) and r.settings["seed"] == 5
    path.write_bytes(one_png(watermark=MarkSettings(manifest=False)))
    assert verify(path).manifest is False


def test_without_the_extra_images_are_written_unsigned_with_one_warning(tmp_path, monkeypatch, caplog):
    g = api.load(MODEL, device="cpu", runs_dir=tmp_path / "runs")
    images = g.generate(2, seed=0, steps=2)
    monkeypatch.setattr(outputs, "_warned", type(outputs._warned)())  # as in a fresh process
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now raises ImportError
    with caplog.at_level(logging.WARNING, logger="pixelforge.provenance"):
        first = api.save_images(images, tmp_path / "a")
        api.save_images(images, tmp_path / "b")
        assert main(["sample", MODEL, "-n", "1", "-o", str(tmp_path / "c"), *FAST, str(tmp_path / "runs")]) == 0
    warnings = [r.getMessage() for r in caplog.records if MISSING_EXTRA_WARNING in r.getMessage()]
    assert len(warnings) == 1 and "pip install 'pixelforge[provenance]'" in warnings[0] and "--no-manifest" in warnings[0]
    for folder in ("a", "b", "c"):
        pngs = sorted((tmp_path / folder).glob("*.png"))
        assert len(pngs) >= 2 and not any(b"caBX" in p.read_bytes() for p in pngs)  # written, no manifest chunk
    assert read_settings(first["images"][0])["seed"] == 0
    # with manifests off there is nothing to warn about
    caplog.clear()
    monkeypatch.setattr(outputs, "_warned", type(outputs._warned)())
    with caplog.at_level(logging.WARNING, logger="pixelforge.provenance"):
        api.save_images(images, tmp_path / "d", watermark=MarkSettings(manifest=False))
    assert not caplog.records



def test_demo_signs_its_images_and_the_grid_it_writes_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "demo"
    assert main(["demo", "--per-class", "1", "--steps", "1", "--device", "cpu", "-o", str(out)]) == 0
    grid = verify(out / "grid.png")
    assert grid.state == "Valid" and grid.model["weights_sha256"] == WEIGHTS_SHA256 and len(grid.settings["grid_of"]) == 10
    assert verify(out / "seed000000-label0.png").state == "Valid"
