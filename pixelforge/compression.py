"""The compression verbs of the API: `compress_run` writes a run's compressed variant (ONNX Runtime fp32
or int8, PyTorch bf16) as a run folder that loads like any other; `bench_run` measures every variant's
images/s and peak memory on this machine, interleaved. docs/compress.md describes both."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .compress.config import PRUNED_VARIANT, VARIANTS, CompressConfig
from .compress.load import WEIGHTS_FILE, graph_free_shapes
from .progress import image_bar, stage_bar
from .runs.checkpoint import atomic_save_tensors, atomic_write_text

SIDE_FILES = ("classes.json", "sample_defaults.json")  # copied from the source run as they are


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder: choose a new output folder (-o)")


def _training_images(g, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first n images of the run's training split, (n, C, H, W) in [-1, 1] through the run's own
    pipeline, and their labels (n,) (None where the data set has none)."""
    from .data import load_dataset, split_indices, to_model

    try:
        data = load_dataset(g.config.data, progress=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"int8 calibration of {g.name}'s encoder reads the run's images ({g.config.data.source}): "
                         f"{e}") from None
    train, _ = split_indices(len(data.images), g.config.data.val_fraction, g.config.data.split_seed)
    idx = train[:n]
    labels = data.labels[idx] if getattr(data, "labels", None) is not None else None
    return to_model(data.images[idx], g.config.data), labels


def _calibration_feeds(g, n: int, prompts: list[str] | None, seed: int, progress: bool) -> dict[str, list[dict]]:
    """The inputs of every declared network call (method -> one feed per call) while sampling n images with
    the run's default options (its sampler, steps, guidance: so the sampler's own noise levels and both
    halves of guidance); labels cycle through the classes, prompts through `prompts`. A call that sampling
    never makes (an autoencoder's encoder) is recorded while editing n of the run's training images at
    strength 0.5, which also gives the decoder latents of real images beside the prior's."""
    from .compress.graph import declared_calls, numpy_feeds, original, replace_call, restore_call, split_args
    from .condition import Cond

    model = g.model
    calls = declared_calls(model)
    feeds: dict[str, list[dict]] = {call.method: [] for call in calls}

    def recorder(call):
        own = original(model, call)

        def recording(*args, **kwargs):
            tensors, cond = split_args(call, args, kwargs)
            feeds[call.method].append(numpy_feeds(model, tensors, cond, call))
            return own(*args, **kwargs)

        return recording

    text = "text" in g.inputs
    if text and not prompts:
        raise ValueError("int8 calibration of a text model needs prompts (calibration_prompts, --calibration-prompts)")
    labels = [i % g.num_classes for i in range(n)] if g.num_classes and not text else None
    bar, cb = image_bar(n, "calibrating int8", enabled=progress)
    for call in calls:
        replace_call(model, recorder(call), call)
    try:
        g.generate_tensor(n, labels=labels, prompts=[prompts[i % len(prompts)] for i in range(n)] if text else None,
                          seed=seed, callback=cb)
        unreached = [method for method, recorded in feeds.items() if not recorded]
        if unreached:
            if "edit" not in model.capabilities:
                raise ValueError(f"int8 calibration: sampling never calls {', '.join(unreached)}, and {g.name} cannot "
                                 "edit images to reach it")
            x, y = _training_images(g, n)  # (n, C, H, W) in [-1, 1], (n,)
            for start in range(0, len(x), 64):
                chunk = slice(start, start + 64)
                cond = Cond(labels=y[chunk]) if y is not None and "labels" in model.takes() else None
                model.edit(x[chunk].to(model.device), strength=0.5, cond=cond, seed=seed + start)
    finally:
        for call in calls:
            restore_call(model, call)  # back to the family's own method
        bar.close()
    return feeds


def _prune(g, fraction: float) -> None:
    """Replace g's model by its pruned network (compress/prune.py) and its config's model fields by the pruned
    widths, so the export, the calibration and config.json all see the smaller network."""
    from .compress.prune import prune_model

    g.model = prune_model(g.model, fraction)
    fields = json.loads(json.dumps(dataclasses.asdict(g.model.config)))  # tuples -> lists, as config.json has them
    g.config = dataclasses.replace(g.config, model=fields)


