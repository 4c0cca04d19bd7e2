"""The server's bounds and hardening over real HTTP: connections, event streams, idle and slow clients,
allowed host names, security headers, API docs, favicon, Retry-After from the queue, model names.

Servers listen on loopback only (127.0.0.x; a client's address is its identity, so 127.0.0.2 and .3 act
as other clients), on a free port, and stop at the end of each test; every wait is bounded."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402

from pixelforge import api  # noqa: E402
from pixelforge.serve import app as app_module  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402
from pixelforge.serve.limits import ServerLimits, host_names, uvicorn_options  # noqa: E402
from pixelforge.train.runs import BUNDLED_MODELS_DIR  # noqa: E402
from loopback import serve_in_thread  # noqa: E402

MODEL = "mnist-diffusion"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def bundled(runs_dir):
    return api.load(MODEL, device="cpu", runs_dir=runs_dir)


@pytest.fixture
def make_app(bundled, runs_dir, tmp_path, monkeypatch):
    """make_app(models, **create_app kwargs); the bundled model's jobs report 1% after 0.5 s, then run
    until cancelled (at most 20 s)."""
    monkeypatch.setattr(app_module, "load", lambda name, **kw: bundled if name == MODEL else api.load(name, **kw))

    def generate(n, *, labels, seed, callback, **options):
        time.sleep(0.5)
        for _ in range(200):
            callback(0.01 * n, n)  # where a cancel (or the server stopping) ends the job
            time.sleep(0.1)
        return []

    monkeypatch.setattr(bundled, "generate", generate)

    def make(models=(MODEL,), **kwargs):
        kwargs.setdefault("db_path", tmp_path / "ratings.sqlite")
        kwargs.setdefault("runs_dir", runs_dir)
        kwargs.setdefault("device", "cpu")
        return create_app(list(models), **kwargs)

    return make


@contextlib.contextmanager
def serving(app, limits: ServerLimits):
    """A uvicorn server on 127.0.0.1 and a free port with `limits`, in a thread; yields the port."""
    with serve_in_thread(app, **uvicorn_options(limits)) as port:
        yield port


def client_from(ip: str, port: int) -> httpx.Client:
    """An HTTP client connecting from loopback address `ip` (another client, as the server sees it)."""
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=httpx.HTTPTransport(local_address=ip), timeout=10)


def raw_socket(ip: str, port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ip, 0))
    return s


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def running_job(client) -> str:
    job_id = client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"]
    wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}").json()["progress"] > 0)
    return job_id


# --- connections and streams ------------------------------------------------------------------------
def test_event_streams_over_the_limit_get_429_per_client_and_in_total(make_app):
    limits = ServerLimits(max_streams=3, max_streams_per_client=2)
    with serving(make_app(limits=limits), limits) as port, contextlib.ExitStack() as open_streams:
        a, b, c = (open_streams.enter_context(client_from(ip, port)) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
        events = f"/api/v1/jobs/{running_job(a)}/events"

        def stream(client):
            return open_streams.enter_context(client.stream("GET", events))

        assert [stream(a).status_code, stream(a).status_code] == [200, 200]
        over = a.get(events)  # a third of one client
        assert over.status_code == 429 and "limit of 2 event streams" in over.json()["detail"]
        first_of_b = stream(b)
        assert first_of_b.status_code == 200
        over = c.get(events)  # a fourth in all
        assert over.status_code == 429 and "limit of 3 event streams" in over.json()["detail"]
        assert int(over.headers["retry-after"]) >= 1
        first_of_b.close()  # a closed stream frees its place
        deadline = time.monotonic() + 10
        while (status := stream(c).status_code) == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200


def test_connections_over_the_limit_are_answered_503_in_total_and_429_per_client(make_app):
    limits = ServerLimits(max_connections=4, max_connections_per_client=2, idle_timeout_s=30)
    with serving(make_app(limits=limits), limits) as port:
        held = [raw_socket("127.0.0.1", port) for _ in range(2)]
        third = raw_socket("127.0.0.1", port)
        assert third.recv(4096).startswith(b"HTTP/1.1 429 ")  # answered without waiting for a request
        third.close()
        held += [raw_socket("127.0.0.2", port) for _ in range(2)]
        with client_from("127.0.0.3", port) as other:
            r = other.get("/api/v1/health")  # a fifth connection, with a request: the answer reaches it
            assert r.status_code == 503 and "limit of 4 connections" in r.json()["detail"]
            for s in held:
                s.close()
            deadline = time.monotonic() + 10
            while (status := other.get("/api/v1/health").status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status == 200


def test_silent_and_slow_clients_are_dropped_after_the_idle_timeout(make_app):
    limits = ServerLimits(idle_timeout_s=1)
    with serving(make_app(limits=limits), limits) as port:
        silent = [raw_socket("127.0.0.1", port) for _ in range(3)]  # connect, never send a byte
        slow_head = raw_socket("127.0.0.1", port)
        slow_head.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the head
        slow_body = raw_socket("127.0.0.1", port)
        slow_body.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 20\r\n\r\n{\"model\"")
        t0 = time.monotonic()
        for s in [*silent, slow_head]:
            assert s.recv(4096) == b""  # closed by the server (a socket timeout of 10 s would raise instead)
        assert slow_body.recv(4096).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - t0 < 5
        for s in [*silent, slow_head, slow_body]:
            s.close()


def test_an_event_stream_ends_after_its_lifetime(make_app):
    limits = ServerLimits(stream_max_s=1)
    with TestClient(make_app(limits=limits, allowed_hosts=["testserver"])) as client:
        job_id = running_job(client)
        t0 = time.monotonic()
        text = client.get(f"/api/v1/jobs/{job_id}/events").text  # the job is still running
        assert time.monotonic() - t0 < 5 and "event: progress" in text


def test_limits_are_checked_with_the_option_named():
    with pytest.raises(ValueError, match=r"idle_timeout_s \(--idle-timeout\) must be a finite number of at least 1"):
        ServerLimits(idle_timeout_s=0)
    with pytest.raises(ValueError, match=r"max_streams_per_client .* must not exceed .*max_streams \(--max-streams\) \(2\)"):
        ServerLimits(max_streams=2, max_streams_per_client=3)


# --- host names and headers --------------------------------------------------------------------------
def test_only_the_bound_host_names_are_answered(make_app):
    limits = ServerLimits()
    app = make_app(limits=limits, allowed_hosts=host_names("127.0.0.1", ["pixelforge.lan"]))
    with serving(app, limits) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", f"[::1]:{port}", "pixelforge.lan"):
            assert c.get("/api/v1/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example"):
            r = c.get("/api/v1/health", headers={"Host": host})
            assert r.status_code == 400 and "--allowed-host" in r.json()["detail"], host
            assert r.headers["x-content-type-options"] == "nosniff"


def test_host_names_follow_the_bound_address_and_refuse_a_port():
    assert host_names("10.0.0.5") == ["localhost", "127.0.0.1", "::1", "10.0.0.5"]
    assert socket.gethostname().lower() in host_names("0.0.0.0")
    assert host_names("127.0.0.1", ["[fd00::1]", "Photos.Lan"])[-2:] == ["fd00::1", "photos.lan"]
    with pytest.raises(ValueError, match="--allowed-host takes a host name .* without a port"):
        host_names("127.0.0.1", ["evil.example:80"])


def test_the_page_carries_csp_nosniff_and_frame_ancestors_and_needs_no_inline_script(make_app):
    with TestClient(make_app(allowed_hosts=["testserver"])) as client:
        page = client.get("/")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "cdn" not in csp
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
        # the CSP allows no inline script: the page must hold none (no <script> body, no on...= handler)
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text) and not re.search(r"\son[a-z]+\s*=", page.text)
        assert client.get("/api/v1/health").headers["x-content-type-options"] == "nosniff"


def test_api_docs_are_off_unless_asked_and_then_may_load_their_cdn_script(make_app):
    with TestClient(make_app(allowed_hosts=["testserver"])) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 200
    with TestClient(make_app(allowed_hosts=["testserver"], api_docs=True)) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200 and "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]


def test_favicon_is_served(make_app):
    with TestClient(make_app(allowed_hosts=["testserver"])) as client:
        r = client.get("/favicon.ico")
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content


# --- Retry-After ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout_s, low, high", [(300.0, 40, 300), (20.0, 10, 20)])
def test_retry_after_of_a_full_queue_is_the_running_jobs_time_left(make_app, timeout_s, low, high):
    # the running job took >= 0.5 s for its first 1%: ~50 s more, unless its time limit comes first
    with TestClient(make_app(allowed_hosts=["testserver"], max_queue=1, job_timeout_s=timeout_s)) as client:
        running_job(client)
        assert client.post("/api/v1/jobs", json={"model": MODEL}).status_code == 202
        r = client.post("/api/v1/jobs", json={"model": MODEL})
        assert r.status_code == 429
        assert low <= int(r.headers["retry-after"]) <= high


# --- model names ---------------------------------------------------------------------------------------
@pytest.fixture
def photos(runs_dir):
    run = runs_dir / "photos"
    shutil.copytree(BUNDLED_MODELS_DIR / MODEL, run, dirs_exist_ok=True)
    return run


@pytest.mark.parametrize("given", ["photos", "path"])
def test_a_run_is_served_by_its_plain_name_and_its_path_is_accepted_too(make_app, photos, given):
    with TestClient(make_app(models=["photos" if given == "photos" else str(photos)], allowed_hosts=["testserver"])) as client:
        assert [m["name"] for m in client.get("/api/v1/models").json()["models"]] == ["photos"]
        for name in ("photos", str(photos)):
            r = client.post("/api/v1/jobs", json={"model": name, "options": {"steps": 1}})
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            while (job := client.get(r.json()["url"]).json())["status"] not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (job["status"], job["model"]) == ("done", "photos")
        r = client.post("/api/v1/jobs", json={"model": "runs/nope"})
        assert r.status_code == 422 and "valid models: photos" in r.json()["detail"][0]["msg"]
