"""Control against diversity over classifier-free guidance scales, for a text-conditioned run on shapes.

For each guidance scale: adherence per attribute on held-out prompts (combinations the bundled shapes
set never draws, phrased as the captions, paraphrased, and with other shape names; `pixelforge
evaluate --adherence`), and at one fixed prompt the diversity of its samples (mean pairwise feature
distance) and their recall against real shapes drawn with that prompt's attributes (Kynkäänniemi et al. 2019). Prints a markdown
table with the command, the machine load and the timings, and saves a plot.

    .venv/bin/python bench/guidance_sweep.py                          # the bundled shapes-text model
    .venv/bin/python bench/guidance_sweep.py RUN --scales 1,2,4 --plot out/sweep.png
    .venv/bin/python bench/guidance_sweep.py RUN --quick              # smoke run; figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from pixelforge.api import load  # noqa: E402
from pixelforge.data.shapes import draw_shape, place_shape, random_jitter  # noqa: E402
from pixelforge.evaluate import adherence_of  # noqa: E402
from pixelforge.metrics.adherence import ATTRIBUTES, parse_prompt  # noqa: E402
from pixelforge.metrics.evaluate import to_uint8  # noqa: E402
from pixelforge.metrics.precision_recall import precision_recall  # noqa: E402

DEFAULT_RUN = "shapes-text"  # the bundled text model, when installed
# A held-out combination, paraphrased. Medium, not large: a large shape at an edge place is pushed back
# inside the image whatever its jitter, so all its real images are the same and recall means nothing.
DEFAULT_PROMPT = "a mid-sized blue star in the upper right, on black"
PIXELS = "pixels (each image as a vector of its RGB values in [0, 1])"


class PixelFeatures:
    """The fallback feature space where the FID Inception weights are not installed: the pixels
    themselves. Distances then measure layout and colour, not semantics, and are not comparable with
    distances in Inception space."""

    name = PIXELS

    def features(self, images: torch.Tensor, **_) -> np.ndarray:  # (N, C, H, W) uint8 -> (N, C*H*W)
        return images.reshape(len(images), -1).double().numpy() / 255.0


def pick_features(name: str, device: str):
    """"inception", "pixels", or "auto": Inception when its weights are installed, else pixels."""
    from pixelforge.metrics.features import ExtractorNotAvailable, InceptionExtractor

    if name == "pixels":
        return PixelFeatures()
    try:
        return InceptionExtractor(device=device)
    except ExtractorNotAvailable:
        if name == "inception":
            raise
        return PixelFeatures()


def real_images(attributes: dict[str, str], count: int, side: int, seed: int) -> torch.Tensor:
    """`count` shapes of one combination drawn as the data set draws them (random jitter of the centre):
    (count, 3, side, side) uint8."""
    rng = np.random.default_rng(seed)
    drawn = [np.asarray(draw_shape(place_shape(attributes["shape"], attributes["colour"], attributes["size"],
                                               attributes["position"], attributes["background"],
                                               jitter=random_jitter(rng), size=side), side)) for _ in range(count)]
    return torch.from_numpy(np.stack(drawn)).permute(0, 3, 1, 2).contiguous()


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows of (N, D) features."""
    return float(pdist(features).mean())


