"""The HTTP API: every endpoint, every 4xx answer, the job lifecycle, SSE, cancel, ratings and scores."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from pixelforge import api  # noqa: E402
from pixelforge.images import read_settings  # noqa: E402
from pixelforge.serve import app as app_module  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402
from pixelforge.serve.jobs import JobQueue, QueueFull  # noqa: E402
from pixelforge.serve.ratings import RatingsDB, bradley_terry, elo, latest_evaluation, scores  # noqa: E402
from pixelforge.train.runs import BUNDLED_MODELS_DIR  # noqa: E402

MODEL = "mnist-diffusion"
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    # an empty runs folder, so the bundled model is served even where ./runs holds a run of its name
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def bundled(runs_dir):
    return api.load(MODEL, device="cpu", runs_dir=runs_dir)


@pytest.fixture
def make_client(bundled, runs_dir, tmp_path, monkeypatch):
    """make_client(**create_app kwargs) -> a started TestClient over the (once-loaded) bundled model."""
    monkeypatch.setattr(app_module, "load", lambda name, **kw: bundled if name == MODEL else api.load(name, **kw))
    clients = []

    def make(models=(MODEL,), **kwargs):
        kwargs.setdefault("db_path", tmp_path / "ratings.sqlite")
        kwargs.setdefault("runs_dir", runs_dir)
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("allowed_hosts", ["testserver"])  # the host name TestClient sends
        client = TestClient(create_app(list(models), **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def wait_for(client, job_id, statuses=("done", "failed", "cancelled"), timeout=30.0, headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def fake_generate(steps=3, delay=0.0, gate: threading.Event | None = None, log: list | None = None):
    """A stand-in for Generator.generate: reports `steps` progress steps, each after `delay` s (or a gate)."""

    def generate(n, *, labels, seed, callback, **options):
        for i in range(steps):
            if gate is not None:
                gate.wait(10)
            time.sleep(delay)
            if log is not None:
                log.append(i)
            callback(n * (i + 1) / steps, n)
        images = []
        for k in range(n):
            im = Image.new("L", (4, 4), k)
            im.info["pixelforge"] = {"model": MODEL, "seed": seed + k, "label": labels[k], **options}
            images.append(im)
        return images

    return generate


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


# --- health, models, page, schema --------------------------------------------------------------------
def test_health_answers_without_key_and_reports_the_queue(make_client):
    client = make_client(api_key=KEY, max_queue=3, workers=1)
    r = client.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json()["auth_required"] is True
    assert r.json()["queue"] == {"queued": 0, "running": 0, "max_queue": 3, "workers": 1}


def test_models_lists_classes_options_and_inputs(client):
    (m,) = client.get("/api/v1/models").json()["models"]
    assert (m["name"], m["family"], m["image_size"], m["channels"], m["num_classes"]) == (MODEL, "diffusion", 28, 1, 10)
    assert [c["name"] for c in m["classes"]] == [str(i) for i in range(10)]
    opts = {o["name"]: o for o in m["sample_options"]}
    assert opts["steps"]["default"] == 18 and (opts["steps"]["min"], opts["steps"]["max"]) == (1, 200)
    assert "heun" in opts["sampler"]["choices"] and (opts["guidance"]["min"], opts["guidance"]["max"]) == (0, 20)
    inputs = {i["name"]: i["supported"] for i in m["inputs"]}
    assert inputs == {"label": True, "prompt": False, "sketch": False, "image": True, "mask": True,
                      "audio": False}
    edit = {o["name"]: o for o in m["edit_options"]}  # a diffusion model edits: its family's edit options
    assert (edit["strength"]["default"], edit["strength"]["min"], edit["strength"]["max"]) == (0.6, 0, 1)
    assert m["evaluation"] is None  # the bundled model carries no evaluations.jsonl


def test_page_and_openapi_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    for element_id in ("model", "label", "generate", "progress", "gallery", "compare-tab", "pick-a", "pick-b", "scores"):
        assert f'id="{element_id}"' in page.text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/health", "/api/v1/models", "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events",
                 "/api/v1/jobs/{job_id}/images/{index}.png", "/api/v1/ratings", "/api/v1/ratings/scores"):
        assert path in paths


# --- the job lifecycle ----------------------------------------------------------------------------
def test_job_runs_to_done_and_its_png_carries_settings_that_regenerate_it(client, bundled):
    r = client.post("/api/v1/jobs", json={"model": MODEL, "n": 1, "seed": 7, "label": "3", "options": {"steps": 2}})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    assert r.headers["location"] == r.json()["url"]
    job = wait_for(client, r.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0 and job["error"] is None
    (settings,) = job["settings"]
    assert (settings["seed"], settings["label"], settings["steps"], settings["sampler"]) == (7, 3, 2, "heun")
    png = client.get(job["images"][0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert read_settings(io.BytesIO(png.content)) == settings
    (again,) = bundled.generate(1, label=3, seed=7, steps=2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(again))


def test_events_stream_progress_then_one_final_done_event(client, monkeypatch, bundled):
    monkeypatch.setattr(bundled, "generate", fake_generate(steps=3, delay=0.25))
    job_id = client.post("/api/v1/jobs", json={"model": MODEL, "n": 2, "label": 1}).json()["id"]
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse("".join(r.iter_text()))
    names = [e for e, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and set(names[:-1]) == {"progress"}
    progress = [d["progress"] for e, d in events if e == "progress" and d["status"] == "running"]
    assert len(progress) >= 2 and progress == sorted(progress) and 0 < max(progress) < 1
    assert events[-1][1]["progress"] == 1.0 and len(events[-1][1]["images"]) == 2


def test_cancel_stops_a_running_job_at_its_next_step(client, monkeypatch, bundled):
    steps_done = []
    monkeypatch.setattr(bundled, "generate", fake_generate(steps=400, delay=0.01, log=steps_done))
    job_id = client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"]
    wait_for(client, job_id, ("running",))
    r = client.delete(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled" and job["images"] == []
    stopped_at = len(steps_done)
    time.sleep(0.1)
    assert len(steps_done) == stopped_at < 400  # the work really stopped
    assert client.get(f"/api/v1/jobs/{job_id}/images/0.png").status_code == 404


def test_cancel_of_a_queued_job_is_immediate(client, monkeypatch, bundled):
    gate = threading.Event()
    monkeypatch.setattr(bundled, "generate", fake_generate(steps=1, gate=gate))
    first = client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"]
    wait_for(client, first, ("running",))  # the worker holds the first (on a busy machine it starts late)
    second = client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"]
    assert client.get(f"/api/v1/jobs/{second}").json()["queue_position"] == 0
    assert client.delete(f"/api/v1/jobs/{second}").json()["status"] == "cancelled"
    gate.set()
    assert wait_for(client, first)["status"] == "done"
    assert client.get(f"/api/v1/jobs/{second}").json()["status"] == "cancelled"


def test_a_job_over_its_time_limit_fails_with_a_clear_error(make_client, monkeypatch, bundled):
    client = make_client(job_timeout_s=0.2)
    monkeypatch.setattr(bundled, "generate", fake_generate(steps=100, delay=0.02))
    job = wait_for(client, client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"])
    assert job["status"] == "failed" and "timed out after 0.2 s" in job["error"]


def test_a_full_queue_answers_429_with_retry_after(make_client, monkeypatch, bundled):
    client = make_client(max_queue=1, workers=1)
    gate = threading.Event()
    monkeypatch.setattr(bundled, "generate", fake_generate(steps=1, gate=gate))
    running = client.post("/api/v1/jobs", json={"model": MODEL}).json()["id"]
    wait_for(client, running, ("running",))
    queued = client.post("/api/v1/jobs", json={"model": MODEL})
    assert queued.status_code == 202
    r = client.post("/api/v1/jobs", json={"model": MODEL})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["detail"]
    gate.set()
    assert wait_for(client, queued.json()["id"])["status"] == "done"


def test_finished_jobs_beyond_keep_are_dropped_oldest_first():
    q = JobQueue(workers=1, max_queue=10, keep=2, timeout_s=None)
    q.start()
    try:
        jobs = []
        for i in range(4):
            jobs.append(q.submit(MODEL, 1, lambda progress, i=i: i))
            while not jobs[-1].is_final:
                time.sleep(0.005)
        q.submit(MODEL, 1, lambda progress: None)  # submitting is when old jobs are dropped
        assert q.get(jobs[0].id) is None and q.get(jobs[1].id) is None
        assert q.get(jobs[3].id).result == 3
    finally:
        q.stop()


def test_queue_rejects_a_bad_size_and_reports_full():
    with pytest.raises(ValueError, match="max_queue"):
        JobQueue(max_queue=0)
    q = JobQueue(workers=1, max_queue=1)  # not started: nothing leaves the queue
    q.submit(MODEL, 1, lambda progress: None)
    with pytest.raises(QueueFull) as e:
        q.submit(MODEL, 1, lambda progress: None)
    assert e.value.retry_after >= 1


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body, where, message", [
    ({"model": "nope"}, ["body", "model"], "valid models: mnist-diffusion"),
    ({"model": MODEL, "n": 0}, ["body", "n"], "greater than or equal to 1"),
    ({"model": MODEL, "n": 65}, ["body", "n"], "less than or equal to 64"),
    ({"model": MODEL, "seed": -1}, ["body", "seed"], "greater than or equal to 0"),
    ({"model": MODEL, "options": {"steps": 0}}, ["body", "options", "steps"], "between 1 and 200"),
    ({"model": MODEL, "options": {"steps": 201}}, ["body", "options", "steps"], "between 1 and 200"),
    ({"model": MODEL, "options": {"steps": 2.5}}, ["body", "options", "steps"], "must be an integer"),
    ({"model": MODEL, "options": {"sampler": "magic"}}, ["body", "options", "sampler"], "one of: euler, heun"),
    ({"model": MODEL, "options": {"guidance": 20.5}}, ["body", "options", "guidance"], "between 0 and 20"),
    ({"model": MODEL, "options": {"cfg": 2}}, ["body", "options", "cfg"], "valid options: sampler, steps, guidance"),
    ({"model": MODEL, "label": "cat"}, ["body", "label"], "valid labels: 0, 1, 2"),
    ({"model": MODEL, "label": 10}, ["body", "label"], "valid labels: 0, 1, 2"),
    ({"model": MODEL, "n": 2, "labels": [1, "dog"]}, ["body", "labels", 1], "unknown label 'dog'"),
    ({"model": MODEL, "n": 2, "labels": [1]}, ["body"], "labels must hold n=2 entries"),
    ({"model": MODEL, "label": 1, "labels": [1]}, ["body"], "label or labels, not both"),
    ({"model": MODEL, "prompt": "a cat"}, ["body", "prompt"], "takes no text; the conditions it takes: labels"),
    ({"model": MODEL, "sketch": "x.png"}, ["body", "sketch"], "mnist-diffusion takes no sketch"),
    ({"model": MODEL, "drawing": "x.png"}, ["body", "drawing"], "Extra inputs are not permitted"),
    ({"n": 1}, ["body", "model"], "Field required"),
])
def test_invalid_job_requests_get_422_naming_the_field_and_the_valid_choices(client, body, where, message):
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == where and message in error["msg"]


def test_a_body_over_the_limit_gets_413(make_client):
    client = make_client(max_body_bytes=1000)
    big = {"model": MODEL, "options": {"sampler": "x" * 2000}}
    r = client.post("/api/v1/jobs", json=big)
    assert r.status_code == 413 and "limit of 1000 bytes" in r.json()["detail"]
    streamed = client.post("/api/v1/jobs", content=iter([b'{"model": "', b"x" * 1500, b'"}']),
                           headers={"content-type": "application/json"})  # no content-length: counted as read
    assert streamed.status_code == 413


def test_unknown_jobs_and_images_get_404(client):
    for method, path in [("GET", "/api/v1/jobs/nope"), ("DELETE", "/api/v1/jobs/nope"),
                         ("GET", "/api/v1/jobs/nope/events"), ("GET", "/api/v1/jobs/nope/images/0.png")]:
        r = client.request(method, path)
        assert r.status_code == 404 and "no job 'nope'" in r.json()["detail"]
    job = wait_for(client, client.post("/api/v1/jobs", json={"model": MODEL, "options": {"steps": 1}}).json()["id"])
    r = client.get(f"/api/v1/jobs/{job['id']}/images/1.png")
    assert r.status_code == 404 and "images 0..0" in r.json()["detail"]


def test_api_key_is_required_everywhere_but_health(make_client):
    client = make_client(api_key=KEY)
    for method, path in [("GET", "/api/v1/models"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs/x"),
                         ("DELETE", "/api/v1/jobs/x"), ("GET", "/api/v1/jobs/x/events"), ("GET", "/api/v1/jobs/x/images/0.png"),
                         ("POST", "/api/v1/ratings"), ("GET", "/api/v1/ratings/scores")]:
        missing = client.request(method, path)
        assert missing.status_code == 401 and "needs an API key" in missing.json()["detail"], path
        wrong = client.request(method, path, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 403, path
    assert client.get("/api/v1/models", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/api/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/api/v1/models", headers={"Authorization": "Bearer guess"}).status_code == 403
    assert client.get("/api/v1/health").status_code == 200


def test_cors_is_closed_unless_an_origin_is_given(make_client):
    closed = make_client()
    r = closed.get("/api/v1/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    opened = make_client(cors_origins=["https://ui.example"])
    r = opened.get("/api/v1/health", headers={"Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"


# --- ratings and scores -----------------------------------------------------------------------------
def test_elo_matches_a_hand_computed_example():
    # A beats B at 1000 each: expected 0.5, so A 1016, B 984. Then B beats A:
    # E_B = 1 / (1 + 10^((1016 - 984) / 400)) = 1 / (1 + 1.202264) = 0.454079, so B += 32 (1 - 0.454079) = 17.4695.
    r = elo([("A", "B", 1.0), ("B", "A", 1.0)])
    assert r["A"] == pytest.approx(1016 - 17.4695, abs=1e-3)
    assert r["B"] == pytest.approx(984 + 17.4695, abs=1e-3)
    assert elo([("A", "B", 0.5)]) == {"A": 1000.0, "B": 1000.0}


def test_bradley_terry_orders_by_wins_and_solves_its_likelihood_equations():
    matches = [("A", "B", 1.0)] * 5 + [("A", "C", 1.0)] * 5 + [("B", "C", 1.0)] * 3 + [("B", "C", 0.0)] + [("B", "C", 0.5)]
    p = bradley_terry(matches)
    assert p["A"] > p["B"] > p["C"]
    # at the maximum, each contestant's wins equal its expected wins (the prior: 1 win in 2 games vs strength 1)
    for i in p:
        wins = 1 + sum(s if a == i else 1 - s for a, b, s in matches if i in (a, b))
        expected = 2 * p[i] / (p[i] + 1) + sum(p[i] / (p[a] + p[b]) for a, b, _ in matches if i in (a, b))
        assert wins == pytest.approx(expected, rel=1e-6)
    even = bradley_terry([("A", "B", 1.0), ("B", "A", 1.0)])
    assert even["A"] == pytest.approx(even["B"]) == pytest.approx(1.0)


def test_ratings_give_scores_with_elo_bt_counts_and_fid(client):
    a = {"model": MODEL, "settings": {"sampler": "heun", "steps": 18, "seed": 3, "label": 1}}
    b = {"model": MODEL, "settings": {"sampler": "euler", "steps": 6, "seed": 3, "label": 1}}
    for winner in ("a", "a", "a", "tie"):
        r = client.post("/api/v1/ratings", json={"a": a, "b": b, "winner": winner})
        assert r.status_code == 201
    assert r.json()["count"] == 4
    by_settings = client.get("/api/v1/ratings/scores", params={"by": "settings"}).json()
    assert by_settings["ratings"] == 4 and "MM algorithm" in by_settings["method"]
    best, worst = by_settings["scores"]
    assert best["settings"] == {"sampler": "heun", "steps": 18}  # seed and label do not split contestants
    assert (best["wins"], best["losses"], best["ties"], best["count"]) == (3, 0, 1, 4)
    assert best["elo"] > 1000 > worst["elo"] and best["bt_strength"] > worst["bt_strength"]
    assert best["evaluation"] is None
    by_model = client.get("/api/v1/ratings/scores").json()
    assert by_model["scores"] == []  # one model against itself says nothing about the model


def test_invalid_ratings_get_422(client):
    side = {"model": MODEL, "settings": {}}
    for body, message in [({"a": side, "b": side, "winner": "left"}, "'a', 'b' or 'tie'"),
                          ({"a": {"model": "nope"}, "b": side, "winner": "a"}, "valid models: mnist-diffusion"),
                          ({"a": side, "b": {**side, "settings": {"x": [1]}}, "winner": "a"}, "valid"),
                          ({"a": side, "winner": "a"}, "Field required")]:
        r = client.post("/api/v1/ratings", json=body)
        assert r.status_code == 422 and message in json.dumps(r.json()), body
    assert client.get("/api/v1/ratings/scores", params={"by": "colour"}).status_code == 422


def test_scores_show_the_newest_fid_of_a_run(make_client, runs_dir, monkeypatch):
    run = runs_dir / "rated"
    shutil.copytree(BUNDLED_MODELS_DIR / MODEL, run)
    lines = [{"fid": 9.5, "extractor": "mnist-classifier", "n_fake": 100, "sampling": {"steps": 4}},
             {"fid": 4.25, "extractor": "mnist-classifier", "n_fake": 1000, "sampling": {"steps": 18}}]
    (run / "evaluations.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"fid": 1.0, "trunc')
    client = make_client(models=(MODEL, "rated"))
    rated = "rated"  # a run under the runs folder is listed by its plain name, as the CLI takes it
    side = {"settings": {"steps": 2}}
    # rated by its path (the older name), scored under its plain name
    client.post("/api/v1/ratings", json={"a": {"model": str(run), **side}, "b": {"model": MODEL, **side}, "winner": "a"})
    models = {m["name"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert models[rated]["evaluation"]["fid"] == 4.25
    top, other = client.get("/api/v1/ratings/scores").json()["scores"]
    assert (top["model"], top["elo"], top["evaluation"]["fid"], top["evaluation"]["sampling"]) == (rated, 1016.0, 4.25, {"steps": 18})
    assert (other["model"], other["elo"], other["evaluation"]) == (MODEL, 984.0, None)
    assert latest_evaluation(runs_dir / "missing") is None


def test_scores_skip_self_matches_and_keep_insertion_order(tmp_path):
    db = RatingsDB(tmp_path / "r.sqlite")
    db.add("m1", {}, "m2", {}, "a")
    db.add("m2", {}, "m1", {}, "a")
    db.add("m1", {}, "m1", {}, "b")
    result = scores(db.rows())
    assert result["ratings"] == 3 and [s["count"] for s in result["scores"]] == [2, 2]
    elos = {s["model"]: s["elo"] for s in result["scores"]}
    assert elos["m2"] == pytest.approx(1001.4695, abs=1e-3)  # the later win counts more: order matters
    with pytest.raises(ValueError, match="a, b or tie"):
        db.add("m1", {}, "m2", {}, "draw")


# --- the command line ---------------------------------------------------------------------------
def test_cli_ratings_prints_the_table(tmp_path, capsys):
    from pixelforge.cli import main

    db = RatingsDB(tmp_path / "r.sqlite")
    db.add("m1", {}, "m2", {}, "a")
    assert main(["ratings", "--db", str(tmp_path / "r.sqlite"), "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "m1" in out and "1016.0" in out and "1 ratings, scored by model" in out
    assert main(["ratings", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no ratings database" in capsys.readouterr().err


def test_cli_serve_builds_the_app_and_prints_the_url(monkeypatch, bundled, runs_dir, tmp_path, capsys):
    import uvicorn

    from pixelforge.cli import main

    monkeypatch.setattr(app_module, "load", lambda name, **kw: bundled)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    monkeypatch.setenv("PIXELFORGE_API_KEY", KEY)
    assert main(["serve", "--port", "8123", "--db", str(tmp_path / "r.sqlite"), "--runs-dir", str(runs_dir),
                 "--max-upload-bytes", "5000", "--max-upload-pixels", "4096"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    limits = seen["app"].state.limits
    assert (limits.max_upload_bytes, limits.max_upload_pixels) == (5000, 4096)
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    with TestClient(seen["app"], base_url="http://127.0.0.1:8123") as c:
        assert c.get("/api/v1/models").status_code == 401  # the key came from the environment
