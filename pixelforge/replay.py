"""`sample --from`: an image made again from the settings its PNG carries (api.regenerate), with the run, the
checkpoint and every input file it was made from found and checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from .images import read_settings
from .post import check_record
from .provenance.marks import MarkSettings
from .provenance.moderation import DEFAULT as DEFAULT_POLICY, ModerationPolicy
from .runs.store import default_runs_dir, resolve_run, weights_hash


def _find_model(s: dict, png_path, runs_dir) -> Path:
    """The run folder a PNG's settings name: its model name resolved through runs_dir ($PIXELFORGE_RUNS,
    ./runs) or the bundled models, else the absolute path recorded beside it; the one holding the
    recorded checkpoint wins, so a same-named run elsewhere is not taken for it."""
    model = str(s.get("model", ""))
    if not model:
        raise ValueError(f"{png_path}: its settings name no model")
    candidates: dict[Path, Path] = {}  # resolved -> as found, each folder once
    for name in (model, Path(model).name):  # Path(model).name: a name recorded as runs/NAME by older versions
        try:
            found = resolve_run(name, runs_dir)
        except FileNotFoundError:
            continue
        candidates.setdefault(found.resolve(), found)
    hint = s.get("model_path")
    if isinstance(hint, str) and hint and (Path(hint) / "config.json").is_file():
        candidates.setdefault(Path(hint).resolve(), Path(hint))
    if not candidates:
        runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        raise FileNotFoundError(f"{png_path} was made by model {model!r}, which is not in {runs}/, not a bundled model"
                                + (f", and not at {hint}" if hint else "") + ": pass --runs-dir (or set PIXELFORGE_RUNS)")
    wanted = s.get("checkpoint")
    for run_dir in candidates.values():
        try:
            if not wanted or weights_hash(run_dir) == wanted:
                return run_dir
        except FileNotFoundError:  # a run folder without a checkpoint yet
            continue
    found = next(iter(candidates.values()))
    raise ValueError(
        f"{png_path} was made by checkpoint {wanted} of {model}, but that model's weights ({found}) are now "
        f"{weights_hash(found)}: the image cannot be reproduced exactly"
    )


def regenerate(png_path: str | os.PathLike, *, device: str = "auto", runs_dir=None,
               moderation: str | os.PathLike | ModerationPolicy | None = DEFAULT_POLICY,
               watermark: bool | MarkSettings = True) -> tuple[Image.Image, dict]:
    """Regenerate the image whose settings a PNG carries; errors clearly if the weights changed.

    The model is looked up by its recorded name through runs_dir ($PIXELFORGE_RUNS, ./runs) and the
    bundled models, then at the recorded absolute path; the recorded checkpoint hash must match. Recorded
    post-processing is applied again (a color match's reference file must be where it was, unchanged)."""
    s = read_settings(png_path)
    rows = _recorded_batch(s, png_path)
    if "image_sha256" in s:  # an edit: its input image and mask's copies beside it
        return _replay_edit(s, png_path, rows, device=device, runs_dir=runs_dir, moderation=moderation,
                            watermark=watermark)
    sketch = _recorded_sketch(s, png_path)
    audio = _recorded_audio(s, png_path)
    post = check_record(s["post"], str(png_path)) if s.get("post") is not None else None
    from .api import Generator

    g = Generator(_find_model(s, png_path, runs_dir), device=device, name=s["model"], moderation=moderation)
    options = {k: s[k] for k in g.sample_options if k in s}
    if "input_sha256" in s:  # an upscaled image: its input's copy beside it
        (image,) = g.upscale([_recorded_input(s, png_path, g.model.config.channels)], seeds=[s["seed"]],
                             watermark=watermark, post=post, _rows=rows, **options)
        return image, s
    (image,) = g.generate(1, label=s.get("label"), prompt=s.get("prompt"), negative_prompt=s.get("negative_prompt"),
                          sketch=sketch, audio=audio, seeds=[s["seed"]], watermark=watermark, post=post,
                          _rows=rows, **options)
    return image, s


MAX_REPLAY_BATCH = 65_536  # a recorded batch above this is refused (a PNG's settings are untrusted input)


def _recorded_batch(s: dict, png_path) -> int | None:
    """The size of the batch a PNG's image was sampled in (its settings' "batch"; None where older versions did not
    record it: the image is computed alone); a clear error for a value that is not a whole number in range."""
    batch = s.get("batch")
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_REPLAY_BATCH:
        raise ValueError(f"{png_path}: its settings' batch must be a whole number from 1 to {MAX_REPLAY_BATCH}, "
                         f"got {batch!r}")
    return batch


def _replay_edit(s: dict, png_path, rows: int | None, *, device: str, runs_dir, moderation,
                 watermark) -> tuple[Image.Image, dict]:
    """regenerate() for an edit: its recorded input image and mask (copies beside the PNG, checked against their
    recorded SHA-256), strength, resample, label or prompt, seed and sampling options, given to edit() again, in a
    batch of `rows` (_recorded_batch)."""
    from .edit import read_input

    def recorded(kind: str, verb: str) -> Path | None:
        if s.get(f"{kind}_sha256") is None:
            return None
        return _recorded_copy(s, png_path, kind, verb, lambda path: read_input(path, kind)[1])

    image = recorded("image", "was edited from the image")
    mask = recorded("mask", "was inpainted with the mask")
    post = check_record(s["post"], str(png_path)) if s.get("post") is not None else None
    from .api import Generator

    g = Generator(_find_model(s, png_path, runs_dir), device=device, name=s["model"], moderation=moderation)
    edit_names = {spec.name for spec in g.model.edit_option_specs} if "edit" in g.model.capabilities else set()
    options = {k: s[k] for k in (*g.sample_options, *edit_names) if k in s}
    (edited,) = g.edit(image, mask=mask, label=s.get("label"), prompt=s.get("prompt"),
                       negative_prompt=s.get("negative_prompt"), seeds=[s["seed"]], watermark=watermark, post=post,
                       _rows=rows, **options)
    return edited, s


def _recorded_copy(s: dict, png_path, key: str, verb: str, digest_of) -> Path:
    """The file a PNG's settings name under `key` (an input it was made from), beside the PNG and with the SHA-256
    recorded under `key`_sha256 (digest_of(path) computes it as recorded); a clear error naming the file when it is
    missing or changed. verb: how the PNG came from it, for messages ("was drawn from the sketch")."""
    name, digest = s.get(key), str(s[f"{key}_sha256"])
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise ValueError(f"{png_path}: its settings name no valid {key} file ({name!r})")
    path = Path(png_path).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{png_path} {verb} {name} (SHA-256 {digest[:16]}...), which is not beside it at "
                                f"{path}: put it back there to regenerate the image")
    if digest_of(path) != digest:
        raise ValueError(f"{path} is not the {key} {png_path} was made from: its SHA-256 differs from the recorded one")
    return path


