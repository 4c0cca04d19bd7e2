"""Structured channel pruning of a diffusion UNet (`pixelforge compress --prune F`): the same share of the
channels of every level removed, whole channels at a time, and the kept weights copied into a network of the
same code built with the smaller widths (DiffusionConfig.level_channels, stem_channels).

What is pruned. Every set of channels that must be cut alike is one "space": the output channels of a
convolution together with its norm and the matching input channels of every layer that reads them. A
residual stream is one space across all the blocks that add into it (a block whose input and output widths
match adds its input unchanged, so its output channels are its input's, and the attention blocks add their
output to the stream), and a skip connection keeps its space where the decoder concatenates it. Each residual
block's inner channels (conv1's output, its norm, the noise-level embedding's scale and shift, conv2's input)
are a space of their own, and so are an attention block's query-key and value channels. Every space keeps
round((1 - F) * width) channels, so the network is uniformly narrower and each level's width is one number.
The noise-level and label embeddings (4 * base_channels wide) are kept whole.

Which channels are kept: the group magnitude criterion of DepGraph (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning", Torch-Pruning's GroupMagnitudeImportance, also used by Diff-Pruning for diffusion
UNets): each weight tensor (of two or more dimensions) touching a space scores each of its channels by
the squared L2 norm of that channel's slice, divided by the tensor's mean over its channels so every layer
counts alike, and a space keeps the channels of the highest summed score. Written here rather than taken
from the torch-pruning package, whose graph tracing would add a dependency for one network whose structure
the code below states in a few lines.

A pruned network computes a different function (fewer channels, and GroupNorm's groups and attention's heads
follow the new widths), so it is meant to be fine-tuned: `pixelforge train DATA --init-from PRUNED --steps N`
(docs/compress.md)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from ..models.diffusion import DiffusionConfig, DiffusionModel
from ..models.nets.cross_attention import SpatialCrossAttention
from ..models.nets.unet import AttnBlock, ResBlock, UNet, _Level


class _Space:
    """A set of channels pruned together: every tensor dimension indexing it keeps the same ones."""

    def __init__(self, width: int):
        self.width = width
        self.score = torch.zeros(width, dtype=torch.float64)  # (width,) summed group magnitude
        self.keep: Optional[torch.Tensor] = None  # (kept,) int64 ascending, once chosen


# A tensor dimension as the concatenation of spaces, each channel taking `repeat` consecutive entries (the
# UNet's vector_layout writes 4 x 4 entries per channel); None: a dimension kept whole.
Dim = Optional[tuple[tuple[_Space, int], ...]]


def kept_width(width: int, fraction: float) -> int:
    """Channels a space of `width` keeps when `fraction` of them are pruned: round((1 - fraction) * width), at least 1."""
    return max(1, round((1 - fraction) * width))


class _Plan:
    """The spaces of one UNet and, for each of its tensors, the space each dimension indexes."""

    def __init__(self):
        self.spaces: list[_Space] = []
        self.dims: dict[str, tuple[Dim, ...]] = {}

    def space(self, width: int) -> Dim:
        s = _Space(width)
        self.spaces.append(s)
        return ((s, 1),)

    def layer(self, name: str, cin: Dim, cout: Dim) -> None:
        """A convolution or linear layer: weight (out, in, ...), bias (out,)."""
        self.dims[f"{name}.weight"] = (cout, cin)
        self.dims[f"{name}.bias"] = (cout,)

    def norm(self, name: str, dim: Dim) -> None:
        self.dims[f"{name}.weight"] = (dim,)
        self.dims[f"{name}.bias"] = (dim,)

    # --- the UNet's parts, in forward order: each takes its input's space and returns its output's ---
    def res_block(self, name: str, block: ResBlock, x: Dim) -> Dim:
        inner = self.space(block.conv1.out_channels)  # conv1's output .. conv2's input
        self.norm(f"{name}.norm1", x)
        self.layer(f"{name}.conv1", x, inner)
        self.layer(f"{name}.emb", None, inner + inner)  # (scale, shift), each over the inner channels
        self.norm(f"{name}.norm2", inner)
        if isinstance(block.skip, nn.Identity):  # x + h: the output is the input's stream
            out = x
        else:
            out = self.space(block.conv2.out_channels)
            self.layer(f"{name}.skip", x, out)
        self.layer(f"{name}.conv2", inner, out)
        return out

    def attention(self, name: str, attn: AttnBlock, x: Dim) -> Dim:
        width = attn.proj.out_channels
        qk, v = self.space(width), self.space(width)  # q and k pair channel by channel; v feeds proj
        self.norm(f"{name}.norm", x)
        self.layer(f"{name}.qkv", x, qk + qk + v)
        self.layer(f"{name}.proj", v, x)  # x + proj(...): the stream's space
        return x

    def cross(self, name: str, cross: SpatialCrossAttention, x: Dim) -> Dim:
        width = cross.attn.proj.out_features
        qk, v = self.space(width), self.space(width)
        self.norm(f"{name}.attn.norm", x)
        self.layer(f"{name}.attn.q", x, qk)
        self.layer(f"{name}.attn.kv", None, qk + v)
        self.layer(f"{name}.attn.proj", v, x)
        return x

    def level(self, name: str, lvl: _Level, x: Dim) -> Dim:
        if lvl.resample is not None:
            conv = lvl.resample if isinstance(lvl.resample, nn.Conv2d) else lvl.resample[1]  # down, or (up, conv)
            out = self.space(conv.out_channels)
            self.layer(f"{name}.resample" + ("" if conv is lvl.resample else ".1"), x, out)
            return out
        x = self.res_block(f"{name}.block", lvl.block, x)
        if lvl.attn is not None:
            x = self.attention(f"{name}.attn", lvl.attn, x)
        if lvl.cross is not None:
            x = self.cross(f"{name}.cross", lvl.cross, x)
        return x

    def unet(self, name: str, net: UNet) -> None:
        stem = self.space(net.conv_in.out_channels)
        self.layer(f"{name}.conv_in", None, stem)
        if net.spatial_in is not None:
            self.layer(f"{name}.spatial_in", None, stem)
        if net.position is not None:
            self.dims[f"{name}.position"] = (None, stem)  # (1, stem, S, S)
            (s, _), = stem
            self.layer(f"{name}.vector_layout", None, ((s, net.vector_layout.out_features // s.width),))
        x, skips = stem, [stem]
        for i, lvl in enumerate(net.down):
            x = self.level(f"{name}.down.{i}", lvl, x)
            skips.append(x)
        x = self.res_block(f"{name}.mid1", net.mid1, x)
        x = self.attention(f"{name}.mid_attn", net.mid_attn, x)
        if net.mid_cross is not None:
            x = self.cross(f"{name}.mid_cross", net.mid_cross, x)
        x = self.res_block(f"{name}.mid2", net.mid2, x)
        for i, lvl in enumerate(net.up):
            if lvl.block is not None:
                x = x + skips.pop()  # torch.cat([h, skip], dim=1)
            x = self.level(f"{name}.up.{i}", lvl, x)
        self.norm(f"{name}.norm_out", x)
        self.layer(f"{name}.conv_out", x, None)

    # --- scoring, choosing, cutting --------------------------------------------------------------------
    def score(self, state: dict[str, torch.Tensor]) -> None:
        for key, dims in self.dims.items():
            t = state.get(key)
            if t is None or t.ndim < 2:  # biases and norms' affine terms do not vote
                continue
            t = t.detach().double().cpu()  # the scores live on the CPU whatever the model's device
            for d, dim in enumerate(dims):
                if dim is None:
                    continue
                per = t.transpose(0, d).reshape(t.shape[d], -1).square().sum(1)  # (entries,) squared L2 norms
                if float(per.mean()) == 0.0:  # an untrained zero-initialised layer says nothing
                    continue
                per = per / per.mean()
                offset = 0
                for space, repeat in dim:
                    n = space.width * repeat
                    space.score += per[offset:offset + n].reshape(space.width, repeat).sum(1)
                    offset += n

    def choose(self, fraction: float) -> None:
        for s in self.spaces:
            order = torch.argsort(s.score, descending=True, stable=True)  # ties: the lower index first
            s.keep = order[:kept_width(s.width, fraction)].sort().values

    def cut(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, t in state.items():
            for d, dim in enumerate(self.dims.get(key, ())):
                if dim is not None:
                    t = t.index_select(d, _indices(dim).to(t.device))
            out[key] = t.contiguous()
        return out


def _indices(dim: tuple[tuple[_Space, int], ...]) -> torch.Tensor:
    """The entries a dimension keeps: each space's kept channels (each `repeat` entries), at its offset."""
    parts, offset = [], 0
    for space, repeat in dim:
        kept = space.keep[:, None] * repeat + torch.arange(repeat)  # (kept, repeat)
        parts.append(kept.flatten() + offset)
        offset += space.width * repeat
    return torch.cat(parts)


