"""Finding and checking the images of a folder: decode each file once, keep the good ones, explain the rest."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class DataError(ValueError):
    """A data set, file or data setting that cannot be used; the message names it and says why."""


# Larger images are refused before decoding: a small file can claim billions of pixels and take all
# memory ("decompression bomb"). 80 Mpx is far above any photo a generator is trained on.
MAX_PIXELS = 80_000_000

CAPTIONS_FILE = "captions.jsonl"

# Reasons a file is skipped. Each reason starts with one of these, optionally followed by ": detail",
# so reports can count files per kind.
ZERO_BYTE = "zero-byte file"
TRUNCATED = "truncated image"
CORRUPT = "corrupt data"
NOT_IMAGE = "not an image or unsupported format"
BOMB = "decompression bomb"
UNREADABLE = "unreadable"
BAD_MODE = "unsupported colour mode"
NO_CLASS = "no class"
TOO_SMALL = "too small"
TOO_LARGE = "too large"  # over a caller's own pixel limit (check_bytes), below a bomb's


def smallest_side(image_size: int) -> int:
    """The shortest side a folder image may have to be trained at image_size without --allow-upscale:
    half of it, rounded up. Smaller images would be blown up more than twice, to flat squares."""
    return (image_size + 1) // 2


def too_small_reason(size: tuple[int, int], min_side: int) -> str | None:
    """Why an image of size (w, h) is skipped as too small for min_side, or None when it is not."""
    w, h = size
    if min(w, h) >= min_side:
        return None
    return f"{TOO_SMALL}: {w}x{h}, a side below {min_side} px (half the training size); --allow-upscale keeps it"


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, without its detail: "truncated image: ..." -> "truncated image"."""
    return reason.split(":", 1)[0]


# ---------------------------------------------------------------------------------------------------
# One file


