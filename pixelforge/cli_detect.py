"""The `pixelforge detect` and `pixelforge detector train` commands: is an image generated (the watermark and a
trained real-vs-generated classifier), and training that classifier (docs/detector.md)."""

from __future__ import annotations

import shlex
import sys

from .cli import _float_range, _Help, _int_range
from .cli_watermark import report_files


def cmd_detector_train(a) -> int:
    from .provenance.detector import TrainDetectorConfig, train_detector

    cfg = TrainDetectorConfig(real=tuple(a.real), fake=tuple(a.fake), size=a.size, steps=a.steps,
                              batch_size=a.batch_size, lr=a.lr, per_source=a.per_source, test_fraction=a.test_fraction,
                              hold_out_family=a.hold_out_family, seed=a.seed)
    result = train_detector(cfg, a.out, device=a.device, runs_dir=a.runs_dir, progress=not a.quiet,
                            overwrite=a.overwrite, command=_command(a))
    print(format_auc_table(result.card))
    print(f"detector written to {result.path} ({result.card['training']['train_seconds']:.0f} s of training)")
    return 0


def _command(a) -> str:
    """The command that trains this detector again, every setting spelled out (for detector.json)."""
    q = shlex.quote
    parts = ["pixelforge detector train -o", q(str(a.out)), "--real", *map(q, a.real), "--fake", *map(q, a.fake),
             f"--size {a.size} --steps {a.steps} --batch-size {a.batch_size} --lr {a.lr:g} --per-source {a.per_source}",
             f"--test-fraction {a.test_fraction:g} --seed {a.seed}"]
    if a.hold_out_family:
        parts.append(f"--hold-out-family {q(a.hold_out_family)}")
    if a.runs_dir:
        parts.append(f"--runs-dir {q(a.runs_dir)}")
    return " ".join(parts)


