"""The HTTP API with uploaded images: a sketch for a model trained with --condition edges, an image to edit
(img2img) and a mask (inpainting) for a family that edits; /models says which model takes which, the PNGs
record each upload's SHA-256 (never the upload), and every bad upload gets a 422 naming the field."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("cv2", reason="the sketch extra is not installed (scripts/setup.sh installs it)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import pixelforge  # noqa: E402
from pixelforge.cli import main  # noqa: E402
from pixelforge.condition.edges import read_sketch  # noqa: E402
from pixelforge.images import read_settings  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402
from pixelforge.serve.jobs import JobQueue  # noqa: E402
from pixelforge.serve.limits import ServerLimits  # noqa: E402

from test_edit import _untrained_run  # noqa: E402
from test_sketch import TINY, ring  # noqa: E402
from test_watermark import carries_its_mark  # noqa: E402
from serve_jobs import b64, chunk_bytes, run_job  # noqa: E402
from serve_jobs import encoded as png  # noqa: E402

SKETCH_MODEL, LABEL_MODEL, GAN_MODEL = "edges", "mnist-diffusion", "gan8"


def train_sketch_run(tmp_path_factory) -> Path:
    """A runs folder holding "edges": `pixelforge train digits --condition edges --no-labels` with test_sketch's
    tiny settings (4 steps of an 8x8 UNet: a diffusion model, so it edits too); and "gan8", an untrained GAN (a
    family that cannot edit). The browser test serves them too."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("PIXELFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "digits", "--name", SKETCH_MODEL, "--runs-dir", str(runs), "--condition", "edges",
                     "--no-labels", *TINY]) == 0
    _untrained_run(runs / GAN_MODEL, "gan", {"image_size": 8, "channels": 1, "z_dim": 8, "base_channels": 8}, "digits", 1)
    return runs


def steer_by_the_sketch(app) -> None:
    """Random weights for the served sketch model's zero-initialised convolution that takes the edge map (4
    training steps hardly move it), so that the sketch visibly steers the image."""
    net = app.state.generators[SKETCH_MODEL].model.net
    with torch.no_grad():
        for p in net.spatial_in.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return train_sketch_run(tmp_path_factory)


def _app(runs_dir, tmp_path, models=(SKETCH_MODEL, LABEL_MODEL, GAN_MODEL), **kwargs):
    return create_app(list(models), runs_dir=runs_dir, device="cpu", allowed_hosts=["testserver"],
                      db_path=tmp_path / "ratings.sqlite", **kwargs)


@pytest.fixture(scope="module")
def client(runs_dir, tmp_path_factory):
    app = _app(runs_dir, tmp_path_factory.mktemp("db"))
    steer_by_the_sketch(app)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def sketch_g(client):
    return client.app.state.generators[SKETCH_MODEL]


def noise(side: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8), "L")



def pixels_sha256(im: Image.Image) -> str:
    """The SHA-256 of an image's decoded pixels (mode, size, bytes): what the settings record for an upload."""
    return hashlib.sha256(f"{im.mode} {im.size}\n".encode() + im.tobytes()).hexdigest()


def fetch(client, url: str) -> tuple[np.ndarray, dict, bytes]:
    """A result PNG's pixels, settings and bytes."""
    content = client.get(url).content
    return np.asarray(Image.open(io.BytesIO(content))), read_settings(io.BytesIO(content)), content


# --- what each model takes ------------------------------------------------------------------------
def test_models_say_which_take_a_sketch_an_image_and_a_mask_from_what_they_declare(client):
    listed = client.get("/api/v1/models").json()["models"]
    models = {m["name"]: {i["name"]: i for i in m["inputs"]} for m in listed}
    edit_options = {m["name"]: [o["name"] for o in m["edit_options"]] for m in listed}
    sketch = models[SKETCH_MODEL]
    assert {k: i["supported"] for k, i in sketch.items()} == {"label": False, "prompt": False, "sketch": True,
                                                              "audio": False, "image": True, "mask": True}
    assert "edge map" in sketch["sketch"]["note"] and sketch["label"]["note"] == "this model takes sketches"
    default = ServerLimits()
    for kind in ("sketch", "image", "mask"):  # the page checks a file against these before sending it
        assert (sketch[kind]["max_bytes"], sketch[kind]["max_pixels"]) == (default.max_upload_bytes, default.max_upload_pixels)
    labels = models[LABEL_MODEL]
    assert (labels["sketch"]["supported"], labels["image"]["supported"]) == (False, True)
    assert labels["sketch"]["note"] == "this model was not trained with --condition edges"
    gan = models[GAN_MODEL]
    assert [gan[k]["supported"] for k in ("sketch", "image", "mask")] == [False, False, False]
    assert (gan["sketch"]["note"], gan["image"]["note"]) == ("gan models take no sketch", "gan models cannot edit images")
    assert edit_options == {SKETCH_MODEL: ["strength", "resample"], LABEL_MODEL: ["strength", "resample"], GAN_MODEL: []}


