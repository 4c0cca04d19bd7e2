"""The invisible watermark against invisible-watermark 0.2.0 (dwtDct, dwtDctSvd, rivaGan) in one run.

For each image size: --images photos are marked with a 32-bit payload by every method, each marked image meets
every attack of pixelforge.provenance.watermark_attacks.ATTACKS, and the payload is read back. Figures:
  - bit accuracy: the fraction of the 32 payload bits read back right (pixelforge: the decoded payload at the
    geometry the detector found, whether or not it counts as detected);
  - exact payload: the share detected with the payload reported and right, and the number of wrong payloads
    reported (pixelforge withholds a payload it doubts: Detection.payload_rejected);
  - detection rate: pixelforge: score >= its threshold (by the image's size unless --threshold);
    invisible-watermark has no detector, so an image counts as detected when at least 27 of the 32 bits match
    (a chance of 5.7e-5 for fair coin flips);
  - PSNR and SSIM of the marked images (unattacked) against the originals, on all channels;
  - false positives on --clean unmarked images: pixelforge: score >= threshold; invisible-watermark: 27+ of 32
    bits matching the bench's random payload, and (column "FP sparse") a payload with four 1-bits, the case the
    key-stream whitening exists for (clean images decode biased towards 0-bits);
  - embed and detect time per image (one thread; the mean).

Geometry: the attacked image is given to pixelforge as it is (a resized image stays small, a cropped one stays
cropped). invisible-watermark's decoders cannot search for scale, so an image whose size changed is first
resized back to the marked size for them (more than a real detector would know); crops are not undone.

Images: 256x256 (or 128x128: --sizes 128) crops of scikit-image's bundled photos (random square crops of
40..100% of the shorter side, Lanczos-resized; marked and clean images from separate random streams); native
sizes from the bundled sets (64: emoji and textures, 32: shapes, 28: mnist, taken in order, marked first, clean
after). invisible-watermark refuses images under 256x256 through its public API, so at native sizes its
embedding classes are called directly (as an earlier 64x64 measurement did); rivaGan is slow on this CPU (about
1 s to embed and 2 s to decode a 256x256 image), so it runs on --riva-images and --riva-clean images only.

Usage (from the repository root):
    .venv/bin/python bench/watermark.py                       # 256 and native sizes, 24 images, 1000 clean
    .venv/bin/python bench/watermark.py --sizes 256 --json out.json
    .venv/bin/python bench/watermark.py --quick               # a smoke run; its figures mean nothing
    .venv/bin/python bench/watermark.py --clean-only --clean 1500 --sizes 32 64 128 256   # per-size thresholds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

try:
    import pixelforge  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixelforge.progress import stage_bar
from pixelforge.provenance.watermark import (PAYLOAD_BITS, SIZE_THRESHOLDS, UnmarkableImage, WatermarkConfig,
                                             detect, embed)
from pixelforge.provenance.watermark_attacks import ATTACKS
from pixelforge.provenance.watermark_code import bits_to_int, int_to_bits, viterbi

MATCH_BITS = 27  # of 32: an invisible-watermark read counts as a detection
SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "text", "page", "horse",
                  "clock", "immunohistochemistry", "hubble_deep_field", "retina", "brick", "grass", "gravel", "cat",
                  "colorwheel", "cell")


class Method:
    """A watermark under test: embed(image, bits) -> image; read(image, marked_size, payload) -> (bits, detected,
    score, reported): bits, the best read; reported, the payload the method would report (None: none)."""

    name: str
    embed: Callable[[Image.Image, np.ndarray], Image.Image]
    read: Callable[[Image.Image, tuple[int, int], np.ndarray], tuple[np.ndarray, bool, float | None]]


class Pixelforge(Method):
    name = "pixelforge"

    def __init__(self, threshold: float | None = None, verify: bool = True):
        self.config = WatermarkConfig(threshold=threshold, verify=verify)

    def embed(self, im, bits):
        try:
            return embed(im, bits_to_int(bits), self.config)
        except UnmarkableImage:  # left unmarked, as mark_image leaves it: counted, and read as the others are
            return im

    def read(self, im, size, payload):
        d = detect(im, self.config)
        got = int_to_bits(bits_to_int(viterbi(d.soft, PAYLOAD_BITS)), PAYLOAD_BITS)
        return got, d.detected, d.score, None if d.payload is None else int_to_bits(d.payload, PAYLOAD_BITS)


class InvisibleWatermark(Method):
    """invisible-watermark 0.2.0's classes, called directly (its public API refuses images under 256x256)."""

    def __init__(self, method: str):
        from imwatermark.maxDct import EmbedMaxDct
        from imwatermark.dwtDctSvd import EmbedDwtDctSvd
        from imwatermark.rivaGan import RivaWatermark

        self.name = method
        if method == "rivaGan":
            RivaWatermark.loadModel()
        self.cls = {"dwtDct": EmbedMaxDct, "dwtDctSvd": EmbedDwtDctSvd, "rivaGan": RivaWatermark}[method]

    def embed(self, im, bits):
        bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
        out = self.cls(list(int(b) for b in bits), wmLen=PAYLOAD_BITS).encode(bgr)
        return Image.fromarray(np.ascontiguousarray(out[..., ::-1]), "RGB")

    def read(self, im, size, payload):
        im = im.convert("RGB")
        if im.size != size:  # it cannot search for scale: given the marked size back
            im = im.resize(size, Image.BICUBIC)
        bgr = np.ascontiguousarray(np.asarray(im)[..., ::-1])
        got = np.asarray(self.cls(watermarks=[], wmLen=PAYLOAD_BITS).decode(bgr), dtype=np.uint8).reshape(-1)[:PAYLOAD_BITS]
        detected = int(np.sum(got == payload)) >= MATCH_BITS
        return got, detected, None, got if detected else None


