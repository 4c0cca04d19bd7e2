"""Train every model family on the same bundled data set for the same wall-clock budget on this
machine, then measure each the same way (FID/KID/precision/recall with one extractor against the
held-out images none of them trained on, bits/dim where defined, parameters, training and sampling
speed) and write a comparison table with a grid each. Beside the table goes the real-vs-real FID
spread at the same sample sizes; two families whose FIDs differ by less than its top are ranked as tied.

    .venv/bin/python bench/families.py                       # about 30 minutes on 2 CPU cores
    .venv/bin/python bench/families.py --budget-minutes 20   # longer budgets, better models
    .venv/bin/python bench/families.py --quick               # a smoke run of a few seconds per family
    .venv/bin/python bench/families.py --spread-only         # only the real-vs-real spread (seconds)
"""

from __future__ import annotations

import argparse
import html
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pixelforge.api import Generator  # noqa: E402
from pixelforge.data import DataConfig, describe_source, load_dataset, split_indices, to_model  # noqa: E402
from pixelforge.images import make_grid, save_png, to_pil  # noqa: E402
from pixelforge.metrics.evaluate import EvalOptions, balanced_labels, evaluate_images, real_features, to_uint8  # noqa: E402
from pixelforge.metrics.features import load_extractor  # noqa: E402
from pixelforge.metrics.frechet import fid_from_features  # noqa: E402
from pixelforge.models import FAMILIES  # noqa: E402
from pixelforge.runs import RunConfig, new_run_config  # noqa: E402
from pixelforge.train import train  # noqa: E402

