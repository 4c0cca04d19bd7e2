"""The data layer's two shared types: what to load (DataConfig) and what was loaded (ImageSet)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DataConfig:
    """How a data set is found and prepared; saved in a run so sampling and evaluation see the same pipeline.

    source: a folder of images (recursive; class sub-folders become labels; optional captions.jsonl)
            or the name of a bundled data set (`pixelforge datasets` lists them).
    image_size: side of the square images the model sees.
    channels: 1 (grayscale) or 3 (RGB).
    crop: "center" (resize short side then centre crop), "random" (resize short side to
          image_size * 1.125, random crop in training, centre crop otherwise) or "none" (squash).
    hflip: random horizontal flips in training (off by default: digits and text must not be mirrored).
    val_fraction: share of images held out for validation; the split is fixed by split_seed.
    allow_upscale: keep folder images whose short side is below half of image_size (skipped by
          default: a 1x1 image blown up to 32x32 is a flat square, not a sample of the data).
    caption_variants: other wordings of each caption that text training draws from: None, those the
          data gives (a folder's captions.jsonl lists; none in the bundled sets); 0, none; N, at most N
          per image (the bundled shapes set draws N of its own, data/shapes.py caption_variants).
    sketches: a folder holding a sketch drawn for each image of a source folder (same relative path and
          name, any image extension), the edge maps of a `--condition edges` run in place of a detector's
          (condition/edges.py paired_edge_maps); "" for none.
    """

    source: str
    image_size: int = 32
    channels: int = 3
    crop: str = "center"
    hflip: bool = False
    val_fraction: float = 0.05
    split_seed: int = 0
    allow_upscale: bool = False
    caption_variants: int | None = None
    sketches: str = ""


@dataclass
class ImageSet:
    """Prepared images, ready for a network: decoding happens once, here."""

    images: torch.Tensor  # (N, C, H, W) uint8; H == W == prepared side (>= image_size for random crop)
    labels: torch.Tensor | None  # (N,) int64 class index, or None for an unlabelled set
    class_names: list[str]
    captions: list[str | None] | None  # one per image where the set has captions
    source: str  # folder path or bundled name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) for unusable files
    # Other wordings of each image's caption (an empty list where it has none): text training draws one
    # of the caption and its variants for each image at each step, so a model does not learn one wording.
    caption_variants: list[list[str]] | None = None
    files: list[str] | None = None  # each image's path relative to a source folder ("/"-separated); None: bundled

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
