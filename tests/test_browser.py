"""The web page in a real browser against a real server: generate with live progress, then rate a pair."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

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


def _serve(tmp_path, **kwargs):
    """A uvicorn server on a free loopback port in a thread; yields (base URL, app)."""
    uvicorn = pytest.importorskip("uvicorn")
    from pixelforge.serve import create_app

    app = create_app(["mnist-diffusion"], runs_dir=tmp_path, db_path=tmp_path / "ratings.sqlite", device="cpu", **kwargs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        srv.should_exit = True
        thread.join(10)


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
    page.wait_for_function("document.querySelectorAll('#gallery img').length === 2", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 28)")
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
    page.wait_for_function("!document.querySelector('#pick-a').disabled", timeout=30_000)
    assert page.evaluate("document.querySelector('#image-a').naturalWidth") == 28
    page.click("#pick-a")
    page.wait_for_function("document.querySelector('#scores tbody').textContent.includes('1016.0')", timeout=10_000)
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
    page.wait_for_function("document.querySelector('#status').textContent.includes('API key')")
    page.fill("#api-key", "page-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#label option[value='3']", state="attached")
    page.fill("#n", "1")
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gallery img')?.naturalWidth === 28", timeout=30_000)