def compress_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    export: str = "onnx",
    quantize: str = "none",
    prune: float = 0.0,
    exporter: str = "torchscript",
    opset: int = 18,
    calibration_images: int = 32,
    calibration_prompts: list[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    runs_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Write a compressed variant of `run` (a run folder, a run name or a bundled model) to the new folder
    `out`, a run that `pixelforge.load`, sample, evaluate, edit and the server take like any other, whose
    config.json records the variant in its "compress" section (CompressConfig).

    export "onnx": the family's network call becomes an ONNX graph (model.onnx; exporter "torchscript" or
    "dynamo", opset) run by ONNX Runtime; quantize "int8" then quantises it (static QDQ) with activation
    ranges from sampling calibration_images images (their prompts cycle through calibration_prompts for a
    text model; seed fixes the images). export "none" with quantize "bf16": the weights in bfloat16, run in
    bfloat16 where the hardware has it. prune: the share of every level's channels a diffusion UNet loses
    first (compress/prune.py; the smaller widths go to config.json), then the export and quantisation
    above run on the pruned network; fine-tune it with `pixelforge train DATA --init-from OUT`.
    Every network call the family declares is exported (the GAN's generator; the VAE's and VQ-VAE's decoder,
    and their encoder, which edit runs, as model.encode.onnx); int8 calibrates a call that sampling never
    makes (the encoder) on the run's training images.
    Returns {"out", "variant", "files" (name -> bytes), "parity_max_abs" (ONNX fp32 graphs vs PyTorch, the
    largest, or None), "parity_by_call" (method -> max abs)}.
    """
    from .api import load
    from .compress.graph import declared_call
    from .compress.load import graph_files
    from .compress.onnx_export import export_onnx, parity, quantize_int8

    cc = CompressConfig(export=export, quantize=quantize, prune=prune, exporter=exporter, opset=opset,
                        calibration_images=calibration_images)
    out = Path(out)
    _check_out(out)
    g = load(run, device=device, runs_dir=runs_dir, moderation=None)
    if g.config.compress is not None:
        raise ValueError(f"{g.run_dir} is already a compressed run ({g.config.compress.variant}): compress the run it "
                         f"came from ({g.config.compress.source})")
    declared_call(g.model)  # a clear error for a family with nothing to export
    cc = dataclasses.replace(cc, source=g.name, source_checkpoint=g.checkpoint_hash)
    if prune:  # first: the export and int8's calibration then run on the pruned network (a fraction of a second)
        _prune(g, prune)
    model = g.model
    stages = stage_bar(2 + (export == "onnx") + (quantize == "int8"), f"compressing {g.name} to {cc.variant}",
                       unit="stage", enabled=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".compress-", dir=out.parent))  # beside out: the files are renamed in
    try:
        max_abs, by_call = None, {}
        state = model.state_dict()
        if export == "onnx":
            graphs = graph_files(model)  # (call, model.onnx), then model.METHOD.onnx for each other call
            # the fp32 graphs under their final names, in a folder of their own: a graph names its external
            # weights file (the dynamo exporter's NAME.data) inside, so the files are moved, never renamed
            fp32 = tmp / "fp32"
            fp32_files = []
            for call, name in graphs:
                fp32_files += export_onnx(model, fp32 / name, exporter=exporter, opset=opset, call=call)
                by_call[call.method] = parity(model, fp32 / name, call=call)
            max_abs = max(by_call.values())
            stages.update()
            if quantize == "int8":
                feeds = _calibration_feeds(g, calibration_images, calibration_prompts, seed, progress)
                for call, name in graphs:
                    quantize_int8(fp32 / name, tmp / name, feeds[call.method])
                for f in fp32_files:
                    f.unlink()
                stages.update()
            else:
                for f in fp32_files:
                    f.rename(tmp / f.name)
            fp32.rmdir()
            state = {k: v for k, v in state.items() if k in graph_free_shapes(model)}
        elif quantize == "bf16":
            state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
        atomic_save_tensors(state, tmp / WEIGHTS_FILE, {"variant": cc.variant})
        stages.update()
        atomic_write_text(tmp / "config.json", dataclasses.replace(g.config, compress=cc).to_json())
        for name in SIDE_FILES:
            if (g.run_dir / name).is_file():
                shutil.copyfile(g.run_dir / name, tmp / name)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            f.rename(out / f.name)
        stages.update()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        stages.close()
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    return {"out": out, "variant": cc.variant, "files": files, "parity_max_abs": max_abs, "parity_by_call": by_call}


def model_bytes(run_dir: Path) -> int:
    """Bytes on disk of what sampling reads: the weights and, for an ONNX variant, its graphs (an autoencoder's
    encoder too) and their data; for a trained run (no model file yet), its EMA weights as fp32 tensors."""
    files = [run_dir / WEIGHTS_FILE, *run_dir.glob("*.onnx"), *run_dir.glob("*.onnx.data")]
    total = sum(f.stat().st_size for f in files if f.is_file())
    if total:
        return total
    from .runs.store import weights_shapes  # a trained run: its EMA weights (a checkpoint holds more)

    return sum(4 * math.prod(shape) for shape in weights_shapes(run_dir).values())


def _measure(run_dir: Path, *, n: int, steps: int | None, batch_size: int, device: str, seed: int) -> dict:
    """Images/s and the peak resident memory of a fresh process that loads run_dir and samples n images
    (after one warm-up batch); a process of its own so one variant's memory never counts for another."""
    job = {"run": str(run_dir), "n": n, "steps": steps, "batch_size": batch_size, "device": device, "seed": seed}
    done = subprocess.run([sys.executable, "-m", "pixelforge.compression", json.dumps(job)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"measuring {run_dir} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_run(
    run: str | os.PathLike,
    *,
    variants: tuple[str, ...] = tuple(VARIANTS),
    n: int = 64,
    steps: int | None = None,
    batch_size: int = 64,
    repeats: int = 3,
    calibration_prompts: list[str] | None = None,
    work_dir: str | os.PathLike | None = None,
    device: str = "auto",
    runs_dir: str | os.PathLike | None = None,
    progress: bool = True,
    prune: float = 0.3,
    other_runs: dict[str, str | os.PathLike] | None = None,
) -> list[dict]:
    """Each variant of `run` (names of VARIANTS, or PRUNED_VARIANT: fp32 eager pruned by `prune`, a diffusion
    UNet's) written to work_dir (default a temporary folder), then
    measured `repeats` times, the variants interleaved in every round so a changing machine load touches
    them alike: one row per variant with its bytes on disk, median images/s over the rounds, peak
    resident memory (MiB, the whole process: Python and the libraries included) and images/s as a ratio
    to fp32 eager. steps: the sampler's steps (default the run's), the same for every variant. other_runs:
    name -> a run measured beside them as it is (a pruned run after its fine-tune, say)."""
    from .api import load
    from .runs.store import resolve_run

    known = {**{k: (*v, 0.0) for k, v in VARIANTS.items()}, PRUNED_VARIANT: ("none", "none", prune)}
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(known)}")
    if repeats < 1 or n < 1:
        raise ValueError(f"repeats and n must be at least 1, got {repeats} and {n}")
    source = resolve_run(run, runs_dir)
    if steps is not None:
        options = load(source, device=device, moderation=None).sample_options
        if "steps" not in options:
            raise ValueError(f"steps {steps}: {source} samples without sampler steps (its options: "
                             f"{', '.join(options) or 'none'}); leave steps out")
    if "fp32" not in variants:
        variants = ("fp32", *variants)  # the reference of every ratio
    prompts = calibration_prompts
    own_dir = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="pixelforge-bench-")) if own_dir else Path(work_dir)
    try:
        dirs = {}
        for v in variants:
            export, quantize, share = known[v]
            dirs[v] = base / (v if not share else f"{v}-{share:g}")  # a kept work_dir may hold other shares
            if not (dirs[v] / "config.json").is_file():
                compress_run(source, dirs[v], export=export, quantize=quantize, prune=share, calibration_prompts=prompts,
                             device=device, progress=progress)
        for name, other in (other_runs or {}).items():
            dirs[name] = resolve_run(other, runs_dir)
        variants = tuple(dirs)
        if steps is None:
            steps = load(dirs["fp32"], device=device, moderation=None).sample_options.get("steps")
        rows: dict[str, list[dict]] = {v: [] for v in variants}
        bar = stage_bar(repeats * len(variants), "measuring", unit="run", enabled=progress)
        for r in range(repeats):
            for v in variants:
                rows[v].append(_measure(dirs[v], n=n, steps=steps, batch_size=batch_size, device=device, seed=r))
                bar.update()
        bar.close()
        ref = statistics.median(m["images_per_s"] for m in rows["fp32"])
        table = []
        for v in variants:
            ips = statistics.median(m["images_per_s"] for m in rows[v])
            table.append({"variant": v, "bytes": model_bytes(dirs[v]), "images_per_s": ips, "ratio": ips / ref,
                          "peak_mib": max(m["peak_mib"] for m in rows[v]), "runs": [m["images_per_s"] for m in rows[v]],
                          "steps": steps, "n": n, "note": rows[v][-1].get("note", ""), "dir": str(dirs[v])})
        return table
    finally:
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: VmHWM in /proc/self/status, which starts afresh at exec.
    ru_maxrss does not: a child started by fork and exec reports at least its parent's size at the fork,
    so every variant measured from one parent showed that parent's size. ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # "VmHWM:  123456 kB"
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure_main(job: dict) -> dict:
    """The child process of _measure: see its docstring; returns images_per_s, seconds, peak_mib, note."""
    import time
    import warnings

    from .api import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = load(job["run"], device=job["device"], moderation=None)
    options = {"steps": job["steps"]} if job.get("steps") is not None else {}
    warm = {"steps": 2} if "steps" in g.sample_options else {}  # a family without steps samples in one call
    g.generate_tensor(2, seed=10_000 + job["seed"], **warm)  # warm-up: first-call allocations and lazy loading
    start = time.perf_counter()
    g.generate_tensor(job["n"], seed=job["seed"], batch_size=job["batch_size"], **options)
    seconds = time.perf_counter() - start
    note = "; ".join(str(w.message) for w in caught if "bf16" in str(w.message))
    return {"images_per_s": job["n"] / seconds, "seconds": seconds, "peak_mib": peak_rss_mib(), "note": note}


if __name__ == "__main__":  # one measurement of bench_run, in a process of its own
    print(json.dumps(_measure_main(json.loads(sys.argv[1]))))
