"""Evaluation verbs of the API: a run (or bundled model) against real data, one folder against
another, and the classification accuracy score; each writes what it used beside its figures."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .data import DataConfig, check_folder, describe_source, load_dataset, min_side, scan_folder, split_indices, to_model
from .images import make_grid, read_settings, to_pil
from .metrics.evaluate import (
    EvalOptions,
    balanced_labels,
    evaluate_images,
    extract_features,
    fake_features,
    nearest_real,
    real_features,
    to_uint8,
)
from .metrics.features import load_extractor
from .post import PostSettings, apply_post, as_post_settings
from .progress import image_bar
from .report import write_report


def _native_side(folder: str, default: int, shortest: int = 0) -> int:
    """The side of a folder's images when they are all the same square size, else `default`; images
    with a side below `shortest` (left out of the set) do not count."""
    sizes = [s for s in check_folder(folder).sizes if min(s) >= shortest]
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h:
            return int(w)
    return default


def load_real(source: str, *, extractor, image_size: int | None = None, cache_dir=None, progress: bool = True,
              shortest: int = 0) -> torch.Tensor:
    """Real images as uint8 (N, C, H, W): a bundled set at its native size, or a folder at its own
    size when all its images share one (else the extractor's input size, centre-cropped). Folder
    images with a side below `shortest` px are left out, as training leaves them out (data.min_side)."""
    info = describe_source(source)
    channels = 1 if info["bundled"] and info["channels"] == 1 else 3  # each extractor converts to what it takes
    side = image_size or (info["image_size"] if info["bundled"] else _native_side(source, extractor.input_size, shortest))
    data = load_dataset(DataConfig(source=source, image_size=side, channels=channels, val_fraction=0.0),
                        cache_dir=cache_dir, progress=progress, shortest=shortest)
    return data.images


def _generate(g, n: int, *, seed: int, progress: bool, post=None, share: range | None = None,
              **options) -> tuple[torch.Tensor, list]:
    """n images with labels balanced over the classes, image i from seed + i; share: only images share
    (a process's part of a sharded evaluation: the same images as in the whole set)."""
    labels = balanced_labels(n, g.num_classes)
    share = range(n) if share is None else share
    labels = None if labels is None else [labels[i] for i in share]
    n = len(share)
    bar, cb = image_bar(n, f"sampling {g.name}", enabled=progress)
    images, _ = g.generate_tensor(n, labels=labels, seeds=[seed + i for i in share], callback=cb, **options)
    cb(n, n)  # a family that reports no progress still ends its bar at n
    bar.close()
    if post is not None:  # post-processed as generate() would, before the figures
        done = apply_post(to_pil(images), post)
        arrays = [np.asarray(im) for im in done]  # each (H, W) or (H, W, 3) uint8
        stacked = np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])  # (n, H, W, C)
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), labels  # (n, C, H, W) uint8
    return to_uint8(images), labels


def post_processed(folder: str | os.PathLike) -> int:
    """How many of a folder's images (as data folders list them) carry a post-processing record in their
    pixelforge settings (pixelforge.post): an evaluation says so beside its figures."""
    count = 0
    scan = scan_folder(folder)
    for entry in scan.files:
        try:
            count += read_settings(scan.root / entry.path).get("post") is not None
        except ValueError:  # not a PNG pixelforge wrote, or none at all: not post-processed by it
            continue
    return count


def _pairs(fake: torch.Tensor, real: torch.Tensor, f_feats, r_feats, k: int = 12):
    idx, dist = nearest_real(f_feats, r_feats)
    order = np.argsort(dist)[:k]
    fp = to_pil(fake[order].float() / 127.5 - 1)
    rp = to_pil(real[idx[order]].float() / 127.5 - 1)
    return [(a, b, float(d)) for a, b, d in zip(fp, rp, dist[order])]