def check_file(path: str | os.PathLike) -> tuple[Image.Image | None, str | None]:
    """Open and fully decode one image file; return (image in mode "RGB" or "L", None) or (None, reason).

    The format is found from the content, never the extension. Odd but valid files are normalised:
    EXIF rotation applied, first frame of animations and multi-page files, alpha composited over white,
    CMYK/palette/16-bit converted. The returned image's info holds "original_mode" and "original_format".
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, ZERO_BYTE
    except OSError as e:
        return None, f"{UNREADABLE}: {e.strerror or e}"
    return _decode(path)


def check_bytes(data: bytes, *, max_pixels: int | None = None,
                formats: tuple[str, ...] | None = None) -> tuple[Image.Image | None, str | None]:
    """check_file for an image file's contents held in memory (an upload): the same checks and reasons, with
    a pixel limit of its own (max_pixels; over it and under MAX_PIXELS the reason is "too large") and, with
    `formats` (Pillow's names: "PNG", "JPEG"), only those decoders tried: another format is "not an image or
    unsupported format"."""
    if not data:
        return None, ZERO_BYTE
    return _decode(io.BytesIO(data), max_pixels=max_pixels, formats=formats)


def _decode(source: Path | io.BytesIO, *, max_pixels: int | None = None,
            formats: tuple[str, ...] | None = None) -> tuple[Image.Image | None, str | None]:
    """check_file's decoding of a file or an in-memory one (see check_bytes for max_pixels and formats)."""
    limit = MAX_PIXELS if max_pixels is None else min(max_pixels, MAX_PIXELS)
    try:
        # Pillow warns (and above twice its limit, raises) on huge images; make both an error so a
        # bomb is skipped rather than decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=formats) as im:
                w, h = im.size
                if w * h > limit:
                    kind = BOMB if limit == MAX_PIXELS else TOO_LARGE
                    return None, f"{kind}: {w}x{h} pixels is over the limit of {limit}"
                original_mode, original_format = im.mode, im.format
                im.seek(0)  # first frame of an animation or first page of a multi-page file
                im.load()
                out = _normalise(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"{BOMB}: {e}"
    except UnidentifiedImageError:
        return None, NOT_IMAGE
    except _UnsupportedMode as e:
        return None, f"{BAD_MODE}: {e}"
    except PermissionError:
        return None, f"{UNREADABLE}: permission denied"
    except OSError as e:
        if "truncated" in str(e):
            return None, TRUNCATED
        if isinstance(e, (FileNotFoundError, IsADirectoryError)) or e.errno is not None:
            return None, f"{UNREADABLE}: {e.strerror or e}"
        return None, f"{CORRUPT}: {e}"
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as e:
        # Pillow's decoders signal malformed data with a variety of exception types.
        return None, f"{CORRUPT}: {e}"
    out.info["original_mode"] = original_mode
    out.info["original_format"] = original_format
    return out, None


class _UnsupportedMode(Exception):
    pass


def _normalise(im: Image.Image) -> Image.Image:
    """A decoded image in mode "RGB" or "L", upright, alpha over white."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost a good image its pixels
        im = im.copy()
    return to_rgb_or_l(im)


def to_rgb_or_l(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L" (grayscale stays grayscale), compositing alpha over white."""
    mode = im.mode
    if mode in ("RGB", "L") and "transparency" not in im.info:
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16"):
        # 16-bit data: map 0..65535 onto 0..255 (Pillow's convert("L") would clip everything above 255).
        return _from_array(np.asarray(im).astype(np.float64) / 257.0)
    if mode == "I":
        a = np.asarray(im).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 255:
            return _from_array(a)  # 8-bit values stored in a wide mode
        if lo >= 0 and hi <= 65535:
            return _from_array(a / 257.0)  # 16-bit data (PNG, PGM, TIFF often open as "I")
        return _from_array((a - lo) / max(hi - lo, 1.0) * 255.0)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return _from_array(a * 255.0)
        return _from_array((a - lo) / max(hi - lo, 1e-12) * 255.0)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info:
        grey = mode in ("LA", "La", "L")
        rgba = im.convert("LA" if grey else "RGBA")
        base = rgba.convert("L" if grey else "RGB")
        out = Image.new(base.mode, im.size, "white")
        out.paste(base, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")  # CMYK, P, YCbCr, RGBX, HSV ...
    except (ValueError, OSError) as e:
        raise _UnsupportedMode(mode) from e


def _from_array(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------------------------------
# A folder


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the root, "/"-separated
    size: int  # bytes, -1 when stat failed
    mtime_ns: int
    class_index: int | None  # index into FolderScan.class_names; None for files in the root


@dataclass
class FolderScan:
    """What a folder holds before decoding: candidate files, classes, captions."""

    root: Path
    files: list[FileEntry]  # sorted by path; every non-hidden file except captions.jsonl
    class_names: list[str]  # sorted immediate sub-folders holding files; empty for an unlabelled set
    captions: dict[str, str]  # relative path -> caption
    caption_errors: list[tuple[int, str]]  # (line number, what is wrong) in captions.jsonl
    captions_stat: tuple[int, int] | None  # (size, mtime_ns) of captions.jsonl, part of the cache key
    error: str | None = None  # why the folder could not be read at all
    # relative path -> its other wordings, where captions.jsonl gives a list of captions for a file
    caption_variants: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """List the candidate files of a folder recursively (hidden files and folders skipped), its classes
    (immediate sub-folders holding files) and its captions.jsonl. Nothing is decoded here."""
    root = Path(root).expanduser()
    empty = FolderScan(root, [], [], {}, [], None)
    if not root.exists():
        empty.error = "folder does not exist"
        return empty
    if not root.is_dir():
        empty.error = "not a folder"
        return empty

    try:
        with os.scandir(root):
            pass
    except OSError as e:
        empty.error = f"cannot list the folder ({e.strerror or e})"
        return empty

    found: list[tuple[str, int, int]] = []

    def unlistable(e: OSError) -> None:
        # A sub-folder that cannot be listed is kept as an entry, so check_file reports it as unreadable.
        if e.filename and Path(e.filename) != root:
            found.append((Path(e.filename).relative_to(root).as_posix(), -1, 0))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders in place
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or (rel_dir == Path(".") and name == CAPTIONS_FILE):
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, 0  # a broken link; check_file will say why
            found.append(((rel_dir / name).as_posix(), size, mtime))
    found.sort()

    # Classes are the immediate sub-folders that hold files; root files then have no class.
    class_names = sorted({p.split("/", 1)[0] for p, _, _ in found if "/" in p})
    index = {c: i for i, c in enumerate(class_names)}
    files = [
        FileEntry(p, size, mtime, index[p.split("/", 1)[0]] if "/" in p else None)
        for p, size, mtime in found
    ]

    variants: dict[str, list[str]] = {}
    captions, caption_errors, captions_stat = _read_captions(root, {f.path for f in files}, variants)
    return FolderScan(root, files, class_names, captions, caption_errors, captions_stat, caption_variants=variants)


def _read_captions(root: Path, known: set[str], variants: dict[str, list[str]] | None = None
                   ) -> tuple[dict[str, str], list[tuple[int, str]], tuple[int, int] | None]:
    """captions.jsonl: one {"file": ..., "caption": ...} a line; "caption" may also be a list of
    wordings of the same image, whose first is its caption and the rest go to `variants`."""
    path = root / CAPTIONS_FILE
    if not path.is_file():
        return {}, [], None
    st = path.stat()
    captions: dict[str, str] = {}
    errors: list[tuple[int, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return {}, [(0, f"cannot read {CAPTIONS_FILE}: {e}")], (st.st_size, st.st_mtime_ns)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append((number, f"invalid JSON ({e.msg})"))
            continue
        if not isinstance(record, dict):
            errors.append((number, 'expected an object like {"file": "a.png", "caption": "..."}'))
            continue
        file = record.get("file")
        caption = record.get("caption", record.get("text"))
        if not isinstance(file, str) or not file:
            errors.append((number, 'missing "file" (a path relative to the folder)'))
            continue
        wordings = caption if isinstance(caption, list) else [caption]
        if not wordings or not all(isinstance(w, str) for w in wordings):
            errors.append((number, 'missing "caption" (or "text"): a string, or a non-empty list of strings'))
            continue
        caption = wordings[0]
        rel = PurePosixPath(file.replace("\\", "/")).as_posix().removeprefix("./")
        if rel not in known:
            errors.append((number, f"no such file in the folder: {file}"))
            continue
        captions[rel] = caption
        if variants is not None and len(wordings) > 1:
            variants[rel] = list(wordings[1:])
    return captions, errors, (st.st_size, st.st_mtime_ns)


def iter_checked(
    scan: FolderScan, *, progress: bool = False, desc: str = "checking images"
) -> Iterator[tuple[FileEntry, Image.Image | None, str | None]]:
    """Decode every file of a scan once: yields (entry, image, None) or (entry, None, reason)."""
    from tqdm import tqdm

    for entry in tqdm(scan.files, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        image, reason = check_file(scan.root / entry.path)
        if image is not None and scan.labelled and entry.class_index is None:
            # A labelled set needs a label for every image; a loose image in the root has none.
            image.close()
            image, reason = None, f"{NO_CLASS}: in the root of a folder with class sub-folders"
        yield entry, image, reason


# ---------------------------------------------------------------------------------------------------
# The report `pixelforge data check DIR` prints


@dataclass
class CheckReport:
    root: str
    files: int  # candidate files found
    usable: int
    class_names: list[str]
    class_counts: Counter  # class name -> usable images (0 for a class whose files all failed)
    sizes: Counter  # (width, height) after EXIF rotation -> count
    modes: Counter  # original Pillow mode -> count
    formats: Counter  # detected file format -> count
    skipped: list[tuple[str, str]]  # (relative path, reason)
    captions: int  # usable images with a caption
    caption_errors: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None  # why the folder could not be read at all
    image_size: int | None = None  # the training size the images were measured against
    too_small: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason): usable, but
    # training at image_size skips them unless --allow-upscale


def check_folder(root: str | os.PathLike, *, progress: bool = False, image_size: int | None = None) -> CheckReport:
    """Decode every file of a folder and summarise what can be used; never raises for bad files.
    With image_size, images with a side below half of it are listed in report.too_small."""
    scan = scan_folder(root)
    report = CheckReport(
        root=str(scan.root),
        files=len(scan.files),
        usable=0,
        class_names=list(scan.class_names),
        class_counts=Counter({c: 0 for c in scan.class_names}),
        sizes=Counter(),
        modes=Counter(),
        formats=Counter(),
        skipped=[],
        captions=0,
        caption_errors=list(scan.caption_errors),
        error=scan.error,
        image_size=image_size,
    )
    for entry, image, reason in iter_checked(scan, progress=progress):
        if image is None:
            report.skipped.append((entry.path, reason))
            continue
        report.usable += 1
        if entry.class_index is not None:
            report.class_counts[scan.class_names[entry.class_index]] += 1
        report.sizes[image.size] += 1
        small = too_small_reason(image.size, smallest_side(image_size)) if image_size else None
        if small is not None:
            report.too_small.append((entry.path, small))
        report.modes[image.info.get("original_mode", image.mode)] += 1
        report.formats[image.info.get("original_format") or "?"] += 1
        report.captions += entry.path in scan.captions
        image.close()
    return report


def skip_summary(skipped: list[tuple[str, str]]) -> str:
    """ "3 files skipped (2 corrupt data, 1 zero-byte file)" """
    if not skipped:
        return "no file skipped"
    kinds = Counter(reason_kind(r) for _, r in skipped)
    parts = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    noun = "file" if len(skipped) == 1 else "files"
    return f"{len(skipped)} {noun} skipped ({parts})"


def no_usable_message(root: str, error: str | None, skipped: list[tuple[str, str]]) -> str:
    """Why a folder gave no usable image, in one line."""
    if error is not None:
        why = error
    elif not skipped:
        why = "the folder holds no files (hidden files are ignored)"
    else:
        why = skip_summary(skipped)
    return f"no usable image in {root}: {why}"


def format_report(report: CheckReport, *, max_listed: int = 100) -> str:
    """A human-readable multi-line summary of a CheckReport."""

    def top(counter: Counter, show, k: int = 6) -> str:
        items = [f"{show(key)} ({n})" for key, n in counter.most_common(k)]
        rest = len(counter) - k
        return ", ".join(items) + (f", ... {rest} more" if rest > 0 else "") if items else "-"

    lines = [f"data check: {report.root}"]
    if report.error is not None:
        lines.append(f"  error: {report.error}")
        return "\n".join(lines)
    lines.append(f"  files found   : {report.files}")
    lines.append(f"  usable images : {report.usable}")
    if report.class_names:
        counts = ", ".join(f"{c} {report.class_counts.get(c, 0)}" for c in report.class_names)
        lines.append(f"  {f'classes ({len(report.class_names)})':<14}: {counts}")
    else:
        lines.append("  classes       : none (unlabelled: no class sub-folders)")
    if report.captions or report.caption_errors:
        lines.append(f"  captions      : {report.captions} of {report.usable} images")
    lines.append(f"  sizes         : {top(report.sizes, lambda s: f'{s[0]}x{s[1]}')}")
    lines.append(f"  modes         : {top(report.modes, str)}")
    lines.append(f"  formats       : {top(report.formats, str)}")
    if report.skipped:
        lines.append(f"  skipped       : {skip_summary(report.skipped)}")
        width = min(max(len(p) for p, _ in report.skipped[:max_listed]), 60)
        for path, reason in report.skipped[:max_listed]:
            lines.append(f"    {path:<{width}}  {reason}")
        if len(report.skipped) > max_listed:
            lines.append(f"    ... and {len(report.skipped) - max_listed} more")
    if report.too_small:
        lines.append(f"  too small     : {len(report.too_small)} image(s) with a side below "
                     f"{smallest_side(report.image_size or 0)} px, half of --image-size {report.image_size}: "
                     "training skips them unless --allow-upscale")
        width = min(max(len(p) for p, _ in report.too_small[:max_listed]), 60)
        for path, reason in report.too_small[:max_listed]:
            lines.append(f"    {path:<{width}}  {reason}")
        if len(report.too_small) > max_listed:
            lines.append(f"    ... and {len(report.too_small) - max_listed} more")
    if report.caption_errors:
        lines.append(f"  {CAPTIONS_FILE} problems ({len(report.caption_errors)}):")
        for number, what in report.caption_errors[:max_listed]:
            lines.append(f"    line {number}: {what}")
        if len(report.caption_errors) > max_listed:
            lines.append(f"    ... and {len(report.caption_errors) - max_listed} more")
    if report.usable == 0:
        lines.append("  " + no_usable_message(report.root, None, report.skipped))
    return "\n".join(lines)
