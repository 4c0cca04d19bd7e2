"""`pixelforge evaluate`: FID, KID, precision/recall, a domain IS, CAS and adherence of a run or a folder."""

from __future__ import annotations

import json
from pathlib import Path

from .cli import MAX_SEED, _add_post_options, _add_sampling_options, _Help, _int_range, _post, _sampling_options


def cmd_evaluate(a) -> int:
    from . import evaluate as ev

    post = _post(a)
    if post is not None and (a.adherence or a.cas or a.fake):
        raise ValueError("post-processing (--denoise, --color, --sharpen, --upscale) applies to the samples of a RUN "
                         "measured against real data; " + ("a --fake folder is read as it is (post-process it with "
                         "`pixelforge post` first)" if a.fake else f"not to {'--adherence' if a.adherence else '--cas'}"))
    if a.adherence:
        return _print_adherence(a)
    if a.cas:
        if not a.run:
            raise ValueError("--cas needs a RUN (a class-conditional run or bundled model)")
        result = ev.classification_accuracy(a.run, n_per_class=a.per_class, epochs=a.epochs, seed=a.seed,
                                            runs_dir=a.runs_dir, device=a.device, progress=not a.json,
                                            **_sampling_options(a))
        if a.json:
            print(json.dumps(result))
        else:
            print(f"classification accuracy score (trained on {result['n_train']} generated images, tested on "
                  f"{result['n_test']} real held-out ones): {result['cas']:.2%}")
            print(f"same classifier trained on {result['n_train']} real images:             {result['real_accuracy']:.2%}")
        return 0
    if a.fake:
        if not a.real:
            raise ValueError("--fake DIR needs --real DIR (or a bundled data set name) to compare with")
        figures = ev.evaluate_folders(a.fake, a.real, extractor=a.extractor, device=a.device,
                                      report=None if a.no_report else (a.report or Path(a.fake) / "report.html"),
                                      progress=not a.json)
    else:
        if not a.run:
            raise ValueError("name a RUN (run folder, run name or bundled model), or use --fake DIR --real DIR")
        figures = ev.evaluate_run(a.run, real=a.real, n=a.n or 10_000, extractor=a.extractor, seed=a.seed, runs_dir=a.runs_dir,
                                  device=a.device, report=False if a.no_report else (a.report or True),
                                  progress=not a.json, post=post, **_sampling_options(a))
        if not figures:  # under torchrun a process other than rank 0, which reports for all
            return 0
    if a.json:
        keys = ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "extractor", "n_fake", "n_real",
                "post_processed")
        extra = {"reconstruction": figures["reconstruction"]} if "reconstruction" in figures else {}  # an autoencoder's
        print(json.dumps({**{k: figures[k] for k in keys}, **extra, "settings": figures["settings"]}))
        return 0
    print(f"extractor: {figures['extractor']}   fake: {figures['n_fake']}   real: {figures['n_real']}   "
          f"post-processed: {figures['post_processed']}")
    print(f"FID        {figures['fid']:.4f}")
    print(f"KID        {figures['kid']:.5f} ± {figures['kid_std']:.5f}")
    if figures.get("is") is not None:
        print(f"IS         {figures['is']:.3f} ± {figures['is_std']:.3f}   (domain classifier: not comparable to published IS)")
    print(f"precision  {figures['precision']:.4f}")
    print(f"recall     {figures['recall']:.4f}")
    if "reconstruction" in figures:  # an autoencoder run: how well it reconstructs held-out images
        r = figures["reconstruction"]
        ssim = "n/a (scikit-image not installed)" if r["ssim"] is None else f"{r['ssim']:.4f}"
        print(f"reconstruction of {r['n']} held-out images: PSNR {r['psnr']:.2f} dB   SSIM {ssim}")
    if figures.get("report"):
        print(f"report: {Path(figures['report']).resolve()}")
    return 0


