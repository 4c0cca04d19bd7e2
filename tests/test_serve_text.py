"""The HTTP API with text prompts: jobs take a prompt (or one per image) and a negative prompt, /models
says which models take text, and bad prompts get a 422 naming the field."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")

from fastapi.testclient import TestClient  # noqa: E402

from pixelforge.images import read_settings  # noqa: E402
from pixelforge.serve import create_app  # noqa: E402
from pixelforge.serve.schemas import MAX_PROMPT_CHARS  # noqa: E402

from serve_jobs import run_job  # noqa: E402

TEXT_MODEL, LABEL_MODEL = "st", "mnist-diffusion"


@pytest.fixture(scope="module")
def runs_dir(text_runs):
    """conftest's runs folder with the tiny text run "st" (TEXT_MODEL)."""
    return text_runs


@pytest.fixture(scope="module")
def client(runs_dir, tmp_path_factory):
    app = create_app([TEXT_MODEL, LABEL_MODEL], runs_dir=runs_dir, device="cpu", allowed_hosts=["testserver"],
                     db_path=tmp_path_factory.mktemp("db") / "ratings.sqlite")
    with TestClient(app) as c:
        yield c



def test_a_job_with_a_prompt_makes_pngs_whose_settings_hold_the_prompt(client):
    prompt = "a large blue star at the top right on a black background"
    job = run_job(client, {"model": TEXT_MODEL, "n": 2, "prompt": prompt, "negative_prompt": "a red circle",
                           "options": {"steps": 2, "guidance": 2.0}})
    assert [s["prompt"] for s in job["settings"]] == [prompt, prompt]
    assert job["settings"][0]["negative_prompt"] == "a red circle"
    png = client.get(job["images"][1])
    assert png.status_code == 200
    settings = read_settings(io.BytesIO(png.content))
    assert (settings["prompt"], settings["negative_prompt"], settings["seed"]) == (prompt, "a red circle", 1)
    # where the model lies on the server is of no use to a client and not told
    assert "model_path" not in settings and all("model_path" not in s for s in job["settings"])


def test_prompts_give_each_image_its_own_prompt_and_null_gives_none(client):
    job = run_job(client, {"model": TEXT_MODEL, "n": 3, "prompts": ["a red circle", None, "a green square"],
                           "options": {"steps": 1}})
    assert [s["prompt"] for s in job["settings"]] == ["a red circle", None, "a green square"]


too_long = "x" * (MAX_PROMPT_CHARS + 1)


@pytest.mark.parametrize("body, where, message", [
    ({"model": TEXT_MODEL, "prompt": too_long}, ["body", "prompt"], f"at most {MAX_PROMPT_CHARS} characters"),
    ({"model": TEXT_MODEL, "n": 2, "prompts": ["ok", too_long]}, ["body", "prompts", 1], f"at most {MAX_PROMPT_CHARS}"),
    ({"model": TEXT_MODEL, "negative_prompt": too_long}, ["body", "negative_prompt"], f"at most {MAX_PROMPT_CHARS}"),
    ({"model": TEXT_MODEL, "prompt": 7}, ["body", "prompt"], "valid string"),
    ({"model": TEXT_MODEL, "prompt": ["a", "b"]}, ["body", "prompt"], "valid string"),
    ({"model": TEXT_MODEL, "prompts": [{"text": "a"}]}, ["body", "prompts", 0], "valid string"),
    ({"model": TEXT_MODEL, "n": 2, "prompts": ["a"]}, ["body"], "prompts must hold n=2 entries"),
    ({"model": TEXT_MODEL, "n": 1, "prompt": "a", "prompts": ["a"]}, ["body"], "give prompt or prompts, not both"),
    ({"model": LABEL_MODEL, "prompt": "a seven"}, ["body", "prompt"], "takes no text; the conditions it takes: labels"),
    ({"model": LABEL_MODEL, "prompts": ["a seven"]}, ["body", "prompts"], "the conditions it takes: labels"),
    ({"model": LABEL_MODEL, "negative_prompt": "a one"}, ["body", "negative_prompt"], "the conditions it takes: labels"),
    ({"model": TEXT_MODEL, "label": 2}, ["body", "label"], "takes no labels; the conditions it takes: text"),
])
def test_bad_prompts_get_422_naming_the_field(client, body, where, message):
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == where and message in error["msg"], error


def test_models_say_which_take_a_prompt(client):
    models = {m["name"]: {i["name"]: i for i in m["inputs"]} for m in client.get("/api/v1/models").json()["models"]}
    text, labels = models[TEXT_MODEL], models[LABEL_MODEL]
    assert (text["prompt"]["supported"], text["label"]["supported"]) == (True, False)
    assert text["prompt"]["max_length"] == MAX_PROMPT_CHARS  # the page's prompt box takes its limit from here
    assert text["label"]["note"] == "this model takes text"
    assert (labels["prompt"]["supported"], labels["label"]["supported"]) == (False, True)
    assert labels["prompt"]["note"] == "this model takes labels"


def test_ratings_take_settings_with_a_prompt_and_the_prompt_does_not_split_contestants(client):
    def side(steps, prompt):
        return {"model": TEXT_MODEL, "settings": {"steps": steps, "seed": 3, "prompt": prompt, "negative_prompt": None}}

    for prompt in ("a red circle", "a blue square on the left " * 30):
        r = client.post("/api/v1/ratings", json={"a": side(8, prompt), "b": side(2, prompt), "winner": "a"})
        assert r.status_code == 201, r.json()
    scores = client.get("/api/v1/ratings/scores", params={"by": "settings"}).json()["scores"]
    assert [(s["settings"], s["wins"]) for s in scores] == [({"steps": 8, "negative_prompt": None}, 2),
                                                            ({"steps": 2, "negative_prompt": None}, 0)]
