"""Gated PixelCNN backbone and output heads (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders"), written so that the same layers run on a whole image (training) or on the few rows
and columns a cached sampler needs.

Causality without masks or a blind spot (paper sec. 2.2, fig. 2). Two stacks run side by side:

- the vertical stack v sees only the rows strictly above: its first convolution reads the input
  shifted down one row, and every later one a (k//2 + 1) x k window of the rows at and above;
- the horizontal stack h sees the pixels strictly to the left in the same row (input shifted right one
  column, then 1 x (k//2 + 1) windows of the columns at and to the left), plus, through a 1x1 link in
  every layer, the vertical stack at the same position.

So the features at (i, j) depend only on pixels before (i, j) in raster order, and the region they see
above grows by k//2 rows and k//2 columns to each side per layer, up and to the right included (a
plain stack of masked k x k convolutions misses that part: the blind spot). Padding is explicit: a feature map is padded by hand and
each convolution runs unpadded on the window it needs, which is what lets `PixelCNNModel.sample` keep
padded per-layer buffers and compute one row of v, then one pixel of h, at a time.

Channels of one pixel (RGB) are ordered R, G, B inside the output head only: the head for channel c
also sees the current pixel's channels < c (mask 'A' over channel groups), so the body runs once per
pixel. The discretised logistic mixture head instead couples the channel means linearly (PixelCNN++).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...condition import LabelEmbedding, no_labels

LEVELS = 256  # 8-bit pixel values


def gate(pre: torch.Tensor) -> torch.Tensor:
    """Gated activation tanh(a) * sigmoid(b) over the two halves of the channels (paper eq. 2)."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks (paper fig. 2); the label adds a per-channel bias inside both gates."""

    def __init__(self, hidden: int, kernel_size: int, cond_dim: int):
        super().__init__()
        k2 = kernel_size // 2
        self.v_conv = nn.Conv2d(hidden, 2 * hidden, (k2 + 1, kernel_size))  # rows i-k2..i, cols j-k2..j+k2
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)  # the link from v to h at the same position
        self.h_conv = nn.Conv2d(hidden, 2 * hidden, (1, k2 + 1))  # row i, cols j-k2..j
        self.h_out = nn.Conv2d(hidden, hidden, 1)
        self.cond = nn.Linear(cond_dim, 4 * hidden) if cond_dim else None  # V_v y and V_h y

    def cond_bias(self, emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """emb (B, cond_dim) -> the vertical and horizontal gate biases, each (B, 2 * hidden, 1, 1)."""
        if self.cond is None or emb is None:
            return None
        return self.cond(emb)[:, :, None, None].chunk(2, dim=1)

    def vertical(self, v_win: torch.Tensor, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """v_win (B, F, h + k2, W + 2 k2), already padded -> next v (B, F, h, W), link (B, 2F, h, W)."""
        pre = self.v_conv(v_win)
        if bias is not None:
            pre = pre + bias[0]
        return gate(pre), self.v_to_h(pre)

    def horizontal(self, h_win: torch.Tensor, h: torch.Tensor, link: torch.Tensor, bias) -> torch.Tensor:
        """h_win (B, F, h, w + k2) padded, h (B, F, h, w) its last w columns, link (B, 2F, h, w) -> next h."""
        pre = self.h_conv(h_win) + link
        if bias is not None:
            pre = pre + bias[1]
        return h + self.h_out(gate(pre))  # residual on the horizontal stack only, as in the paper


class GatedPixelCNN(nn.Module):
    """Image x (B, C, H, W) in [-1, 1] -> features (B, F, H, W); features at (i, j) see only pixels before it.

    Conditions: a label (num_classes > 0) and a condition vector (B, hidden) (with_vector, e.g. a
    prompt's), summed into one embedding that adds a per-layer bias inside every gate (paper eq. 4)."""

    def __init__(self, *, channels: int, hidden: int, num_layers: int, kernel_size: int, num_classes: int,
                 with_vector: bool = False):
        super().__init__()
        self.k2 = kernel_size // 2
        self.hidden = hidden
        k2 = self.k2
        # Input layers read the image shifted down one row (v) or right one column (h): strictly causal.
        self.v_in = nn.Conv2d(channels, hidden, (k2 + 1, kernel_size))
        self.h_in = nn.Conv2d(channels, hidden, (1, k2 + 1))
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes > 0 else None
        cond_dim = hidden if num_classes > 0 or with_vector else 0
        self.layers = nn.ModuleList(GatedLayer(hidden, kernel_size, cond_dim) for _ in range(num_layers))

    def cond_biases(self, labels: torch.Tensor | None, batch: int, device, vector: torch.Tensor | None = None) -> list:
        """Per layer the (vertical, horizontal) gate biases of the labels and the vector (B, F), or None for
        an unconditional net."""
        emb = vector  # (B, F) or None
        if self.label_embed is not None:
            if labels is None:
                labels = no_labels(batch, device)  # the "no label" embedding
            emb = self.label_embed(labels) if emb is None else self.label_embed(labels) + emb  # (B, F)
        if emb is None:
            return [None] * len(self.layers)
        return [layer.cond_bias(emb) for layer in self.layers]

    # Padding: v maps get k2 rows on top and k2 columns each side; h maps k2 columns on the left; the
    # input gets one more row (v) or column (h) of zeros, the shift, and loses its last row or column.
    def pad_input_v(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.k2, self.k2, self.k2 + 1, 0))[:, :, :-1]

    def pad_input_h(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.k2 + 1, 0, 0, 0))[..., :-1]

    def pad_v(self, v: torch.Tensor) -> torch.Tensor:
        return F.pad(v, (self.k2, self.k2, self.k2, 0))

    def pad_h(self, h: torch.Tensor) -> torch.Tensor:
        return F.pad(h, (self.k2, 0, 0, 0))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
        biases = self.cond_biases(labels, x.shape[0], x.device, vector)
        v = self.v_in(self.pad_input_v(x))  # (B, F, H, W): rows < i
        h = self.h_in(self.pad_input_h(x))  # (B, F, H, W): row i, columns < j
        for layer, bias in zip(self.layers, biases):
            v, link = layer.vertical(self.pad_v(v), bias)
            h = layer.horizontal(self.pad_h(h), h, link, bias)
        return h


