"""Request and response models of the HTTP API, each declared once; the sampling-option specs, read
from each model's family declaration (models/options.py), drive the web page's form, the validation of
job requests and the OpenAPI schema alike."""

from __future__ import annotations

import math
from typing import Annotated, Iterable, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, StringConstraints,
                      field_validator, model_validator)

from ..models import options as family_options
from ..post import ORDER as POST_ORDER, PostOption, options_help as post_options_help

MAX_IMAGES = 64  # images per job
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000  # a prompt's length; the text encoder reads only its first tokens anyway

UPLOAD_HELP = ("a PNG or JPEG file as base64, or as a data: URL (data:image/png;base64,...), within the limits "
               "GET /models lists")
Label = Union[StrictInt, StrictStr]  # class index or class name
OptionValue = Union[StrictInt, StrictFloat, StrictStr]
SettingValue = Union[StrictStr, StrictInt, StrictFloat, bool, None]
# an image's recorded post-processing (its settings' "post": pixelforge.post.PostSettings.to_record), the one
# setting that is not a plain value: plain values and the list of the steps in the order they ran
PostRecord = dict[str, Union[SettingValue, list[StrictStr]]]
ImageSetting = Union[SettingValue, PostRecord]


class OptionSpec(BaseModel):
    """One sampling option a model takes: its kind, default and allowed values."""

    name: str
    kind: Literal["int", "float", "choice", "str"]
    default: OptionValue
    min: int | float | None = None
    max: int | float | None = None
    choices: list[str] | None = None
    help: str = ""


def option_specs(specs: Iterable[family_options.OptionSpec]) -> list[OptionSpec]:
    """The answer's form of a model's option declarations (`Generator.option_specs`, the family's with the
    run's own defaults): the ranges are the family's, written nowhere else."""
    return [OptionSpec(name=s.name, kind=s.kind, default=s.default, min=s.min, max=s.max,
                       choices=None if s.choices is None else list(s.choices), help=s.help) for s in specs]


class OptionError(ValueError):
    """An invalid job field; `loc` says which one, as in FastAPI's own 422 answers."""

    def __init__(self, loc: list, msg: str):
        super().__init__(msg)
        self.loc = loc


def encodable(s: str) -> bool:
    """Whether a string has a UTF-8 form: JSON may carry a lone surrogate (\\ud800) that no answer can echo."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_options(options: dict, specs: list[OptionSpec]) -> dict:
    """Validate job options against a model's option specs; returns them with ints as floats where a float is due."""
    by_name = {s.name: s for s in specs}
    out = {}
    for name, value in options.items():
        loc = ["body", "options", name]
        spec = by_name.get(name)
        if spec is None:
            raise OptionError(loc, f"unknown option {name!r}; valid options: {', '.join(by_name) or 'none'}")
        if spec.kind == "choice":
            if value not in (spec.choices or []):
                raise OptionError(loc, f"{name} must be one of: {', '.join(spec.choices or [])}; got {value!r}")
        elif spec.kind == "str":
            if not isinstance(value, str) or not encodable(value):
                raise OptionError(loc, f"{name} must be a (UTF-8) string, got {value!r}")
        else:
            if spec.kind == "int" and not isinstance(value, int):
                raise OptionError(loc, f"{name} must be an integer, got {value!r}")
            if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
                raise OptionError(loc, f"{name} must be a finite number, got {value!r}")  # NaN passes every range test
            if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                lo, hi = ("-inf" if spec.min is None else f"{spec.min:g}"), ("inf" if spec.max is None else f"{spec.max:g}")
                raise OptionError(loc, f"{name} must be between {lo} and {hi}, got {value!r}")
            value = float(value) if spec.kind == "float" else value
        out[name] = value
    return out


# a str of pydantic's refuses a lone surrogate ("\ud800") itself, so every prompt has a UTF-8 form to echo
Prompt = Annotated[StrictStr, StringConstraints(max_length=MAX_PROMPT_CHARS)]


class ClassInfo(BaseModel):
    index: int
    name: str


