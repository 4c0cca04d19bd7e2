"""`pixelforge demo`: a grid and an HTML page from the bundled model, offline."""

from __future__ import annotations

from pathlib import Path

from .cli import MAX_SEED, _float_range, _Help, _int_range, _progress_bar


# what `demo` asks a text-conditioned model for, one row each: attribute combinations of the shapes set
DEMO_PROMPTS = (
    "a large red circle in the centre on a white background",
    "a small blue star at the top left on a black background",
    "a medium yellow triangle at the bottom right on a gray background",
    "a large green square on the left on a beige background",
    "a medium purple cross at the top on a white background",
    "a large orange diamond on the right on a black background",
)


def cmd_demo(a) -> int:
    from . import api
    from .html import gallery_page
    from .runs import DEFAULT_MODEL

    g = api.load(a.model or DEFAULT_MODEL, device=a.device)
    per = a.per_class
    labels = [c for c in range(g.num_classes) for _ in range(per)] if g.num_classes else None
    prompts = [p for p in DEMO_PROMPTS for _ in range(per)] if "text" in g.inputs and not labels else None
    n = len(labels or prompts or []) or per * 10
    bar, cb = _progress_bar(n, f"sampling {g.name}")
    options = {k: v for k, v in {"steps": a.steps, "guidance": a.guidance}.items() if k in g.sample_options}
    images = g.generate(n, labels=labels, prompts=prompts, seed=a.seed, callback=cb, **options)
    bar.close()
    out = Path(a.out)
    paths = api.save_images(images, out)
    from .images import make_grid
    from .provenance.outputs import OutputSigner

    rows = labels or prompts
    signer, tiles = OutputSigner(), [im.info["pixelforge"] for im in images]  # signed as save_images signs its grid
    grid = signer.save(make_grid(images, cols=per if rows else None, scale=max(1, 64 // images[0].size[0])), out / "grid.png",
                       manifest_settings={"grid_of": tiles}, model=signer.grid_model(tiles))
    page = gallery_page(f"pixelforge demo: {g.name}", grid, paths["images"], [im.info["pixelforge"] for im in images], out / "index.html")
    print(f"grid: {grid.resolve()}")
    print(f"page: {page.resolve()}")
    return 0


def add_demo(sub):
    p = sub.add_parser("demo", help="generate a grid and an HTML page with the bundled model (offline)",
                       formatter_class=_Help)
    p.add_argument("--model", default=None, help="run or bundled model (default: the bundled model)")
    p.add_argument("--per-class", type=_int_range(1), default=8, help="images per class (rows of the grid; for a "
                   "text model such as shapes-text, images per demo prompt)")
    p.add_argument("--steps", type=_int_range(1), default=18)
    p.add_argument("--guidance", type=_float_range(0), default=2.0)
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0)
    p.add_argument("-o", "--out", default="out/demo")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
