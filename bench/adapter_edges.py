"""Do an adapter's samples follow the edge map? An edge adapter (`pixelforge train BASE --adapter edges`) against
its base alone, on held-out images of the run's split (split.json "val").

For each held-out image: its Canny edge map (the run's detector, on the image as the model sees it) is the
condition; the adapter draws one sample from it with the image's label (where the base has labels) and one
without, and the base alone draws one with the label (what the base can do knowing the class, not the shape).
The figure is the symmetric chamfer distance in pixels between the Canny edges of the sample and the given
map: the mean, over the edge pixels of each, of the distance to the nearest edge pixel of the other
(cv2.distanceTransform), averaged over both directions; lower follows the map more closely. A sample without
any edge counts as the image's diagonal. Every sample uses seed i for image i, so the three rows compare the
same noise.

Usage:
    .venv/bin/python bench/adapter_edges.py RUN [--runs-dir DIR] [--images 32] [--steps 18] [--guidance 1]
    .venv/bin/python bench/adapter_edges.py RUN --json
"""

from __future__ import annotations

import argparse
import json
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

import pixelforge  # noqa: E402
from pixelforge.condition import Cond  # noqa: E402
from pixelforge.condition.edges import edge_detector  # noqa: E402
from pixelforge.data import load_dataset, to_model  # noqa: E402


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric chamfer distance in pixels between two (H, W) bool edge maps (the diagonal where one is empty)."""
    if not a.any() or not b.any():
        return float(np.hypot(*a.shape)) if a.any() != b.any() else 0.0
    # distanceTransform: each pixel's distance to the nearest zero pixel, so the edges are the zeros
    to_a = cv2.distanceTransform((~a).astype(np.uint8), cv2.DIST_L2, 3)
    to_b = cv2.distanceTransform((~b).astype(np.uint8), cv2.DIST_L2, 3)
    return 0.5 * (float(to_b[a].mean()) + float(to_a[b].mean()))


def edges_of(images: torch.Tensor, detector: str) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> (N, H, W) bool edges from the named detector."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return (edge_detector(detector)(pixels)[:, 0] > 0).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an edge adapter run (or its exported model)")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--images", type=int, default=32, help="held-out images (the first of the split's)")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    adapter = pixelforge.load(a.run, runs_dir=a.runs_dir, device=a.device, moderation=None)
    cfg = adapter.model.config
    if cfg.adapter is None:
        raise SystemExit(f"{a.run} is not an adapter run")
    base = pixelforge.load(cfg.adapter.base_path, device=a.device, moderation=None)
    split = adapter.run_dir / "split.json"
    data = load_dataset(adapter.config.data, progress=False)
    val = json.loads(split.read_text())["val"] if split.is_file() else list(range(len(data)))[-a.images:]
    idx = torch.tensor(val[: a.images])
    images = to_model(data.images[idx], adapter.config.data)  # (N, C, H, W) in [-1, 1]
    given = edges_of(images, cfg.edge_detector)  # (N, H, W) bool
    spatial = torch.from_numpy(given).float()[:, None]  # (N, 1, H, W)
    labels = data.labels[idx] if data.labels is not None and cfg.num_classes else None
    options = {"steps": a.steps, "guidance": a.guidance, "seeds": list(range(len(idx)))}
    rows = {
        "adapter, edges + label": adapter.model.sample(len(idx), Cond(labels=labels, spatial=spatial), **options),
        "adapter, edges alone": adapter.model.sample(len(idx), Cond(spatial=spatial), **options),
        "base alone, label": base.model.sample(len(idx), Cond(labels=labels) if labels is not None else None, **options),
    }
    if labels is None:
        del rows["adapter, edges + label"]
    result = {"run": a.run, "base": cfg.adapter.base, "images": len(idx), "steps": a.steps, "guidance": a.guidance,
              "chamfer_px": {}, "seconds": None}
    for name, samples in rows.items():
        d = [chamfer(e, g) for e, g in zip(edges_of(samples.cpu(), cfg.edge_detector), given)]
        result["chamfer_px"][name] = {"mean": float(np.mean(d)), "median": float(np.median(d))}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{a.run} on {result['base']}: {len(idx)} held-out images, {a.steps} steps, guidance {a.guidance}")
        for name, v in result["chamfer_px"].items():
            print(f"  {name:24s} chamfer distance to the given edges: mean {v['mean']:.2f} px, median {v['median']:.2f} px")
        print(f"  ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