class InputKind(BaseModel):
    """A kind of input a model may take, and whether this one takes it."""

    name: Literal["label", "prompt", "sketch", "image", "mask", "audio"]
    supported: bool
    note: str = ""
    max_length: int | None = Field(None, description="the longest text accepted (prompts), in characters")
    max_bytes: int | None = Field(None, description="the largest file accepted (sketch, image, mask, audio), in bytes "
                                  "once decoded from base64")
    max_pixels: int | None = Field(None, description="the most pixels (width x height) an uploaded image may have")


class Evaluation(BaseModel):
    """A model's newest FID, with what it was measured with (its run's evaluations.jsonl)."""

    fid: float
    extractor: str | None = None
    n_fake: int | None = None
    sampling: dict[str, SettingValue] = {}


class ModelInfo(BaseModel):
    name: str
    family: str
    image_size: int
    channels: int
    num_classes: int
    classes: list[ClassInfo]
    sample_options: list[OptionSpec]
    edit_options: list[OptionSpec] = Field(default_factory=list, description="options of a job with an image "
                                           "(strength, ...), as the family declares them; none where it cannot edit")
    inputs: list[InputKind]
    checkpoint: str
    evaluation: Evaluation | None = None
    upscale: int | None = Field(None, description="the factor of a super-resolution model (an upscaler): a job sends it "
                                "the small image as image, and post's upscaler may name it for that factor; null otherwise")


class PostOptionSpec(BaseModel):
    """One option of a job's "post", as pixelforge.post declares it: kind, range or choices, the value it takes
    when asked for without one (null: none, as denoise_strength, whose default depends on the method)."""

    name: str
    kind: Literal["int", "float", "choice"]
    min: int | float | None = None
    max: int | float | None = None
    choices: list[str] | None = None
    default: OptionValue | None = None
    help: str = ""


class PostInfo(BaseModel):
    """The post-processing every job may ask for (`post`, the same for every model), and the limits of its
    color_reference upload (those of every upload)."""

    options: list[PostOptionSpec]
    reference_max_bytes: int = Field(description="the largest color_reference accepted, in bytes once decoded")
    reference_max_pixels: int = Field(description="the most pixels (width x height) a color_reference may have")


def post_info(specs: Iterable[PostOption], max_bytes: int, max_pixels: int) -> PostInfo:
    """The answer's form of pixelforge.post's option declarations: the ranges are post.py's, written nowhere else."""
    return PostInfo(options=[PostOptionSpec(name=s.name, kind=s.kind, min=s.min, max=s.max, default=s.default,
                                            choices=None if s.choices is None else list(s.choices), help=s.help)
                             for s in specs], reference_max_bytes=max_bytes, reference_max_pixels=max_pixels)


class ModelList(BaseModel):
    models: list[ModelInfo]
    post: PostInfo | None = Field(None, description="the post-processing options of every job (docs/post.md)")


class QueueInfo(BaseModel):
    queued: int
    running: int
    max_queue: int
    workers: int


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    auth_required: bool
    models: int
    queue: QueueInfo


