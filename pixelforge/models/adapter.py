"""A ControlNet-style adapter's settings (Zhang et al. 2023): a diffusion run trained on top of an already
trained one whose network stays frozen (docs/conditions.md, "Adapters"). The network is nets/controlnet.py;
making an adapter run from its base is runs/adapter.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from .limits import WIDTH, check_bounds
from ..fields import from_fields

ADAPTER_KINDS = ("edges",)  # what an adapter conditions on: the spatial condition of the same name
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AdapterConfig:
    """kind: the condition the adapter adds, one of ADAPTER_KINDS ("edges": an edge map, whose detector and
        stroke width are the model config's SketchFields, as for a run trained with --condition edges).
    base: the base run as named when the adapter run was made (a run name, a folder or a bundled model).
    base_path: that run's folder then, from which a new run copies the base's weights (its EMA weights) once,
        at its start; from then on the run holds them itself (checkpoints, exported model.safetensors).
    base_sha256: the SHA-256 of the base's weights file then; the copy refuses a base whose weights changed.
    hint_channels: the widths of the 3x3 convolutions that take the edge map (and its flag channel) before the
        zero-initialised convolution that adds it to the trainable copy's first feature map.
    """

    kind: str = "edges"
    base: str = ""
    base_path: str = ""
    base_sha256: str = ""
    hint_channels: tuple[int, ...] = (16, 32)

    BOUNDS: ClassVar[dict] = {"hint_channels": ((1, 8), WIDTH)}

    def __post_init__(self):
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind {self.kind!r} is not known; choose one of: {', '.join(ADAPTER_KINDS)}")
        for name in ("base", "base_path", "base_sha256"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"adapter {name} must be a string, got {getattr(self, name)!r}")
        if self.base_sha256 and not _SHA256.fullmatch(self.base_sha256):
            raise ValueError(f"adapter base_sha256 must be 64 lowercase hex digits (a SHA-256), got {self.base_sha256!r}")
        check_bounds(self, self.BOUNDS)  # also turns JSON's list into a tuple


def adapter_config(value: Any) -> AdapterConfig | None:
    """A model config's `adapter` field as an AdapterConfig (None stays None); a clear error naming the
    field for anything but an object of AdapterConfig's fields."""
    return None if value is None else from_fields(AdapterConfig, value, "adapter")
