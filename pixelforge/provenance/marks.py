"""The one place where provenance marks go on an image before it is saved: `sample`, `edit`, the API's
generate/edit/save_images and the server all call mark_image. It embeds the invisible watermark (watermark.py)
and records in the image's settings whether and what was embedded.

The payload (32 bits) is a 16-bit model id (from the checkpoint's hash, else the model's name) and a 16-bit
generation id (from the image's settings: model, seed, options, prompt), so a detected mark names the model and,
among that model's images, the generation; the PNG's settings (and a manifest) carry the rest.

The key: the project's own key alone by default (any pixelforge detects the mark), or combined with a user key
given as `key` (CLI --watermark-key / --key) or $PIXELFORGE_WATERMARK_KEY, so that only holders of that key can
detect the mark. The key itself is never written into an image's settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..images import png_info
from .watermark import (DEFAULT_PSNR, MIN_SIDE, PAYLOAD_BITS, Detection, UnmarkableImage, WatermarkConfig, detect,
                        embed_with_psnr)

KEY_ENV = "PIXELFORGE_WATERMARK_KEY"
SETTINGS_KEY = "watermark"  # the settings entry saying whether the mark is embedded; the others start "watermark_"
ID_BITS = PAYLOAD_BITS // 2


@dataclass(frozen=True)
class MarkSettings:
    """Which marks an output gets. watermark: embed the invisible watermark (on by default); key: the user
    key (None: $PIXELFORGE_WATERMARK_KEY where set, else none: the project key alone); psnr: the watermark's
    strength as the marked image's PSNR in dB (30..60); manifest: sign a C2PA manifest into the PNG when it is
    written or served (on by default; provenance/outputs.py, after mark_image and any post-processing)."""

    watermark: bool = True
    key: str | None = None
    psnr: float = DEFAULT_PSNR
    manifest: bool = True

    def __post_init__(self) -> None:
        for name in ("watermark", "manifest"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.config()  # checks key and psnr

    def resolved_key(self) -> str:
        return self.key if self.key is not None else os.environ.get(KEY_ENV, "")

    def config(self) -> WatermarkConfig:
        return WatermarkConfig(key=self.resolved_key(), psnr=self.psnr)


OFF = MarkSettings(watermark=False, manifest=False)


def as_mark_settings(marks: bool | MarkSettings | None) -> MarkSettings:
    """True / None: the defaults (marks on: watermark and manifest); False: off; a MarkSettings as given."""
    if isinstance(marks, MarkSettings):
        return marks
    if marks is None or marks is True:
        return MarkSettings()
    if marks is False:
        return OFF
    raise ValueError(f"watermark must be true, false or a MarkSettings, got {marks!r}")


def _id(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> (32 - ID_BITS)


def model_id(settings: dict) -> int:
    """The 16-bit id of the model that made an image: from its checkpoint's hash, else its name."""
    return _id(str(settings.get("checkpoint") or settings.get("model") or ""))


def generation_id(settings: dict) -> int:
    """The 16-bit id of one generation: a hash of the image's settings (without any earlier mark's record)."""
    own = {k: v for k, v in _without_record(settings).items() if k != "model_path"}
    return _id(json.dumps(own, sort_keys=True, default=str))


def _without_record(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != SETTINGS_KEY and not k.startswith(SETTINGS_KEY + "_")}


def make_payload(model: int, generation: int) -> int:
    return (model << ID_BITS) | generation


def split_payload(payload: int) -> tuple[int, int]:
    """(model id, generation id) of a decoded payload."""
    return payload >> ID_BITS, payload & ((1 << ID_BITS) - 1)


def mark_image(image: Image.Image, *, settings: dict | None = None, marks: bool | MarkSettings = True,
               payload: int | None = None) -> Image.Image:
    """The image with the marks `marks` asks for, carrying its settings (image.info["pixelforge"], else
    `settings`) with the mark's record added, as flat entries (settings hold plain values): "watermark" (true
    where embedded), and "watermark_payload" (8 hex digits), "watermark_model_id", "watermark_generation_id",
    "watermark_key" ("project" or "user"), "watermark_psnr" where embedded, "watermark_reason" where not (turned
    off, too small, or the mark could not be read back on this image: watermark.UnmarkableImage).
    payload: the 32 bits to embed (default: the model and generation ids from the settings). The input image is
    left as it is."""
    marks = as_mark_settings(marks)
    s = _without_record(dict(image.info.get("pixelforge") or settings or {}))
    if not marks.watermark:
        record = {"": False, "reason": "turned off"}
        out = image.copy()
    elif min(image.size) < MIN_SIDE:
        record = {"": False, "reason": f"image smaller than {MIN_SIDE} pixels (too few cells for the payload)"}
        out = image.copy()
    else:
        if payload is None:
            payload = make_payload(model_id(s), generation_id(s))
        cfg = marks.config()
        try:
            out, psnr = embed_with_psnr(image, payload, cfg)
        except UnmarkableImage as e:  # never record a mark the detector cannot find: the manifest still says it all
            record = {"": False, "reason": str(e)}
            out = image.copy()
        else:
            m, g = split_payload(payload)
            record = {"": True, "payload": f"{payload:08x}", "model_id": m, "generation_id": g,
                      "key": "user" if cfg.key else "project", "psnr": psnr}
    s.update({SETTINGS_KEY + (f"_{k}" if k else ""): v for k, v in record.items()})
    out.info["pixelforge"] = s
    # Pillow (>= 11.3) applies an image's own encoderinfo in every save(): the settings go into the PNG
    out.encoderinfo = {"pnginfo": png_info(s)}
    return out


