"""The web page in a real browser against a real server: generate with live progress, then rate a pair."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from loopback import serve_in_thread

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--disable-component-update", "--disable-sync"]
# record every value given to a <progress> element, since a fast job may pass through them between two polls
RECORD_PROGRESS = """
const desc = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, "value");
window.progressSeen = [];
Object.defineProperty(HTMLProgressElement.prototype, "value", {
  get() { return desc.get.call(this); },
  set(v) { window.progressSeen.push([this.id, Number(v)]); desc.set.call(this, v); },
});
"""


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is truthy. (page.wait_for_function would build its predicate
    with eval() inside the page, which the page's CSP refuses: no 'unsafe-eval'.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout:g} s: {expression}")
        page.wait_for_timeout(50)


def _serve(tmp_path, models=("mnist-diffusion",), runs_dir=None, **kwargs):
    """A uvicorn server on a free loopback port in a thread; yields (base URL, app)."""
    from pixelforge.serve import create_app

    app = create_app(list(models), runs_dir=runs_dir or tmp_path, db_path=tmp_path / "ratings.sqlite", device="cpu",
                     **kwargs)
    with serve_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}", app


@pytest.fixture
def server(tmp_path):
    yield from _serve(tmp_path)


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.add_init_script(RECORD_PROGRESS)
        yield pg
        browser.close()
        assert not errors, errors


def test_generate_shows_progress_and_images_then_a_rating_is_recorded(server, page):
    url, app = server
    page.goto(url + "/")
    page.wait_for_selector("#label option[value='3']", state="attached")
    assert page.is_hidden("#key-box")  # no key on this server
    page.select_option("#label", "3")
    page.fill("#n", "2")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelectorAll('#gallery img').length === 2", timeout=30)
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 28)")
    seen = [v for element, v in page.evaluate("window.progressSeen") if element == "progress"]
    assert seen[0] == 0 and seen[-1] == 1 and seen == sorted(seen)
    assert "Done: 2 images" in page.text_content("#status")
    assert page.get_attribute("#gallery a", "download") == "seed000000-label3.png"

    page.click("#compare-tab")
    assert page.is_visible("#compare-panel") and page.is_hidden("#generate-panel")
    page.select_option("#compare-label", "7")
    page.fill("#a-steps", "2")
    page.fill("#b-steps", "3")
    page.click("#new-pair")
    wait_until(page, "!document.querySelector('#pick-a').disabled", timeout=30)
    assert page.evaluate("document.querySelector('#image-a').naturalWidth") == 28
    page.click("#pick-a")
    wait_until(page, "document.querySelector('#scores tbody').textContent.includes('1016.0')", timeout=10)
    assert "Recorded left" in page.text_content("#compare-status")
    assert app.state.ratings.count() == 1
    (row,) = app.state.ratings.rows()
    assert row["winner"] == "a" and row["a"]["settings"]["label"] == row["b"]["settings"]["label"] == 7
    assert {row["a"]["settings"]["steps"], row["b"]["settings"]["steps"]} == {2, 3}


@pytest.fixture
def keyed_server(tmp_path):
    yield from _serve(tmp_path, api_key="page-key")


def test_a_server_with_a_key_asks_for_it_and_then_works(keyed_server, page):
    url, _ = keyed_server
    page.goto(url + "/")
    page.wait_for_selector("#key-box", state="visible")
    wait_until(page, "document.querySelector('#status').textContent.includes('API key')")
    page.fill("#api-key", "page-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#label option[value='3']", state="attached")
    page.fill("#n", "1")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img')?.naturalWidth === 28", timeout=30)


@pytest.fixture
def text_server(tmp_path, text_runs):
    yield from _serve(tmp_path, models=("mnist-diffusion", "st"), runs_dir=text_runs)


def _gallery_prompts(page) -> list[list[str]]:
    """[caption, title] of the prompt under each image of the gallery."""
    return page.evaluate("[...document.querySelectorAll('#gallery .tile')].map(t => "
                         "[t.querySelector('.prompt')?.textContent ?? '', t.querySelector('.prompt')?.title ?? ''])")


def test_a_prompt_typed_for_a_text_model_is_shown_under_its_images_and_used_on_both_compare_sides(text_server, page):
    url, app = text_server
    page.goto(url + "/")
    page.wait_for_selector("#model option[value='st']", state="attached")
    assert page.is_hidden("#prompt-box")  # the first model, mnist-diffusion, takes labels and no text
    page.select_option("#model", "st")
    assert page.is_visible("#prompt") and page.is_visible("#negative-prompt")
    assert page.get_attribute("#prompt", "maxlength") == "1000" and page.is_disabled("#label")
    prompt = "a large blue star at the top right"
    page.fill("#prompt", prompt)
    page.fill("#n", "2")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelectorAll('#gallery img').length === 2", timeout=60)
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 16)")
    assert _gallery_prompts(page) == [[prompt, prompt]] * 2

    long = "a small red circle at the bottom left, a green square in the middle and a blue star above it"
    page.fill("#prompt", long)
    page.fill("#n", "1")
    page.click("#generate")
    wait_until(page, f"document.querySelector('#gallery .prompt')?.title === {long!r}", timeout=60)
    ((caption, title),) = _gallery_prompts(page)
    assert caption.endswith("…") and long.startswith(caption[:-1]) and len(caption) < len(long) and title == long

    page.select_option("#model", "mnist-diffusion")
    assert page.is_hidden("#prompt-box")

    page.click("#compare-tab")
    assert page.is_visible("#compare-prompt")  # set-up B is the text model
    page.select_option("#model-a", "st")
    page.fill("#compare-prompt", prompt)
    page.fill("#a-steps", "2")
    page.fill("#b-steps", "3")
    page.click("#new-pair")
    wait_until(page, "!document.querySelector('#pick-a').disabled", timeout=60)
    assert prompt in page.text_content("#compare-status")
    page.click("#pick-b")
    wait_until(page, "document.querySelector('#compare-status').textContent.includes('Recorded')", timeout=10)
    (row,) = app.state.ratings.rows()
    assert row["a"]["settings"]["prompt"] == row["b"]["settings"]["prompt"] == prompt
    assert {row["a"]["settings"]["steps"], row["b"]["settings"]["steps"]} == {2, 3}


@pytest.fixture(scope="module")
def sketch_runs(tmp_path_factory):
    """A runs folder holding "edges", a tiny run trained with --condition edges (skipped without the sketch extra)."""
    pytest.importorskip("cv2", reason="the sketch extra is not installed (scripts/setup.sh installs it)")
    from test_serve_inputs import train_sketch_run

    return train_sketch_run(tmp_path_factory)


@pytest.fixture
def sketch_server(tmp_path, sketch_runs):
    from test_serve_inputs import steer_by_the_sketch

    for url, app in _serve(tmp_path, models=("mnist-diffusion", "edges"), runs_dir=sketch_runs):
        steer_by_the_sketch(app)
        yield url, app


def _draw(page, selector: str, points: list[tuple[float, float]]) -> None:
    """One stroke through points given as fractions of the element's width and height, with the mouse."""
    box = page.locator(selector).bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def _data_url_image(url: str):
    import base64
    import io

    from PIL import Image

    assert url.startswith("data:image/png;base64,"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _sent_jobs(page) -> list[dict]:
    """The JSON bodies of the job requests the page sends, recorded as they go."""
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.method == "POST" and r.url.endswith("/api/v1/jobs")
            else None)
    return bodies