def sweep(args) -> dict:
    g = load(args.run, device=args.device, runs_dir=args.runs_dir)
    if "text" not in g.inputs or g.config.data.source != "shapes":
        raise ValueError(f"{g.name}: the sweep needs a text-conditioned run trained on shapes")
    attributes = parse_prompt(args.prompt)
    missing = [a for a in ATTRIBUTES if a not in attributes]
    if missing:
        raise ValueError(f"--prompt {args.prompt!r} states no {', '.join(missing)}: the real images of its recall "
                         "need every attribute")
    options = {k: v for k, v in {"sampler": args.sampler, "steps": args.steps}.items() if v is not None}
    extractor = pick_features(args.features, args.device)
    real = real_images(attributes, args.real_n, g.config.data.image_size, args.seed)
    real_features = extractor.features(real)
    if mean_pairwise_distance(real_features) == 0:
        print(f"warning: every real image of {args.prompt!r} is the same (a large shape at an edge place cannot "
              "move), so recall against them means little; a smaller size varies", file=sys.stderr)
    rows = []
    for scale in args.scales:
        t0 = time.perf_counter()
        adh = adherence_of(g, n=args.n, seed=args.seed, progress=not args.json, guidance=scale, **options)
        t1 = time.perf_counter()
        images, _ = g.generate_tensor(args.diversity_n, prompt=args.prompt, seed=args.seed, guidance=scale, **options)
        fake_features = extractor.features(to_uint8(images))
        _, recall = precision_recall(real_features, fake_features, k=args.k)
        t2 = time.perf_counter()
        rows.append({"guidance": scale, "adherence": adh["adherence"],
                     "diversity": mean_pairwise_distance(fake_features), "recall": float(recall),
                     "adherence_s": round(t1 - t0, 1), "diversity_s": round(t2 - t1, 1)})
    return {
        "command": shlex.join([".venv/bin/python", "bench/guidance_sweep.py", *args.argv]),
        "model": g.name, "checkpoint": g.checkpoint_hash, "settings": {**g.resolve_options(**options), "seed": args.seed},
        "prompt": args.prompt, "n": args.n, "diversity_n": args.diversity_n, "real_n": args.real_n, "k": args.k,
        "features": extractor.name, "real_diversity": mean_pairwise_distance(real_features), "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
                   f"device {g.device}, threads {torch.get_num_threads()}",
    }