# --- sketches ---------------------------------------------------------------------------------------
DRAWING = ring(64, 5, bright=False)  # a "0", black on white, at 64 px for an 8 px model


@pytest.mark.parametrize("encode", [
    lambda data: b64(data),
    lambda data: "data:image/png;base64," + b64(data),  # what a page's canvas gives
    lambda data: base64.encodebytes(data).decode(),  # wrapped at 76 characters, as the base64 tool writes it
])
def test_a_sketch_job_draws_what_the_api_draws_and_records_the_sketch_hash_not_the_sketch(client, sketch_g, encode):
    job = run_job(client, {"model": SKETCH_MODEL, "n": 2, "seed": 5, "sketch": encode(png(DRAWING)),
                           "options": {"steps": 2}})
    digest = read_sketch(DRAWING)[1]
    assert [s["sketch_sha256"] for s in job["settings"]] == [digest, digest]
    pixels, settings, content = fetch(client, job["images"][1])
    assert settings == job["settings"][1] and settings["seed"] == 6
    same = sketch_g.generate(1, sketch=DRAWING, seeds=[6], steps=2)[0]
    assert np.array_equal(pixels, np.asarray(same))
    # the PNG holds its settings and no copy of the drawing; nor does its C2PA manifest (about 3.7 KB)
    manifest = chunk_bytes(content, b"caBX")
    assert set(Image.open(io.BytesIO(content)).text) == {"pixelforge"} and len(content) - manifest < 1000
    assert manifest < 5000  # none without the provenance extra


def test_the_sketch_steers_the_image(client):
    blank = Image.new("L", (64, 64), 255)
    drawn, empty = (run_job(client, {"model": SKETCH_MODEL, "sketch": b64(png(im)), "options": {"steps": 2}})
                    for im in (DRAWING, blank))
    assert not np.array_equal(fetch(client, drawn["images"][0])[0], fetch(client, empty["images"][0])[0])


def test_a_jpeg_sketch_is_taken_too(client):
    job = run_job(client, {"model": SKETCH_MODEL, "sketch": b64(png(DRAWING.convert("RGB"), "JPEG")),
                           "options": {"steps": 1}})
    assert len(job["settings"][0]["sketch_sha256"]) == 64


# --- img2img and inpainting -------------------------------------------------------------------------
def test_an_img2img_job_at_strength_0_returns_the_image_and_records_its_file_hash(client, sketch_g, tmp_path):
    data = png(noise(8))
    job = run_job(client, {"model": SKETCH_MODEL, "n": 2, "image": b64(data), "options": {"strength": 0.0, "steps": 2}})
    pixels, s, _ = fetch(client, job["images"][0])
    assert np.abs(pixels.astype(int) - np.asarray(noise(8), dtype=int)).max() <= 1
    assert (s["strength"], s["image_sha256"], s["mask_sha256"]) == (0.0, pixels_sha256(noise(8)), None)
    assert s["image"] == f"image-{s['image_sha256'][:16]}.png"  # the name `sample --from` looks for beside the PNG
    (tmp_path / "in.png").write_bytes(data)  # the hash a file of those bytes gets from the API and CLI
    (from_file,) = sketch_g.edit(tmp_path / "in.png", strength=0.0, steps=2)
    assert from_file.info["pixelforge"]["image_sha256"] == s["image_sha256"]


def test_an_inpainting_job_keeps_what_the_mask_leaves_and_is_what_the_api_makes(client, sketch_g):
    image, mask = png(noise(8)), Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))  # white: repaint the left half
    job = run_job(client, {"model": SKETCH_MODEL, "seed": 3, "image": b64(image), "mask": b64(png(mask)),
                           "options": {"strength": 1.0, "steps": 2, "resample": 2}})
    pixels, s, _ = fetch(client, job["images"][0])
    assert (s["strength"], s["resample"], s["mask_sha256"]) == (1.0, 2, pixels_sha256(mask))
    kept = np.asarray(noise(8), dtype=int)[:, 4:]
    assert np.abs(pixels.astype(int)[:, 4:] - kept).max() <= 1 and not np.array_equal(pixels[:, :4], np.asarray(noise(8))[:, :4])
    (same,) = sketch_g.edit(image, mask=png(mask), strength=1.0, seed=3, steps=2, resample=2)
    assert np.array_equal(pixels, np.asarray(same))


