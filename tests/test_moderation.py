"""Prompt moderation: a policy file (blocked terms, patterns, concepts) refuses prompts in the API, the
CLI and the server before any compute, naming the rule and, where the policy says so, not the prompt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pixelforge.cli import main
from pixelforge.provenance.moderation import (DEFAULT_POLICY_FILE, POLICY_ENV, ModerationRefused, _concept_vectors,
                                              load_policy, resolve_policy)

POLICY = """\
version = 1
log_prompts = false

[[blocked]]
id = "example-terms"
terms = ["forbiddenword", "example blocked phrase"]
reason = "placeholder terms"

[[patterns]]
id = "ticket-number"
regex = '\\bticket\\s*#\\s*\\d{6,}\\b'
"""

# Measured with all-MiniLM-L6-v2 (pooled, L2-normalised) against REAL_PERSON: the paraphrase 0.87, the
# portrait 0.70, a cartoon smiley face 0.44, a red circle 0.22; the threshold 0.6 sits between.
REAL_PERSON = "a photograph of a real, identifiable person's face"
CONCEPTS = f"""\
version = 1

[similarity]
threshold = 0.6

[[concepts]]
id = "real-person"
text = "{REAL_PERSON}"
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def policy(tmp_path):
    return load_policy(write(tmp_path, POLICY))


@pytest.mark.parametrize("prompt", [
    "FORBIDDENWORD",
    "a ｆｏｒｂｉｄｄｅｎｗｏｒｄ in the sky",  # fullwidth letters (NFKC)
    "a Forbïddenword",  # an accent
    "forbidden\u200bword",  # a zero-width space
    "f0rb1dd3nw0rd",  # leetspeak
    "a f.o.r.b.i.d.d.e.n.w.o.r.d please",
    "a f o r b i d d e n w o r d",
    "f-o-r-b-i-d-d-e-n-w-o-r-d",
    "an Example   Blocked-Phrase!",
    "e.x.a.m.p.l.e b.l.o.c.k.e.d p.h.r.a.s.e",
])
def test_blocked_terms_are_refused_whatever_the_case_unicode_form_or_separators(policy, prompt):
    decision = policy.check(prompt)
    assert not decision.allowed
    assert (decision.kind, decision.rule) == ("blocked", "blocked:example-terms")


@pytest.mark.parametrize("prompt", [
    "a red circle on a black background",
    "xforbiddenwordx",  # terms match whole words only
    "an example of a blocked phrase",  # a phrase's words must follow each other
    "a 5 pointed star",
])
def test_prompts_without_a_blocked_term_are_allowed(policy, prompt):
    assert policy.check(prompt).allowed


def test_patterns_are_searched_case_insensitively_after_nfkc(policy):
    assert policy.check("Ticket # 1234567").rule == "pattern:ticket-number"
    assert policy.check("TICKET #１２３４５６７").rule == "pattern:ticket-number"  # fullwidth digits
    assert policy.check("ticket 12").allowed


def test_a_refusal_names_the_rule_but_not_the_matched_text_unless_log_prompts(tmp_path):
    quiet = load_policy(write(tmp_path, POLICY, "quiet.toml"))
    loud = load_policy(write(tmp_path, POLICY.replace("log_prompts = false", "log_prompts = true"), "loud.toml"))
    hidden, shown = quiet.check("a f.o.r.b.i.d.d.e.n.w.o.r.d"), loud.check("a f.o.r.b.i.d.d.e.n.w.o.r.d")
    assert hidden.rule == shown.rule == "blocked:example-terms"
    assert "forbiddenword" not in hidden.reason and "forbiddenword" in shown.reason
    assert "1234567" not in quiet.check("ticket #1234567").reason
    assert "1234567" in loud.check("ticket #1234567").reason


