"""The web page in a real browser against a real server: generate with live progress, then rate a pair."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A runs folder holding "st", a tiny text-conditioned run (skipped without the text extra)."""
    from test_serve_text import train_text_run

    return train_text_run(tmp_path_factory)


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