class SoftmaxHead(nn.Module):
    """Features (B, F, H, W) and the image -> 256-way logits (B, C, 256, H, W), one softmax per channel.

    With C = 3 the logits of channel c also see channels < c of the same pixel (a 1x1 convolution
    masked like the paper's mask 'A' over the R, G, B groups), so p(pixel) = p(R) p(G | R) p(B | R, G).
    """

    def __init__(self, hidden: int, channels: int):
        super().__init__()
        self.channels = channels
        self.hid = nn.Conv2d(hidden, channels * hidden, 1)  # one group of `hidden` maps per channel
        if channels > 1:
            self.prev = nn.Conv2d(channels, channels * hidden, 1, bias=False)
            group = torch.arange(channels * hidden) // hidden  # output map -> its channel group
            mask = (torch.arange(channels)[None, :] < group[:, None]).float()  # group c sees channels < c
            self.register_buffer("mask", mask[:, :, None, None], persistent=False)
        self.out = nn.Conv2d(channels * hidden, channels * LEVELS, 1, groups=channels)
        nn.init.zeros_(self.out.weight)  # an untrained model is uniform: exactly 8 bits/dim
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = self.hid(F.relu(h))  # (B, C * F, H, W)
        if self.channels > 1:
            z = z + F.conv2d(x, self.prev.weight * self.mask)
        logits = self.out(F.relu(z))  # (B, C * 256, H, W)
        b, _, hh, ww = logits.shape
        return logits.view(b, self.channels, LEVELS, hh, ww)