def test_an_edit_job_is_watermarked(runs_dir, tmp_path):
    """On a 32 px model (smaller images carry no mark): the PNG carries the mark its settings record. The input is
    smooth: uniform noise at 32 px cannot carry a mark that reads back, and would be recorded as unmarked."""
    run = _untrained_run(tmp_path / "big", "diffusion", {"image_size": 32, "channels": 1, "base_channels": 8,
                                                         "channel_mult": (1,), "num_res_blocks": 1}, "digits", 1)
    y, x = np.mgrid[:32, :32]
    photo = png(Image.fromarray((128 + 60 * np.sin(x / 5) * np.cos(y / 7)).astype(np.uint8), "L"))
    with TestClient(_app(runs_dir, tmp_path, models=(str(run),))) as c:
        job = run_job(c, {"model": str(run), "seed": 2, "image": b64(photo), "options": {"strength": 0.5, "steps": 1}})
        pixels, s, _ = fetch(c, job["images"][0])
        (plain,) = c.app.state.generators[str(run)].edit(photo, strength=0.5, seed=2, steps=1, watermark=False)
    marked = Image.fromarray(pixels)
    marked.info["pixelforge"] = s
    assert s["watermark"] is True and carries_its_mark(marked, plain)


# --- bad uploads ------------------------------------------------------------------------------------
def _bomb() -> bytes:
    """A small PNG whose header claims 20000 x 20000 pixels."""
    data = png(Image.new("L", (8, 8), 0))
    chunk = b"IHDR" + struct.pack(">II", 20000, 20000) + data[24:29]
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


GOOD = b64(png(noise(8)))
BAD_UPLOADS = [
    ({"sketch": "not base64!"}, ["body", "sketch"], "the sketch is not valid base64"),
    ({"sketch": "QUJD"}, ["body", "sketch"], "the sketch: not an image or unsupported format (send a PNG or JPEG file)"),
    ({"sketch": b64(png(DRAWING, "GIF"))}, ["body", "sketch"], "not an image or unsupported format"),
    ({"sketch": "data:image/gif;base64," + GOOD}, ["body", "sketch"], "a data: URL of another kind"),
    ({"sketch": ""}, ["body", "sketch"], "the sketch: zero-byte file"),
    ({"sketch": 7}, ["body", "sketch"], "valid string"),
    ({"image": b64(png(noise(28))[:400])}, ["body", "image"], "the image: truncated image"),
    ({"image": b64(png(Image.new("L", (2049, 2048), 255)))}, ["body", "image"],
     "the image: too large: 2049x2048 pixels is over the limit of 4194304 (--max-upload-pixels)"),
    ({"image": b64(_bomb())}, ["body", "image"], "the image: decompression bomb"),
    ({"image": GOOD, "mask": "%%%"}, ["body", "mask"], "the mask is not valid base64"),
    ({"image": GOOD, "options": {"strength": 1.5}}, ["body", "options", "strength"], "strength must be between 0 and 1"),
    ({"options": {"strength": 0.5}}, ["body", "options", "strength"], "strength is an option of edits: it needs an image"),
    ({"mask": GOOD}, ["body"], "a mask needs an image"),
    ({"sketch": GOOD, "image": GOOD}, ["body"], "give a sketch or an image, not both"),
    ({"model": LABEL_MODEL, "sketch": GOOD}, ["body", "sketch"],
     "mnist-diffusion takes no sketch (it was not trained with --condition edges); the conditions it takes: labels"),
    ({"model": GAN_MODEL, "image": GOOD}, ["body", "image"], "gan models cannot edit images"),
]


@pytest.mark.parametrize("body, where, message", BAD_UPLOADS, ids=[m[:40] for _, _, m in BAD_UPLOADS])
def test_a_bad_upload_gets_422_naming_the_field_and_queues_nothing(client, monkeypatch, body, where, message):
    def no_queue(*args, **kwargs):
        raise AssertionError("a bad upload was queued")

    monkeypatch.setattr(client.app.state.queue, "submit", no_queue)
    r = client.post("/api/v1/jobs", json={"model": SKETCH_MODEL, **body})
    assert r.status_code == 422, r.json()
    (error,) = r.json()["detail"]
    assert error["loc"] == where and message in error["msg"], error