def _recorded_audio(s: dict, png_path) -> bytes | None:
    """The bytes of the clip a PNG's settings name, beside the PNG and with the recorded SHA-256; None when
    the image was not drawn from a clip. A clear error when it is missing or changed."""
    if "audio_sha256" not in s:
        return None
    path = _recorded_copy(s, png_path, "audio", "was drawn from the audio clip",
                          lambda path: hashlib.sha256(path.read_bytes()).hexdigest())
    return path.read_bytes()


def _recorded_sketch(s: dict, png_path) -> Path | None:
    """The sketch file a PNG's settings name, beside the PNG and with the recorded SHA-256; None when the
    image was not drawn from a sketch. A clear error when it is missing or changed."""
    if "sketch_sha256" not in s:
        return None
    from .condition.edges import read_sketch

    return _recorded_copy(s, png_path, "sketch", "was drawn from the sketch", lambda path: read_sketch(path)[1])


def _recorded_input(s: dict, png_path, channels: int) -> Path:
    """The low-resolution input an upscaled PNG's settings name, beside the PNG and with the recorded SHA-256 (of
    its pixels in the model's `channels`); a clear error when it is missing or changed."""
    from .upscale import read_lowres

    return _recorded_copy(s, png_path, "input", "was upscaled from", lambda path: read_lowres(path, channels)[1])


def model_dir(s: dict, png_path) -> Path | None:
    """The run folder holding the weights an image's settings record (as regenerate finds it), or None."""
    try:
        return _find_model(s, png_path, None)
    except (FileNotFoundError, ValueError):
        return None
