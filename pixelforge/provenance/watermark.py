"""Invisible watermark: a key-derived spread-spectrum pattern added to an image's luminance, repeated in tiles so
that it survives cropping, found again after resizing and small rotations by the autocorrelation of its tiles.

Embedding (docs/watermark.md has the figures):
  - the payload (PAYLOAD_BITS) is coded with a rate-1/3 convolutional code (watermark_code.py) and whitened
    with the key stream: 114 coded bits;
  - a tile of TILE x TILE cells holds +-1 chips: a quarter of the cells are the synchronisation template (the
    key's chips alone), the rest carry the coded bits (each bit spread over ~7 cells per tile, at key-chosen
    places, times the key's chips);
  - the tile repeats over the image, each cell `cell_size` pixels wide (shorter side / 128, at least one pixel:
    the pattern scales with the image, so its frequencies stay where JPEG and resizing keep them), interpolated
    linearly and added to the luminance (the same value on R, G and B) at the strength that gives the target
    PSNR; three rounds of informed embedding then move energy between the coded bits (see embed()).
Detection:
  - the residual (a Laplacian over its local spread to RESIDUAL_POWER, which whitens the host image) is searched
    for the tile's period and angle: the periodic pattern puts peaks in the residual's autocorrelation on a square
    lattice of side TILE * cell_size; those lattices (each over a few nearby cell sizes) and the unattacked
    geometry are tried, the best refined by a pattern search in cell size and angle (_search);
  - folding: the residual, resampled to OVERSAMPLE samples per cell and rotated back, is summed tile over tile
    and correlated circularly with the template; the peak's height over the correlation's spread (a z-score)
    says how strongly the template is there, and its place undoes any crop's shift;
  - the coded bits are read from the aligned fold, un-whitened and Viterbi-decoded; the detection score adds
    the decoded message's agreement to the template's z-score (Detection, message_score).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from .watermark_attacks import jpeg
from .watermark_code import (bit_margins, bits_to_int, coded_length, encode, int_to_bits, key_rng, viterbi,
                             whitening)

TILE = 32  # cells per side of the repeated tile
CELLS_ACROSS = 128  # cells across an image's shorter side (cell size = side / 128, at least one pixel)
OVERSAMPLE = 2  # samples per cell when the detector folds the residual
SYNC_FRACTION = 0.25  # of a tile's cells, the synchronisation template
PAYLOAD_BITS = 32
DEFAULT_PSNR = 41.0  # dB, of the marked image against the original (before 8-bit rounding)
PSNR_RANGE = (30.0, 60.0)
DEFAULT_THRESHOLD = 7.0  # the one threshold every size had before SIZE_THRESHOLDS (now that of 192 pixels and up)
# Per size class (shorter side under the first number: the second is the threshold), calibrated on 1,500 clean
# images of each class's size by bench/watermark.py --clean-only: the highest clean score plus 0.6 or the 99.9th
# percentile plus 1, whichever is higher, to the nearest tenth (docs/watermark.md, "False positives"). detect()
# uses it unless a threshold is given. Clean 32x32 shapes reach 7.07 (one in 1,500), 64x64 emoji and textures
# 6.09, 128x128 photo crops 6.24 (99.9th percentile 6.18), 256x256 ones 6.36.
SIZE_THRESHOLDS = ((48, 7.7), (96, 6.8), (192, 7.2), (math.inf, 7.0))
VERIFY_JPEG = 50  # the embedder checks its mark survives JPEG at this quality (WatermarkConfig.verify)
VERIFY_MARGIN = 1.0  # of score over the size's threshold that the check asks for
VERIFY_STEP = 1.0  # dB: how much stronger each further try of the check is
DEFAULT_VERIFY_MIN_PSNR = 36.0  # dB: the strongest the check goes
# dB: the strongest the embedder goes so that the mark reads back at all (unattacked) where, after the JPEG check,
# it does not. Busy 32x32 outputs of few sampling steps need it: of 98 low-step shapes-text outputs whose mark did
# not read back, 44 did by 32 dB and only 4 more by 30 dB; 32 dB keeps the change to 6.4 levels RMS
# (bench/watermark_readback.py; docs/watermark.md, "Images that cannot carry a mark").
READBACK_MIN_PSNR = 32.0
MAX_ANGLE = 4.0  # degrees: the detector looks for rotations up to this
PERIOD_RANGE = (0.45, 4.0)  # the detector looks for tile periods this many times the unattacked one
INFORMED_ROUNDS = 3  # measure-and-adjust rounds of the embedding (0: plain spread spectrum)
INFORMED_TARGET = 4.0  # the margin (in noise spreads) the rounds aim every part at
# The best code word's agreement with Gaussian noise (see message_score): mean 5.63 and spread 0.44 for raw noise.
# The detector's soft values have unit RMS, which narrows the spread to 0.24: dividing by 0.44 leaves noise's
# message scores a spread of about 0.55, a cautious scale on which the threshold was set.
MESSAGE_NULL = (5.63, 0.44)
MESSAGE_WEIGHT = 0.5  # of the message's evidence in the detection score
REFINED = 2  # of the geometries tried, how many the detector refines
LATTICE_TOP = 5  # of the autocorrelation's lattices, how many the detector tries
SCALE_SCAN = (-0.012, -0.006, 0.0, 0.006, 0.012)  # relative cell sizes tried round each lattice's estimate
REFINE_STEP = (0.004, 0.25)  # the refinement's first steps (relative cell size, degrees), halved down to
REFINE_MIN = 0.001  # this relative step
REFINE_BUDGET = 24  # folds per refined geometry at most
RESIDUAL_POWER = 1.5  # the residual is the Laplacian over its local spread to this power (see _residual)
MIN_SIDE = 32  # pixels: a smaller image is not marked (docs/watermark.md: capacity by size)
# A detected mark's payload is withheld (Detection.payload_rejected) when the expected number of wrong payload bits
# (payload_doubt) is above this. On the bench's attacked images every wrong decode had a doubt of 1.8 or more, but
# right ones reach 7 at 64 pixels after noise, so no limit keeps them all and no wrong one; on a simulated Gaussian
# channel 1.5% of the payloads kept at 0.1 were wrong, 3% at 0.2, 7% at 0.5 (docs/watermark.md, "Rejecting near
# misses"): a wrong payload costs more than a withheld one.
MAX_PAYLOAD_DOUBT = 0.1


@dataclass(frozen=True)
class WatermarkConfig:
    """How marks are embedded and detected. key: the user's key, combined with the project's (empty: the
    project's alone, which any pixelforge can detect); psnr: the embedding strength as the PSNR of the marked
    image in dB (30..60, higher is fainter); threshold: the detection score above which an image is marked (None:
    by the image's size, SIZE_THRESHOLDS); verify: embed, then read the mark back after JPEG q50 and, where it is
    not read with a margin, mark again VERIFY_STEP dB stronger, down to verify_min_psnr (the weakest strength that
    passes is kept; where none does, psnr is); then, whether or not verify, the mark must read back unattacked:
    where it does not, and verify is on, it is made stronger VERIFY_STEP dB at a time down to readback_min_psnr,
    and where even that fails, embed_with_psnr raises UnmarkableImage."""

    key: str = ""
    psnr: float = DEFAULT_PSNR
    threshold: float | None = None
    verify: bool = True
    verify_min_psnr: float = DEFAULT_VERIFY_MIN_PSNR
    readback_min_psnr: float = READBACK_MIN_PSNR

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise ValueError(f"watermark key must be text, got {type(self.key).__name__}")
        lo, hi = PSNR_RANGE
        if not isinstance(self.psnr, (int, float)) or not math.isfinite(self.psnr) or not lo <= self.psnr <= hi:
            raise ValueError(f"watermark psnr must be a number of dB in {lo:g}..{hi:g}, got {self.psnr!r}")
        if self.threshold is not None and (not isinstance(self.threshold, (int, float))
                                           or not math.isfinite(self.threshold) or self.threshold <= 0):
            raise ValueError(f"watermark threshold must be a finite number above 0 (or None: by size), "
                             f"got {self.threshold!r}")
        if not isinstance(self.verify, bool):
            raise ValueError(f"watermark verify must be true or false, got {self.verify!r}")
        for name in ("verify_min_psnr", "readback_min_psnr"):
            m = getattr(self, name)
            if not isinstance(m, (int, float)) or not math.isfinite(m) or not lo <= m <= hi:
                raise ValueError(f"watermark {name} must be a number of dB in {lo:g}..{hi:g}, got {m!r}")


class UnmarkableImage(ValueError):
    """The mark does not read back from this image even at the strongest strength tried (a near-binary image,
    whose pixels sit at 0 and 255 and clip the pattern away, or busy noise at 32 pixels): nothing is marked."""


def size_threshold(height: int, width: int) -> float:
    """The detection threshold of an image of this size (SIZE_THRESHOLDS, by its shorter side)."""
    return next(t for side, t in SIZE_THRESHOLDS if min(height, width) < side)


@dataclass(frozen=True)
class Detection:
    """What detect() found. score: the template's z-score plus MESSAGE_WEIGHT times the message's excess
    agreement (message_score, where above 0); clean images score about 3.5 to 6; detected: score at or above
    the threshold; payload: the decoded PAYLOAD_BITS as an int where detected and reliable, else None;
    cell_size and angle: the geometry the mark was found at (pixels per cell, degrees); payload_doubt: the
    expected number of wrong payload bits (payload_doubt()); payload_rejected: detected, but the payload withheld
    because payload_doubt is above MAX_PAYLOAD_DOUBT (a near miss of the code: the mark is there, its bits are
    not readable)."""

    detected: bool
    score: float
    payload: int | None
    cell_size: float
    angle: float
    soft: np.ndarray = field(repr=False, compare=False)  # (114,) the coded bits' soft values, un-whitened
    sync_score: float = 0.0  # the template's z-score alone
    message_score: float = 0.0  # message_score() of the decoded payload
    payload_doubt: float = 0.0
    payload_rejected: bool = False


class _Layout:
    """The key's tile: which cells are template and which carry which coded bit, the chips, and the detector's
    templates at OVERSAMPLE samples per cell."""

    def __init__(self, key: str):
        self.key = key
        n_coded = coded_length(PAYLOAD_BITS)
        rng = key_rng(key, "layout")
        perm = rng.permutation(TILE * TILE)
        n_sync = int(TILE * TILE * SYNC_FRACTION)
        self.owner = np.full(TILE * TILE, -1, dtype=np.int64)  # -1: template, k: coded bit k
        self.owner[perm[n_sync:]] = np.arange(TILE * TILE - n_sync) % n_coded
        self.chips = rng.choice(np.array([-1.0, 1.0]), TILE * TILE)
        self.white = whitening(key, n_coded)
        basis = np.zeros((n_coded + 1, TILE * TILE))
        basis[0] = np.where(self.owner < 0, self.chips, 0.0)
        basis[1 + self.owner[self.owner >= 0], np.nonzero(self.owner >= 0)[0]] = self.chips[self.owner >= 0]
        up = np.stack([_upsample_tile(b.reshape(TILE, TILE), OVERSAMPLE) for b in basis])  # (n+1, 2T, 2T)
        # matched to the detector's residual: the templates pass through the same Laplacian (round the tile)
        up = up - 0.25 * sum(np.roll(up, k, axis=ax) for k in (-1, 1) for ax in (1, 2))
        self.sync_template = up[0].reshape(-1)
        self.sync_spectrum = np.conj(np.fft.rfft2(up[0]))
        self.bit_templates = up[1:].reshape(n_coded, -1)  # (114, (2T)^2)

    def signs(self, payload: int) -> np.ndarray:
        """(1 + 114,) the sign each part carries: +1 for the template, then the whitened coded bits as +-1."""
        coded = encode(int_to_bits(payload, PAYLOAD_BITS)) ^ self.white
        return np.concatenate([[1.0], 2.0 * coded - 1.0])

    def tile(self, payload: int, gains: np.ndarray | None = None) -> np.ndarray:
        """(TILE, TILE): each cell its chip times its part's sign (and gain: (1 + 114,), template first)."""
        value = self.signs(payload) * (1.0 if gains is None else gains)
        return (value[self.owner + 1] * self.chips).reshape(TILE, TILE)


@functools.lru_cache(maxsize=8)  # a few milliseconds to build; a process sees one or two keys
def _layout(key: str) -> _Layout:
    return _Layout(key)


def _upsample_tile(tile: np.ndarray, factor: float) -> np.ndarray:
    """A periodic tile (T, T) resampled to factor samples per cell, (round(T f), round(T f)), with the same
    linear interpolation and pixel-centre convention as the embedding, wrapping round its edges."""
    big = np.tile(tile.astype(np.float32), (3, 3))
    n = int(round(TILE * factor))
    out = cv2.warpAffine(big, _scale_matrix(factor), (3 * n, 3 * n), flags=cv2.INTER_LINEAR)
    return out[n:2 * n, n:2 * n].astype(np.float64)


def _scale_matrix(factor: float) -> np.ndarray:
    """The affine map from cell coordinates to pixels: cell i's centre lands at pixel (i + 0.5) factor - 0.5."""
    t = (factor - 1) / 2
    return np.array([[factor, 0, t], [0, factor, t]], dtype=np.float32)


def cell_size(height: int, width: int) -> float:
    """Pixels per cell for an unattacked image of this size."""
    return max(1.0, min(height, width) / CELLS_ACROSS)


def _pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """(H, W, C) uint8 and the mode to give back: L, LA, RGB and RGBA are kept, others become RGB."""
    mode = image.mode if image.mode in ("L", "LA", "RGB", "RGBA") else "RGB"
    arr = np.asarray(image.convert(mode))
    return (arr[..., None] if arr.ndim == 2 else arr), mode


def _luma(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W) float32 luminance (BT.601, as JPEG's Y)."""
    if arr.shape[2] < 3:
        return arr[..., 0].astype(np.float32)
    rgb = arr[..., :3].astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def pattern(height: int, width: int, payload: int, key: str = "", gains: np.ndarray | None = None) -> np.ndarray:
    """The mark's pattern for an image of this size, (H, W) float32 with unit RMS (gains: see _Layout.tile)."""
    if not 0 <= payload < 1 << PAYLOAD_BITS:
        raise ValueError(f"watermark payload must be an integer in 0..{(1 << PAYLOAD_BITS) - 1}, got {payload}")
    c = cell_size(height, width)
    rows, cols = math.ceil(height / c) + 2, math.ceil(width / c) + 2
    tile = _layout(key).tile(payload, gains)
    grid = np.tile(tile, (rows // TILE + 1, cols // TILE + 1))[:rows, :cols].astype(np.float32)
    pat = cv2.warpAffine(grid, _scale_matrix(c), (width, height), flags=cv2.INTER_LINEAR)
    return pat / max(float(np.sqrt(np.mean(pat * pat))), 1e-6)


def embed(image: Image.Image, payload: int, config: WatermarkConfig = WatermarkConfig()) -> Image.Image:
    """The image with payload (0 <= payload < 2**32) marked into its luminance, in the image's mode (L, LA, RGB
    or RGBA; other modes come back as RGB; alpha is kept). An image with a side under MIN_SIDE is refused, one
    that cannot carry a mark raises UnmarkableImage."""
    return embed_with_psnr(image, payload, config)[0]


def embed_with_psnr(image: Image.Image, payload: int,
                    config: WatermarkConfig = WatermarkConfig()) -> tuple[Image.Image, float]:
    """embed(), and the strength it used (the target PSNR in dB: config.psnr, or lower where config.verify
    strengthened the mark). UnmarkableImage (a ValueError) where the mark does not read back from the marked image
    even at the strongest strength tried (WatermarkConfig): the caller records the image as unmarked."""
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"image of {image.size[0]}x{image.size[1]} is too small to watermark: each side must be "
                         f"at least {MIN_SIDE} pixels")
    arr, mode = _pixels(image)
    h, w = arr.shape[:2]
    rms = 255.0 / 10 ** (config.psnr / 20)  # the pattern's RMS in 8-bit levels for the target PSNR
    colour = min(arr.shape[2], 3)  # the channels that take the mark: gray, or R, G and B (not alpha)
    layout = _layout(config.key)
    signs = layout.signs(payload)
    c = cell_size(h, w)
    _, shift = _sync(_fold(pattern(h, w, payload, config.key) * 64.0, c, 0.0), layout)  # where the tile lands
    gains = np.ones(len(signs))
    for round_ in range(INFORMED_ROUNDS + 1):
        delta = pattern(h, w, payload, config.key, gains) * rms  # (H, W)
        out = arr.astype(np.float32)
        out[..., :colour] += delta[..., None]
        out = np.clip(np.round(out), 0, 255)
        if round_ == INFORMED_ROUNDS:
            break
        # Informed embedding: read the marked image as the detector would and move energy from the parts the
        # host image already helps to those it works against (Malvar and Florencio's improved spread spectrum,
        # done by measuring, since the detector's residual is not linear). The total energy stays the same.
        margins = _margins(_fold(_luma(out.astype(np.uint8)), c, 0.0), shift, layout) * signs
        # Only the coded bits trade energy among themselves: the template keeps its share.
        step = np.clip(INFORMED_TARGET / np.maximum(margins[1:], 0.25 * INFORMED_TARGET), 0.6, 2.0) ** 0.7
        bits = gains[1:] * step
        gains[1:] = bits / np.sqrt(np.mean(bits ** 2))  # every coded bit owns about as many cells

    def marked(psnr: float) -> Image.Image:  # the same pattern (and gains) at another strength
        pixels = arr.astype(np.float32)
        pixels[..., :colour] += (delta * 10 ** ((config.psnr - psnr) / 20))[..., None]
        pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, mode)

    first = marked(config.psnr)
    if not config.verify or config.verify_min_psnr >= config.psnr or _survives(first, payload, layout):
        image, psnr = first, config.psnr
    elif not _survives(marked(config.verify_min_psnr), payload, layout):
        # Strengthen only where it helps: an image the strongest try cannot save either (a binary silhouette, cells
        # of one pixel under JPEG) keeps the default strength, if its mark reads back (below).
        image, psnr = first, config.psnr
    else:  # the weakest strength that passes, in steps
        psnr = config.psnr - VERIFY_STEP
        while psnr > config.verify_min_psnr and not _survives(marked(psnr), payload, layout):
            psnr -= VERIFY_STEP
        psnr = max(psnr, config.verify_min_psnr)
        image = marked(psnr)
    # Whatever JPEG did, the mark must at least read back as it is. Where it does not (busy 32x32 outputs of few
    # sampling steps), mark again stronger, down to readback_min_psnr, checking only that.
    if _reads_back(image, payload, layout, config.threshold):
        return image, psnr
    floor = min(config.readback_min_psnr, config.psnr)
    while config.verify and psnr - VERIFY_STEP >= floor - 1e-9:
        psnr -= VERIFY_STEP
        image = marked(psnr)
        if _reads_back(image, payload, layout, config.threshold):
            return image, psnr
    tried = f"at {psnr:g} dB" if psnr == config.psnr else f"down to {psnr:g} dB"  # the strongest tried
    raise UnmarkableImage(f"the mark could not be read back on this image (tried {tried})")


def _read_back(y: np.ndarray, payload: int, layout: "_Layout") -> tuple[bool, float]:
    """(whether the payload is read from luminance y with a doubt within MAX_PAYLOAD_DOUBT, the score) at the
    unattacked geometry."""
    fold = _fold(y, cell_size(*y.shape), 0.0)
    z, shift = _sync(fold, layout)
    soft, bits, m = _decode(fold, shift, layout)
    return (bits_to_int(bits) == payload and payload_doubt(soft) <= MAX_PAYLOAD_DOUBT,
            z + MESSAGE_WEIGHT * max(0.0, m))


def _reads_back(image: Image.Image, payload: int, layout: "_Layout", threshold: float | None) -> bool:
    """Whether detect() finds the mark in image as it is, with the right payload: first at the unattacked geometry
    (a few milliseconds), then with detect()'s search, which may settle elsewhere on a busy small image."""
    y = _luma(_pixels(image)[0])
    limit = threshold if threshold is not None else size_threshold(*y.shape)
    payload_ok, score = _read_back(y, payload, layout)
    if not (payload_ok and score >= limit):
        return False
    d = detect(image, WatermarkConfig(key=layout.key, threshold=threshold))
    return d.detected and d.payload == payload


def _survives(image: Image.Image, payload: int, layout: "_Layout") -> bool:
    """Whether the mark is read back from image after JPEG q VERIFY_JPEG with the right payload, a doubt within
    MAX_PAYLOAD_DOUBT and a score VERIFY_MARGIN over the size's threshold, at the unattacked geometry (JPEG keeps
    it, so no search: a few milliseconds)."""
    y = _luma(_pixels(jpeg(VERIFY_JPEG)(image))[0])
    payload_ok, score = _read_back(y, payload, layout)
    return payload_ok and score >= size_threshold(*y.shape) + VERIFY_MARGIN


def _margins(fold: np.ndarray, shift: tuple[int, int], layout: "_Layout") -> np.ndarray:
    """(1 + 114,) the template's and each coded bit's correlation at the tile's place, in units of the spread
    of the same correlations at other places (whitened: the sign is the transmitted one)."""
    templates = np.concatenate([layout.sync_template[None], layout.bit_templates])  # (115, (2T)^2)
    n = fold.shape[0]
    offsets = [(shift[0] + dy, shift[1] + dx) for dy, dx in ((0, 0), *[(n // 4 * i, n // 3 * j) for i in (1, 2, 3) for j in (1, 2)])]
    values = np.stack([templates @ np.roll(fold, (-oy, -ox), axis=(0, 1)).ravel() for oy, ox in offsets])  # (7, 115)
    spread = np.sqrt(np.mean(values[1:] ** 2, axis=0)) + 1e-9
    return values[0] / spread


def _residual(y: np.ndarray) -> np.ndarray:
    """(H, W) luminance -> its Laplacian divided by the Laplacian's local spread to RESIDUAL_POWER: whitens
    the host image. Dividing by the spread once gives every pixel unit variance, so busy areas count as much
    as flat ones, though the mark stands out less there; the matched filter for a mark of even amplitude
    divides once more (power 2). 1.5 measured as well as 2 on the bench's photos and better than 1 after
    rotation, crops and resizing then JPEG (docs/watermark.md), while textured images keep some weight."""
    r = cv2.filter2D(y, cv2.CV_32F, _LAPLACIAN, borderType=cv2.BORDER_REFLECT)
    spread = np.sqrt(cv2.GaussianBlur(r * r, (0, 0), 1.5)) + 1.0
    return r / spread ** RESIDUAL_POWER


_LAPLACIAN = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]], dtype=np.float32)


def _lattice_candidates(y: np.ndarray, c0: float, top: int = 3) -> list[tuple[float, float]]:
    """The (cell size, angle in degrees) of the `top` strongest square lattices of side TILE * cell size in the
    residual's autocorrelation, within PERIOD_RANGE of the unattacked period and MAX_ANGLE of upright."""
    g = min(1.0, 2.0 / c0)  # work at about two pixels per cell: the same cost for every image size
    if g < 1:
        y = cv2.resize(y, (max(1, round(y.shape[1] * g)), max(1, round(y.shape[0] * g))), interpolation=cv2.INTER_AREA)
    r = _residual(y).astype(np.float64)
    h, w = r.shape
    spectrum = np.fft.rfft2(r, s=(2 * h, 2 * w))  # zero-padded: no wrap-around
    acf = np.fft.fftshift(np.fft.irfft2(np.abs(spectrum) ** 2, s=(2 * h, 2 * w)))
    overlap = np.fft.fftshift(np.fft.irfft2(np.abs(np.fft.rfft2(np.ones((h, w)), s=(2 * h, 2 * w))) ** 2, s=(2 * h, 2 * w)))
    acf = (acf / np.maximum(overlap, 0.25 * h * w)).astype(np.float32)  # per overlapping pixel; long lags damped
    p0 = TILE * c0 * g
    periods = np.arange(PERIOD_RANGE[0] * p0, min(PERIOD_RANGE[1] * p0, 0.75 * min(h, w)), 0.5)
    if len(periods) == 0:
        return []
    angles = np.radians(np.arange(-MAX_ANGLE, MAX_ANGLE + 1e-9, 0.5))
    pp, aa = np.meshgrid(periods, angles, indexing="ij")  # (nP, nA)
    score = np.zeros_like(pp)
    for u, v in ((1, 0), (0, 1), (1, 1), (1, -1)):  # the lattice points v1, v2, v1 + v2, v1 - v2
        dx = pp * (u * np.cos(aa) - v * np.sin(aa))
        dy = pp * (u * np.sin(aa) + v * np.cos(aa))
        score += cv2.remap(acf, (dx + w).astype(np.float32), (dy + h).astype(np.float32), cv2.INTER_LINEAR)
    found: list[tuple[float, float]] = []
    flat = np.argsort(score, axis=None)[::-1]
    for k in flat:
        i, j = np.unravel_index(k, score.shape)
        p = periods[i] / g
        if all(abs(p - TILE * q) > 1.5 * q for q, _ in found):
            found.append((p / TILE, -float(np.degrees(angles[j]))))  # image rows point down: the fold turns the other way
        if len(found) == top:
            break
    return found


def _fold(y: np.ndarray, c: float, angle: float) -> np.ndarray:
    """The residual of y resampled to OVERSAMPLE samples per cell of size c, rotated back by angle, summed over
    tiles: (OVERSAMPLE TILE, OVERSAMPLE TILE)."""
    s = OVERSAMPLE / c
    h, w = y.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    x = cv2.resize(y, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if angle:
        m = cv2.getRotationMatrix2D((x.shape[1] / 2, x.shape[0] / 2), -angle, 1.0)
        x = cv2.warpAffine(x, m, (x.shape[1], x.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    r = _residual(x)
    n = OVERSAMPLE * TILE
    hh, ww = -(-r.shape[0] // n) * n, -(-r.shape[1] // n) * n
    padded = np.zeros((hh, ww), np.float64)
    padded[:r.shape[0], :r.shape[1]] = r
    return padded.reshape(hh // n, n, ww // n, n).sum(axis=(0, 2))


def _sync(fold: np.ndarray, layout: _Layout) -> tuple[float, tuple[int, int]]:
    """(z-score of the template's circular correlation peak, the peak's shift)."""
    corr = np.fft.irfft2(np.fft.rfft2(fold) * layout.sync_spectrum, s=fold.shape)
    k = int(np.argmax(corr))
    spread = float(corr.std())
    z = (float(corr.flat[k]) - float(corr.mean())) / spread if spread > 0 else 0.0
    return z, tuple(int(i) for i in np.unravel_index(k, corr.shape))


_Fit = tuple[float, tuple[int, int], float, float, np.ndarray]  # (z, shift, cell size, angle, fold) at one geometry


def _search(y: np.ndarray, layout: _Layout, seeds: list[tuple[float, float]]) -> _Fit | None:
    """The geometry (cell size, angle) near the seeds where the template fits best, with its fit, or None
    without seeds. The first seed (the unattacked geometry) is tried as it is; each lattice estimate over
    SCALE_SCAN, since the template's z-score falls by a third 0.5% away from the true cell size on a
    256-pixel image while the autocorrelation places a lattice to about 1%; the REFINED best are then refined
    by a pattern search (steps halved down to REFINE_MIN) in cell size and angle."""
    cache: dict[tuple[float, float], _Fit] = {}

    def at(c: float, a: float) -> _Fit:
        k = (round(c, 5), round(a, 4))
        if k not in cache:
            fold = _fold(y, c, a)
            z, shift = _sync(fold, layout)
            cache[k] = (z, shift, c, a, fold)
        return cache[k]

    tried = [max((at(c * (1 + d), a) for d in (SCALE_SCAN if i else (0.0,))), key=lambda t: t[0])
             for i, (c, a) in enumerate(seeds)]
    if not tried:
        return None
    best = max(tried, key=lambda t: t[0])
    for start in sorted(tried, key=lambda t: -t[0])[:REFINED]:
        cur, (ds, da), n = start, REFINE_STEP, 0
        while ds >= REFINE_MIN and n < REFINE_BUDGET:
            moves = [at(cur[2] * (1 + u * ds), cur[3] + v * da) for u, v in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            n += 4
            top = max(moves, key=lambda t: t[0])
            if top[0] > cur[0]:
                cur = top
            else:
                ds, da = ds / 2, da / 2
        best = max(best, cur, key=lambda t: t[0])
    return best


def detect(image: Image.Image, config: WatermarkConfig = WatermarkConfig()) -> Detection:
    """Look for a mark made with config.key in any image (any size, mode and format Pillow reads)."""
    arr, _ = _pixels(image)
    y = _luma(arr)
    layout = _layout(config.key)
    h, w = y.shape
    c0 = cell_size(h, w)
    seeds = [(c0, 0.0), *_lattice_candidates(y, c0, LATTICE_TOP)] if min(h, w) >= MIN_SIDE else []
    fit = _search(y, layout, seeds)
    if fit is None:
        return Detection(False, 0.0, None, c0, 0.0, np.zeros(coded_length(PAYLOAD_BITS)), 0.0, 0.0)
    z, shift, c, a, fold = fit
    soft, bits, m = _decode(fold, shift, layout)
    score = z + MESSAGE_WEIGHT * max(0.0, m)
    detected = score >= (config.threshold if config.threshold is not None else size_threshold(h, w))
    doubt = payload_doubt(soft)
    # A near miss (Viterbi's word close to another one) keeps the detection, which the score's calibration on
    # clean images stands for, but not its payload: better no payload than a wrong one.
    rejected = detected and doubt > MAX_PAYLOAD_DOUBT
    return Detection(bool(detected), float(score), bits_to_int(bits) if detected and not rejected else None, float(c),
                     float(a), soft, float(z), float(m), float(doubt), bool(rejected))


def _decode(fold: np.ndarray, shift: tuple[int, int], layout: _Layout) -> tuple[np.ndarray, np.ndarray, float]:
    """The coded bits' soft values (114,) at the template's place (un-whitened, unit RMS), the decoded payload's
    bits (32,) and its message_score."""
    aligned = np.roll(fold, (-shift[0], -shift[1]), axis=(0, 1))
    soft = (layout.bit_templates @ aligned.ravel()) * (1.0 - 2.0 * layout.white)
    soft = soft / max(float(np.sqrt(np.mean(soft * soft))), 1e-12)
    bits = viterbi(soft, PAYLOAD_BITS)
    return soft, bits, message_score(soft, bits)


def payload_doubt(soft: np.ndarray) -> float:
    """The expected number of wrong bits in the decoded payload: each bit's probability of being wrong from its
    log-likelihood ratio, the max-log-MAP margin (watermark_code.bit_margins) scaled as for a Gaussian channel
    whose signal a and noise sigma^2 = 1 - a^2 are read from the soft values' agreement with the decoded code word
    (soft: (114,) with unit RMS). It weighs a margin by the read's strength, which the margin alone does not: a
    near miss at a weak read is likely wrong, the same margin at a strong read is not."""
    margins = bit_margins(soft, PAYLOAD_BITS)  # (32,) their signs are Viterbi's decisions
    a = float(np.mean(soft * (2.0 * encode((margins > 0).astype(np.uint8)) - 1.0)))
    llr = np.minimum(max(a, 0.0) / max(1.0 - a * a, 1e-3) * np.abs(margins), 700.0)  # exp() stays finite
    return float(np.sum(1.0 / (1.0 + np.exp(llr))))


def message_score(soft: np.ndarray, bits: np.ndarray) -> float:
    """How far the soft values agree with the decoded message's code word, above what the best code word
    reaches on noise alone (the decoder picks the best of 2^32 words, so noise agrees with it by about
    5.6 / sqrt(114) on average, not 0), in units of MESSAGE_NULL's spread. soft: (114,) with unit RMS."""
    agreement = float(soft @ (2.0 * encode(bits) - 1.0)) / math.sqrt(len(soft))
    return (agreement - MESSAGE_NULL[0]) / MESSAGE_NULL[1]