def is_marked(image: Image.Image) -> bool:
    """Whether mark_image has already seen this image (its settings hold a watermark record, either way)."""
    return SETTINGS_KEY in (image.info.get("pixelforge") or {})


def detection_record(d: Detection) -> dict:
    """A Detection as JSON-ready fields: detected, score, payload (8 hex digits or None), model_id and
    generation_id (None where not detected or the payload is rejected), payload_rejected (detected, but the
    payload withheld as unreliable), cell_size and angle (the geometry found)."""
    ids = split_payload(d.payload) if d.payload is not None else (None, None)
    return {"detected": d.detected, "score": round(d.score, 3),
            "payload": f"{d.payload:08x}" if d.payload is not None else None, "payload_rejected": d.payload_rejected,
            "model_id": ids[0], "generation_id": ids[1], "cell_size": round(d.cell_size, 4), "angle": round(d.angle, 2)}


def detect_image(image: Image.Image, *, key: str | None = None, threshold: float | None = None) -> Detection:
    """detect() with the key resolved as MarkSettings does (None: $PIXELFORGE_WATERMARK_KEY, else the project's)."""
    cfg = MarkSettings(key=key).config()
    if threshold is not None:
        cfg = WatermarkConfig(key=cfg.key, psnr=cfg.psnr, threshold=threshold)
    return detect(image, cfg)


def _read(path: str | os.PathLike) -> Image.Image:
    """An image file checked as data folders are (zero-byte, truncated, not an image, decompression bomb: a
    ValueError naming it), in mode L, LA, RGB or RGBA (alpha is kept, EXIF rotation applied)."""
    from PIL import ImageOps

    from ..data.folder import check_file

    im, reason = check_file(path)
    if im is None:
        raise ValueError(f"{path}: {reason}")
    if im.info.get("original_mode") in ("RGBA", "LA", "PA", "P"):  # check_file composites alpha over white
        with Image.open(path) as raw:
            raw.seek(0)
            raw = ImageOps.exif_transpose(raw)
            if raw.mode in ("RGBA", "LA") or (raw.mode == "P" and "transparency" in raw.info):
                return raw.convert("LA" if raw.mode == "LA" else "RGBA")
    return im


def parse_payload(text: str) -> int:
    """'8 hex digits' (0x optional) -> the 32-bit payload; a ValueError naming --payload otherwise."""
    digits = text[2:] if text.lower().startswith("0x") else text
    try:
        value = int(digits, 16)
    except ValueError:
        value = -1
    if not 1 <= len(digits) <= PAYLOAD_BITS // 4 or not 0 <= value < 1 << PAYLOAD_BITS:
        raise ValueError(f"--payload {text!r}: expected up to {PAYLOAD_BITS // 4} hex digits, e.g. 0x1234abcd")
    return value


def embed_file(image: str | os.PathLike, out: str | os.PathLike, *, payload: str | int | None = None,
               key: str | None = None, psnr: float = DEFAULT_PSNR, overwrite: bool = False,
               verify: bool = True) -> tuple[Path, int]:
    """Mark any image file and write it to `out` (format from its extension; JPEG at quality 95), atomically;
    returns (out, payload). payload: 32 bits (an int, or hex text); default: the first 32 bits of the input
    file's SHA-256; verify: WatermarkConfig.verify. A side under MIN_SIDE pixels, an unknown extension or an
    existing `out` (unless overwrite) is a ValueError naming it; an image the mark cannot be read back from is
    watermark.UnmarkableImage (a ValueError), and nothing is written."""
    from ..files import atomic_target

    src, out = Path(image), Path(out)
    ext = out.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"-o {out}: cannot tell the image format from {ext or 'no extension'!r}; use .png, .jpg, .webp, ...")
    if out.exists() and not overwrite:
        raise ValueError(f"-o {out}: file exists; pass --overwrite to replace it")
    im = _read(src)
    if min(im.size) < MIN_SIDE:
        raise ValueError(f"{src}: {im.size[0]}x{im.size[1]} is too small to watermark: each side must be at least "
                         f"{MIN_SIDE} pixels")
    if payload is None:
        payload = int.from_bytes(hashlib.sha256(src.read_bytes()).digest()[:4], "big")
    elif isinstance(payload, str):
        payload = parse_payload(payload)
    cfg = MarkSettings(key=key, psnr=psnr).config()
    try:
        marked = embed_with_psnr(im, payload, WatermarkConfig(key=cfg.key, psnr=cfg.psnr, verify=verify))[0]
    except UnmarkableImage as e:
        raise UnmarkableImage(f"{src}: not marked: {e}") from None
    if fmt == "JPEG" and marked.mode in ("RGBA", "LA"):
        marked = marked.convert(marked.mode[:-1])  # JPEG has no alpha
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    with atomic_target(out, suffix=ext) as tmp:
        marked.save(tmp, format=fmt, **options)
    return out, payload


def detect_file(path: str | os.PathLike, *, key: str | None = None, threshold: float | None = None) -> dict:
    """detection_record of one image file (read as embed_file reads it), and too_small: whether a side is under
    MIN_SIDE pixels, so that the image cannot carry a mark (and is not searched)."""
    im = _read(path)
    return {**detection_record(detect_image(im, key=key, threshold=threshold)), "too_small": min(im.size) < MIN_SIDE}