def markdown(result: dict) -> str:
    """The sweep as a markdown table, with what produced it."""
    head = ["guidance", "prompts", *ATTRIBUTES, "all", "diversity", "recall", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        for i, (kind, shares) in enumerate(row["adherence"].items()):
            first = i == 0  # the row's diversity, recall and time are per scale: written once
            cells = [f"{row['guidance']:g}" if first else "", kind,
                     *(f"{shares[a]:.0%}" if a in shares else "-" for a in (*ATTRIBUTES, "all")),
                     f"{row['diversity']:.3f}" if first else "", f"{row['recall']:.2f}" if first else "",
                     f"{row['adherence_s'] + row['diversity_s']:.0f}" if first else ""]
            lines.append("| " + " | ".join(cells) + " |")
    s = result["settings"]
    return "\n".join([
        f"Guidance sweep of {result['model']} (checkpoint {result['checkpoint']}); "
        + ", ".join(f"{k} {v}" for k, v in s.items() if k != "guidance") + ".",
        "",
        *lines,
        "",
        f"Attribute columns: share of {result['n']} samples per prompt kind obeying held-out prompts (shapes checker): "
        "caption: in the captions' wording; paraphrased: the same combinations in other sentence forms and words for "
        "size, place and background; other nouns: circles, diamonds and crosses named \"disc\", \"rhombus\", "
        "\"plus sign\", which no training wording uses. Diversity: mean pairwise "
        f"distance of {result['diversity_n']} samples of \"{result['prompt']}\" in {result['features']} (real shapes "
        f"of that prompt: {result['real_diversity']:.3f}); recall (k={result['k']}) against {result['real_n']} of them. "
        "Seconds: sampling and measuring one row.",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; load average {result['load_before']} before, {result['load_after']} after; "
        f"{result['seconds']:.0f} s in all.",
    ])


def plot(result: dict, path: Path) -> Path:
    """Adherence, diversity and recall against the guidance scale, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [row["guidance"] for row in result["rows"]]
    fig, (ax_a, ax_d, ax_r) = plt.subplots(1, 3, figsize=(13, 3.8))
    for attribute in (*ATTRIBUTES, "all"):
        values = [row["adherence"]["caption"].get(attribute, np.nan) for row in result["rows"]]
        ax_a.plot(scales, values, marker="o", lw=2.5 if attribute == "all" else 1,
                  label="all (caption)" if attribute == "all" else attribute)
    for kind, style in (("paraphrased", "--"), ("other nouns", ":")):
        ax_a.plot(scales, [row["adherence"][kind]["all"] for row in result["rows"] if kind in row["adherence"]],
                  marker="s", ls=style, color="black", label=f"all ({kind})")
    ax_a.set(title="adherence (held-out prompts)", xlabel="guidance", ylabel="share obeyed", ylim=(0, 1.02))
    ax_a.legend(fontsize=7)
    ax_d.plot(scales, [row["diversity"] for row in result["rows"]], marker="o", label="samples")
    ax_d.axhline(result["real_diversity"], color="grey", ls=":", label="real shapes")
    ax_d.set(title="diversity at one prompt", xlabel="guidance", ylabel="mean pairwise distance")
    ax_d.legend(fontsize=7)
    ax_r.plot(scales, [row["recall"] for row in result["rows"]], marker="o")
    ax_r.set(title="recall at one prompt", xlabel="guidance", ylabel="recall", ylim=(0, 1.02))
    fig.suptitle(f"{result['model']}: \"{result['prompt']}\"; features: {result['features'].split(' (')[0]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scales(text: str) -> list[float]:
    try:
        scales = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not scales or any(not np.isfinite(s) or not 0 <= s <= 20 for s in scales):
        raise argparse.ArgumentTypeError(f"guidance scales must be numbers in [0, 20], got {text!r}")
    return scales


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", nargs="?", default=DEFAULT_RUN, help="a text-conditioned run on shapes, or a bundled model")
    p.add_argument("--scales", type=_scales, default=[1.0, 1.5, 2.0, 3.0, 5.0], help="guidance scales, comma-separated")
    p.add_argument("-n", "--n", type=int, default=200, help="held-out prompts per kind (caption, paraphrased, other nouns) per scale")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the fixed prompt of diversity and recall (all 5 attributes)")
    p.add_argument("--diversity-n", type=int, default=64, help="samples of the fixed prompt per scale")
    p.add_argument("--real-n", type=int, default=200, help="real shapes of the fixed prompt's attributes")
    p.add_argument("--k", type=int, default=3, help="neighbourhood size of recall")
    p.add_argument("--features", choices=("auto", "inception", "pixels"), default="auto",
                   help="auto: the FID Inception network when its weights are installed, else pixels")
    p.add_argument("--sampler", default=None, help="sampler (default: the run's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="image i of each set uses seed + i")
    p.add_argument("--plot", default="out/guidance_sweep.png", help="where the plot goes")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table (no progress bars)")
    p.add_argument("--quick", action="store_true", help="smoke run: scales 1 and 3, 4 prompts, 2 steps, pixel features")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.scales, args.n, args.diversity_n, args.real_n, args.steps = [1.0, 3.0], 4, 6, 12, args.steps or 2
        args.features = "pixels"
    for name in ("n", "diversity_n", "real_n"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.diversity_n, args.real_n) <= args.k:
        p.error(f"--diversity-n and --real-n must exceed --k ({args.k}) for recall's neighbourhoods")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    try:
        result = sweep(args)
    except (ValueError, FileNotFoundError) as e:
        where = " (the bundled shapes-text model is not installed: name a text run on shapes)" \
            if args.run == DEFAULT_RUN and isinstance(e, FileNotFoundError) else ""
        print(f"guidance_sweep: error: {e}{where}", file=sys.stderr)
        return 2
    result.update(seconds=time.perf_counter() - t0, load_before=load_before,
                  load_after=", ".join(f"{x:.1f}" for x in os.getloadavg()))
    result["plot"] = str(plot(result, Path(args.plot)))
    print(json.dumps(result) if args.json else markdown(result) + f"\n\nPlot: {result['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