def format_auc_table(card: dict) -> str:
    """The held-out AUC of a detector card as text: one line per source, then seen and unseen families."""
    lines = ["held-out ROC AUC (generated vs real; 1 separates perfectly, 0.5 is chance):"]
    for r in card["sources"]:
        what = "real" if r["real"] else f"generated, {r['family']}" + (", family held out" if r["held_out_family"] else "")
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.4f}"
        lines.append(f"  {r['source']:<32} {what:<36} test {r['test']:>5}  train {r['train']:>5}  AUC {auc}")
    t = card["auc"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    lines.append(f"  families seen in training: AUC {fmt(t['seen_families'])} "
                 f"({t['generated_test_seen']} generated vs {t['real_test']} real)")
    if "held_out_family" in t:
        lines.append(f"  family never seen ({t['held_out_family']}): AUC {fmt(t['unseen_family'])} "
                     f"({t['generated_test_unseen']} generated vs {t['real_test']} real)")
    return "\n".join(lines)


def cmd_detect(a) -> int:
    from .provenance.detector import Detector, detect_file

    detector = Detector.load(a.detector, device=a.device) if a.detector is not None else None
    status = report_files(a.images, lambda path: detect_file(path, detector, key=a.key), _describe, as_json=a.json)
    if detector is None and not a.json:
        from .provenance.detector import NO_DETECTOR_NOTE

        print(f"note: {NO_DETECTOR_NOTE}", file=sys.stderr)
    return status


def _describe(r: dict) -> str:
    wm = r["watermark"]
    if wm.get("too_small"):
        mark = "too small to carry a watermark"
    else:
        mark = (f"watermark found, payload {wm['payload']}" if wm["detected"] else "no watermark") + f" (score {wm['score']:.1f})"
    if r["basis"] == "watermark":
        return f"{r['file']}: generated, probability {r['generated_probability']:.3f}: {mark}"
    if r["basis"] == "classifier":
        return f"{r['file']}: probability generated {r['generated_probability']:.3f} (classifier); {mark}"
    return f"{r['file']}: {mark}; unknown whether generated (no classifier)"


def add_detect(sub) -> None:
    d = sub.add_parser("detect", help="is an image generated? the watermark and a trained classifier, combined",
                       formatter_class=_Help, description="For each IMAGE: the invisible watermark check (as "
                       "`pixelforge watermark detect`) and, with --detector, a trained classifier's probability that "
                       "the image is generated, combined into one probability: where the watermark is found, 1 minus "
                       "its calibrated false-positive rate (0.003), whatever the classifier says; otherwise the "
                       "classifier's probability. Exit status 0, or 2 where a file could not be read (the others are "
                       "still checked). docs/detector.md")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--detector", default=None, metavar="DIR", help="a detector folder made by `pixelforge detector "
                   "train` (without it: the watermark alone)")
    d.add_argument("--json", action="store_true", help="one JSON object per line and image: file, generated_probability, "
                   "basis, watermark {detected, score, payload, too_small}, classifier_probability, detector, note (or file and error)")
    d.add_argument("--key", default=None, help="watermark user key (default $PIXELFORGE_WATERMARK_KEY, else the "
                   "project's key alone)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    d.set_defaults(func=cmd_detect)

    p = sub.add_parser("detector", help="train a real-vs-generated image classifier for `pixelforge detect` (train)")
    psub = p.add_subparsers(dest="detector_command", metavar="SUBCOMMAND")
    t = psub.add_parser(
        "train", formatter_class=_Help,
        help="train a small CNN telling real images from generated ones; reports the held-out AUC per source",
        description="Train a small CNN on real images (--real) against generated ones (--fake), report the ROC AUC "
        "on held-out images of each source, and write DIR/detector.safetensors, DIR/detector.json (architecture, "
        "sources, seed, the AUC table, the command) and DIR/splits.json (which images trained and which tested). "
        "Every image is brought to --size x --size, RGB (Pillow: centre crop and bicubic resize; grayscale "
        "replicated). Generated images are drawn from the models unwatermarked, so the classifier learns the "
        "images, not the mark. With --hold-out-family, every source of that family is kept out of training and "
        "its AUC reported beside that of the families seen. docs/detector.md")
    t.add_argument("-o", "--out", required=True, metavar="DIR", help="the detector folder to write (new or empty)")
    t.add_argument("--real", nargs="+", required=True, metavar="SOURCE",
                   help="real images: bundled data sets by name (`pixelforge datasets`) or folders of images")
    t.add_argument("--fake", nargs="+", required=True, metavar="SOURCE",
                   help="generated images: runs or bundled models (sampled here, --per-source each; the family from "
                   "the run's config), family=NAME:DIR for a folder of generated images of model family NAME, or a "
                   "folder (family unknown)")
    t.add_argument("--size", type=_int_range(8, 256), default=32, help="input side in pixels")
    t.add_argument("--steps", type=_int_range(1, 1_000_000), default=600, help="training steps")
    t.add_argument("--batch-size", type=_int_range(2, 4096), default=64, help="images per step, half real and half generated")
    t.add_argument("--lr", type=_float_range(0, 1, above_lo=True), default=2e-3, help="Adam's peak learning rate (cosine decay)")
    t.add_argument("--per-source", type=_int_range(2, 100_000), default=500, help="images per source: at most this "
                   "many from each data set or folder (a seeded choice), exactly this many generated by each model")
    t.add_argument("--test-fraction", type=_float_range(0, 1, above_lo=True, below_hi=True), default=0.2,
                   help="of each source, held out for the AUC (seeded)")
    t.add_argument("--hold-out-family", default=None, metavar="FAMILY",
                   help="keep every --fake source of this family (diffusion, gan, vae, pixelcnn, transformer, or a "
                   "family=NAME) out of training, to measure the AUC on a family the detector never saw")
    t.add_argument("--seed", type=_int_range(0, 2**31 - 1), default=0, help="splits, sampling seeds, weights, batches")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--runs-dir", default=None, help="where runs are kept (default ./runs or $PIXELFORGE_RUNS)")
    t.add_argument("--overwrite", action="store_true", help="replace a detector already in DIR")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_detector_train)