def check_prunable(model: nn.Module) -> None:
    """A ValueError naming what is not supported: families other than diffusion, the DiT, adapter runs."""
    family = getattr(model, "family", type(model).__name__)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"{family} models cannot be pruned: --prune cuts the channels of a diffusion UNet")
    if model.config.backbone != "unet":
        raise ValueError(f"--prune cuts the channels of a diffusion UNet; this model's backbone is "
                         f"{model.config.backbone!r}")
    if model.adapter is not None:
        raise ValueError("--prune does not take an adapter run (its ControlNet copies the base's widths): prune the base")


def pruned_config(config: DiffusionConfig, fraction: float) -> DiffusionConfig:
    """config with every level's width and the stem's cut by `fraction` (level_channels, stem_channels)."""
    widths = config.level_channels or tuple(config.base_channels * m for m in config.channel_mult)
    stem = config.stem_channels or config.base_channels
    return dataclasses.replace(config, level_channels=tuple(kept_width(w, fraction) for w in widths),
                               stem_channels=kept_width(stem, fraction))


def prune_model(model: DiffusionModel, fraction: float) -> DiffusionModel:
    """A new DiffusionModel whose UNet keeps (1 - fraction) of the channels of every space (see the module's
    docstring), chosen by group magnitude, with the kept weights copied; every other tensor as it was. On the
    model's device, in eval mode, frozen like a loaded model."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"prune must be a share of channels above 0 and below 1, got {fraction!r}")
    check_prunable(model)
    state = model.state_dict()
    plan = _Plan()
    plan.unet("net", model.net)
    plan.score(state)
    plan.choose(fraction)
    config = pruned_config(model.config, fraction)
    small = DiffusionModel(config, model.optim_config, seed=0).to(model.device)
    cut = plan.cut(state)
    want = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    wrong = [k for k in want if k not in cut or tuple(cut[k].shape) != want[k]] + [k for k in cut if k not in want]
    if wrong:  # widths whose rounding turns an identity skip into a convolution, or back: another structure
        raise ValueError(f"--prune {fraction:g} changes this network's structure, not only its widths (at {wrong[0]}); "
                         "try another share")
    small.load_state_dict(cut)
    return small.eval().requires_grad_(False)


DATA_FIELDS = ("image_size", "channels", "num_classes")  # what a new run takes from its data, pruned or not


def start_fields(family: str, model: dict) -> dict | None:
    """The model fields a new run takes from the run it starts from (--init-from) when that run's network is
    pruned (explicit level_channels or stem_channels): all of them but DATA_FIELDS, so the new run is that
    network and every weight is copied (a run of the default widths would copy none of the pruned UNet's).
    None for any other run: its fields are the new run's own, as before."""
    if family != "diffusion" or not (model.get("level_channels") or model.get("stem_channels")):
        return None
    return {k: v for k, v in model.items() if k not in DATA_FIELDS}