# CPU-sized settings per entry: (family, model fields beyond image size, channels and classes, lr);
# "batch_size" among the fields replaces --batch-size for that entry, and "sample" (a dict) replaces
# the family's default sampling options for the figures and the grid.
ENTRIES = {
    # both diffusion entries sample with classifier-free guidance 2, as the bundled model does
    "diffusion": ("diffusion", {"base_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                                "sample": {"guidance": 2.0}}, 5e-4),
    # 7x7 tokens of 4x4 pixels: a quarter of the tokens of patch 2, so four times the steps in the budget
    "diffusion-dit": ("diffusion", {"backbone": "dit", "patch_size": 4, "depth": 6, "num_heads": 4, "hidden_size": 128,
                                    "batch_size": 32, "sample": {"guidance": 2.0}}, 2e-3),
    # translation only: 5,000 digits do not overfit D within minutes, and colour/cutout slow early learning
    "gan": ("gan", {"base_channels": 32, "z_dim": 64, "diffaugment": "translation", "batch_size": 32}, 5e-4),
    "vae": ("vae", {"base_channels": 32, "channel_mult": [1, 2, 2], "latent_dim": 32, "kl_warmup_steps": 500}, 1e-3),
    # narrow, a high rate and small batches: many more steps in the budget, and better samples
    # guidance 1.5 on the pixel logits: more digits of the asked class in the grids (FID 1.98 against 2.14 on 500
    # samples, a tie: the real-vs-real spread at that size reaches 0.33)
    "pixelcnn": ("pixelcnn", {"hidden_channels": 32, "num_layers": 8, "batch_size": 16, "sample": {"guidance": 1.5}}, 3e-3),
    "transformer": ("transformer", {"vq": {"base_channels": 32, "downsample": 4, "codebook_size": 128, "code_dim": 32},
                                    "d_model": 128, "depth": 4, "heads": 4}, 5e-4),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="mnist", help="bundled data set (or folder) all families train on")
    p.add_argument("--budget-minutes", type=float, default=4.0, help="training wall-clock budget per family")
    p.add_argument("--families", default=",".join(ENTRIES), help="comma-separated entries to run")
    p.add_argument("--eval-n", type=int, default=1000, help="samples per family for the figures")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the entries that do not set their own")
    p.add_argument("--out", default="out/families", help="where the table, grids and report go")
    p.add_argument("--runs-dir", default="out/families/runs")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.1 minute per family, 40 samples")
    p.add_argument("--json", action="store_true",
                   help='print {"rows": [...], "real_vs_real": {...}} as one JSON line at the end')
    p.add_argument("--spread-draws", type=int, default=5,
                   help="random draws of real images for the real-vs-real FID spread beside the table")
    p.add_argument("--spread-only", action="store_true",
                   help="only measure and print the real-vs-real FID spread (no training)")
    p.add_argument("--set", action="append", default=[], metavar="ENTRY:FIELD=VALUE",
                   help="change one entry's model field (JSON value), lr, batch_size or sample (a JSON dict of sampling "
                        "options), e.g. --set gan:lr=5e-4 --set diffusion-dit:patch_size=4 "
                        "--set 'diffusion-dit:sample={\"guidance\": 3}' (repeatable)")
    a = p.parse_args()
    if a.spread_draws < 1:
        p.error(f"--spread-draws must be at least 1, got {a.spread_draws}")
    overrides = _parse_overrides(a.set)
    t_start = time.perf_counter()
    if a.quick:
        a.budget_minutes, a.eval_n = 0.1, 40
    command = _command(a, p.parse_args([]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    native = describe_source(a.data)
    data_cfg = DataConfig(source=a.data, image_size=native["image_size"], channels=native["channels"], val_fraction=0.1)
    data = load_dataset(data_cfg, progress=False)
    ext = load_extractor("auto", data_source=a.data)
    # Every run splits the data with this config, so they all hold out the same images: the reference.
    train_idx, val_idx = split_indices(len(data), data_cfg.val_fraction, data_cfg.split_seed)
    reference = data.images[val_idx]  # (n_val, C, H, W) uint8, never trained on
    print(f"families benchmark: {a.data} ({len(data)} images, {data_cfg.image_size}px), {a.budget_minutes} min per family, "
          f"{a.eval_n} samples each against {len(reference)} held-out images, extractor {ext.name}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    spread = real_spread(data.images[train_idx], reference, ext, n=a.eval_n, draws=a.spread_draws)
    print(f"real-vs-real FID ({spread['n']} real vs the {len(reference)} held-out, {a.spread_draws} draws): "
          f"{spread['min']:.3f}-{spread['max']:.3f}")
    if a.spread_only:
        if a.json:
            print(json.dumps({"rows": [], "real_vs_real": spread}))
        return 0
    rows = []
    for entry in a.families.split(","):
        family, fields, lr = ENTRIES[entry]
        fields = {**fields, **overrides.get(entry, {})}
        lr = fields.pop("lr", lr)
        batch_size = fields.pop("batch_size", a.batch_size)
        sample_options = fields.pop("sample", {})
        if family not in FAMILIES:
            print(f"skip {entry}: family {family!r} is not available")
            continue
        unknown = set(sample_options) - set(FAMILIES[family].sample_options)
        if unknown:
            raise SystemExit(f"{entry}: unknown sampling option(s) {sorted(unknown)}; "
                             f"{family} takes {sorted(FAMILIES[family].sample_options)}")
        # the library's new-run config (image size, channels and classes from the data, as `pixelforge train`)
        cfg = new_run_config(a.data, model=family, val_fraction=data_cfg.val_fraction, lr=lr, warmup_steps=100,
                             steps=10**7, batch_size=batch_size, ckpt_every=10**7, sample_every=10**7, val_every=10**7,
                             log_every=50, model_fields=fields)
        # The transformer family trains its VQ-VAE for the first stage1_steps: give it about 40% of the budget.
        run_dir = Path(a.runs_dir) / entry
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        if family == "transformer":
            cfg = _with_stage1(cfg, run_dir, a)
        print(f"\n== {entry}: training for {a.budget_minutes} min")
        t0 = time.perf_counter()
        result = train(cfg, run_dir, progress=False, max_seconds=a.budget_minutes * 60)
        train_s = time.perf_counter() - t0
        rows.append(measure(entry, cfg, run_dir, result.step, train_s, data, reference, ext, a, out, sample_options))
        print(json.dumps(rows[-1]))
    rank_rows(rows, tie=spread["max"])
    write_outputs(rows, a, ext, out, command, spread, n_reference=len(reference), total_s=time.perf_counter() - t_start)
    if a.json:
        print(json.dumps({"rows": rows, "real_vs_real": spread}))
    return 0


def _parse_overrides(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        entry, _, rest = item.partition(":")
        key, sep, text = rest.partition("=")
        if entry not in ENTRIES or not sep or not key:
            raise SystemExit(f"--set {item!r}: expected ENTRY:FIELD=VALUE with ENTRY one of {', '.join(ENTRIES)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(entry, {})[key] = value
    return out


def _with_stage1(cfg: RunConfig, run_dir: Path, a) -> RunConfig:
    """Estimate the steps that fit the budget with a short timed run, and give 40% to the VQ-VAE stage."""
    probe = replace(cfg, model={**cfg.model, "stage1_steps": 10**6})
    t0 = time.perf_counter()
    train(probe, run_dir / "probe", progress=False, stop_at=10)
    per_step = (time.perf_counter() - t0) / 10
    stage1 = max(1, int(0.4 * a.budget_minutes * 60 / per_step))
    return replace(cfg, model={**cfg.model, "stage1_steps": stage1})


def real_spread(pool: torch.Tensor, reference: torch.Tensor, ext, *, n: int, draws: int) -> dict:
    """FID of real images against the reference at the bench's sample sizes: what a generator that
    draws exactly from the data would score. Each draw takes min(n, len(pool)) images of `pool`
    (real images disjoint from `reference`: the training split) at random (seed = draw number).
    Returns the FIDs and their min and max: differences between families below the max are noise."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    m = min(n, len(pool))
    picks = [torch.randperm(len(pool), generator=torch.Generator().manual_seed(k))[:m] for k in range(draws)]
    used = torch.unique(torch.cat(picks))  # extract only the images some draw uses (Inception is slow)
    row = torch.full((len(pool),), -1, dtype=torch.long)
    row[used] = torch.arange(len(used))
    feats = ext.features(pool[used])  # (len(used), dim); features are per image, so a subset's are its rows
    ref_feats, _, _ = real_features(reference, ext)  # (n_ref, dim), the same cached features evaluate_images uses
    fids = [round(fid_from_features(feats[row[pick].numpy()], ref_feats), 4) for pick in picks]
    return {"n": m, "n_reference": len(reference), "draws": draws, "fids": fids, "min": min(fids), "max": max(fids)}


def rank_rows(rows: list[dict], tie: float) -> None:
    """Rank by FID with ties: a row's rank is 1 + the number of rows better than it by more than `tie`
    (the top of the real-vs-real spread); rows whose FIDs differ by at most `tie` are listed as tied."""
    for r in rows:
        r["rank"] = 1 + sum(o["fid"] < r["fid"] - tie for o in rows)
        r["tied_with"] = [o["family"] for o in rows if o is not r and abs(o["fid"] - r["fid"]) <= tie]


@torch.no_grad()
def measure(entry, cfg, run_dir, steps, train_s, data, reference, ext, a, out, sample_options: dict) -> dict:
    g = Generator(run_dir)
    n = a.eval_n
    labels = balanced_labels(n, g.num_classes)
    t0 = time.perf_counter()
    images, _ = g.generate_tensor(n, labels=labels, seed=0, **sample_options)
    sample_s = time.perf_counter() - t0
    fake = to_uint8(images)
    figures = evaluate_images(fake, reference, ext, options=EvalOptions(kid_subsets=50))
    bpd = None
    if "log_likelihood" in getattr(g.model, "capabilities", ()):
        split = json.loads((run_dir / "split.json").read_text())
        val = torch.tensor(split["val"][:500])
        x = to_model(data.images[val], cfg.data)
        from pixelforge.condition import Cond

        cond = Cond(labels=data.labels[val]) if g.num_classes else None
        bpd = float(torch.cat([g.model.log_likelihood(xb, cb) for xb, cb in _batches(x, cond)]).mean())
    grid_labels = [c for c in range(max(g.num_classes, 1)) for _ in range(8)][:80]
    grid_imgs = g.generate(len(grid_labels), labels=grid_labels if g.num_classes else None, seed=1000, **sample_options)
    grid_path = save_png(make_grid(grid_imgs, cols=8, scale=2), out / f"grid_{entry}.png")
    return {
        "family": entry, "params_M": round(sum(p.numel() for p in g.model.parameters()) / 1e6, 3),
        "batch_size": cfg.train.batch_size, "train_steps": steps, "train_img_per_s": round(steps * cfg.train.batch_size / train_s, 1),
        "sample_img_per_s": round(n / sample_s, 2), "fid": round(figures["fid"], 3), "kid": round(figures["kid"], 5),
        "kid_std": round(figures["kid_std"], 5), "precision": round(figures["precision"], 3),
        "recall": round(figures["recall"], 3), "n_real": figures["n_real"], "bits_per_dim": None if bpd is None else round(bpd, 3),
        "sample_options": {**g.sample_options, **sample_options}, "grid": grid_path.name,
    }


def _batches(x, cond, size: int = 100):
    from pixelforge.condition import Cond

    for i in range(0, len(x), size):
        yield x[i:i + size], (Cond(labels=cond.labels[i:i + size]) if cond is not None else None)


def _command(a, defaults: argparse.Namespace) -> str:
    """The command line that repeats this run: every option that shapes the figures."""
    parts = [".venv/bin/python bench/families.py", f"--budget-minutes {a.budget_minutes}", f"--eval-n {a.eval_n}"]
    if a.families != defaults.families:
        parts.append(f"--families {a.families}")
    if a.data != defaults.data:
        parts.append(f"--data {shlex.quote(a.data)}")
    if a.batch_size != defaults.batch_size:
        parts.append(f"--batch-size {a.batch_size}")
    parts += [f"--set {shlex.quote(item)}" for item in a.set]
    return " ".join(parts)


def write_outputs(rows, a, ext, out: Path, command: str, spread: dict, n_reference: int, total_s: float) -> None:
    head = ["family", "params (M)", "batch", "train steps", "train img/s", "sample img/s", "FID", "rank (ties)", "KID",
            "precision", "recall", "bits/dim"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rank = f"{r['rank']}" + (f" (tied: {', '.join(r['tied_with'])})" if r["tied_with"] else "")
        lines.append("| " + " | ".join(str(v) for v in (
            r["family"], r["params_M"], r["batch_size"], r["train_steps"], r["train_img_per_s"], r["sample_img_per_s"], r["fid"],
            rank, f"{r['kid']} ± {r['kid_std']}", r["precision"], r["recall"],
            "—" if r["bits_per_dim"] is None else r["bits_per_dim"])) + " |")
    spread_line = (f"Real-vs-real FID, the noise floor at these sample sizes ({spread['n']} real training images against the same "
                   f"{n_reference} held-out ones, {spread['draws']} random draws): {spread['min']:.3f}-{spread['max']:.3f}. "
                   f"FIDs that differ by at most {spread['max']:.3f} are tied (same rank).")
    note = (f"Data: {a.data}; budget {a.budget_minutes} min of training per family on this machine "
            f"({torch.get_num_threads()} threads); {a.eval_n} samples per family (labels balanced); extractor: {ext.name}; "
            f"FID/KID/precision/recall against the {n_reference} held-out validation images no family trained on; "
            "bits/dim on up to 500 of them "
            f"(VAE: an upper bound from the ELBO; PixelCNN: exact). The whole run took {total_s / 60:.1f} min. Command: "
            f"`{command}`")
    table = "\n".join(lines)
    (out / "families.md").write_text(f"# Model families side by side\n\n{note}\n\n{table}\n\n{spread_line}\n\n" + "\n".join(
        f"**{r['family']}**\n\n![{r['family']} samples]({r['grid']})\n" for r in rows))
    cells = "".join(f"<figure><img src='{html.escape(r['grid'])}' alt='{html.escape(r['family'])} samples'>"
                    f"<figcaption>{html.escape(r['family'])}</figcaption></figure>" for r in rows)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line.strip("|").split("|")) + "</tr>"
                   for line in lines[2:])
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>Model families</title><style>body{font-family:system-ui;margin:2rem}"
        "td,th{border:1px solid #ddd;padding:.2rem .5rem}table{border-collapse:collapse}figure{display:inline-block;margin:.5rem}"
        "img{image-rendering:pixelated;width:300px}</style><h1>Model families side by side</h1>"
        f"<p>{html.escape(note)}</p><table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>"
        f"<p>{html.escape(spread_line)}</p>{cells}")
    print("\n" + table + "\n\n" + spread_line)
    print(f"\ntable: {out / 'families.md'}   report: {out / 'index.html'}")


if __name__ == "__main__":
    sys.exit(main())
