"""report.html: an evaluation's figures, the settings behind them, sample grids, nearest real
neighbours (to spot memorisation) and plots of each metric over training; one self-contained file."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from PIL import Image

FIGURE_ROWS = [
    ("fid", "FID", "Fréchet distance between feature Gaussians (lower is better)"),
    ("kid", "KID", "kernel distance, unbiased; ± its standard error over subsets (lower is better)"),
    ("is", "IS", "Inception-style score from the extractor's classifier (higher is better)"),
    ("precision", "precision", "share of samples inside the real images' k-NN manifold (fidelity)"),
    ("recall", "recall", "share of real images inside the samples' k-NN manifold (coverage)"),
]


def _png_data(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else html.escape(str(v))


def _plots(metrics_csv: Path) -> list[tuple[str, str]]:
    """(title, data URI) of one plot per figure recorded in metrics.csv over training steps."""
    if not metrics_csv.exists():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(metrics_csv, newline="")))
    out = []
    for key, title in (("loss", "training loss"), ("val_loss", "validation loss"), ("fid", "FID"), ("kid", "KID")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=100)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if key in ("loss", "val_loss") and min(p[1] for p in pts) > 0:
            ax.set_yscale("log")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((title, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()))
    return out


def write_report(
    path: Path,
    *,
    title: str,
    figures: dict,
    settings: dict,
    grid: Image.Image | None = None,
    pairs: list[tuple[Image.Image, Image.Image, float]] | None = None,
    metrics_csv: Path | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the report; figures as evaluate_images returns them, settings a flat dict of what was used."""
    fig_rows = []
    for key, name, what in FIGURE_ROWS:
        v = figures.get(key)
        if v is None:
            continue
        err = figures.get(f"{key}_std")
        fig_rows.append(f"<tr><th>{name}</th><td>{_fmt(v)}" + (f" ± {_fmt(err, 2)}" if err is not None else "")
                        + f"</td><td>{html.escape(what)}</td></tr>")
    for key, v in (extra or {}).items():
        fig_rows.append(f"<tr><th>{html.escape(key)}</th><td>{_fmt(v)}</td><td></td></tr>")
    set_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in settings.items())
    sections = []
    if grid is not None:
        sections.append(f'<h2>Samples</h2><img class="pix" src="{_png_data(grid)}" alt="grid of generated samples">')
    if pairs:
        cells = "".join(
            f'<figure><img class="pix" src="{_png_data(f)}" alt="sample"><img class="pix" src="{_png_data(r)}" '
            f'alt="nearest real image"><figcaption>distance {d:.3g}</figcaption></figure>'
            for f, r, d in pairs
        )
        sections.append(
            "<h2>Nearest real neighbours</h2><p>The samples closest to a real image in feature space, each beside "
            "that real image (left: sample, right: real). Near-identical pairs mean the model is copying its "
            f"training data.</p><div class='pairs'>{cells}</div>"
        )
    plots = _plots(metrics_csv) if metrics_csv is not None else []
    if plots:
        sections.append("<h2>Over training</h2><div class='plots'>" + "".join(
            f'<img src="{uri}" alt="{html.escape(t)} over training steps">' for t, uri in plots) + "</div>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f6f6f6; }}
.pix {{ image-rendering: pixelated; }}
h2 + img.pix {{ width: 560px; max-width: 100%; border: 1px solid #ccc; }}
.pairs {{ display: flex; flex-wrap: wrap; gap: .8rem; }}
.pairs figure {{ margin: 0; text-align: center; font-size: .8rem; }}
.pairs img {{ width: 64px; height: 64px; border: 1px solid #ccc; margin: 1px; }}
.plots img {{ margin: .3rem; border: 1px solid #eee; }}
.note {{ color: #555; font-size: .9rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Figures</h2>
<table>{"".join(fig_rows)}</table>
<p class="note">Figures from different feature extractors, image counts or preprocessing are not comparable:
the settings below say which were used.</p>
<h2>Settings</h2>
<table>{set_rows}</table>
{"".join(sections)}
<details><summary>Raw figures (JSON)</summary><pre>{html.escape(json.dumps(figures, indent=1))}</pre></details>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