def _print_adherence(a) -> int:
    """`evaluate RUN --adherence`: the shares obeyed per prompt kind and attribute, or the digit accuracy."""
    from . import evaluate as ev

    if not a.run:
        raise ValueError("--adherence needs a RUN (a text run on shapes, or a label run on mnist or digits)")
    if a.cas or a.fake:
        raise ValueError(f"--adherence measures a RUN's samples on their own: it does not combine with "
                         f"{'--cas' if a.cas else '--fake'}")
    result = ev.evaluate_adherence(a.run, n=a.n or ev.ADHERENCE_SAMPLES, seed=a.seed, runs_dir=a.runs_dir,
                                   device=a.device, progress=not a.json, **_sampling_options(a))
    if a.json:
        print(json.dumps(result))
        return 0
    settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items() if k not in ("model", "checkpoint") and v is not None)
    print(f"adherence of {result['settings']['model']} ({settings}); checker: {result['checker']}")
    if result["domain"] == "digits":
        print(f"digit classifier accuracy on {result['n']} samples (labels balanced): {result['accuracy']:.1%}   "
              f"(chance {result['chance']:.0%}; on {result['n_real']} real validation images {result['real_accuracy']:.1%})")
        return 0
    from .metrics.adherence import ATTRIBUTES

    columns = [c for c in (*ATTRIBUTES, "all") if any(c in shares for shares in result["adherence"].values())]
    print(f"share of {result['n']} samples per prompt kind that obey their prompt ({result['prompts']}):")
    print(f"{'prompts':<12}" + "".join(f"{c:>12}" for c in columns))
    for kind, shares in result["adherence"].items():
        print(f"{kind:<12}" + "".join(f"{shares[c]:>12.1%}" if c in shares else f"{'-':>12}" for c in columns))
    for kind, prompts in result["example_prompts"].items():
        print(f"e.g. {kind}: " + "; ".join(f'"{p}"' for p in prompts[:2]))
    return 0


def add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="FID, KID, precision/recall (and a domain IS with mnist-classifier) of a run or folder against real images; CAS",
        description="Measure a generator: sample RUN (labels balanced over its classes) and compare with real data "
        "(the run's own data set unless --real is given), or compare any folder of images with another (--fake DIR "
        "--real DIR). Writes report.html (figures, settings, grids, nearest real neighbours, metrics over training). "
        "Figures depend on the feature extractor: it is always printed beside them. The FID Inception network "
        "extracted 3.2 images/s on a 2-core CPU (bench/metrics_speed.py --quick --inception-images 64; README); "
        "the domain extractor (for digit data sets) thousands.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder, run name or bundled model")
    p.add_argument("--real", metavar="DATA", help="real images: folder or bundled data set (default: the run's data)")
    p.add_argument("--fake", metavar="DIR", help="evaluate this folder of images instead of sampling a run")
    p.add_argument("-n", type=_int_range(2), default=None, help="number of samples to generate (default 10000; with "
                   "--adherence 200, for each prompt kind on shapes)")
    p.add_argument("--extractor", default="auto", help="auto (domain classifier for digit sets, else inception), inception, mnist-classifier")
    _add_sampling_options(p)
    p.add_argument("--seed", type=_int_range(0, MAX_SEED), default=0)
    _add_post_options(p)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object (no progress output)")
    p.add_argument("--report", metavar="PATH", help="where report.html goes (default: in the run, or out/NAME/ for a bundled model)")
    p.add_argument("--no-report", action="store_true", help="print figures only")
    p.add_argument("--cas", action="store_true", help="classification accuracy score: train a classifier on generated images, test on real ones")
    p.add_argument("--per-class", type=_int_range(1), default=200, help="with --cas: generated images per class")
    p.add_argument("--epochs", type=_int_range(1), default=8, help="with --cas: classifier training epochs")
    p.add_argument("--adherence", action="store_true", help="do samples obey their condition? A text run on shapes: "
                   "the share of samples per attribute that obey held-out prompts (caption-style, paraphrased, and with "
                   "other shape names; read by the shapes checker); a label run on mnist or digits: the digit classifier's accuracy")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)