def photos_256(n: int, seed: int, side: int = 256) -> list[Image.Image]:
    """n random square crops of scikit-image's bundled photos, side x side RGB (256 unless said)."""
    import skimage.data

    sources = []
    for name in SKIMAGE_PHOTOS:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo this scikit-image would have to download
            continue
        if a.dtype == bool or a.max() <= 1:
            a = (a.astype(np.float32) * 255).astype(np.uint8)
        sources.append(Image.fromarray(a.astype(np.uint8)).convert("RGB"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        crop = int(min(src.size) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, src.width - crop + 1)), int(rng.integers(0, src.height - crop + 1))
        out.append(src.crop((x, y, x + crop, y + crop)).resize((side, side), Image.LANCZOS))
    return out


def native(size: int, n_marked: int, n_clean: int) -> tuple[list[Image.Image], list[Image.Image], str]:
    """(marked, clean, source) images of a bundled set at its own size."""
    from pixelforge.data.bundled import load_bundled
    from pixelforge.images import to_pil

    names = {64: ("emoji", "textures"), 32: ("shapes",), 28: ("mnist",)}[size]
    marked, clean = [], []
    for k, name in enumerate(names):
        images = load_bundled(name).images  # (N, C, H, W) in [-1, 1]
        m, c = n_marked // len(names) + (k < n_marked % len(names)), n_clean // len(names)
        marked += to_pil(images[:m])
        clean += to_pil(images[m:m + c])
    return marked, clean, " + ".join(names)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b.convert(a.mode), np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ssim(a: Image.Image, b: Image.Image) -> float | None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    x, y = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    return float(structural_similarity(x, y, channel_axis=2, data_range=255))


def bench_size(size: int, methods: list[Method], a, done: Callable[[dict], None] = lambda result: None) -> dict:
    """The figures of every method at one size; done(result) is called after each method (partial results)."""
    if size in (256, 128):
        marked_src, clean = photos_256(a.images, seed=1, side=size), photos_256(a.clean, seed=2, side=size)
        source = "scikit-image photos"
    else:
        marked_src, clean, source = native(size, a.images, a.clean)
    rng = np.random.default_rng(0)
    payloads = [rng.integers(0, 2, PAYLOAD_BITS).astype(np.uint8) for _ in marked_src]
    fixed = rng.integers(0, 2, PAYLOAD_BITS).astype(np.uint8)  # the payload clean images are matched against
    sparse = np.zeros(PAYLOAD_BITS, np.uint8)
    sparse[[3, 11, 19, 27]] = 1
    result = {"size": size, "source": source, "images": len(marked_src), "clean": len(clean), "methods": {}}
    for m in methods:
        riva = m.name == "rivaGan"
        originals = marked_src[:a.riva_images] if riva else marked_src
        cleans = clean[:a.riva_clean] if riva else clean if isinstance(m, Pixelforge) else clean[:a.iw_clean]
        row: dict = {"images": len(originals), "clean": len(cleans), "attacks": {}}
        bar = stage_bar(len(originals) * (1 + len(ATTACKS)) + len(cleans), f"{size}px {m.name}")
        try:
            t0 = time.perf_counter()
            marked = [m.embed(im, p) for im, p in zip(originals, payloads)]
            row["embed_ms"] = 1000 * (time.perf_counter() - t0) / len(originals)
            bar.update(len(originals))
        except Exception as e:  # e.g. a method that cannot take images this small
            bar.close()
            result["methods"][m.name] = {"error": f"{type(e).__name__}: {e}"}
            done(result)
            continue
        row["unmarkable"] = sum(w is o for o, w in zip(originals, marked))  # left unmarked by the embedder
        row["per_image_psnr"] = [psnr(o, w) for o, w in zip(originals, marked) if w is not o]
        row["psnr"] = float(np.mean(row["per_image_psnr"])) if row["per_image_psnr"] else math.inf
        s = [ssim(o, w) for o, w in zip(originals, marked)]
        row["ssim"] = float(np.mean(s)) if None not in s else None
        read_time, reads = 0.0, 0
        for name, attack in ATTACKS.items():
            accs, dets, scores, exact, wrong = [], [], [], [], []
            for o, w, p in zip(originals, marked, payloads):
                attacked = attack(w)
                t0 = time.perf_counter()
                try:
                    got, det, score, reported = m.read(attacked, w.size, p)
                except Exception:  # a read that fails outright counts as chance and no detection
                    got, det, score, reported = (1 - p), False, None, None
                read_time += time.perf_counter() - t0
                reads += 1
                accs.append(float(np.mean(got == p)))
                dets.append(det)
                scores.append(score)
                exact.append(bool(det and reported is not None and np.array_equal(reported, p)))
                wrong.append(bool(det and reported is not None and not np.array_equal(reported, p)))
                bar.update(1)
            row["attacks"][name] = {"bit_accuracy": float(np.mean(accs)), "min_bit_accuracy": float(np.min(accs)),
                                    "detected": float(np.mean(dets)), "exact_payload": float(np.mean(exact)),
                                    "wrong_payloads": int(np.sum(wrong)),
                                    "per_image": {"bit_accuracy": accs, "detected": [bool(d) for d in dets],
                                                  "score": scores}}
            if scores[0] is not None:
                row["attacks"][name]["median_score"] = float(np.median(scores))
        fp, fp_sparse, clean_scores = 0, 0, []
        for im in cleans:
            t0 = time.perf_counter()
            got, det, score, _ = m.read(im, im.size, fixed)
            read_time += time.perf_counter() - t0
            reads += 1
            fp += det
            fp_sparse += int(np.sum(got == sparse)) >= MATCH_BITS
            if score is not None:
                clean_scores.append(score)
            bar.update(1)
        bar.close()
        row["false_positive_rate"] = fp / max(1, len(cleans))
        row["false_positive_rate_sparse_payload"] = None if isinstance(m, Pixelforge) else fp_sparse / max(1, len(cleans))
        if clean_scores:
            row["clean_score_max"] = float(np.max(clean_scores))
            row["clean_score_99.9%"] = float(np.quantile(clean_scores, 0.999))
        row["detect_ms"] = 1000 * read_time / max(1, reads)
        result["methods"][m.name] = row
        done(result)
    return result


# a size class's threshold: at least this far above its highest clean score and its 99.9th percentile
CLEAN_MARGIN = (0.6, 1.0)


def threshold_from_clean(scores: list[float]) -> float:
    """The rule the per-size thresholds were set by (docs/watermark.md): the higher of the highest clean score
    plus CLEAN_MARGIN[0] and the 99.9th percentile plus CLEAN_MARGIN[1] (each 0.5 more divides the false-positive
    rate by about ten), to the nearest tenth."""
    top = max(max(scores) + CLEAN_MARGIN[0], float(np.quantile(scores, 0.999)) + CLEAN_MARGIN[1])
    return round(top, 1)


def clean_scores(size: int, n: int, skip: int) -> tuple[list[float], str]:
    """pixelforge's detection scores of n clean images of one size (the bench's clean sets: photo crops at 256 and
    128, the bundled sets at their native sizes after the first `skip`, which the bench marks) and their source."""
    if size in (256, 128):
        images, source = photos_256(n, seed=2, side=size), "scikit-image photos"
    else:
        _, images, source = native(size, skip, n)
    config = WatermarkConfig()
    bar = stage_bar(len(images), f"{size}px clean scores")
    scores = []
    for im in images:
        scores.append(detect(im, config).score)
        bar.update(1)
    bar.close()
    return scores, source


def table(result: dict) -> str:
    names = list(result["methods"])
    lines = [f"### {result['size']}x{result['size']} ({result['source']}; {result['images']} marked images, "
             f"{result['clean']} clean)", "",
             "| attack | " + " | ".join(f"{n} bit acc / detected / exact payload" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    rows = {n: result["methods"][n] for n in names}
    for attack in ATTACKS:
        cells = []
        for n in names:
            r = rows[n]
            if "error" in r:
                cells.append("n/a")
            else:
                x = r["attacks"][attack]
                cells.append(f"{x['bit_accuracy']:.3f} / {x['detected']:.2f} / {x['exact_payload']:.2f}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")

    def line(label, fmt):
        cells = []
        for n in names:
            r = rows[n]
            cells.append("n/a" if "error" in r else fmt(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line("wrong payloads reported", lambda r: str(sum(x["wrong_payloads"] for x in r["attacks"].values())))
    line("PSNR dB", lambda r: f"{r['psnr']:.1f}")
    line("lowest PSNR dB", lambda r: f"{min(r['per_image_psnr'], default=math.inf):.1f}")
    line("SSIM", lambda r: "n/a" if r["ssim"] is None else f"{r['ssim']:.4f}")
    line("false positives", lambda r: f"{r['false_positive_rate']:.4f} of {r['clean']}")
    line("FP sparse payload", lambda r: "-" if r["false_positive_rate_sparse_payload"] is None
         else f"{r['false_positive_rate_sparse_payload']:.4f}")
    line("embed ms/image", lambda r: f"{r['embed_ms']:.1f}")
    line("detect ms/image", lambda r: f"{r['detect_ms']:.1f}")
    line("marked images", lambda r: str(r["images"]))
    line("left unmarked (no read-back)", lambda r: str(r.get("unmarkable", 0)))
    errors = [f"{n}: {rows[n]['error']}" for n in names if "error" in rows[n]]
    return "\n".join(lines + ([""] + errors if errors else []))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 64, 32, 28], choices=[256, 128, 64, 32, 28])
    p.add_argument("--images", type=int, default=24, help="marked images per size")
    p.add_argument("--clean", type=int, default=1000, help="clean images per size for the false-positive rate")
    p.add_argument("--iw-clean", type=int, default=None, help="clean images dwtDct and dwtDctSvd read (default: --clean)")
    p.add_argument("--riva-images", type=int, default=8, help="of those, how many rivaGan marks (slow)")
    p.add_argument("--riva-clean", type=int, default=100, help="clean images rivaGan reads (slow)")
    p.add_argument("--methods", nargs="+", default=["pixelforge", "dwtDct", "dwtDctSvd", "rivaGan"])
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--threshold", type=float, default=None, help="pixelforge's detection threshold (default: by size)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="pixelforge marks once at 41 dB, without the JPEG check and strengthening")
    p.add_argument("--quick", action="store_true", help="a smoke run: 256 only, 2 images, 20 clean")
    p.add_argument("--clean-only", action="store_true", help="only pixelforge's scores of --clean clean images per "
                   "size (the per-size thresholds' calibration): highest, 99.9th percentile and the threshold the "
                   "rule gives")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.images, a.clean, a.riva_images, a.riva_clean = [256], 2, 20, 1, 2
    a.iw_clean = a.clean if a.iw_clean is None or a.quick else a.iw_clean
    for flag in ("images", "clean", "iw_clean", "riva_images", "riva_clean"):
        if getattr(a, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    methods: list[Method] = []
    for name in a.methods:
        if name == "pixelforge":
            methods.append(Pixelforge(a.threshold, a.verify))
            continue
        try:
            methods.append(InvisibleWatermark(name))
        except ImportError as e:
            print(f"skipping {name}: invisible-watermark is not installed ({e}); pip install --no-deps "
                  "invisible-watermark==0.2.0 PyWavelets opencv-python-headless onnxruntime", file=sys.stderr)
    if {256, 128} & set(a.sizes):
        try:
            import skimage.data  # noqa: F401
        except ImportError:
            print("skipping 256 and 128: scikit-image (its bundled photos) is not installed", file=sys.stderr)
            a.sizes = [s for s in a.sizes if s not in (256, 128)]
    load = os.getloadavg()
    threshold = a.threshold if a.threshold is not None else "by size " + str(SIZE_THRESHOLDS)
    print(f"threshold {threshold}; JPEG check on embedding {'on' if a.verify else 'off'}; load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    results: list[dict] = []
    if a.clean_only:
        for size in a.sizes:
            if size == 28:
                continue  # not marked: nothing to calibrate
            scores, source = clean_scores(size, a.clean, a.images)
            results.append({"size": size, "source": source, "clean": len(scores), "clean_score_max": max(scores),
                            "clean_score_99.9%": float(np.quantile(scores, 0.999)),
                            "threshold_by_rule": threshold_from_clean(scores), "scores": scores})
            print(f"{size}px ({source}): {len(scores)} clean, highest {max(scores):.2f}, 99.9th percentile "
                  f"{np.quantile(scores, 0.999):.2f}, threshold by the rule {threshold_from_clean(scores):.1f}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps({"load_average": load, "results": results}, indent=1))
        return 0

    def save(*partial: dict) -> None:  # after each method too, so a long run's figures are never all lost
        if a.json:
            Path(a.json).write_text(json.dumps({"load_average": load, "threshold": threshold, "verify": a.verify,
                                                "results": [*results, *partial]}, indent=1))

    for size in a.sizes:
        results.append(bench_size(size, methods, a, done=save))
        save()
        print(table(results[-1]) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