@pytest.mark.parametrize("text, where", [
    ("version = 1\nlog_prompts = \n", "line 2"),
    (POLICY + "\n[[patterns]]\nid = \"broken\"\nregex = 'a(b'\n", "patterns[1] (id 'broken'): invalid regular expression"),
    (POLICY + "\n[[patterns]]\nid = \"all\"\nregex = 'x*'\n", "patterns[1] (id 'all'): regex 'x*' matches the empty prompt"),
    ("[[blocked]]\nid = \"a\"\nterms = []\n", "blocked[0] (id 'a'): terms must be a non-empty list"),
    ("[[blocked]]\nid = \"a\"\nterms = [\"...\"]\n", "blocked[0] (id 'a'): terms[0] '...' has no letters"),
    ("[[blocked]]\nid = \"a\"\nterms = [\"x\"]\nwords = [\"y\"]\n", "blocked[0] (id 'a'): unknown key(s) words"),
    ("[[blocked]]\nterms = [\"x\"]\n", "blocked[0]: id must be"),
    (POLICY + "\n[[blocked]]\nid = \"ticket-number\"\nterms = [\"x\"]\n", "patterns[0] (id 'ticket-number'): id 'ticket-number' is used by another rule"),
    ("[[concepts]]\nid = \"c\"\ntext = \"a cat\"\nthreshold = 1.5\n", "concepts[0] (id 'c'): threshold must be a number in (0, 1]"),
    ("[similarity]\nthreshold = 0\n", "similarity: threshold must be a number in (0, 1]"),
    ("blocklist = []\n", "unknown key(s) blocklist; valid: version"),
    ("version = 2\n", "version 2 is not supported"),
    ("log_prompts = \"no\"\n", "log_prompts must be true or false"),
])
def test_a_bad_policy_file_is_an_error_naming_the_file_and_the_entry(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_policy(path)
    assert str(e.value).startswith(f"{path}: ") and where in str(e.value), str(e.value)


def test_the_shipped_default_policy_loads_and_is_the_default_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    assert resolve_policy().path == DEFAULT_POLICY_FILE
    assert resolve_policy().check("forbiddenword").rule == "blocked:example-terms"
    own = write(tmp_path, POLICY)
    monkeypatch.setenv(POLICY_ENV, str(own))
    assert resolve_policy().path == own.resolve()
    monkeypatch.setenv(POLICY_ENV, "none")
    assert resolve_policy() is None
    assert resolve_policy(None) is None and resolve_policy(own).path == own.resolve()


# --- concepts, with the real text encoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def concept_policy(tmp_path_factory):
    pytest.importorskip("transformers", reason="the text extra is not installed (scripts/setup.sh installs it)")
    return load_policy(write(tmp_path_factory.mktemp("concepts"), CONCEPTS))


@pytest.mark.parametrize("prompt", [
    "a realistic photo showing the face of an actual human being",
    "a close-up portrait photo of a real man",
    "a red circle on a black background. a realistic photo showing the face of an actual human being",  # one clause
])
def test_a_paraphrase_of_a_listed_concept_is_refused_above_the_threshold(concept_policy, prompt):
    decision = concept_policy.check(prompt)
    assert decision.rule == "concept:real-person", decision
    assert "cosine" in decision.reason and ">= 0.6" in decision.reason


@pytest.mark.parametrize("prompt", ["a red circle on a black background", "a cartoon smiley face", ""])
def test_an_unrelated_prompt_is_allowed_by_a_concept_policy(concept_policy, prompt):
    assert concept_policy.check(prompt).allowed


def test_a_long_clause_is_also_read_in_overlapping_windows_that_reach_its_end():
    from pixelforge.provenance.moderation import WINDOW_WORDS, _pieces

    words = [f"w{i}" for i in range(3 * WINDOW_WORDS + 5)]
    pieces = _pieces("a red circle. " + " ".join(words))
    assert pieces[:3] == ["a red circle. " + " ".join(words), "a red circle", " ".join(words)]
    windows = [p.split() for p in pieces[3:]]
    assert all(len(w) <= WINDOW_WORDS for w in windows)
    assert windows[0][0] == words[0] and windows[-1][-1] == words[-1]
    assert _pieces("a short prompt") == ["a short prompt"]


def test_concept_embeddings_are_computed_once_per_policy_file_version(concept_policy, tmp_path):
    concept_policy.check("a green square")
    misses = _concept_vectors.cache_info().misses
    concept_policy.check("a blue star")
    load_policy(concept_policy.path).check("a yellow triangle")  # the same file, read again
    assert _concept_vectors.cache_info().misses == misses
    edited = load_policy(write(tmp_path, CONCEPTS.replace("0.6", "0.65")))
    assert edited.sha256 != concept_policy.sha256
    edited.check("a green square")
    assert _concept_vectors.cache_info().misses == misses + 1


# --- the API, the CLI and the server, on a tiny text run ---------------------------------------------


@pytest.fixture
def refusing_generator(text_runs, tmp_path, monkeypatch):
    """The tiny text run under POLICY, whose model and text encoding fail if they are ever reached."""
    import pixelforge

    g = pixelforge.load("st", runs_dir=text_runs, device="cpu", moderation=write(tmp_path, POLICY))

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before moderation refused the prompt")

    monkeypatch.setattr(g.model, "sample", no_compute)
    monkeypatch.setattr(g, "_encode_prompts", no_compute)
    return g


@pytest.mark.parametrize("kwargs, where", [
    ({"prompt": "a FORBIDDENWORD circle"}, "prompt refused"),
    ({"n": 3, "prompts": ["a red circle", None, "f.o.r.b.i.d.d.e.n.w.o.r.d"]}, "prompts[2] refused"),
    ({"prompt": "a red circle", "negative_prompt": "an example blocked phrase", "guidance": 2.0}, "negative_prompt refused"),
])
def test_the_api_refuses_a_prompt_before_any_compute(refusing_generator, kwargs, where):
    with pytest.raises(ModerationRefused) as e:
        refusing_generator.generate(**{"n": 1, **kwargs})
    assert isinstance(e.value, ValueError)
    assert where in str(e.value) and "rule blocked:example-terms" in str(e.value)
    assert "forbiddenword" not in str(e.value).lower()


def test_the_default_policy_applies_unless_moderation_is_none(text_runs, monkeypatch):
    import pixelforge

    monkeypatch.delenv(POLICY_ENV, raising=False)
    with pytest.raises(ModerationRefused, match="default-policy.toml"):
        pixelforge.load("st", runs_dir=text_runs, device="cpu").generate(1, prompt="forbiddenword", steps=1)
    (image,) = pixelforge.load("st", runs_dir=text_runs, device="cpu", moderation=None).generate(
        1, prompt="forbiddenword", steps=1)
    assert image.info["pixelforge"]["prompt"] == "forbiddenword"
    monkeypatch.setenv(POLICY_ENV, "none")
    assert len(pixelforge.load("st", runs_dir=text_runs, device="cpu").generate(1, prompt="forbiddenword", steps=1)) == 1


def _sample(runs, out, *flags):
    return main(["sample", "st", "--runs-dir", str(runs), "-n", "1", "--steps", "1", "--device", "cpu", "-o", str(out), *flags])


def test_the_cli_refuses_a_prompt_with_exit_2_and_one_line_and_no_moderation_lets_it_through(text_runs, tmp_path, capsys):
    policy = write(tmp_path, POLICY)
    assert _sample(text_runs, tmp_path / "a", "--prompt", "a f0rb1dd3nw0rd", "--moderation-policy", str(policy)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixelforge sample: error: prompt refused by the moderation policy")
    assert "rule blocked:example-terms" in err[0] and "f0rb1dd3nw0rd" not in err[0]
    assert not (tmp_path / "a").exists()
    assert _sample(text_runs, tmp_path / "b", "--prompt", "a red circle", "--negative-prompt", "ticket #1234567",
                   "--guidance", "2", "--moderation-policy", str(policy)) == 2
    assert "negative_prompt refused" in capsys.readouterr().err
    assert _sample(text_runs, tmp_path / "c", "--prompt", "a f0rb1dd3nw0rd", "--no-moderation") == 0
    assert (tmp_path / "c" / "seed000000.png").is_file()


def test_moderation_check_reports_the_decision_with_exit_0_or_1(tmp_path, capsys):
    policy = write(tmp_path, POLICY)
    assert main(["moderation", "check", "a red circle", "--policy", str(policy)]) == 0
    assert capsys.readouterr().out.startswith("allowed by")
    assert main(["moderation", "check", "Ticket #7654321", "--policy", str(policy), "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert (answer["allowed"], answer["kind"], answer["rule"]) == (False, "pattern", "pattern:ticket-number")
    bad = write(tmp_path, "[[patterns]]\nid = \"p\"\nregex = '('\n", "bad.toml")
    assert main(["moderation", "check", "x", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: patterns[0] (id 'p'): invalid regular expression" in err


@pytest.fixture
def serve(text_runs, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pixelforge.serve import create_app

    def start(moderation):
        app = create_app(["st"], runs_dir=text_runs, device="cpu", allowed_hosts=["testserver"],
                         db_path=tmp_path / "ratings.sqlite", moderation=moderation)
        return TestClient(app)

    return start


@pytest.mark.parametrize("body, loc", [
    ({"prompt": "an example blocked phrase"}, ["body", "prompt"]),
    ({"n": 2, "prompts": ["a red circle", "f.o.r.b.i.d.d.e.n.w.o.r.d"]}, ["body", "prompts", 1]),
    ({"prompt": "a red circle", "negative_prompt": "ticket #1234567"}, ["body", "negative_prompt"]),
])
def test_the_server_answers_422_before_queueing_and_logs_the_rule_without_the_prompt(serve, tmp_path, caplog, body, loc):
    with serve(write(tmp_path, POLICY)) as client:
        def no_queue(*args, **kwargs):
            raise AssertionError("a refused prompt was queued")

        client.app.state.queue.submit = no_queue
        with caplog.at_level(logging.WARNING, logger="pixelforge.serve"):
            r = client.post("/api/v1/jobs", json={"model": "st", "options": {"steps": 1}, **body})
    assert r.status_code == 422, r.json()
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and "refused by the moderation policy" in error["msg"]
    (record,) = [rec for rec in caplog.records if rec.name == "pixelforge.serve"]
    message = record.getMessage()
    assert "moderation refused" in message and ("rule blocked:" in message or "rule pattern:" in message)
    prompt_text = body.get("negative_prompt") or body.get("prompt") or body["prompts"][1]
    assert prompt_text not in message and "1234567" not in message and "forbiddenword" not in message


def test_the_server_logs_the_prompt_when_the_policy_allows_it_and_none_lets_it_through(serve, tmp_path, caplog):
    loud = write(tmp_path, POLICY.replace("log_prompts = false", "log_prompts = true"))
    with serve(loud) as client, caplog.at_level(logging.WARNING, logger="pixelforge.serve"):
        assert client.post("/api/v1/jobs", json={"model": "st", "prompt": "a forbiddenword"}).status_code == 422
    assert any("'a forbiddenword'" in rec.getMessage() for rec in caplog.records if rec.name == "pixelforge.serve")
    with serve(None) as client:
        assert client.post("/api/v1/jobs", json={"model": "st", "prompt": "a forbiddenword",
                                                 "options": {"steps": 1}}).status_code == 202


def test_the_server_moderates_the_prompt_of_a_job_that_edits_an_uploaded_image(serve, tmp_path):
    import base64
    import io
    import time

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    with serve(write(tmp_path, POLICY)) as client:
        def no_queue(*args, **kwargs):
            raise AssertionError("a refused prompt was queued")

        real_submit, client.app.state.queue.submit = client.app.state.queue.submit, no_queue
        r = client.post("/api/v1/jobs", json={"model": "st", "image": image, "prompt": "a forbiddenword"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"], r.json()
        client.app.state.queue.submit = real_submit
        r = client.post("/api/v1/jobs", json={"model": "st", "image": image, "prompt": "a red circle",
                                              "options": {"steps": 1, "strength": 0.5}})
        assert r.status_code == 202, r.json()
        deadline = time.monotonic() + 60
        while (job := client.get(r.json()["url"]).json())["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    (s,) = job["settings"]
    from pixelforge.edit import pixels_sha256  # an edit records the SHA-256 of the upload's decoded pixels

    assert (job["status"], s["prompt"], s["image_sha256"]) == ("done", "a red circle",
                                                               pixels_sha256(Image.open(io.BytesIO(buf.getvalue()))))
