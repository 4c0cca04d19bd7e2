"""The server's post-processing with a colour reference sent as an upload: `post: {"color": "match"}` and the picture
as `color_reference` (base64 or a data: URL, decoded and limited as every upload is); the match is applied, the
reference is hashed in each image's settings and never kept, every misuse is a 422 naming the field, and
`sample --from` on such an image says what it lacks."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("skimage", reason="the post extra is not installed (scripts/setup.sh installs it)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from pixelforge import post as P  # noqa: E402
from pixelforge.cli import main  # noqa: E402
from pixelforge.images import read_settings  # noqa: E402
from pixelforge.post import PostSettings  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402
from pixelforge.serve.limits import ServerLimits  # noqa: E402

from serve_jobs import b64, chunk_bytes, encoded, run_job  # noqa: E402
from test_edit import _untrained_run  # noqa: E402

MODEL = "rgb16"  # an untrained 16x16 colour diffusion model: its colours are the sampler's, far from the reference's
STEPS = 2


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    _untrained_run(runs / MODEL, "diffusion", {"image_size": 16, "channels": 3, "base_channels": 8, "channel_mult": (1,),
                                               "num_res_blocks": 1}, "digits", 3)
    return runs


def _app(runs_dir, tmp_path, **kwargs):
    return create_app([MODEL], runs_dir=runs_dir, device="cpu", allowed_hosts=["testserver"],
                      db_path=tmp_path / "ratings.sqlite", **kwargs)


@pytest.fixture(scope="module")
def client(runs_dir, tmp_path_factory):
    with TestClient(_app(runs_dir, tmp_path_factory.mktemp("db"))) as c:
        yield c


def reddish(side: int = 24) -> Image.Image:
    """A reference far from grey: red high, green low, blue middling, each channel spread over a range."""
    rng = np.random.default_rng(1)
    return Image.fromarray(np.stack([rng.integers(150, 256, (side, side)), rng.integers(0, 80, (side, side)),
                                     rng.integers(60, 140, (side, side))], -1).astype(np.uint8), "RGB")


REFERENCE = encoded(reddish())


def fetch(client, url: str) -> tuple[np.ndarray, dict, bytes]:
    content = client.get(url).content
    return np.asarray(Image.open(io.BytesIO(content))), read_settings(io.BytesIO(content)), content


def channel_means(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).astype(np.float64).mean(0)  # (3,)


@pytest.mark.parametrize("send", [b64, lambda data: "data:image/png;base64," + b64(data)])
def test_a_job_with_an_uploaded_reference_moves_its_colours_to_the_references(client, send):
    body = {"model": MODEL, "n": 2, "seed": 4, "options": {"steps": STEPS}}
    plain = run_job(client, body)
    matched = run_job(client, {**body, "post": {"color": "match"}, "color_reference": send(REFERENCE)})
    target = channel_means(np.asarray(reddish()))
    digest = hashlib.sha256(REFERENCE).hexdigest()
    for before_url, after_url in zip(plain["images"], matched["images"]):
        before, _, _ = fetch(client, before_url)
        after, s, content = fetch(client, after_url)
        far, near = np.linalg.norm(channel_means(before) - target), np.linalg.norm(channel_means(after) - target)
        assert far > 60 and near < 0.5 * far, (channel_means(before), channel_means(after), target)
        # the reference is hashed in the settings (the hash its file gets from `--color match:FILE`), not kept
        assert s["post"] == {"color": "match", "color_reference_sha256": digest, "order": ["color"]}
        # nor is the picture in the PNG or its C2PA manifest (about 3.7 KB): the PNG less the manifest is smaller
        assert set(Image.open(io.BytesIO(content)).text) == {"pixelforge"}
        assert len(content) - chunk_bytes(content, b"caBX") < len(REFERENCE) and REFERENCE not in content
    assert [s["post"] for s in matched["settings"]] == [s["post"] for s in (read_settings(io.BytesIO(
        client.get(u).content)) for u in matched["images"])]


def test_the_servers_match_is_the_apis_and_a_jpeg_reference_is_taken_too(client):
    g = client.app.state.generators[MODEL]
    jpeg = encoded(reddish(), "JPEG")
    job = run_job(client, {"model": MODEL, "seed": 9, "options": {"steps": STEPS}, "post": {"color": "match",
                                                                                             "sharpen": 0.5},
                           "color_reference": b64(jpeg)})
    pixels, s, _ = fetch(client, job["images"][0])
    (same,) = g.generate(1, seeds=[9], steps=STEPS, post=PostSettings(color="match", sharpen=0.5, color_reference=jpeg))
    assert np.array_equal(pixels, np.asarray(same))
    assert s["post"]["color_reference_sha256"] == hashlib.sha256(jpeg).hexdigest()


BAD = [
    ({"post": {"color": "match"}}, ["body", "color_reference"], "color 'match' needs its reference picture in "
                                                                "color_reference"),
    ({"color_reference": b64(REFERENCE)}, ["body", "color_reference"], "but color is None"),
    ({"post": {"color": "auto"}, "color_reference": b64(REFERENCE)}, ["body", "color_reference"],
     "but color is 'auto'"),
    ({"post": {"upscale": 2}, "color_reference": b64(REFERENCE)}, ["body", "color_reference"], "but color is None"),
    ({"post": {"color": "match:/etc/hosts"}, "color_reference": b64(REFERENCE)}, ["body", "post", "color"],
     "color match:REF reads a reference file on the server"),
    ({"post": {"color": "match"}, "color_reference": "not base64!"}, ["body", "color_reference"],
     "the color_reference is not valid base64"),
    ({"post": {"color": "match"}, "color_reference": b64(encoded(reddish(), "GIF"))}, ["body", "color_reference"],
     "the color_reference: not an image or unsupported format (send a PNG or JPEG file)"),
    ({"post": {"color": "match"}, "color_reference": b64(REFERENCE[:300])}, ["body", "color_reference"],
     "the color_reference: truncated image"),
    ({"post": {"color": "match"}, "color_reference": "data:image/gif;base64," + b64(REFERENCE)},
     ["body", "color_reference"], "a data: URL of another kind"),
    ({"post": {"color": "match"}, "color_reference": 5}, ["body", "color_reference"], "valid string"),
    ({"post": {"color": "match", "color_reference": b64(REFERENCE)}}, ["body", "post", "color_reference"],
     "color_reference is a field of the job beside post, not an option inside it"),
]


@pytest.mark.parametrize("body, where, message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_a_reference_without_match_or_match_without_one_or_a_bad_one_gets_422_naming_the_field(
        client, monkeypatch, body, where, message):
    def no_queue(*args, **kwargs):
        raise AssertionError("a bad job was queued")

    monkeypatch.setattr(client.app.state.queue, "submit", no_queue)
    r = client.post("/api/v1/jobs", json={"model": MODEL, "options": {"steps": 1}, **body})
    assert r.status_code == 422, r.json()
    (error,) = r.json()["detail"]
    assert error["loc"] == where and message in error["msg"], error


def test_a_reference_over_the_servers_byte_or_pixel_limit_gets_422(runs_dir, tmp_path):
    small = encoded(reddish(8))  # 64 pixels
    limits = ServerLimits(max_upload_bytes=len(small) + 10, max_upload_pixels=64)
    with TestClient(_app(runs_dir, tmp_path, limits=limits)) as c:
        post = {"post": {"color": "match"}, "options": {"steps": 1}, "model": MODEL}
        cases = [(encoded(reddish(24)), f"over this server's limit of {len(small) + 10} bytes (--max-upload-bytes)"),
                 (encoded(Image.new("RGB", (9, 9), (200, 0, 0))), "too large: 9x9 pixels is over the limit of 64 "
                                                                  "(--max-upload-pixels)")]
        for data, message in cases:
            r = c.post("/api/v1/jobs", json={**post, "color_reference": b64(data)})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "color_reference"], r.json()
            assert message in r.json()["detail"][0]["msg"], r.json()
        assert c.post("/api/v1/jobs", json={**post, "color_reference": b64(small)}).status_code == 202
        # GET /models tells the page these limits, and the options' ranges as pixelforge.post declares them
        listed = c.get("/api/v1/models").json()["post"]
        assert (listed["reference_max_bytes"], listed["reference_max_pixels"]) == (len(small) + 10, 64)
        options = {o["name"]: o for o in listed["options"]}
        assert (options["upscale"]["min"], options["upscale"]["max"]) == P.UPSCALE_RANGE
        assert (options["sharpen"]["min"], options["sharpen"]["max"], options["sharpen"]["default"]) == (
            *P.SHARPEN_RANGE, P.SHARPEN_DEFAULT)
        assert options["color"]["choices"] == ["auto", "match"] and options["denoise"]["choices"] == ["nlm", "bilateral"]


def test_sample_from_an_image_matched_to_an_uploaded_reference_exits_2_naming_the_missing_reference(
        client, runs_dir, tmp_path, capsys):
    job = run_job(client, {"model": MODEL, "seed": 2, "options": {"steps": STEPS}, "post": {"color": "match"},
                           "color_reference": b64(REFERENCE)})
    png = tmp_path / "matched.png"
    png.write_bytes(client.get(job["images"][0]).content)
    out = tmp_path / "again"
    code = main(["sample", "--from", str(png), "-o", str(out), "--runs-dir", str(runs_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"color_reference, SHA-256 {hashlib.sha256(REFERENCE).hexdigest()}" in err
    assert "kept neither in the image nor on the server" in err and "--color match:FILE" in err
    assert not out.exists()
    # the same image without the match regenerates: the record is what stops it, not the model or seed
    plain = run_job(client, {"model": MODEL, "seed": 2, "options": {"steps": STEPS}})
    (tmp_path / "plain.png").write_bytes(client.get(plain["images"][0]).content)
    assert main(["sample", "--from", str(tmp_path / "plain.png"), "-o", str(out), "--runs-dir", str(runs_dir),
                 "--device", "cpu"]) == 0