def _gallery_settings(page) -> list[dict]:
    return [json.loads(t) for t in page.evaluate("[...document.querySelectorAll('#gallery img')].map(i => i.title)")]


def test_a_sketch_drawn_on_the_canvas_steers_the_images_and_clear_sends_none(sketch_server, page):
    import numpy as np
    from pixelforge.condition.edges import read_sketch

    url, app = sketch_server
    sent = _sent_jobs(page)
    page.goto(url + "/")
    page.wait_for_selector("#model option[value='edges']", state="attached")
    assert page.is_hidden("#sketch-box")  # the first model, mnist-diffusion, takes labels and no sketch
    page.select_option("#model", "edges")
    assert page.is_visible("#sketch-canvas") and page.is_disabled("#label")
    ring = [(0.5 + 0.3 * np.cos(t), 0.5 + 0.35 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 24)]
    _draw(page, "#sketch-canvas", ring)
    page.fill("#n", "2")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelectorAll('#gallery img').length === 2", timeout=60)
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 8)")
    drawing = _data_url_image(sent[-1]["sketch"]).convert("L")
    ink = np.asarray(drawing) < 128
    assert drawing.size == (256, 256) and 0.01 < ink.mean() < 0.2 and not ink[128, 128]  # black strokes on white
    digest = read_sketch(drawing)[1]
    assert [s["sketch_sha256"] for s in _gallery_settings(page)] == [digest, digest]
    drawn = page.evaluate("document.querySelector('#gallery img').src")

    page.click("#sketch-clear")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img') && "
               f"document.querySelector('#gallery img').src !== {drawn!r} && document.querySelector('#gallery img').complete",
               timeout=60)
    assert "sketch" not in sent[-1] and all("sketch_sha256" not in s for s in _gallery_settings(page))