def test_uploads_over_the_servers_byte_and_pixel_limits_get_422(runs_dir, tmp_path):
    limits = ServerLimits(max_upload_bytes=1000, max_upload_pixels=64)
    with TestClient(_app(runs_dir, tmp_path, models=(SKETCH_MODEL,), limits=limits)) as c:
        info = {i["name"]: i for i in c.get("/api/v1/models").json()["models"][0]["inputs"]}
        assert (info["image"]["max_bytes"], info["image"]["max_pixels"]) == (1000, 64)
        cases = [({"image": b64(png(noise(40)))}, "image", "over this server's limit of 1000 bytes (--max-upload-bytes)"),
                 ({"sketch": b64(bytes(5000))}, "sketch", "the sketch is about 5000 bytes, over this server's limit of 1000"),
                 ({"image": GOOD, "mask": b64(png(noise(9)))}, "mask", "the mask: too large: 9x9 pixels is over the limit of 64")]
        for body, field, message in cases:
            r = c.post("/api/v1/jobs", json={"model": SKETCH_MODEL, **body})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.json()
            assert message in r.json()["detail"][0]["msg"], r.json()
        assert c.post("/api/v1/jobs", json={"model": SKETCH_MODEL, "image": GOOD, "options": {"steps": 1}}).status_code == 202


# --- what the server keeps ----------------------------------------------------------------------------
def test_a_finished_or_cancelled_job_keeps_nothing_its_work_held():
    queue = JobQueue(workers=1, max_queue=4)
    held = bytearray(10)
    done = queue.submit("m", 1, lambda progress, _held=held: "result")
    waiting = queue.submit("m", 1, lambda progress, _held=held: "never")
    queue.cancel(waiting.id)  # cancelled before a worker took it
    queue.start()
    try:
        deadline = time.monotonic() + 10
        while not done.is_final and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop()
    assert (done.status, done.result, waiting.status) == ("done", "result", "cancelled")
    assert done.work is None and waiting.work is None


def test_an_edit_input_given_for_several_images_is_read_once(sketch_g, monkeypatch):
    import pixelforge.edit as edit

    calls = []
    real = edit.read_input
    monkeypatch.setattr(edit, "read_input", lambda item, what: calls.append(what) or real(item, what))
    image, mask = png(noise(8)), png(Image.new("L", (8, 8), 255))
    out = sketch_g.edit([image] * 3, mask=mask, strength=0.5, steps=1)
    assert len(out) == 3 and sorted(calls) == ["image", "mask"]
    assert len({im.info["pixelforge"]["seed"] for im in out}) == 3


def test_generator_check_methods_say_what_a_model_takes(runs_dir):
    g = pixelforge.load(GAN_MODEL, runs_dir=runs_dir, device="cpu")
    with pytest.raises(ValueError, match=r"^gan8 takes no sketch \(it was not trained with --condition edges\)"):
        g.check_sketch()
    with pytest.raises(ValueError, match="^gan models cannot edit images$"):
        g.check_edit()


# --- upscaling: a served upscaler's job takes the small image as image -------------------------------
UPSCALER = "mnist-upscale"  # bundled: 14x14 -> 28x28 digits


@pytest.fixture(scope="module")
def upscale_client(tmp_path_factory):
    app = create_app([UPSCALER, LABEL_MODEL], device="cpu", allowed_hosts=["testserver"],
                     db_path=tmp_path_factory.mktemp("db") / "ratings.sqlite")
    with TestClient(app) as c:
        yield c


def test_an_upscalers_job_upscales_its_image_to_the_models_size_and_records_the_inputs_hash(upscale_client):
    listed = {m["name"]: m for m in upscale_client.get("/api/v1/models").json()["models"]}
    takes = {i["name"]: i for i in listed[UPSCALER]["inputs"]}
    assert (listed[UPSCALER]["upscale"], listed[LABEL_MODEL]["upscale"]) == (2, None)  # the page lists it as an upscaler
    assert listed[UPSCALER]["edit_options"] == []  # no strength: its job upscales, it does not edit
    assert (takes["image"]["supported"], takes["mask"]["supported"]) == (True, False)
    assert "to upscale 2x: 14x14" in takes["image"]["note"]
    small = noise(14, seed=4)
    job = run_job(upscale_client, {"model": UPSCALER, "seed": 2, "image": b64(png(small)), "options": {"steps": 2}})
    pixels, s, _ = fetch(upscale_client, job["images"][0])
    assert pixels.shape == (28, 28)
    assert (s["scale"], s["input_sha256"], s["seed"]) == (2, pixels_sha256(small), 2)
    assert s["input"] == f"input-{s['input_sha256'][:16]}.png"  # the copy `sample --from` looks for beside the PNG
    (same,) = upscale_client.app.state.generators[UPSCALER].upscale(small, seed=2, steps=2)
    assert np.array_equal(pixels, np.asarray(same))  # what `pixelforge upscale` makes of that image