class JobRequest(BaseModel):
    """Generate n images from a model; image i uses seed + i, so it does not depend on n."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a model name from GET /api/v1/models")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="number of images")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="image i uses seed + i")
    label: Label | None = Field(None, description="class index or name, for every image")
    labels: list[Label] | None = Field(None, description="one class index or name per image (instead of label)")
    prompt: Prompt | None = Field(None, description=f"a text prompt for every image (models that take text; "
                                  f"at most {MAX_PROMPT_CHARS} characters)")
    prompts: list[Prompt | None] | None = Field(None, description="one prompt per image, null for none (instead of prompt)")
    negative_prompt: Prompt | None = Field(None, description="what guidance (options.guidance > 1) steers away from")
    options: dict[str, OptionValue] = Field(default_factory=dict, description="the model's sample_options (with an "
                                            "image, also its edit_options: strength, ...)")
    sketch: StrictStr | None = Field(None, description=f"a drawing for every image, dark strokes on white (models whose "
                                     f"inputs list sketch as supported): {UPLOAD_HELP}")
    image: StrictStr | None = Field(None, description=f"an image to edit (img2img; models whose inputs list image as "
                                    f"supported), noised by options.strength and redrawn, for every image: {UPLOAD_HELP}")
    audio: StrictStr | None = Field(None, description="a spoken clip for every image (models whose inputs list audio as "
                                    "supported): a WAV file as base64 or a data:audio/wav;base64 URL, at most the "
                                    "input's max_bytes once decoded; any sample rate (resampled)")
    mask: StrictStr | None = Field(None, description=f"with image: inpainting, white marks what is repainted, black "
                                   f"what is kept: {UPLOAD_HELP}")
    post: dict[str, OptionValue | None] | None = Field(
        None, description="post-processing of every image, applied in the order " + ", ".join(POST_ORDER)
        + " before the watermark (docs/post.md): " + "; ".join(f"{k}: {v}" for k, v in post_options_help().items()))
    color_reference: StrictStr | None = Field(None, description=f"with post color \"match\": the picture each image's "
                                              f"colours are matched to (each channel's histogram): {UPLOAD_HELP}")

    @model_validator(mode="after")
    def _one_field_of_each_pair(self):
        for one, each in (("label", "labels"), ("prompt", "prompts")):
            given = getattr(self, each)
            if getattr(self, one) is not None and given is not None:
                raise ValueError(f"give {one} or {each}, not both")
            if given is not None and len(given) != self.n:
                raise ValueError(f"{each} must hold n={self.n} entries, got {len(given)}")
        if self.mask is not None and self.image is None:
            raise ValueError("a mask needs an image: it marks what of the image is repainted")
        if self.sketch is not None and self.image is not None:
            raise ValueError("give a sketch or an image, not both: an edit takes no sketch")
        if self.audio is not None and self.image is not None:
            raise ValueError("give audio or an image, not both: an edit takes no audio")
        return self


JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class JobCreated(BaseModel):
    id: str
    status: JobStatus
    url: str


class JobInfo(BaseModel):
    id: str
    model: str
    n: int
    status: JobStatus
    progress: float = Field(description="0..1")
    error: str | None = None
    queue_position: int | None = Field(None, description="jobs ahead of this one while queued")
    created: float
    started: float | None = None
    finished: float | None = None
    images: list[str] = Field(default_factory=list, description="URLs of the PNGs (each carries its settings)")
    settings: list[dict[str, ImageSetting]] = Field(default_factory=list, description="each image's settings")


class RatingSide(BaseModel):
    """One of the two images compared: its model and the settings it was made with."""

    model_config = ConfigDict(extra="forbid")

    model: str
    settings: dict[str, ImageSetting] = Field(default_factory=dict, max_length=32)

    @field_validator("settings")
    @classmethod
    def _storable(cls, settings: dict) -> dict:
        # stored, then echoed by GET /ratings/scores: one unencodable string there would fail every later answer
        flat = [(k, v) for k, v in settings.items() if not isinstance(v, dict)]
        flat += [(f"{k}.{kk}", x) for k, v in settings.items() if isinstance(v, dict) for kk, vv in v.items()
                 for x in (vv if isinstance(vv, list) else [vv])]  # a post record's entries, and its steps
        for key, value in flat:
            if not encodable(key) or (isinstance(value, str) and not encodable(value)):
                raise ValueError(f"settings must be UTF-8 text: {key!r}: {value!r} holds a lone surrogate")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"settings must hold finite numbers, got {key!r}: {value!r}")
        return settings


class RatingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: RatingSide
    b: RatingSide
    winner: Literal["a", "b", "tie"]


class RatingCreated(BaseModel):
    id: int
    count: int = Field(description="ratings stored in all")


class Score(BaseModel):
    name: str = Field(description="the model, or model and settings when scores are by settings")
    model: str
    settings: dict[str, SettingValue] = {}
    elo: float
    bt_strength: float
    count: int
    wins: int
    losses: int
    ties: int
    evaluation: Evaluation | None = None


class Scores(BaseModel):
    by: Literal["model", "settings"]
    ratings: int
    method: str
    scores: list[Score]
