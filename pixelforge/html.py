"""Small self-contained HTML pages (a gallery of generated images) that open in any browser."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path


def _plain(value) -> str:
    """A setting as a person reads it: heun, 18, 2.0; only lists and mappings as JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value)


def gallery_page(title: str, grid: Path, images: list[Path], settings: list[dict], out: Path) -> Path:
    """Write out/index.html showing the grid and every image with its settings; paths are relative."""
    rel = lambda p: html.escape(os.path.relpath(p, out.parent))  # noqa: E731
    cards = "\n".join(
        f'<figure><img src="{rel(p)}" alt="seed {s.get("seed")}"><figcaption>'
        f'{html.escape(str(s.get("class_name", s.get("label", ""))))} · seed {s.get("seed")}</figcaption></figure>'
        for p, s in zip(images, settings)
    )
    first = settings[0] if settings else {}
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_plain(first.get(k)))}</td></tr>"
        for k in ("model", "family", "checkpoint", "sampler", "steps", "guidance", "version")
        if k in first
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
img {{ image-rendering: pixelated; }}
.grid img {{ max-width: 100%; width: 640px; border: 1px solid #ccc; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .5rem; }}
figure {{ margin: 0; text-align: center; font-size: .8rem; }}
figure img {{ width: 84px; height: 84px; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ padding: .2rem .6rem; border: 1px solid #ddd; text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{table}</table>
<div class="grid"><img src="{rel(grid)}" alt="grid of all samples"></div>
<h2>Each image</h2>
<p>Every PNG carries its settings; <code>pixelforge sample --from FILE.png</code> regenerates it exactly.</p>
<div class="cards">{cards}</div>
</body></html>
"""
    out.write_text(page)
    return out
