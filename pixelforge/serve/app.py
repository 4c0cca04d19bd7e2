"""The HTTP API (/api/v1, OpenAPI at /openapi.json) and the web page (/): a thin shell over pixelforge.api.

Requests only validate and enqueue; worker threads generate (jobs.py). Every endpoint but health takes
the API key when one is set; CORS stays closed unless origins are given; bodies over a limit get 413;
only the allowed host names are answered (400 otherwise); event streams are bounded (limits.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Callable, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Generator, load
from ..post import PostError, PostSettings, as_post_settings, option_specs as post_option_specs
from ..provenance.moderation import DEFAULT as DEFAULT_POLICY, ModerationPolicy, ModerationRefused, resolve_policy
from ..provenance.marks import MarkSettings, as_mark_settings, mark_image
from ..provenance.outputs import OutputSigner
from ..runs.store import BUNDLED_MODELS_DIR, DEFAULT_MODEL, default_runs_dir
from . import schemas as S
from .jobs import Job, JobQueue, QueueFull
from .limits import LOOPBACK_NAMES, HostAllowList, SecurityHeaders, ServerLimits, send_json
from .ratings import RatingsDB, find_evaluation, latest_evaluation, scores
from .uploads import FIELDS as UPLOAD_FIELDS, Upload, UploadError, decode_audio_upload, decode_upload

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1_000_000
API = "/api/v1"
SAMPLING_SHARE = 0.95  # of a job's progress; marking and signing its images are the rest
log = logging.getLogger("pixelforge.serve")


class BodyLimit:
    """ASGI middleware: answer 413 to a request body over max_bytes (declared or streamed), and 408 to one
    that takes over timeout_s to arrive, before any handler."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # read the body here (it is small by definition) and hand it on whole
        chunks, size, more = [], 0, True
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), None if deadline is None else max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await send_json(send, 408, {"detail": f"request body not received within {self.timeout_s:g} s"},
                                       [(b"connection", b"close")])
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        await send_json(send, 413, {"detail": f"request body over the limit of {self.max_bytes} bytes"})


class CountedStream(StreamingResponse):
    """A streaming answer that calls `release` once it ends, however it ends (finished, client gone, cancelled)."""

    def __init__(self, content, release: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _finite(x):
    """x with every non-finite float (1e400 reads as inf) replaced by its name, as a string."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class ErrorJSON(JSONResponse):
    """An error answer that always encodes, even when it echoes the request's input back: ASCII with
    escapes (a lone surrogate, U+D800 say, has no UTF-8) and non-finite numbers as strings.
    Starlette's own JSONResponse raises on both, which turned a 422 or 404 into a 500."""

    def render(self, content) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":")).encode()


