"""Checks of the HED port (pixelforge/condition/hed.py) and of how it is run on small images.

photos: on scikit-image's sample photos (offline, resized to SIDE px on the long side), HED's thresholded
and thinned edges against Canny's (pixelforge's canny_edges) within a tolerance of TOL px: precision (HED
pixels with a Canny pixel within TOL), recall (the other way round), their F-score, and the F-score of
random pixels of the same densities (chance). The same for deliberately broken ports: RGB instead of BGR,
no mean subtraction, Keras kernels reshaped instead of transposed from HWIO, or transposed with their two
spatial axes swapped (hw-swapped). Writes docs/images/hed-vs-canny.png
(photo | Canny | HED) with --figure.

digits: on bundled MNIST digits at 28 px, hed_edges' settings (upscale factor, threshold) against Canny:
the share of digits with a closed outline (bench/edge_closure.py's measure), the share of edge pixels, the
F-score against Canny within 1 px, and the seconds per digit.

Usage:
    .venv/bin/python bench/hed_check.py photos --figure
    .venv/bin/python bench/hed_check.py digits --images 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import torch  # noqa: E402

from pixelforge.condition import hed  # noqa: E402
from pixelforge.condition.edges import canny_edges  # noqa: E402
from pixelforge.device import pick_device  # noqa: E402

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket")
VARIANTS = ("port", "rgb", "no-mean", "reshaped", "hw-swapped")


def sample_photos(names=PHOTOS, side: int = 320) -> torch.Tensor:
    """scikit-image's sample photos (shipped with the package), each resized (area) to side x side RGB:
    (N, 3, side, side) uint8."""
    import skimage.data

    out = []
    for name in names:
        a = getattr(skimage.data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        s = min(a.shape[:2])
        y, x = (a.shape[0] - s) // 2, (a.shape[1] - s) // 2
        a = cv2.resize(np.ascontiguousarray(a[y:y + s, x:x + s]), (side, side), interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(a).permute(2, 0, 1))
    return torch.stack(out)


def broken_model(variant: str, path=None) -> hed.HED:
    """HED with a deliberate porting error: "reshaped" reads each Keras kernel by reshaping its HWIO array
    to OIHW instead of transposing it (the other variants change the input, not the weights)."""
    model = hed.HED()
    state = hed.read_weights(hed.find_weights(path))
    if variant == "reshaped":
        state = {k: (v.permute(2, 3, 1, 0).reshape(v.shape) if v.ndim == 4 else v) for k, v in state.items()}
    elif variant == "hw-swapped":  # HWIO transposed to OIWH: every 3x3 kernel mirrored about its diagonal
        state = {k: (v.transpose(2, 3) if v.ndim == 4 else v) for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval().to(pick_device())


def probabilities(images: torch.Tensor, variant: str, model: hed.HED) -> torch.Tensor:
    """HED's map of images (N, 3, H, W) uint8 at their own size, run as `variant` ports it -> (N, 1, H, W) on the CPU."""
    images = images.to(next(model.parameters()).device)
    x = hed.hed_input(images)  # BGR minus the mean
    if variant == "rgb":
        x = images.float() - torch.tensor(hed.CAFFE_MEAN_BGR, device=images.device).view(1, 3, 1, 1)  # RGB minus BGR's mean
    elif variant == "no-mean":
        x = images.float().flip(1)
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 1]) for i in range(len(x))]).cpu()


def agreement(a: np.ndarray, b: np.ndarray, tol: int) -> dict[str, float]:
    """Tolerance precision/recall/F of edge map a (H, W) bool against b, and F of random maps of their densities."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    near_b = cv2.dilate(b.astype(np.uint8), k) > 0
    near_a = cv2.dilate(a.astype(np.uint8), k) > 0
    p = float((a & near_b).sum() / max(a.sum(), 1))
    r = float((b & near_a).sum() / max(b.sum(), 1))
    # random pixels of a's density land near b as often as near_b covers the image, and the other way round
    pc, rc = float(near_b.mean()), float(near_a.mean())
    f = lambda x, y: 2 * x * y / max(x + y, 1e-12)  # noqa: E731
    return {"precision": p, "recall": r, "f": f(p, r), "chance_f": f(pc, rc)}


def port_scores(images: torch.Tensor, tol: int = 2, variants=VARIANTS, path=None) -> dict[str, dict[str, float]]:
    """{variant: mean precision, recall, F, chance F over images} of HED (thresholded, thinned) against Canny."""
    canny = canny_edges(images)[:, 0].numpy() > 0
    good = hed.load_hed(None if path is None else str(path))  # the shipped loader, cached
    out = {}
    for v in variants:
        model = broken_model(v, path) if v in ("reshaped", "hw-swapped") else good
        edges = hed.thin_edges(probabilities(images, v, model))[:, 0].numpy() > 0
        rows = [agreement(e, c, tol) for e, c in zip(edges, canny)]
        out[v] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out[v]["edge_share"] = float(edges.mean())
    return out


def figure(images: torch.Tensor, path: Path) -> None:
    """photo | Canny | HED (thresholded and thinned) | HED's probability, one row per photo."""
    from PIL import Image

    p = probabilities(images, "port", broken_model("port"))
    canny = canny_edges(images)[:, 0].numpy()
    thin = hed.thin_edges(p)[:, 0].numpy()
    rows = []
    for i in range(len(images)):
        grey = lambda a: np.stack([a] * 3, -1)  # noqa: E731
        tiles = [images[i].permute(1, 2, 0).numpy(), grey(255 - canny[i]), grey(255 - thin[i]),
                 grey(255 - (p[i, 0].numpy() * 255).round().astype(np.uint8))]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = Image.fromarray(np.concatenate(rows, 0).astype(np.uint8))
    grid.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)  # a palette: a third of the bytes