class MixtureHead(nn.Module):
    """Features (B, F, H, W) -> discretised logistic mixture parameters (B, P, H, W) (Salimans et al. 2017).

    P = K (mixture logits) + K C (means) + K C (log scales) + K C (C - 1) / 2 (channel coefficients).
    The current pixel's values enter through the coefficients only, in the family's log-likelihood.
    """

    def __init__(self, hidden: int, channels: int, n_mixtures: int):
        super().__init__()
        self.hid = nn.Conv2d(hidden, hidden, 1)
        n_coeffs = channels * (channels - 1) // 2
        self.out = nn.Conv2d(hidden, n_mixtures * (1 + 2 * channels + n_coeffs), 1)
        # Default (random) initialisation: zero weights would make every component identical, and they
        # would then receive identical gradients and never separate.

    def forward(self, h: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(F.relu(self.hid(F.relu(h))))


class SamplingCache:
    """Incremental evaluation of a GatedPixelCNN while sampling in raster order (after Ramachandran et
    al. 2017, "Fast Generation for Convolutional Autoregressive Models").

    Padded buffers hold the image and every layer's vertical features computed so far. `start_row(i)`
    computes row i of each layer of v from the k2 + 1 buffered rows it depends on (row i of v needs only
    rows < i of the image, all known); `pixel(j)` then computes one column of each layer of h from the
    k2 + 1 buffered columns to its left and the cached v link. Each feature is computed once, so a
    whole image costs about one forward pass of work instead of H * W of them.
    Layout: image pixel (r, c) sits at xv[..., r + k2 + 1, c + k2] and xh[..., 0, c + k2 + 1]; layer
    features (r, c) at v[l][..., r + k2, c + k2] and h[l][..., 0, c + k2]; the rest is zero padding,
    the same zeros `GatedPixelCNN.forward` pads with.
    """

    def __init__(self, net: GatedPixelCNN, shape: tuple[int, int, int, int], biases: list, device):
        n, c, height, width = shape
        k2, f = net.k2, net.hidden
        self.net, self.biases, self.k2, self.width = net, biases, k2, width
        self.xv = torch.zeros(n, c, height + k2 + 1, width + 2 * k2, device=device)
        self.v = [torch.zeros(n, f, height + k2, width + 2 * k2, device=device) for _ in net.layers]
        self.links: list[torch.Tensor] = []
        self.row = -1

    def start_row(self, i: int) -> None:
        net, k2, w = self.net, self.k2, self.width
        self.v[0][:, :, i + k2, k2 : k2 + w] = net.v_in(self.xv[:, :, i : i + k2 + 1])[:, :, 0]  # image rows i-k2-1..i-1
        self.links = []
        for l, (layer, bias) in enumerate(zip(net.layers, self.biases)):
            v_next, link = layer.vertical(self.v[l][:, :, i : i + k2 + 1], bias)  # v_l rows i-k2..i -> (n, F, 1, W)
            self.links.append(link)  # (n, 2F, 1, W)
            if l + 1 < len(self.v):
                self.v[l + 1][:, :, i + k2, k2 : k2 + w] = v_next[:, :, 0]
        n, c = self.xv.shape[:2]
        self.xh = torch.zeros(n, c, 1, w + k2 + 1, device=self.xv.device)
        self.h = [torch.zeros(n, self.net.hidden, 1, w + k2, device=self.xv.device) for _ in range(len(net.layers) + 1)]
        self.row = i

    def pixel(self, j: int) -> torch.Tensor:
        """Features (n, F, 1, 1) at (row, j); needs the pixels before it written with `write`."""
        net, k2 = self.net, self.k2
        self.h[0][..., k2 + j] = net.h_in(self.xh[..., j : j + k2 + 1])[..., 0]  # image columns j-k2-1..j-1
        for l, (layer, bias) in enumerate(zip(net.layers, self.biases)):
            win = self.h[l][..., j : j + k2 + 1]  # h_l columns j-k2..j
            self.h[l + 1][..., k2 + j] = layer.horizontal(win, win[..., -1:], self.links[l][..., j : j + 1], bias)[..., 0]
        return self.h[-1][..., k2 + j : k2 + j + 1]

    def write(self, j: int, values: torch.Tensor) -> None:
        """values (n, C) in [-1, 1]: the sampled pixel (row, j)."""
        self.xv[:, :, self.row + self.k2 + 1, self.k2 + j] = values
        self.xh[:, :, 0, self.k2 + 1 + j] = values
