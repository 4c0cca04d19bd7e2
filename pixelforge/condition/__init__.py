"""Conditions: typed inputs that steer a model (class labels; text, spatial maps and audio), one contract.

`Cond` declares each kind of condition once, with its shape and its "empty" value (what classifier-free
guidance contrasts against and what condition dropout swaps in). Batching, indexing, concatenation,
device moves and dropout are written once over those declarations, so a new kind of condition is one
more declared field, not one more copy of each method. docs/design.md ("Conditions") has the contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

NO_LABEL = -1  # the label value meaning "no label": the empty label condition


@dataclass(frozen=True)
class FieldSpec:
    """How one Cond field looks: dtype, the dimensions after the batch one, and its empty value.

    dims: the accepted shapes after B, as names (e.g. ("D",) or ("F", "D") where either is allowed);
    empty: the fill value of the empty condition (a label -1, a zero vector, an all-False mask).
    """

    dtype: torch.dtype
    dims: tuple[tuple[str, ...], ...]
    empty: int | float | bool
    doc: str = ""


def _spec(dtype: torch.dtype, dims: tuple[tuple[str, ...], ...], empty, doc: str) -> dataclasses.Field:
    return field(default=None, metadata={"spec": FieldSpec(dtype, dims, empty, doc)})


@dataclass(frozen=True)
class Cond:
    """What a batch of B samples is conditioned on; a None field is "not given" for the whole batch.

    Every field is a tensor whose first dimension is B (the same for all given fields, checked):

    labels       (B,) int64 class indices; NO_LABEL (-1) is "no label".
    text         (B, D) float pooled text embedding; empty: zeros.
    text_tokens  (B, T, D) float per-token text states (for cross-attention); empty: zeros.
    text_mask    (B, T) bool, True where text_tokens holds a real token; empty: all False.
    spatial      (B, C, H, W) float spatial condition (edge map, low-resolution image, mask); empty: zeros.
    audio        (B, D) pooled or (B, F, D) per-frame float audio features; empty: zeros.
    present      (B,) bool, False for a sample whose conditions were emptied (by empty() or drop()).

    A zero vector is also a valid given condition, so wherever a field whose empty value is zeros is
    given (text, text_tokens, spatial, audio), `present` is kept alongside it (all True when not
    passed): a network reads it to use a learned "no condition" instead. Labels need no flag (-1 says it).
    """

    labels: torch.Tensor | None = _spec(torch.int64, ((),), NO_LABEL, "class indices")
    text: torch.Tensor | None = _spec(torch.float32, (("D",),), 0.0, "pooled text embedding")
    text_tokens: torch.Tensor | None = _spec(torch.float32, (("T", "D"),), 0.0, "per-token text states")
    text_mask: torch.Tensor | None = _spec(torch.bool, (("T",),), False, "real-token mask of text_tokens")
    spatial: torch.Tensor | None = _spec(torch.float32, (("C", "H", "W"),), 0.0, "edge map, low-res image or mask")
    audio: torch.Tensor | None = _spec(torch.float32, (("D",), ("F", "D")), 0.0, "pooled or per-frame audio")
    present: torch.Tensor | None = _spec(torch.bool, ((),), False, "per-sample: conditions not emptied")

    def __post_init__(self):
        sizes = {}
        for f in dataclasses.fields(self):
            value, spec = getattr(self, f.name), f.metadata["spec"]
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"Cond.{f.name} must be a tensor, got {type(value).__name__}")
            if value.dim() - 1 not in {len(d) for d in spec.dims}:
                shapes = " or ".join("(B" + "".join(f", {n}" for n in d) + ")" for d in spec.dims)
                raise ValueError(f"Cond.{f.name} must have shape {shapes}, got {tuple(value.shape)}")
            if spec.dtype.is_floating_point != value.dtype.is_floating_point or (spec.dtype == torch.bool) != (value.dtype == torch.bool):
                raise ValueError(f"Cond.{f.name} must be {spec.dtype}-like, got {value.dtype}")
            sizes[f.name] = int(value.shape[0])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Cond fields disagree on the batch size: {sizes}")
        if (self.text_tokens is None) != (self.text_mask is None):
            raise ValueError("Cond.text_tokens and Cond.text_mask go together: give both or neither")
        if self.text_tokens is not None and self.text_mask.shape != self.text_tokens.shape[:2]:
            raise ValueError(f"Cond.text_mask {tuple(self.text_mask.shape)} must be (B, T) of text_tokens {tuple(self.text_tokens.shape)}")
        needs_flag = any(getattr(self, n) is not None for n in ("text", "text_tokens", "spatial", "audio"))
        if needs_flag and self.present is None:
            device = next(getattr(self, n) for n in ("text", "text_tokens", "spatial", "audio") if getattr(self, n) is not None).device
            object.__setattr__(self, "present", torch.ones(len(self), dtype=torch.bool, device=device))

    # --- what is given -----------------------------------------------------------------------------
    def given_fields(self) -> tuple[str, ...]:
        """Names of the fields this Cond holds (not None), in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def _map(self, fn) -> "Cond":
        """A Cond with fn(name, tensor) applied to every given field."""
        return Cond(**{n: fn(n, getattr(self, n)) for n in self.given_fields()})

    def __len__(self) -> int:
        """The batch size B; 0 when no field is given."""
        given = self.given_fields()
        return int(getattr(self, given[0]).shape[0]) if given else 0

    # --- the generic operations ---------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "Cond":
        return self._map(lambda _, t: t.to(device))

    def index(self, idx: torch.Tensor | slice) -> "Cond":
        """The samples idx selects (a slice, an index tensor or a boolean mask), every field alike."""
        return self._map(lambda _, t: t[idx])

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        """The batches one after another; every Cond must give the same fields."""
        if not conds:
            return Cond()
        given = conds[0].given_fields()
        for c in conds[1:]:
            if c.given_fields() != given:
                raise ValueError(f"cannot concatenate conditions with different fields: {given} and {c.given_fields()}")
        return Cond(**{n: torch.cat([getattr(c, n) for c in conds]) for n in given})

    def _emptied(self, where: torch.Tensor | None) -> "Cond":
        """Every given field set to its empty value for the samples where `where` (B,) is True (all if None)."""

        def empty(name: str, t: torch.Tensor) -> torch.Tensor:
            fill = torch.full_like(t, _SPECS[name].empty)
            if where is None:
                return fill
            return torch.where(where.to(t.device).reshape(-1, *[1] * (t.dim() - 1)), fill, t)

        return self._map(empty)

    def empty(self) -> "Cond":
        """The same batch with every condition dropped: each given field at its empty value (for guidance)."""
        return self._emptied(None)

    def drop(self, p: float, generator: torch.Generator) -> "Cond":
        """Condition dropout: each sample's conditions are emptied with probability p, all of a sample's
        fields together (one draw per sample from `generator`, so a sample is either fully conditioned or
        fully unconditioned, the two cases classifier-free guidance mixes). p == 0 or nothing given: no
        draw, the same Cond back."""
        if not 0 <= p <= 1:
            raise ValueError(f"condition dropout p must be in [0, 1], got {p}")
        if p == 0 or not self.given_fields():
            return self
        dropped = torch.rand(len(self), generator=generator, device=generator.device) < p  # (B,)
        return self._emptied(dropped)


_SPECS: dict[str, FieldSpec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Cond)}


def no_labels(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n,) int64 of NO_LABEL: the label condition of n samples that have none."""
    return torch.full((n,), NO_LABEL, dtype=torch.long, device=device)


class LabelEmbedding(nn.Module):
    """Class label -> vector; row `num_classes` is the learned "no label" embedding (label -1)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    @staticmethod
    def new_classes_row(source: torch.Tensor) -> torch.Tensor:
        """The row every class (and "no label") of a run of another class count starts from, given the table of
        the run it starts from (train/loop.py _init_from): that run's "no label" row, so the new run starts as
        its unconditional model."""
        return source[-1:]

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        idx = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return self.embed(idx)
