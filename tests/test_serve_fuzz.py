"""Property-based fuzz of the HTTP API from its own OpenAPI schema: no request, valid or not, gets a 5xx.

Schemathesis turns every operation in /openapi.json into a Hypothesis strategy of requests, both
schema-valid ones and (negative mode) schema-violating ones, and sends them in-process to the ASGI
app built by create_app: the real routing, validation, auth, body limit, job queue and ratings
database. Only the sampling is a stand-in (an instant fake `generate`), so hundreds of jobs cost
milliseconds: the whole file takes about 16 s of one idle core. The last test pins raw bodies that a
schema-driven generator never sends (lone surrogates, non-finite numbers, label strings that look
like numbers), which once answered 500 or slipped past validation.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from pixelforge import api  # noqa: E402
from pixelforge.serve import app as app_module  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402

MODEL = "mnist-diffusion"
KEY = "fuzz-key"
AUTH_HEADERS = ("X-API-Key", "Authorization")

# how the fuzzed requests authenticate: (the server's key, the headers sent, examples per operation and mode);
# a request without the right key is turned away by the auth check, so fewer examples cover it
AUTH_MODES = {
    "open server": (None, {}, 30),
    "right key": (KEY, {"X-API-Key": KEY}, 30),
    "right bearer": (KEY, {"Authorization": f"Bearer {KEY}"}, 10),
    "no key": (KEY, {}, 10),
    "wrong key": (KEY, {"X-API-Key": "guess", "Authorization": "Bearer guess"}, 10),
}


def instant_generate(n, *, labels, seed, callback, **options):
    """Stands in for Generator.generate: one progress report, then n tiny images carrying their settings."""
    callback(n, n)
    images = []
    for k in range(n):
        im = Image.new("L", (4, 4), k)
        im.info["pixelforge"] = {"model": MODEL, "seed": seed + k, "label": labels[k], **options}
        images.append(im)
    return images


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")  # empty: the bundled model is served whatever ./runs holds


@pytest.fixture(scope="module")
def make_app(runs_dir):
    """make_app(api_key) -> create_app over the bundled model (loaded once) with the instant stand-in sampler."""
    g = api.load(MODEL, device="cpu", runs_dir=runs_dir)
    g.generate = instant_generate  # on this module's own Generator object: no other test sees it
    count = iter(range(1_000_000))

    def make(api_key=None):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(app_module, "load", lambda name, **kw: g)
            return create_app([MODEL], api_key=api_key, db_path=runs_dir / f"ratings-{next(count)}.sqlite",
                              runs_dir=runs_dir, device="cpu", keep_jobs=100_000, job_timeout_s=30,
                              allowed_hosts=["testserver"])  # the host name the test clients send

    return make


@pytest.fixture(scope="module")
def served(make_app):
    """{api key: (app, its schema, a finished two-image job's id)} for a server without a key and one with.

    Schemathesis starts each app's lifespan (its job workers) on the first request and keeps it for
    the rest of the process.
    """
    out = {}
    for key in (None, KEY):
        app = make_app(key)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        headers = {"X-API-Key": key} if key else {}
        created = schema["/api/v1/jobs"]["POST"].Case(body={"model": MODEL, "n": 2, "label": 3}, headers=headers).call()
        assert created.status_code == 202, created.text
        job = schema["/api/v1/jobs/{job_id}"]["GET"].Case(path_parameters={"job_id": created.json()["id"]}, headers=headers)
        deadline = time.monotonic() + 10
        while job.call().json()["status"] != "done":
            assert time.monotonic() < deadline, "the stand-in job never finished"
            time.sleep(0.01)
        out[key] = (app, schema, created.json()["id"])
    return out


def fuzz(operation, mode: GenerationMode, headers: dict, examples: int, path_parameters: dict | None = None) -> None:
    """`examples` generated requests to one operation, each checked for a non-5xx answer.

    In negative mode an operation with no input left to spoil (GET /health) is skipped.
    """
    fixed = {"path_parameters": path_parameters} if path_parameters else {}
    free = [p for p in operation.iter_parameters() if p.name not in (path_parameters or {})] + list(operation.body)
    if mode == GenerationMode.NEGATIVE and not free:
        return

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode, **fixed))
    def run(case):
        for name in AUTH_HEADERS:  # the auth mode decides these, not the generator
            if case.headers:
                case.headers.pop(name, None)
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error])

    run()


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_the_fuzz_covers_every_api_operation(served):
    _, schema, _ = served[None]
    labels = {op.label for op in operations(schema)}
    assert labels == {"GET /api/v1/health", "GET /api/v1/models", "POST /api/v1/jobs",
                      "POST /api/v1/jobs/upload", "GET /api/v1/jobs/{job_id}",
                      "DELETE /api/v1/jobs/{job_id}", "GET /api/v1/jobs/{job_id}/events",
                      "GET /api/v1/jobs/{job_id}/images/{index}.png", "POST /api/v1/ratings", "GET /api/v1/ratings/scores"}


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize("auth", list(AUTH_MODES))
def test_no_generated_request_gets_a_server_error(served, auth, mode):
    key, headers, examples = AUTH_MODES[auth]
    _, schema, _ = served[key]
    for operation in operations(schema):
        fuzz(operation, mode, headers, examples)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize("auth", ["open server", "right key"])
def test_no_generated_request_about_a_real_job_gets_a_server_error(served, auth, mode):
    key, headers, examples = AUTH_MODES[auth]
    _, schema, job_id = served[key]
    job_operations = [op for op in operations(schema) if "{job_id}" in op.path]
    assert len(job_operations) == 4
    for operation in job_operations:
        fuzz(operation, mode, headers, examples, {"job_id": job_id})


# --- bodies a schema-driven generator never sends -------------------------------------------------------
# Python's json module reads NaN, Infinity, 1e400 (as inf), integers too big for a float and escaped lone
# surrogates ("\\ud800", which has no UTF-8 form). Each body here must get a 422 that encodes; most once got
# a 500 (the answer echoing the input failed to encode, or int() met "--3"), and NaN guidance slipped through.
M = f'"{MODEL}"'
RAW_BODIES = {
    "label --3": ("/api/v1/jobs", '{"model": %s, "label": "--3"}' % M),
    "label superscript two": ("/api/v1/jobs", '{"model": %s, "label": "\u00b2"}' % M),
    "labels with --1": ("/api/v1/jobs", '{"model": %s, "n": 2, "labels": [1, "--1"]}' % M),
    "n 1e400": ("/api/v1/jobs", '{"model": %s, "n": 1e400}' % M),
    "n NaN": ("/api/v1/jobs", '{"model": %s, "n": NaN}' % M),
    "guidance NaN": ("/api/v1/jobs", '{"model": %s, "options": {"guidance": NaN}}' % M),
    "guidance -Infinity": ("/api/v1/jobs", '{"model": %s, "options": {"guidance": -Infinity}}' % M),
    "steps of 401 digits": ("/api/v1/jobs", '{"model": %s, "options": {"steps": 1%s}}' % (M, "0" * 400)),
    "guidance of 401 digits": ("/api/v1/jobs", '{"model": %s, "options": {"guidance": 1%s}}' % (M, "0" * 400)),
    "surrogate field name": ("/api/v1/jobs", '{"model": %s, "\\ud800": 1}' % M),
    "surrogate option name": ("/api/v1/jobs", '{"model": %s, "options": {"\\ud800": 1}}' % M),
    "surrogate body": ("/api/v1/jobs", '"\\ud800"'),
    "surrogate setting": ("/api/v1/ratings", '{"a": {"model": %s, "settings": {"s": "\\ud800"}}, "b": {"model": %s}, "winner": "a"}' % (M, M)),
    "surrogate setting name": ("/api/v1/ratings", '{"a": {"model": %s, "settings": {"\\udfff": 1}}, "b": {"model": %s}, "winner": "a"}' % (M, M)),
    "NaN setting": ("/api/v1/ratings", '{"a": {"model": %s, "settings": {"s": NaN}}, "b": {"model": %s}, "winner": "tie"}' % (M, M)),
}


@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_raw_bodies_get_a_422_that_encodes_and_store_nothing(make_app, name):
    path, body = RAW_BODIES[name]
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        r = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][0] == "body"
        assert client.get("/api/v1/ratings/scores", params={"by": "settings"}).json()["ratings"] == 0
        assert client.get("/api/v1/health").json()["queue"] == {"queued": 0, "running": 0, "max_queue": 16, "workers": 1}
