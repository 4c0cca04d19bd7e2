"""How often Canny gives a digit a closed outline, by blur and thresholds (condition/edges.py's choice).

A digit's outline counts as closed when no stroke pixel (>= 128) that is not itself an edge reaches the
image border through non-edge pixels (4-connected): the edge map then separates the digit from the
background. Measured on the bundled MNIST digits at 28 px and resized to 32 px (Lanczos, as data
preparation does), for each setting: the closed share and the mean share of edge pixels. The last row is
the shipped `canny_edges` (CANNY_BLUR, CANNY_LOW, CANNY_HIGH, L2 norm).

Usage:
    .venv/bin/python bench/edge_closure.py              # 2,000 digits
    .venv/bin/python bench/edge_closure.py --images 5000 --json
    .venv/bin/python bench/edge_closure.py --quick      # smoke run; figures are not meaningful
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import torch  # noqa: E402

from pixelforge.condition.edges import canny_edges  # noqa: E402
from pixelforge.data.bundled import load_bundled  # noqa: E402

# (blur kernel side or 0, low, high, L2 gradient norm)
SETTINGS = [(0, 50, 150, False), (0, 100, 200, False), (3, 100, 200, False), (0, 100, 200, True),
            (3, 100, 200, True), (3, 20, 200, True), (3, 300, 600, True), (3, 400, 800, True)]


def closed(digit: np.ndarray, edges: np.ndarray) -> bool:
    """Whether edges (H, W) separate every non-edge stroke pixel of digit (H, W) uint8 from the border."""
    _, labels = cv2.connectedComponents((edges == 0).astype(np.uint8), connectivity=4)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    inside = (digit >= 128) & (edges == 0)
    return not set(np.unique(labels[inside]).tolist()) & border


def measure(digits: np.ndarray, edge_fn) -> tuple[float, float]:
    """(closed share, mean edge-pixel share) of edge_fn's maps of digits (N, H, W) uint8."""
    maps = [edge_fn(d) for d in digits]
    return (float(np.mean([closed(d, e) for d, e in zip(digits, maps)])), float(np.mean([(e > 0).mean() for e in maps])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="50 digits: a check that the script runs")
    a = p.parse_args()
    n = 50 if a.quick else a.images
    base = load_bundled("mnist").images[:n, 0].numpy()  # (N, 28, 28) uint8
    rows = []
    for side in (28, 32):
        digits = base if side == 28 else np.stack([cv2.resize(d, (32, 32), interpolation=cv2.INTER_LANCZOS4) for d in base])
        for blur, low, high, l2 in SETTINGS:
            def fn(d, blur=blur, low=low, high=high, l2=l2):
                return cv2.Canny(cv2.GaussianBlur(d, (blur, blur), 0) if blur else d, low, high, L2gradient=l2)

            rows.append({"side": side, "setting": f"blur {blur}, {low}/{high}, {'L2' if l2 else 'L1'}",
                         **dict(zip(("closed", "edge_share"), measure(digits, fn)))})
        shipped = measure(digits, lambda d: canny_edges(torch.from_numpy(d)[None, None])[0, 0].numpy())
        rows.append({"side": side, "setting": "canny_edges (shipped)", **dict(zip(("closed", "edge_share"), shipped))})
    if a.json:
        print(json.dumps({"images": n, "rows": rows}))
        return
    print(f"{n} MNIST digits: share with a closed outline, share of edge pixels")
    for r in rows:
        print(f"{r['side']:>3} px  {r['setting']:<26} closed {r['closed']:.3f}  edges {r['edge_share']:.3f}")


if __name__ == "__main__":
    main()