def _invalid(loc: list, msg: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation answers."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _label_index(g: Generator, label, loc: list) -> int | None:
    """A class index or name -> index, as pixelforge.api reads labels; a 422 listing the valid ones otherwise."""
    if label is None:
        return None
    if g.num_classes == 0:
        try:
            g.check_inputs(["labels"])  # an error saying what the model takes instead
        except ValueError as e:
            raise _invalid(loc, str(e)) from None
    valid = ", ".join(g.class_names) if g.class_names else f"0..{g.num_classes - 1}"
    if isinstance(label, str) and not re.fullmatch(r"-?[0-9]+", label):  # int() takes only these ("--3", "²" fail)
        if label not in g.class_names:
            raise _invalid(loc, f"unknown label {label!r}; valid labels: {valid}")
        return g.class_names.index(label)
    idx = int(label)
    if not 0 <= idx < g.num_classes:
        raise _invalid(loc, f"label {idx} out of range; valid labels: {valid} (or indices 0..{g.num_classes - 1})")
    return idx


def model_info(g: Generator, name: str | None = None, limits: ServerLimits | None = None) -> S.ModelInfo:
    cfg = g.model.config
    classes = [S.ClassInfo(index=i, name=g.class_names[i] if i < len(g.class_names) else str(i)) for i in range(g.num_classes)]
    takes = g.inputs
    said = ", ".join("sketches" if f == "spatial" else f for f in takes) or "no condition"
    inputs = [S.InputKind(name=kind, supported=field in takes,
                          note="" if field in takes else f"this model takes {said}",
                          max_length=S.MAX_PROMPT_CHARS if kind == "prompt" and field in takes else None)
              for kind, field in (("label", "labels"), ("prompt", "text"))]
    inputs += _upload_inputs(g, limits or ServerLimits())
    evaluation = latest_evaluation(g.run_dir)
    return S.ModelInfo(
        name=name or g.name, family=g.config.family, image_size=cfg.image_size, channels=cfg.channels,
        num_classes=g.num_classes, classes=classes, sample_options=S.option_specs(g.option_specs.values()),
        edit_options=_edit_option_specs(g), inputs=inputs, checkpoint=g.checkpoint_hash, evaluation=evaluation,
        upscale=cfg.lowres.scale if _upscales(g) else None,
    )


def _upscales(g: Generator) -> bool:
    """Whether g is a super-resolution model (an upscaler run), whose jobs upscale their image."""
    return "upscale" in getattr(g.model, "capabilities", ())


def _edit_option_specs(g: Generator) -> list[S.OptionSpec]:
    """The options of an edit (strength, ...), as the model's family declares them; none where it cannot edit (an
    upscaler's job upscales its image instead)."""
    if "edit" not in getattr(g.model, "capabilities", ()) or _upscales(g):
        return []
    return S.option_specs(g.model.edit_option_specs)


def _upload_inputs(g: Generator, limits: ServerLimits) -> list[S.InputKind]:
    """sketch, image and mask: supported as the model declares (a spatial condition it takes; its family's "edit"
    capability), each with a short note and the server's upload limits."""
    bounds = {"max_bytes": limits.max_upload_bytes, "max_pixels": limits.max_upload_pixels}
    family = g.config.family
    if "spatial" in g.inputs:
        sketch = S.InputKind(name="sketch", supported=True, note="a drawing, dark strokes on white: made into the "
                             "edge map the model was trained on", **bounds)
    else:
        trained = "spatial" in getattr(g.model, "inputs", ())  # the family could, this model was not trained so
        sketch = S.InputKind(name="sketch", supported=False, note="this model was not trained with --condition edges"
                             if trained else f"{family} models take no sketch")
    sketch = [sketch, _audio_input(g, bounds)]
    if _upscales(g):
        cfg = g.model.config
        side = cfg.image_size // cfg.lowres.scale
        return [*sketch,
                S.InputKind(name="image", supported=True, note=f"the small image to upscale {cfg.lowres.scale}x: "
                            f"{side}x{side} (another size is resized)", **bounds),
                S.InputKind(name="mask", supported=False, note="an upscaler takes no mask")]
    try:
        g.check_edit()
    except ValueError as e:
        return [*sketch, *(S.InputKind(name=k, supported=False, note=str(e)) for k in ("image", "mask"))]
    return [*sketch,
            S.InputKind(name="image", supported=True, note="img2img: the image is noised by the strength option "
                        "(0 keeps it, 1 draws anew) and redrawn", **bounds),
            S.InputKind(name="mask", supported=True, note="inpainting, with an image: white marks what is repainted, "
                        "black what is kept", **bounds)]


def _audio_input(g: Generator, bounds: dict) -> S.InputKind:
    """audio: supported where the model takes a spoken clip (--condition audio), with the upload limit."""
    if "audio" in g.inputs:
        return S.InputKind(name="audio", supported=True, note="a WAV clip of a spoken digit (any sample rate: "
                           "resampled), embedded by the model's audio encoder", max_bytes=bounds["max_bytes"])
    trained = "audio" in getattr(g.model, "inputs", ())
    return S.InputKind(name="audio", supported=False, note="this model was not trained with --condition audio"
                       if trained else f"{g.config.family} models take no audio")


async def _decode_uploads(req: S.JobRequest, limits: ServerLimits) -> dict[str, Upload | bytes]:
    """The request's uploads by field, decoded and checked (in a thread: decoding holds the CPU); a 422 naming
    the field otherwise."""
    out = {}
    for field in UPLOAD_FIELDS:
        text = getattr(req, field)
        if text is not None:
            try:
                out[field] = await asyncio.to_thread(decode_upload, field, text, limits)
            except UploadError as e:
                raise _invalid(["body", e.field], str(e)) from None
    if req.audio is not None:
        try:
            out["audio"] = await asyncio.to_thread(decode_audio_upload, "audio", req.audio, limits)
        except UploadError as e:
            raise _invalid(["body", e.field], str(e)) from None
    return out


FILE_PARTS = (*UPLOAD_FIELDS, "audio")  # the file parts a multipart job may carry, named as the JSON fields


async def _multipart_job(request: Request) -> S.JobRequest:
    """A multipart/form-data job -> the JobRequest POST /jobs would take: its `job` part's JSON with each file
    part's bytes as the base64 text of the field of that name. The body's size is already bounded (BodyLimit);
    python-multipart (Starlette's form parser) reads it. A 422 names what is wrong: not multipart, a missing or
    unreadable `job`, an unknown part, a file sent as text, or a file given both ways."""
    import base64

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _invalid(["body"], "send multipart/form-data: a part `job` with the job's JSON and file parts named "
                       f"{', '.join(FILE_PARTS)}")
    try:
        form = await request.form(max_files=len(FILE_PARTS), max_fields=1)
    except Exception as e:  # Starlette raises its own HTTPException (too many parts) or a parser error
        raise _invalid(["body"], f"the multipart body cannot be read: {getattr(e, 'detail', None) or e}") from None
    for name in form.keys():
        if name not in ("job", *FILE_PARTS):
            raise _invalid(["body", name], f"unknown part {name!r}: the parts are job and {', '.join(FILE_PARTS)}")
    text = form.get("job")
    if not isinstance(text, str):
        raise _invalid(["body", "job"], "the part `job` must be present, as text: the job's JSON without its files")
    try:
        job = json.loads(text)
    except json.JSONDecodeError as e:
        raise _invalid(["body", "job"], f"the part `job` is not JSON: {e}") from None
    if not isinstance(job, dict):
        raise _invalid(["body", "job"], "the part `job` must be a JSON object")
    for name in FILE_PARTS:
        part = form.get(name)
        if part is None:
            continue
        if isinstance(part, str):
            raise _invalid(["body", name], f"the part {name} must be a file, not text")
        if job.get(name) is not None:
            raise _invalid(["body", name], f"{name} is given both as a file part and in the job's JSON: give it once")
        job[name] = base64.b64encode(await part.read()).decode()
    try:
        return S.JobRequest.model_validate(job)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _job_post(post: dict | None, reference: Upload | None = None, upscalers: dict[str, Path] | None = None) -> PostSettings | None:
    """A job's "post" object and its color_reference upload -> PostSettings (None: none asked for); a 422 naming
    the field otherwise (PostSettings decides: color "match" without a reference, or a reference without it).
    color match:REF is refused: its REF would be a file on the server's disk, which a client has no business
    reading. Decodes the reference: call it in a thread. The upscaler must be one of the served super-resolution models
    (upscalers: name -> run folder), for the same reason: a job cannot name a folder on the server's disk."""
    if post is None and reference is None:
        return None
    color = (post or {}).get("color")
    if isinstance(color, str) and color.startswith("match:"):
        raise _invalid(["body", "post", "color"], "color match:REF reads a reference file on the server, which a job "
                       "cannot name: send the picture as color_reference with color match, use color auto, or match "
                       "colours locally with `pixelforge post --color match:REF`")
    if "color_reference" in (post or {}):
        raise _invalid(["body", "post", "color_reference"], "color_reference is a field of the job beside post, not "
                       'an option inside it: {"post": {"color": "match"}, "color_reference": "<base64>"}')
    data = None if reference is None else reference.data
    upscaler = (post or {}).get("upscaler")
    if upscaler is not None:
        if not isinstance(upscaler, str) or upscaler not in (upscalers or {}):
            raise _invalid(["body", "post", "upscaler"], f"upscaler {upscaler!r} is not a super-resolution model this "
                           f"server serves; served upscalers: {', '.join(upscalers or {}) or 'none'}")
        post = {**post, "upscaler": str(upscalers[upscaler])}
    try:
        return as_post_settings(PostSettings.from_dict(post or {}, color_reference=data))
    except PostError as e:
        raise _invalid(["body", e.field] if e.field == "color_reference" else ["body", "post", e.field], str(e)) from None


def job_info(queue: JobQueue, job: Job) -> S.JobInfo:
    images, settings = [], []
    if job.status == "done":
        settings = job.result["settings"]
        images = [f"{API}/jobs/{job.id}/images/{i}.png" for i in range(len(settings))]
    return S.JobInfo(
        id=job.id, model=job.model, n=job.n, status=job.status, progress=round(job.progress, 4), error=job.error,
        queue_position=queue.queue_position(job), created=job.created, started=job.started, finished=job.finished,
        images=images, settings=settings,
    )


def _generators(models: list[str], *, device: str, runs_dir: str | Path | None,
                moderation: ModerationPolicy | None = None) -> tuple[dict[str, Generator], dict[str, str]]:
    """Each model loaded once, under the name the CLI takes for it (a run under the runs folder or a bundled
    model: its plain name; any other folder: the path as given), and {every name it answers to: that name}:
    the plain name, the name or path given, and the Generator's own name."""
    runs = (Path(runs_dir) if runs_dir is not None else default_runs_dir()).resolve()
    generators: dict[str, Generator] = {}
    aliases: dict[str, str] = {}
    for given in models:
        g = load(given, device=device, runs_dir=runs_dir, moderation=moderation)
        run_dir = Path(g.run_dir)
        name = run_dir.name if run_dir.resolve().parent in (runs, BUNDLED_MODELS_DIR.resolve()) else str(given)
        if name in generators:
            raise ValueError(f"model {name!r} named twice")
        generators[name] = g
        for alias in (name, str(given), str(run_dir), g.name):
            if aliases.setdefault(alias, name) != name:
                raise ValueError(f"models {aliases[alias]!r} and {name!r} both answer to {alias!r}: serve one of them by its path")
    return generators, aliases


def create_app(
    models: list[str] | None = None,
    *,
    api_key: str | None = None,
    max_queue: int = 16,
    workers: int = 1,
    job_timeout_s: float | None = 300.0,
    db_path: str | Path | None = None,
    keep_jobs: int = 100,
    max_body_bytes: int = MAX_BODY_BYTES,
    cors_origins: list[str] | None = None,
    device: str = "auto",
    runs_dir: str | Path | None = None,
    allowed_hosts: list[str] | None = None,
    api_docs: bool = False,
    limits: ServerLimits | None = None,
    moderation: str | Path | ModerationPolicy | None = DEFAULT_POLICY,
    watermark: bool | MarkSettings = True,
) -> FastAPI:
    """The FastAPI app serving `models` (run folders, run names or bundled models; default: the bundled one).

    api_key: required on every /api/v1 endpoint but health (Authorization: Bearer KEY or X-API-Key: KEY).
    max_queue: waiting jobs before 429; workers: jobs run at once; job_timeout_s: a running job's limit.
    db_path: the ratings SQLite file (default RUNS_DIR/ratings.sqlite); keep_jobs: finished jobs kept.
    allowed_hosts: the Host names answered, others get 400 ("*": any; default: loopback names only).
    api_docs: serve the interactive API docs at /docs (they load their script from a public CDN).
    limits: event-stream bounds and the body timeout (the connection bounds are the server's: limits.py).
    moderation: the prompt moderation policy every prompt passes before its job is queued (a refused one gets
    422 naming the field; the refusal is logged, without the prompt unless the policy's log_prompts):
    "default" ($PIXELFORGE_MODERATION_POLICY, else the shipped file), a policy file, or None / "none".
    watermark: the invisible watermark on every generated image (on by default; False: off; a MarkSettings for
    a user key; MarkSettings(manifest=False): no C2PA manifest); each image's settings record whether and what was
    embedded. Every PNG the server returns is signed with a C2PA manifest (provenance/outputs.py) unless the
    marks turn it off; the key is read (or the default one made) here, at start-up.
    """
    marks = as_mark_settings(watermark)
    signer = OutputSigner(marks)
    signer.ready()  # a broken configured key stops the server from starting, not its first job
    limits = limits or ServerLimits()
    policy = resolve_policy(moderation)
    generators, aliases = _generators(models or [DEFAULT_MODEL], device=device, runs_dir=runs_dir, moderation=policy)
    queue = JobQueue(workers=workers, max_queue=max_queue, keep=keep_jobs, timeout_s=job_timeout_s)
    db = RatingsDB(db_path if db_path is not None else (Path(runs_dir) if runs_dir else default_runs_dir()) / "ratings.sqlite")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        queue.stop()

    app = FastAPI(
        title="pixelforge", version=__version__, lifespan=lifespan, redoc_url=None, docs_url="/docs" if api_docs else None,
        description="Generate images with trained pixelforge models, follow jobs, and collect human ratings.",
    )
    app.state.generators, app.state.queue, app.state.ratings = generators, queue, db
    app.state.model_aliases, app.state.limits = aliases, limits
    app.state.moderation = policy
    app.state.marks = marks

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        return ErrorJSON({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return ErrorJSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout_s=limits.idle_timeout_s)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    # added last, so run first: a wrong host is refused before anything else, and every answer gets the headers
    app.add_middleware(HostAllowList, hosts=list(allowed_hosts) if allowed_hosts is not None else list(LOOPBACK_NAMES))
    app.add_middleware(SecurityHeaders, docs_paths=("/docs", "/docs/oauth2-redirect") if api_docs else ())

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
    bearer = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")

    def require_key(x_api_key: str | None = Security(key_header),
                    auth: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if api_key is None:
            return
        given = x_api_key or (auth.credentials if auth else None)
        if not given:
            raise HTTPException(401, "this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(403, "wrong API key")

    public = APIRouter(prefix=API)
    private = APIRouter(prefix=API, dependencies=[Depends(require_key)])

    def generator_of(name: str, loc: list) -> Generator:
        g = generators.get(aliases.get(name, ""))
        if g is None:
            raise _invalid(loc, f"unknown model {name!r}; valid models: {', '.join(generators)}")
        return g

    def model_name(name: str) -> str:
        """The name a model is listed under, for any name it answers to (a name it does not: as given)."""
        return aliases.get(name, name)

    def job_of(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or finished long enough ago to be dropped)")
        return job

    @public.get("/health", response_model=S.Health, summary="liveness and queue load (no key needed)")
    async def health():
        counts = queue.counts()
        return S.Health(status="ok", version=__version__, auth_required=api_key is not None, models=len(generators),
                        queue=S.QueueInfo(**counts, max_queue=queue.max_queue, workers=queue.workers))

    @private.get("/models", response_model=S.ModelList, summary="the models served, their classes and sampling options")
    def list_models():
        return S.ModelList(models=[model_info(g, name, limits) for name, g in generators.items()],
                           post=S.post_info(post_option_specs(), limits.max_upload_bytes, limits.max_upload_pixels))

    @private.post("/jobs", response_model=S.JobCreated, status_code=202, summary="queue a generation job")
    async def create_job(req: S.JobRequest, response: Response):
        g = generator_of(req.model, ["body", "model"])
        upscaling = _upscales(g)  # an upscaler's job upscales its image: the page's and the API's upscale path
        if upscaling and (req.image is None or req.mask is not None):
            field, why = ("image", "") if req.image is None else ("mask", ", without a mask")
            raise _invalid(["body", field], f"{req.model} is an upscaler: send the small image to upscale as image{why}")
        editing = req.image is not None and not upscaling
        try:
            if req.sketch is not None:
                g.check_sketch()
            if editing:
                g.check_edit()
        except ValueError as e:
            raise _invalid(["body", "sketch" if req.sketch is not None else "image"], str(e)) from None
        if req.audio is not None:
            try:
                g.check_audio()
            except ValueError as e:
                raise _invalid(["body", "audio"], str(e)) from None
        edit_specs = _edit_option_specs(g)
        if not editing:
            for name in set(req.options) & {spec.name for spec in edit_specs}:
                raise _invalid(["body", "options", name], f"{name} is an option of edits: it needs an image to act on")
        try:
            specs = S.option_specs(g.option_specs.values()) + (edit_specs if editing else [])
            options = S.check_options(req.options, specs)
        except S.OptionError as e:
            raise _invalid(e.loc, str(e)) from None
        if req.labels is not None:
            labels = [_label_index(g, lb, ["body", "labels", i]) for i, lb in enumerate(req.labels)]
        else:
            labels = [_label_index(g, req.label, ["body", "label"])] * req.n
        prompts = req.prompts if req.prompts is not None else [req.prompt] * req.n
        try:
            given_text = g.check_prompts(prompts, req.negative_prompt)
        except ValueError as e:  # a model without text, or a negative prompt without guidance
            given = [f for f in ("prompt", "prompts", "negative_prompt") if getattr(req, f) is not None]
            raise _invalid(["body", given[0] if "text" not in g.inputs else "negative_prompt"], str(e)) from None
        if given_text:
            try:  # in a thread: a policy with concepts runs the text encoder, which would hold up the event loop
                await asyncio.to_thread(g.moderate, prompts, req.negative_prompt, per_image=req.prompts is not None)
            except ModerationRefused as e:  # refused before a job exists
                log.warning(e.log_line())
                raise _invalid(["body", e.field, *([] if e.index is None else [e.index])], str(e)) from None
        text = {"prompts": prompts, "negative_prompt": req.negative_prompt} if given_text else {}
        n, seed = req.n, req.seed
        uploads = await _decode_uploads(req, limits)
        upscalers = {name: gen.run_dir for name, gen in generators.items() if "upscale" in gen.model.capabilities}
        post = await asyncio.to_thread(_job_post, req.post, uploads.get("color_reference"), upscalers)
        if upscaling:  # the file's bytes: each image's settings record its pixels' SHA-256, as `pixelforge upscale`
            inputs = {"images": [uploads["image"].data] * n}
        elif editing:  # the files' bytes: each image's settings record their SHA-256, as for files given to the CLI
            mask = uploads["mask"].data if "mask" in uploads else None
            inputs = {"images": [uploads["image"].data] * n, "mask": mask}
        else:
            inputs = {"sketch": uploads["sketch"].image} if "sketch" in uploads else {}
            if "audio" in uploads:  # the WAV bytes: each image's settings record their SHA-256
                inputs["audio"] = uploads["audio"]

        def work(progress):
            # Sampling is the first SAMPLING_SHARE of a job's progress, marking and signing each image the rest, so
            # a running job never reports 1.0 (that is "done") and a cancel is still heard while it signs.
            def sampled(done: float, total: float) -> None:
                progress(SAMPLING_SHARE * done / total if total else 0.0, 1.0)

            make = g.upscale if upscaling else g.edit if editing else functools.partial(g.generate, n)
            conditions = {} if upscaling else {"labels": labels, **text}  # an upscaler's sole condition is its image
            images = make(seed=seed, callback=sampled, watermark=False, post=post, **inputs, **conditions, **options)
            pngs, settings = [], []
            for i, im in enumerate(images):
                im = mark_image(im, marks=marks)  # marked here, with the server's settings
                # model_path is where the model lies on this machine: of no use to a client, and not its business
                settings.append({k: v for k, v in im.info["pixelforge"].items() if k != "model_path"})
                # signed last, over the bytes the client gets (the settings' model_path is gone: the run is g's)
                pngs.append(signer.png(im, settings[-1], run_dir=g.run_dir))
                progress(SAMPLING_SHARE + (1 - SAMPLING_SHARE) * (i + 1) / (len(images) + 1), 1.0)
            return {"png": pngs, "settings": settings}

        try:
            job = queue.submit(model_name(req.model), n, work)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        url = f"{API}/jobs/{job.id}"
        response.headers["Location"] = url
        return S.JobCreated(id=job.id, status=job.status, url=url)

    @private.post("/jobs/upload", response_model=S.JobCreated, status_code=202,
                  summary="queue a generation job whose files come as multipart/form-data parts",
                  openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                      "type": "object", "required": ["job"],
                      "properties": {"job": {"type": "string", "description": "the job's JSON, as POST /jobs takes it, "
                                                                              "without its files"},
                                     **{f: {"type": "string", "format": "binary"} for f in FILE_PARTS}}}}}}})
    async def create_job_upload(request: Request, response: Response):
        """The same job as POST /jobs, sent as multipart/form-data: the part `job` holds the JSON a /jobs request
        would, without its files, and the parts sketch, image, mask, audio and color_reference the files
        themselves. Each file goes through the same checks as a base64 upload, so what is refused, and why, is
        the same; a 422 names the part."""
        return await create_job(await _multipart_job(request), response)

    @private.get("/jobs/{job_id}", response_model=S.JobInfo, summary="a job's status, progress and results")
    async def get_job(job_id: str):
        return job_info(queue, job_of(job_id))

    @private.delete("/jobs/{job_id}", response_model=S.JobInfo,
                    summary="cancel a job (a running one stops at its next sampler step)")
    async def cancel_job(job_id: str):
        job_of(job_id)
        job = queue.cancel(job_id)
        return job_info(queue, job)

    streams: collections.Counter[str] = collections.Counter()  # open event streams per client IP (event loop only)

    @private.get("/jobs/{job_id}/events", summary="Server-Sent Events: 'progress' events, then one 'done', 'failed' or 'cancelled'",
                 response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request):
        job = job_of(job_id)
        client = request.client.host if request.client else ""
        if streams.total() >= limits.max_streams:
            raise HTTPException(429, f"the server holds its limit of {limits.max_streams} event streams: poll "
                                f"{API}/jobs/{job_id} instead, or retry later", headers={"Retry-After": "5"})
        if streams[client] >= limits.max_streams_per_client:
            raise HTTPException(429, f"this client holds its limit of {limits.max_streams_per_client} event streams: "
                                "close one, or poll the job instead", headers={"Retry-After": "5"})
        streams[client] += 1

        def release() -> None:
            streams[client] -= 1
            if streams[client] <= 0:
                del streams[client]

        async def stream():
            seen, beat, end = -1, time.monotonic(), time.monotonic() + limits.stream_max_s
            while time.monotonic() < end:  # past its lifetime a stream ends: the client reconnects or polls
                if job.version != seen:
                    seen = job.version
                    event = job.status if job.is_final else "progress"
                    yield f"event: {event}\ndata: {job_info(queue, job).model_dump_json()}\n\n"
                    if job.is_final:
                        return
                    beat = time.monotonic()
                elif time.monotonic() - beat > 15:
                    yield ": keep-alive\n\n"
                    beat = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return CountedStream(stream(), release, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @private.get("/jobs/{job_id}/images/{index}.png", summary="image i of a finished job: a PNG carrying its settings",
                 response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def job_image(job_id: str, index: int):
        job = job_of(job_id)
        if job.status != "done":
            raise HTTPException(409 if not job.is_final else 404, f"job {job_id} is {job.status}: it has no images"
                                + ("" if job.is_final else " yet"))
        pngs = job.result["png"]
        if not 0 <= index < len(pngs):
            raise HTTPException(404, f"job {job_id} has images 0..{len(pngs) - 1}, not {index}")
        s = job.result["settings"][index]
        filename = f"seed{s.get('seed', index):06d}" + (f"-label{s['label']}" if s.get("label") is not None else "") + ".png"
        return Response(pngs[index], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "private, max-age=3600"})

    @private.post("/ratings", response_model=S.RatingCreated, status_code=201, summary="record which of two images a person preferred")
    def add_rating(req: S.RatingRequest):
        for side in ("a", "b"):
            generator_of(getattr(req, side).model, ["body", side, "model"])
        rating_id = db.add(model_name(req.a.model), req.a.settings, model_name(req.b.model), req.b.settings, req.winner)
        return S.RatingCreated(id=rating_id, count=db.count())

    @private.get("/ratings/scores", response_model=S.Scores, summary="Elo and Bradley-Terry scores from the ratings, with FID where known")
    def rating_scores(by: Literal["model", "settings"] = Query("model", description="score each model, or each model and sampling settings")):
        def evaluation(name):
            g = generators.get(model_name(name))
            return latest_evaluation(g.run_dir) if g else find_evaluation(name, runs_dir)

        return scores(db.rows(), by=by, evaluation=evaluation)

    app.include_router(public)
    app.include_router(private)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