def test_an_uploaded_image_is_edited_at_the_slider_strength_within_the_mask_painted_over_it(sketch_server, page, tmp_path):
    import numpy as np
    from PIL import Image

    url, app = sketch_server
    sent = _sent_jobs(page)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), "L")
    photo.save(tmp_path / "photo.png")
    page.goto(url + "/")
    page.wait_for_selector("#model option[value='edges']", state="attached")
    page.select_option("#model", "edges")
    assert page.is_visible("#image-file") and page.is_hidden("#edit-area")
    page.set_input_files("#image-file", str(tmp_path / "photo.png"))
    page.wait_for_selector("#edit-area", state="visible")
    assert (page.get_attribute("#strength", "min"), page.get_attribute("#strength", "max")) == ("0", "1")
    assert page.input_value("#strength") == "0.6"  # the family's declared default
    page.evaluate("const s = document.querySelector('#strength'); s.value = '0.8'; s.dispatchEvent(new Event('input'))")
    assert page.text_content("#strength-value") == "0.80"
    _draw(page, "#mask-canvas", [(0.2, 0.1), (0.2, 0.9)])  # a stroke down the left side
    page.fill("#n", "1")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img')?.naturalWidth === 8", timeout=60)
    body = sent[-1]
    assert body["options"]["strength"] == 0.8 and "sketch" not in body
    mask = np.asarray(_data_url_image(body["mask"]).convert("L"))
    # white where painted (grey only at the stroke's anti-aliased rim), black elsewhere, at the image's size
    assert mask.shape == (64, 64) and (mask[10:54, 12:14] == 255).all() and mask[:, 32:].max() == 0
    sent_image = np.asarray(_data_url_image(body["image"]).convert("L"))
    assert np.array_equal(sent_image, np.asarray(photo))  # sent losslessly, at its own size
    (s,) = _gallery_settings(page)
    assert s["strength"] == 0.8 and s["image_sha256"] and s["mask_sha256"]


def _shown_widths(page) -> list[list[float]]:
    """[natural width, width on the page] of each image of the gallery."""
    return page.evaluate("[...document.querySelectorAll('#gallery img')].map(i => [i.naturalWidth, "
                         "i.getBoundingClientRect().width])")


def test_finishing_upscales_and_sharpens_the_images_which_show_at_their_new_size_and_record_it(server, page):
    url, app = server
    sent = _sent_jobs(page)
    page.goto(url + "/")
    page.wait_for_selector("#post-upscale option[value='8']", state="attached")  # the factors the server declares
    assert page.is_visible("#finishing") and page.is_disabled("#post-sharpen") and page.is_hidden("#post-color-file")
    page.fill("#n", "2")
    page.fill("#steps", "2")
    page.select_option("#post-upscale", "2")
    page.focus("#post-sharpen-on")
    page.keyboard.press("Space")  # the controls work from the keyboard
    assert page.is_checked("#post-sharpen-on") and page.is_enabled("#post-sharpen")
    assert page.input_value("#post-sharpen") == "1"  # the declared default amount
    page.click("#generate")
    wait_until(page, "document.querySelectorAll('#gallery img').length === 2", timeout=30)
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 56)")
    assert sent[-1]["post"] == {"sharpen": 1, "upscale": 2} and "color_reference" not in sent[-1]
    post = {"sharpen": 1.0, "upscale": 2, "order": ["sharpen", "upscale"]}
    assert [s["post"] for s in _gallery_settings(page)] == [post, post]
    assert all(shown >= natural == 56 for natural, shown in _shown_widths(page))
    assert "finished: sharpen, upscale ×2" in page.get_attribute("#gallery img", "alt")

    # an image upscaled past the gallery's smallest tile is not shrunk back into one: it shows at its own size
    page.select_option("#post-upscale", "8")
    page.click("#generate")
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 224)")
    assert all(shown >= natural == 224 for natural, shown in _shown_widths(page)), _shown_widths(page)

    # nothing chosen: the job carries no post
    page.select_option("#post-upscale", "")
    page.uncheck("#post-sharpen-on")
    page.click("#generate")
    wait_until(page, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 28)")
    assert "post" not in sent[-1] and all("post" not in s for s in _gallery_settings(page))


