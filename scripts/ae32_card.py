"""The figures of the bundled ae-32 autoencoder's card (pixelforge/assets/models/ae-32/MODEL.md), from its
training run and its exported folder:

- heldout.json beside the exported weights: the images its run held out (split.json), as positions in each
  bundled set's order (scripts/make_base_data.py's folder), so a test can rebuild them from the bundled sets
  without the training folder;
- PSNR and SSIM of its reconstructions of those held-out images, per bundled set;
- the same on the 510 photo crops of bench/photos.py (images it never saw), and the FID of those
  reconstructions against the folder itself (Inception, as bench/time_to_quality.py scores): the floor a
  latent diffusion run in its latents cannot beat, since every image it makes is a decoding;
- a picture: held-out originals above their reconstructions, then photo crops above theirs.

Usage (after `pixelforge export ae-32 pixelforge/assets/models/ae-32`):
    python scripts/ae32_card.py RUN_DIR pixelforge/assets/models/ae-32 --data base-data --photos photos \\
        --image docs/images/ae-32-reconstructions.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import make_base_data  # noqa: E402  (scripts/make_base_data.py, this script's folder)

import pixelforge  # noqa: E402
from pixelforge.data import DataConfig, load_dataset  # noqa: E402
from pixelforge.files import atomic_target  # noqa: E402
from pixelforge.images import make_grid, to_pil  # noqa: E402
from pixelforge.metrics.evaluate import EvalOptions, evaluate_images, to_uint8  # noqa: E402
from pixelforge.metrics.reconstruction import reconstruction_figures  # noqa: E402
from pixelforge.runs import RunConfig  # noqa: E402

PER_SET = 3600  # make_base_data's default --per-set, what the run's folder was made with
GRID_COLS = 16


def held_out_positions(run_dir: Path, data: str | None) -> dict:
    """heldout.json's content: the run's validation images (split.json) as {set name: positions in that set's
    order}; each is checked to be the picture make_base_data.set_pictures gives for it."""
    cfg = RunConfig.load(run_dir / "config.json")
    source = data or cfg.data.source
    images = load_dataset(DataConfig(source=source, image_size=cfg.data.image_size, channels=cfg.data.channels,
                                     val_fraction=0.0))
    val = json.loads((run_dir / "split.json").read_text())["val"]
    first = {k: int(np.argmax(images.labels.numpy() == k)) for k in range(len(images.class_names))}
    sets: dict[str, list[int]] = {name: [] for name in images.class_names}
    for i in sorted(val):
        k = int(images.labels[i])
        sets[images.class_names[k]].append(i - first[k])
    for name, positions in sets.items():  # the folder's pixels are the bundled set's, converted as written
        rebuilt = pictures_tensor(make_base_data.set_pictures(name, PER_SET, positions[:8]))
        stored = images.images[[first[images.class_names.index(name)] + p for p in positions[:8]]]
        if not torch.equal(rebuilt, stored):
            raise ValueError(f"{source}: the held-out images of {name} are not make_base_data.py's (--per-set "
                             f"{PER_SET}); give the folder the run was trained on with --data")
    return {"data": "scripts/make_base_data.py (--per-set 3600), class sub-folders in sorted order",
            "val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.split_seed, "per_set": PER_SET,
            "held_out": sets}


def json_lines(d: dict) -> str:
    """d as JSON with one line per key (and per set of held_out), the position lists kept on their line."""
    def line(k, v, pad):
        if isinstance(v, dict):
            inner = ",\n".join(line(k2, v2, pad + " ") for k2, v2 in v.items())
            return f"{pad}{json.dumps(k)}: {{\n{inner}\n{pad}}}"
        return f"{pad}{json.dumps(k)}: {json.dumps(v)}"
    return "{\n" + ",\n".join(line(k, v, " ") for k, v in d.items()) + "\n}\n"


def pictures_tensor(pictures) -> torch.Tensor:
    """PIL RGB pictures -> uint8 (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2).contiguous()


def reconstruct(model, real: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the autoencoder's reconstructions, uint8 (N, 3, H, W)."""
    out = [to_uint8(model.reconstruct(chunk.float() / 127.5 - 1)) for chunk in real.split(batch)]
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the autoencoder's training run (its split.json)")
    p.add_argument("model", type=Path, help="the exported model folder (heldout.json is written there)")
    p.add_argument("--data", default=None, help="the folder the run trained on (default: its config's source)")
    p.add_argument("--photos", required=True, help="bench/photos.py's folder")
    p.add_argument("--image", type=Path, default=None, help="write the reconstructions picture here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--no-fid", action="store_true", help="skip the FID (Inception features of 1,020 images: the slow part)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    heldout = held_out_positions(a.run, a.data)
    with atomic_target(a.model / "heldout.json") as tmp:
        tmp.write_text(json_lines(heldout))
    g = pixelforge.load(a.model, device=a.device)
    figures: dict = {"load_average": list(os.getloadavg())}
    shown_real, shown_fake = [], []
    for name, positions in heldout["held_out"].items():
        real = pictures_tensor(make_base_data.set_pictures(name, PER_SET, positions))  # (n, 3, 32, 32)
        fake = reconstruct(g.model, real)
        figures[name] = reconstruction_figures(real, fake)
        shown_real.append(real[: GRID_COLS // 4])
        shown_fake.append(fake[: GRID_COLS // 4])
        print(f"{name:9s} held out {figures[name]['n']:4d}: PSNR {figures[name]['psnr']:.2f} dB  "
              f"SSIM {figures[name]['ssim']:.4f}", flush=True)

    from pixelforge.evaluate import load_real
    from pixelforge.metrics.features import load_extractor

    extractor = load_extractor("inception", device=a.device)
    real = load_real(str(a.photos), extractor=extractor, image_size=32, progress=False)  # (510, 3, 32, 32) uint8
    fake = reconstruct(g.model, real)
    figures["photos"] = reconstruction_figures(real, fake)
    print(f"photos    all {figures['photos']['n']:4d}: PSNR {figures['photos']['psnr']:.2f} dB  SSIM "
          f"{figures['photos']['ssim']:.4f}", flush=True)
    if a.image:  # before the FID, the slow part
        picks = torch.linspace(0, len(real) - 1, GRID_COLS).round().long()  # spread over the three classes
        rows = [torch.cat(shown_real), torch.cat(shown_fake), real[picks], fake[picks]]
        grid = make_grid(to_pil(torch.cat(rows).float() / 127.5 - 1), cols=GRID_COLS, scale=3)
        grid.save(a.image)
        print(f"picture: {a.image}", flush=True)
    if a.no_fid:
        return 0
    scored = evaluate_images(fake, real, extractor, options=EvalOptions(), real_label="photos", progress=True)
    figures["photos"].update({k: scored[k] for k in ("fid", "kid", "precision", "recall", "extractor")})
    figures["load_average_after"] = list(os.getloadavg())
    print(f"photos: FID of the reconstructions against the folder {scored['fid']:.2f} ({scored['extractor']})",
          flush=True)
    print(json.dumps(figures, default=str))
    if a.json:
        a.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