def closed(digit: np.ndarray, edges: np.ndarray) -> bool:
    """bench/edge_closure.py's measure: no non-edge stroke pixel reaches the border through non-edge pixels."""
    _, labels = cv2.connectedComponents((edges == 0).astype(np.uint8), connectivity=4)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    return not set(np.unique(labels[(digit >= 128) & (edges == 0)]).tolist()) & border


def digit_scores(n: int, scales=(1, 2, 4, 8), thresholds=(0.3, 0.5, 0.7)) -> list[dict]:
    from pixelforge.data.bundled import load_bundled

    digits = load_bundled("mnist").images[:: 5000 // n][:n]  # (n, 1, 28, 28) uint8, spread over the classes
    canny = canny_edges(digits)[:, 0].numpy() > 0
    model = hed.load_hed()
    rows = [{"setting": "canny_edges", "closed": float(np.mean([closed(d, c * 255) for d, c in zip(digits[:, 0].numpy(), canny)])),
             "edge_share": float(canny.mean()), "f_canny": 1.0, "s_per_image": 0.0}]
    for scale in scales:
        t = time.perf_counter()
        p = hed.hed_probabilities(digits, scale=scale, model=model)
        secs = (time.perf_counter() - t) / n
        for th in thresholds:
            e = hed.thin_edges(p, th)[:, 0].numpy()
            rows.append({"setting": f"x{scale} ({28 * scale} px), threshold {th}",
                         "closed": float(np.mean([closed(d, x) for d, x in zip(digits[:, 0].numpy(), e)])),
                         "edge_share": float((e > 0).mean()),
                         "f_canny": float(np.mean([agreement(x > 0, c, 1)["f"] for x, c in zip(e, canny)])),
                         "s_per_image": secs})
    return rows


def digits_figure(path: Path, n: int = 10) -> None:
    """Rows digit | Canny | hed_edges (as training maps them), n MNIST digits spread over the classes, 4x enlarged."""
    from PIL import Image

    from pixelforge.data.bundled import load_bundled

    digits = load_bundled("mnist").images[:: 5000 // n][:n]  # (n, 1, 28, 28) uint8
    rows = [digits[:, 0].numpy(), canny_edges(digits)[:, 0].numpy(), hed.hed_edges(digits)[:, 0].numpy()]
    grid = np.concatenate([np.concatenate([np.pad(a, 1, constant_values=128) for a in row], 1) for row in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.astype(np.uint8)).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.Resampling.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("photos", "digits"))
    p.add_argument("--side", type=int, default=320, help="photos: side in pixels")
    p.add_argument("--tol", type=int, default=2, help="photos: tolerance in pixels")
    p.add_argument("--images", type=int, default=100, help="digits: how many")
    p.add_argument("--scales", default="1,2,4,8", help="digits: upscale factors")
    p.add_argument("--figure", action="store_true", help="photos: write docs/images/hed-vs-canny.png; digits: write "
                   "docs/images/hed-digits.png (digit | Canny | HED) and nothing else")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    if a.what == "photos":
        images = sample_photos(side=a.side)
        t = time.perf_counter()
        for v, s in port_scores(images, a.tol).items():
            print(f"{v:<9} precision {s['precision']:.3f}  recall {s['recall']:.3f}  F {s['f']:.3f}  "
                  f"chance F {s['chance_f']:.3f}  edges {s['edge_share']:.3f}")
        print(f"{len(images)} photos at {a.side} px, tolerance {a.tol} px, {time.perf_counter() - t:.0f} s")
        if a.figure:
            out = Path(__file__).resolve().parent.parent / "docs" / "images" / "hed-vs-canny.png"
            figure(sample_photos(PHOTOS[:4], side=160), out)
            print(f"wrote {out}")
    else:
        if a.figure:
            out = Path(__file__).resolve().parent.parent / "docs" / "images" / "hed-digits.png"
            digits_figure(out)
            print(f"wrote {out}")
            return
        for r in digit_scores(a.images, tuple(int(s) for s in a.scales.split(","))):
            print(f"{r['setting']:<30} closed {r['closed']:.3f}  edges {r['edge_share']:.3f}  F vs Canny (1 px) "
                  f"{r['f_canny']:.3f}  {r['s_per_image']:.3f} s/img")


if __name__ == "__main__":
    main()