def test_colour_match_sends_the_chosen_reference_and_a_bad_value_shows_the_servers_message_beside_its_control(
        server, page, tmp_path):
    import base64
    import hashlib

    import numpy as np
    from PIL import Image

    url, app = server
    sent = _sent_jobs(page)
    page.goto(url + "/")
    page.wait_for_selector("#post-upscale option[value='2']", state="attached")
    page.fill("#n", "1")
    page.fill("#steps", "2")

    # match with no reference chosen: the server's 422 is shown beside the file picker
    page.select_option("#post-color", "match")
    assert page.is_visible("#post-color-file")
    page.click("#generate")
    page.wait_for_selector("#post-color-file-error", state="visible")
    assert "color 'match' needs its reference picture" in page.text_content("#post-color-file-error")
    assert page.get_attribute("#post-color-file", "aria-invalid") == "true"
    assert page.evaluate("document.querySelector('#post-color-file').nextElementSibling.id") == "post-color-file-error"
    assert page.text_content("#status").startswith("Error: ")

    # a reference chosen: sent as it is (a PNG within the limits), its SHA-256 in the settings, the error gone
    ref = Image.fromarray(np.random.default_rng(3).integers(150, 256, (20, 20), dtype=np.uint8), "L")
    ref.save(tmp_path / "ref.png")
    page.set_input_files("#post-color-file", str(tmp_path / "ref.png"))
    wait_until(page, "document.querySelector('#post-color-name').textContent.includes('ref.png (20×20)')")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img')?.naturalWidth === 28", timeout=30)
    assert page.query_selector("#post-color-file-error") is None
    assert page.get_attribute("#post-color-file", "aria-invalid") is None
    data = (tmp_path / "ref.png").read_bytes()
    assert sent[-1]["post"] == {"color": "match"}
    assert base64.b64decode(sent[-1]["color_reference"].split(",", 1)[1]) == data
    (s,) = _gallery_settings(page)
    assert s["post"] == {"color": "match", "color_reference_sha256": hashlib.sha256(data).hexdigest(), "order": ["color"]}

    # an amount out of range: the server's message beside the amount field, and focus there
    page.select_option("#post-color", "")
    page.check("#post-sharpen-on")
    page.fill("#post-sharpen", "9")
    page.click("#generate")
    page.wait_for_selector("#post-sharpen-error", state="visible")
    assert page.text_content("#post-sharpen-error") == "sharpen must be a number from 0.1 to 5, got 9"
    assert page.evaluate("document.activeElement.id") == "post-sharpen"
    assert page.evaluate("document.querySelector('#post-sharpen').nextElementSibling.id") == "post-sharpen-error"


@pytest.fixture
def upscale_server(tmp_path):
    yield from _serve(tmp_path, models=("mnist-diffusion", "mnist-upscale"))


def test_a_small_image_uploaded_for_a_served_upscaler_comes_back_at_the_models_size(upscale_server, page, tmp_path):
    import hashlib

    import numpy as np
    from PIL import Image

    url, app = upscale_server
    sent = _sent_jobs(page)
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (14, 14), dtype=np.uint8), "L")
    small.save(tmp_path / "small.png")
    page.goto(url + "/")
    page.wait_for_selector("#model option[value='mnist-upscale']", state="attached")
    page.select_option("#model", "mnist-upscale")
    assert page.is_visible("#image-file") and "upscale ×2" in page.text_content("#image-file-label")
    page.set_input_files("#image-file", str(tmp_path / "small.png"))
    page.wait_for_selector("#edit-area", state="visible")
    assert page.is_hidden("#strength-box") and page.is_hidden("#mask-clear")  # an upscaler takes neither
    page.fill("#n", "1")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img')?.naturalWidth === 28", timeout=60)
    body = sent[-1]
    assert body["model"] == "mnist-upscale" and "strength" not in body["options"] and "mask" not in body
    assert np.array_equal(np.asarray(_data_url_image(body["image"]).convert("L")), np.asarray(small))
    (s,) = _gallery_settings(page)
    assert s["scale"] == 2 and s["input_sha256"] == hashlib.sha256(b"L (14, 14)\n" + small.tobytes()).hexdigest()


def test_finishing_upscales_with_a_served_upscaler_picked_instead_of_lanczos(upscale_server, page):
    url, app = upscale_server
    sent = _sent_jobs(page)
    page.goto(url + "/")
    page.wait_for_selector("#post-upscale option[value='2']", state="attached")
    assert page.is_hidden("#post-upscaler-box")  # no factor chosen: no upscaler to pick
    page.select_option("#post-upscale", "4")
    assert page.is_hidden("#post-upscaler-box")  # no served upscaler enlarges 4x: Lanczos alone
    page.select_option("#post-upscale", "2")
    assert page.is_visible("#post-upscaler-box")
    assert page.evaluate("[...document.querySelectorAll('#post-upscaler option')].map(o => o.value)") == ["", "mnist-upscale"]
    page.select_option("#post-upscaler", "mnist-upscale")
    page.fill("#n", "1")
    page.fill("#steps", "2")
    page.click("#generate")
    wait_until(page, "document.querySelector('#gallery img')?.naturalWidth === 56", timeout=60)
    assert sent[-1]["post"] == {"upscale": 2, "upscaler": "mnist-upscale"}
    (s,) = _gallery_settings(page)
    assert s["post"]["upscale"] == 2 and s["post"]["upscaler"]