def evaluate_run(
    run: str,
    *,
    real: str | None = None,
    n: int = 10_000,
    extractor: str = "auto",
    seed: int = 0,
    runs_dir=None,
    device: str = "auto",
    report: str | os.PathLike | None | bool = True,
    cache_dir=None,
    progress: bool = True,
    options: EvalOptions | None = None,
    post: PostSettings | dict | None = None,
    **sample_options,
) -> dict:
    """Sample n images from a run (labels balanced over classes), compare with real data (the run's
    own data set by default), append the figures to the run's evaluations.jsonl and write report.html.
    post: post-processing applied to the samples first (pixelforge.post); "post_processed" in the figures
    counts the images it was applied to, and the sampling settings record it.

    Started by torchrun (WORLD_SIZE > 1) it is one process of a sharded evaluation: each process samples
    and extracts the features of its share of the n images (image i from seed + i, as in one process), the
    images and features are gathered, and rank 0 computes the figures, writes the report and returns them;
    the other processes return {}."""
    from .api import load
    from .device import pick_device
    from .distributed import current, gather_rows, setup, shard, teardown

    post = as_post_settings(post)
    created = setup(pick_device(device))
    try:
        world = current()
        if n < max(2, world.size):
            raise ValueError(f"n {n} (-n): an evaluation needs at least 2 images, and at least one per process "
                             f"({world.size} processes)")
        g = load(run, device=device, runs_dir=runs_dir)
        real = real or g.config.data.source
        ext = load_extractor(extractor, data_source=real, device=device)
        t0 = time.perf_counter()
        used = {**g.sample_options, **{k: v for k, v in sample_options.items() if v is not None}}
        opts = options or EvalOptions(seed=seed)
        show = progress and world.main
        fake, _ = _generate(g, n, seed=seed, progress=show, post=post, share=shard(n, world), **used)
        feats, logits = fake_features(ext, fake, batch_size=opts.batch_size, progress=show)
        if world.distributed:  # every process's share, in image order
            fake = gather_rows(fake)
            feats = gather_rows(torch.from_numpy(np.ascontiguousarray(feats))).numpy()
            logits = None if logits is None else gather_rows(torch.from_numpy(np.ascontiguousarray(logits))).numpy()
            if not world.main:
                return {}
        return _run_figures(g, fake, (feats, logits), ext, real=real, n=n, t0=t0, used=used, seed=seed, opts=opts,
                            post=post, report=report, cache_dir=cache_dir, progress=progress, shards=world.size)
    finally:
        if created:
            teardown()