@pytest.mark.parametrize("body, field", [({}, "image"), ({"image": "IMAGE", "mask": "IMAGE"}, "mask")])
def test_an_upscalers_job_without_an_image_or_with_a_mask_is_a_422_naming_the_field(upscale_client, body, field):
    data = b64(png(noise(14)))
    r = upscale_client.post("/api/v1/jobs", json={"model": UPSCALER, **{k: data for k in body}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.json()
    assert f"{UPSCALER} is an upscaler: send the small image to upscale as image" in r.json()["detail"][0]["msg"]


def _poll(client, r, timeout: float = 120.0) -> dict:
    assert r.status_code == 202, r.json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(r.json()["url"]).json()
        if job["status"] in ("done", "failed", "cancelled"):
            assert job["status"] == "done", job
            return job
        time.sleep(0.05)
    raise AssertionError("job never finished")


def test_a_multipart_job_with_its_files_as_parts_draws_what_the_base64_job_draws(client):
    """POST /jobs/upload: the job's JSON in the part `job`, the files as parts; the same images and settings
    as the same job sent to /jobs with the files in base64, for a sketch and for an edit with a mask."""
    import json as _json

    cases = [({"model": SKETCH_MODEL, "n": 2, "seed": 5, "options": {"steps": 2}}, {"sketch": png(DRAWING)}),
             ({"model": SKETCH_MODEL, "n": 1, "seed": 3, "options": {"steps": 2, "strength": 0.7}},
              {"image": png(noise(8)), "mask": png(Image.new("L", (8, 8), 255))})]
    for body, files in cases:
        up = _poll(client, client.post("/api/v1/jobs/upload", data={"job": _json.dumps(body)},
                                       files={k: (f"{k}.png", v, "image/png") for k, v in files.items()}))
        ref = run_job(client, {**body, **{k: b64(v) for k, v in files.items()}})
        assert up["settings"] == ref["settings"]
        for a, b in zip(up["images"], ref["images"]):
            assert np.array_equal(fetch(client, a)[0], fetch(client, b)[0])


@pytest.mark.parametrize("make, loc, words", [
    (lambda: {"data": {"job": '{"model": "edges"}'}, "files": {"sketch": ("s.png", b"", "image/png")}},
     ["body", "sketch"], "zero-byte"),
    (lambda: {"data": {"job": '{"model": "edges"}'}, "files": {"sketch": ("s.png", b"not an image at all", "image/png")}},
     ["body", "sketch"], ""),
    (lambda: {"data": {"job": '{"model": "edges"}'}, "files": {"photo": ("s.png", png(DRAWING), "image/png")}},
     ["body", "photo"], "unknown part"),
    (lambda: {"files": {"sketch": ("s.png", png(DRAWING), "image/png")}}, ["body", "job"], "must be present"),
    (lambda: {"data": {"job": "{not json"}, "files": {"sketch": ("s.png", png(DRAWING), "image/png")}},
     ["body", "job"], "not JSON"),
    (lambda: {"data": {"job": '{"model": "edges", "sketch": "' + b64(png(DRAWING)) + '"}'},
              "files": {"sketch": ("s.png", png(DRAWING), "image/png")}}, ["body", "sketch"], "both"),
    (lambda: {"data": {"job": '{"model": "edges", "n": 0}'}, "files": {"sketch": ("s.png", png(DRAWING), "image/png")}},
     ["body", "n"], ""),
])
def test_a_bad_multipart_job_is_a_422_naming_the_part(client, make, loc, words):
    r = client.post("/api/v1/jobs/upload", **make())
    assert r.status_code == 422, r.text
    (err,) = [e for e in r.json()["detail"] if e["loc"][:len(loc)] == loc]
    assert words.lower() in err["msg"].lower()


def test_a_json_body_sent_to_the_upload_route_is_a_422_saying_what_to_send(client):
    r = client.post("/api/v1/jobs/upload", json={"model": SKETCH_MODEL})
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"][0]["msg"]