def _run_figures(g, fake: torch.Tensor, fake_feats: tuple[np.ndarray, np.ndarray | None], ext, *, real: str, n: int,
                 t0: float, used: dict, seed: int, opts: EvalOptions, post: PostSettings | None, report, cache_dir,
                 progress: bool, shards: int) -> dict:
    """evaluate_run's figures, record and report from the generated images and their features."""
    # a folder's tiny images are no reference for samples of the run's size, unless it trained on them
    real_images = load_real(real, extractor=ext, cache_dir=None, progress=progress, shortest=min_side(g.config.data))
    figures = evaluate_images(fake, real_images, ext, options=opts, cache_dir=cache_dir, real_label=real,
                              progress=progress, fake_feats=fake_feats)
    if shards > 1:
        figures["processes"] = shards
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["post_processed"] = len(fake) if post is not None else 0
    if "reconstruct" in g.model.capabilities:  # an autoencoder: its own figure beside the samples'
        figures["reconstruction"] = _reconstruction(g, n=n, progress=progress)
    step = _run_step(g.run_dir)
    settings = {
        "model": g.name, "checkpoint": g.checkpoint_hash, "step": step, "real data": real,
        "extractor": figures["extractor"], "n_fake": figures["n_fake"], "n_real": figures["n_real"],
        **used, "seed": seed,
        "resize": figures["settings"]["resize"], "KID subsets": _kid_subsets(figures),
        "precision/recall k": opts.pr_k, "IS": figures["settings"]["is_note"], "seconds": figures["seconds"],
    }
    figures["sampling"] = {"model": g.name, "checkpoint": g.checkpoint_hash, "step": step, **used, "seed": seed,
                           "real": real}
    if post is not None:
        settings["post"] = ", ".join(f"{k} {v}" for k, v in post.to_record().items() if k != "order")
        figures["sampling"]["post"] = post.to_record()
    if report:
        writable = _writable_run(g.run_dir)
        if writable:
            with open(g.run_dir / "evaluations.jsonl", "a") as f:
                f.write(json.dumps(figures) + "\n")
        if report is True:  # the run's own report, or out/NAME/ for a bundled model inside the package
            report = g.run_dir / "report.html" if writable else Path("out") / g.name / "report.html"
        r_feats, _, _ = real_features(real_images, ext, cache_dir=cache_dir)
        f_feats = extract_features(ext, fake[: min(len(fake), 512)], progress=progress, desc="nearest real neighbours")
        grid = make_grid(to_pil(fake[:64].float() / 127.5 - 1), scale=max(1, 64 // fake.shape[-1]))
        figures["report"] = str(write_report(
            Path(report), title=f"Evaluation of {g.name}", figures=figures, settings=settings, grid=grid,
            pairs=_pairs(fake[: len(f_feats)], real_images, f_feats, r_feats), metrics_csv=g.run_dir / "metrics.csv"))
    return figures


def evaluate_reconstruction(run: str, *, n: int = 10_000, runs_dir=None, device: str = "auto",
                            progress: bool = True) -> dict:
    """PSNR and SSIM (metrics/reconstruction.py) of a run's reconstructions of up to n of its held-out
    images (its split.json's validation images): {"psnr", "ssim" (None without scikit-image), "n"}."""
    from .api import load

    return _reconstruction(load(run, device=device, runs_dir=runs_dir), n=n, progress=progress)


def _reconstruction(g, *, n: int, progress: bool = True) -> dict:
    """evaluate_reconstruction on a loaded Generator; a clear error for a model that cannot reconstruct."""
    from .metrics.reconstruction import reconstruction_figures

    if "reconstruct" not in g.model.capabilities:
        raise ValueError(f"{g.name} is a {g.config.family} model: only an autoencoder run has reconstruction figures")
    data = load_dataset(g.config.data, progress=progress)
    _, val = _split(g, len(data))
    idx = val[:n]
    if not len(idx):
        raise ValueError(f"{g.name} holds no images out (its validation split is empty): nothing to measure "
                         "reconstructions on")
    real, fake = [], []
    bar, cb = image_bar(len(idx), f"reconstructing {g.name}", enabled=progress)
    for chunk in idx.split(256):
        x = to_model(data.images[chunk], g.config.data)  # (B, C, H, W) in [-1, 1]
        real.append(to_uint8(x))
        fake.append(to_uint8(g.model.reconstruct(x.to(g.device))))
        cb(sum(len(r) for r in real), len(idx))
    bar.close()
    return {**reconstruction_figures(torch.cat(real), torch.cat(fake)), "images": "held-out (split.json val)"}


def _split(g, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices of the run's data: its saved split.json, else the run's seeded split
    with at least 10% held out (a bundled model ships without split.json)."""
    split_path = g.run_dir / "split.json"
    if split_path.exists():
        split = json.loads(split_path.read_text())
        return torch.tensor(split["train"]), torch.tensor(split["val"])
    return split_indices(n, max(g.config.data.val_fraction, 0.1), g.config.data.split_seed)


def _kid_subsets(figures: dict) -> str:
    """ "100 x 200": KID's subsets and the subset size the computation used (capped at the smaller set)."""
    return f"{figures['settings']['kid_subsets']} x {figures['settings']['kid_subset_size']}"


def _run_step(run_dir: Path) -> int | None:
    from .runs.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        return int(json.loads(ckpts[-1].with_suffix(".json").read_text())["step"])
    return None


def _writable_run(run_dir: Path) -> bool:
    # Bundled models live inside the installed package: reports go elsewhere (see evaluate_run's caller).
    from .runs.store import BUNDLED_MODELS_DIR

    return run_dir.resolve().parent != BUNDLED_MODELS_DIR and os.access(run_dir, os.W_OK)


def evaluate_folders(
    fake: str,
    real: str,
    *,
    extractor: str = "auto",
    device: str = "auto",
    cache_dir=None,
    report: str | os.PathLike | None = None,
    progress: bool = True,
    options: EvalOptions | None = None,
) -> dict:
    """Any folder of images against any other folder (or a bundled data set): for other generators too."""
    ext = load_extractor(extractor, data_source=real, device=device)
    fake_images = load_real(fake, extractor=ext, progress=progress)
    real_images = load_real(real, extractor=ext, progress=progress)
    opts = options or EvalOptions()
    figures = evaluate_images(fake_images, real_images, ext, options=opts, cache_dir=cache_dir, real_label=real,
                              progress=progress)
    figures["post_processed"] = post_processed(fake)  # of the images read, those pixelforge post-processed
    if report:
        r_feats, _, _ = real_features(real_images, ext, cache_dir=cache_dir)
        f_feats = extract_features(ext, fake_images[:512], progress=progress, desc="nearest real neighbours")
        settings = {"fake": fake, "real": real, "extractor": figures["extractor"], "n_fake": figures["n_fake"],
                    "n_real": figures["n_real"], "post-processed": figures["post_processed"], "resize": figures["settings"]["resize"], "seed": opts.seed,
                    "KID subsets": _kid_subsets(figures), "IS": figures["settings"]["is_note"]}
        grid = make_grid(to_pil(fake_images[:64].float() / 127.5 - 1), scale=max(1, 64 // fake_images.shape[-1]))
        figures["report"] = str(write_report(Path(report), title=f"Evaluation of {fake}", figures=figures, settings=settings,
                                             grid=grid, pairs=_pairs(fake_images[: len(f_feats)], real_images, f_feats, r_feats)))
    return figures


def classification_accuracy(
    run: str,
    *,
    n_per_class: int = 200,
    epochs: int = 8,
    seed: int = 0,
    runs_dir=None,
    device: str = "auto",
    progress: bool = True,
    **sample_options,
) -> dict:
    """CAS: a classifier trained on n_per_class generated images per class, tested on the run's real
    validation images, beside the same classifier trained on as many real training images."""
    from .api import load
    from .metrics.cas import classification_accuracy_score

    g = load(run, device=device, runs_dir=runs_dir)
    if g.num_classes < 2:
        raise ValueError(f"{g.name} is not class-conditional: the classification accuracy score needs labels")
    data = load_dataset(g.config.data, progress=progress)
    train_idx, val_idx = _split(g, len(data))
    used = {**g.sample_options, **{k: v for k, v in sample_options.items() if v is not None}}
    fake, labels = _generate(g, n_per_class * g.num_classes, seed=seed, progress=progress, **used)
    real_x = to_model(data.images, g.config.data)  # the same pipeline the model was trained on, in [-1, 1]
    result = classification_accuracy_score(
        fake.float() / 127.5 - 1, torch.tensor(labels), real_x[train_idx], data.labels[train_idx],
        real_x[val_idx], data.labels[val_idx], g.num_classes, epochs=epochs, seed=seed, device=g.device,
        progress=progress)
    result.update({"model": g.name, "checkpoint": g.checkpoint_hash, **used, "per_class": dict(Counter(labels))})
    return result


# ---------------------------------------------------------------------------------------------------
# Adherence: do samples obey their condition?

ADHERENCE_SAMPLES = 200  # samples per prompt kind (shapes) or in all (digits) unless n is given
SHAPES_CHECKER = ("pixelforge.metrics.adherence.read_shape: reads each image with the shapes set's own "
                  "drawing code (docs/text-and-adherence.md)")
# kind -> held_out_prompts' phrasing: the captions' own; other sentence forms and words for size, place and
# background (the shape and colour named as the captions name them); and that with shape names no training
# wording uses ("disc", "rhombus", "plus sign"), over the circles, diamonds and crosses only.
PROMPT_KINDS = {"caption": {"paraphrased": False}, "paraphrased": {"paraphrased": True},
                "other nouns": {"paraphrased": True, "nouns": True}}


def evaluate_adherence(
    run: str,
    *,
    n: int = ADHERENCE_SAMPLES,
    seed: int = 0,
    runs_dir=None,
    device: str = "auto",
    batch_size: int = 64,
    record: bool = True,
    progress: bool = True,
    **sample_options,
) -> dict:
    """How well a run's samples obey their condition (see `adherence_of`), appended to the run's
    evaluations.jsonl when record is set and the run is writable (not for a bundled model)."""
    from .api import load

    g = load(run, device=device, runs_dir=runs_dir)
    t0 = time.perf_counter()
    result = adherence_of(g, n=n, seed=seed, batch_size=batch_size, progress=progress, **sample_options)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["settings"] = {"model": g.name, "checkpoint": g.checkpoint_hash, "step": _run_step(g.run_dir),
                          **result["settings"]}
    if record and _writable_run(g.run_dir):
        with open(g.run_dir / "evaluations.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def adherence_of(g, *, n: int = ADHERENCE_SAMPLES, seed: int = 0, batch_size: int = 64, progress: bool = True,
                 **sample_options) -> dict:
    """The share of a generator's samples that obey their condition.

    A text-conditioned run on the shapes set: n samples for each kind of held-out prompt (attribute
    combinations the bundled set never draws), phrased as the captions are ("caption"), otherwise
    ("paraphrased"), and otherwise with shape names no training wording uses ("other nouns"; PROMPT_KINDS).
    The first two cover the same combinations with the same seeds (image i: seed + i), so they differ
    in phrasing only. The shapes checker reports per attribute the share obeyed, and
    "all". A label-conditioned run on a digit set (mnist, digits): n samples with labels balanced over
    the classes, and the share the evaluation's digit classifier gives their label, beside its
    accuracy on the run's real validation images. Anything else is a ValueError saying why.
    g: a loaded `api.Generator` (or anything with its name, config, inputs, resolve_options and
    generate_tensor). sample_options: the run's sampling options (None: its default).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: {n!r} is not valid; use an integer >= 1")
    used = g.resolve_options(**{k: v for k, v in sample_options.items() if v is not None})
    source = g.config.data.source
    if "text" in g.inputs:
        if source != "shapes":
            raise ValueError(f"{g.name} takes text but was trained on {source!r}: the adherence checker reads the "
                             "shapes domain only (a run trained with `pixelforge train shapes --text`)")
        figures = _shapes_adherence(g, n=n, seed=seed, batch_size=batch_size, progress=progress, options=used)
    elif "labels" in g.inputs:
        from .metrics.features import DIGIT_SOURCES

        if source not in DIGIT_SOURCES:
            raise ValueError(f"{g.name} takes labels but was trained on {source!r}: label adherence is measured with "
                             f"the digit classifier, on the digit sets only ({', '.join(DIGIT_SOURCES)})")
        figures = _digit_accuracy(g, n=n, seed=seed, batch_size=batch_size, progress=progress, options=used)
    else:
        raise ValueError(f"{g.name} takes no condition (neither text nor labels): adherence needs a text-conditioned "
                         "run on shapes or a label-conditioned run on a digit set (mnist, digits)")
    return {"evaluation": "adherence", **figures, "n": n, "settings": {**used, "seed": seed}}


def _shapes_adherence(g, *, n: int, seed: int, batch_size: int, progress: bool, options: dict) -> dict:
    from .metrics.adherence import adherence, held_out_prompts
    from .progress import stage_bar

    data = g.config.data
    if data.channels != 3 or data.image_size < 8:
        raise ValueError(f"{g.name} makes {data.channels}-channel {data.image_size}x{data.image_size} images: the shapes "
                         "checker reads colour images of at least 8x8 pixels")
    shares, examples = {}, {}
    for kind, phrasing in PROMPT_KINDS.items():
        prompts = [p for p, _ in held_out_prompts(n, seed=seed, **phrasing)]
        bar, cb = image_bar(n, f"sampling {g.name} ({kind} prompts)", enabled=progress)
        images, _ = g.generate_tensor(n, prompts=prompts, seed=seed, batch_size=batch_size, callback=cb, **options)
        cb(n, n)
        bar.close()
        with stage_bar(n, f"reading shapes ({kind} prompts)", enabled=progress) as bar:
            shares[kind] = adherence(to_uint8(images), prompts, callback=lambda done, total: bar.update(done - bar.n))
        examples[kind] = prompts[:3]
    return {"domain": "shapes", "checker": SHAPES_CHECKER,
            "prompts": "held out: attribute combinations the bundled shapes set never draws",
            "adherence": shares, "example_prompts": examples}


def _digit_accuracy(g, *, n: int, seed: int, batch_size: int, progress: bool, options: dict) -> dict:
    digits = [str(d) for d in range(10)]
    if g.num_classes != 10 or (g.class_names and list(g.class_names) != digits):
        raise ValueError(f"{g.name} has {g.num_classes} classes ({', '.join(g.class_names) or 'unnamed'}): the digit "
                         "classifier reads the 10 classes 0..9")
    ext = load_extractor("auto", data_source=g.config.data.source, device=g.device)
    labels = balanced_labels(n, g.num_classes)
    bar, cb = image_bar(n, f"sampling {g.name}", enabled=progress)
    images, _ = g.generate_tensor(n, labels=labels, seed=seed, batch_size=batch_size, callback=cb, **options)
    cb(n, n)
    bar.close()
    _, logits = extract_features(ext, to_uint8(images), with_logits=True, progress=progress, desc="digit classifier")
    hits = logits.argmax(1) == np.array(labels)  # (n,)
    data = load_dataset(g.config.data, progress=progress)
    _, val_idx = _split(g, len(data))
    _, real_logits = ext.features(data.images[val_idx], with_logits=True)
    real_hits = real_logits.argmax(1) == data.labels[val_idx].numpy()
    return {
        "domain": "digits", "checker": ext.name, "accuracy": float(hits.mean()),
        "per_class": {digits[c]: float(hits[np.array(labels) == c].mean()) for c in sorted(set(labels))},
        "real_accuracy": float(real_hits.mean()), "n_real": int(len(val_idx)), "chance": 1 / g.num_classes,
    }
