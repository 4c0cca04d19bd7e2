"""PyTorch's own int8 path (PT2E, x86 quantizer) against fp32 eager and ONNX Runtime int8, on a diffusion run.

NEEDS torchao, WHICH PIXELFORGE DOES NOT INSTALL: in torch 2.13 `torch.ao.quantization.quantize_pt2e` is gone
and lives in the separate `torchao` package. Install it beside the project, not into its environment:
    python -m pip install --no-deps --target /some/dir torchao==0.18.0
and run with PYTHONPATH=/some/dir (plus the checkout). Without it the bench stops with that message (--help
works without it).

Method: the run's network call (the diffusion family's `network(x_in, c_noise, cond)`, as a function of
tensors: compress/graph.py TensorCall) is captured with torch.export (dynamic batch), annotated by torchao's
X86InductorQuantizer with its default config (int8 weights per channel, uint8 activations per tensor, static),
calibrated on the same real sampler inputs ONNX int8 calibrates on (compression._calibration_feeds: the
network's inputs at every step while sampling --calibration-images images with the run's default options),
converted (convert_pt2e), then run (a) eagerly, where the quantise/dequantise pairs are plain PyTorch ops
around fp32 kernels, and (b) through torch.compile (inductor, freezing on: the int8 oneDNN kernels come from
its pattern passes). The ONNX int8 variant is the one `pixelforge compress RUN --export onnx --quantize int8`
writes, loaded with pixelforge.load.

Measured, the variants interleaved in each of --repeats rounds so a changing machine load touches them alike:
the median time of one network call at batch --batch (on recorded sampler inputs), the median images/s of
sampling --n images at --steps steps (the run's sampler and guidance, the same seed), the largest and mean abs
difference of the network's output against fp32 on the same inputs (sampler inputs of another seed than the
calibration's) and of the sampled images. The first compiled call (inductor compiles) is timed on its own.
The thread count is PyTorch's (OMP_NUM_THREADS); ONNX Runtime gets the same.

Usage:
    PYTHONPATH=.:/some/dir OMP_NUM_THREADS=1 .venv/bin/python bench/pt2e_int8.py
    ... bench/pt2e_int8.py --repeats 5 --json pt2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

try:
    import pixelforge
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pixelforge

from pixelforge.compress.graph import TensorCall, full_cond, input_names, replace_call, unchecked_cond
from pixelforge.compression import _calibration_feeds, compress_run
from pixelforge.device import pick_device

TORCHAO_HINT = ("bench/pt2e_int8.py needs torchao, which pixelforge does not install: "
                "python -m pip install --no-deps --target DIR torchao==0.18.0, then run with PYTHONPATH=DIR")

# a network call's inputs in input_names order: x_in (B, C, H, W), c_noise (B,), then the conditions (labels (B,))
Inputs = tuple[torch.Tensor, ...]


def require_torchao():
    """(prepare_pt2e, convert_pt2e, X86InductorQuantizer, its default config), or exit with TORCHAO_HINT."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        # importing the quantizer module also registers torchao's inductor passes (int8 weight prepacking)
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as e:
        sys.exit(f"{TORCHAO_HINT} ({e})")
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


def recorded_inputs(g, n: int, seed: int) -> list[Inputs]:
    """The network's inputs at every step of sampling n images with the run's defaults (the int8 calibration's
    recording), as tensors in input_names order."""
    names = input_names(g.model)
    feeds = _calibration_feeds(g, n, None, seed, progress=False)["network"]
    return [tuple(torch.from_numpy(f[name]).to(g.model.device) for name in names) for f in feeds]


def batch_of(inputs: list[Inputs], b: int) -> Inputs:
    """b rows spread evenly over the recorded calls (so over every noise level), in input_names order."""
    rows = [torch.cat(parts) for parts in zip(*inputs)]
    index = torch.linspace(0, rows[0].shape[0] - 1, b).round().long()
    return tuple(row[index] for row in rows)


def call_through(model, fn: Callable[..., torch.Tensor]) -> None:
    """Route the model's network(x_in, c_noise, cond) through fn(*inputs in input_names order)."""
    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        conds = full_cond(model, cond, x_in.shape[0], x_in.device)  # every condition input, empty where absent
        return fn(x_in, c_noise, *conds.values())
    replace_call(model, network)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def max_mean_abs(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.float() - b.float()).abs()
    return float(d.max()), float(d.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist-diffusion", help="a diffusion run or bundled model")
    p.add_argument("--n", type=int, default=32, help="images sampled per timed sampling")
    p.add_argument("--steps", type=int, default=8, help="sampler steps of the timed sampling")
    p.add_argument("--batch", type=int, default=64, help="batch of the timed single network call")
    p.add_argument("--calls", type=int, default=5, help="network calls timed per round (their median is kept)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration-images", type=int, default=32, help="as compress --calibration-images")
    p.add_argument("--work-dir", default="bench-pt2e", help="where the ONNX int8 variant is written (kept)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--device", default="auto", help="must resolve to a CPU: the x86 quantizer targets x86 CPUs")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    prepare_pt2e, convert_pt2e, X86InductorQuantizer, default_config = require_torchao()
    device = pick_device(a.device)
    if device.type != "cpu":
        sys.exit(f"--device {a.device} resolved to {device}: PT2E's X86InductorQuantizer targets x86 CPUs; "
                 "use --device cpu")
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load_before[0]:.2f}", flush=True)

    # fp32 eager, the reference; its recorded sampler inputs calibrate (seed 0) and measure (seed 1)
    g32 = pixelforge.load(a.model, device=str(device), moderation=None)
    names = input_names(g32.model)
    calib = recorded_inputs(g32, a.calibration_images, seed=0)
    held = recorded_inputs(g32, a.n, seed=1)
    print(f"network inputs {names}; {len(calib)} calibration calls of batch {calib[0][0].shape[0]}", flush=True)
    fp32_call = TensorCall(g32.model).eval()

    # PT2E: export with a dynamic batch, annotate, calibrate, convert
    start = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = calib[0]
    exported = torch.export.export(fp32_call, example,  # forward(*tensors): one varargs entry
                                   dynamic_shapes=(tuple({0: batch} for _ in example),))
    quantizer = X86InductorQuantizer().set_global(default_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for inputs in calib:
            prepared(*inputs)
    converted = convert_pt2e(prepared)
    print(f"PT2E export + prepare + calibrate + convert: {time.perf_counter() - start:.1f} s", flush=True)

    # ONNX Runtime int8, as `pixelforge compress --export onnx --quantize int8` writes it
    onnx_dir = Path(a.work_dir) / "onnx-int8"
    if not onnx_dir.exists():
        compress_run(a.model, onnx_dir, export="onnx", quantize="int8", calibration_images=a.calibration_images,
                     device=str(device), progress=False)
    g8 = pixelforge.load(onnx_dir, device=str(device), moderation=None)

    def onnx_call(*inputs: torch.Tensor) -> torch.Tensor:
        return g8.model.network(inputs[0], inputs[1], unchecked_cond(dict(zip(names[2:], inputs[2:]))))

    calls: dict[str, Callable[..., torch.Tensor]] = {"fp32 eager": fp32_call, "PT2E int8 eager": converted,
                                                      "ONNX int8": onnx_call}
    gens = {"fp32 eager": g32, "ONNX int8": g8}
    compile_s = None
    if not a.no_compile:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # constant weights: lets inductor prepack them for the int8 oneDNN kernels
        compiled = torch.compile(converted)
        bench_batch = batch_of(held, a.batch)
        with torch.no_grad():
            compile_s = timed(lambda: compiled(*bench_batch))
        print(f"torch.compile first call (batch {a.batch}): {compile_s:.1f} s", flush=True)
        calls["PT2E int8 compiled"] = compiled
    for name in calls:
        if name not in gens:
            gens[name] = pixelforge.load(a.model, device=str(device), moderation=None)
            call_through(gens[name].model, calls[name])

    # accuracy: network output on the held-out sampler inputs, and the sampled images, against fp32
    errors: dict[str, dict[str, float]] = {}
    images: dict[str, torch.Tensor] = {}
    labels = [i % g32.num_classes for i in range(a.n)] if g32.num_classes else None
    with torch.no_grad():
        reference = [fp32_call(*inputs) for inputs in held]
        for name, fn in calls.items():
            start = time.perf_counter()
            outs = [fn(*inputs) for inputs in held]  # a new batch size recompiles once here, timed apart
            worst = max(max_mean_abs(o, r)[0] for o, r in zip(outs, reference))
            mean = statistics.fmean(max_mean_abs(o, r)[1] for o, r in zip(outs, reference))
            images[name] = gens[name].generate_tensor(a.n, labels=labels, seed=0, steps=a.steps)[0]
            img_max, img_mean = max_mean_abs(images[name], images.get("fp32 eager", images[name]))
            errors[name] = {"net_max_abs": worst, "net_mean_abs": mean, "image_max_abs": img_max,
                            "image_mean_abs": img_mean, "warm_up_s": time.perf_counter() - start}

    # speed, interleaved
    bench_batch = batch_of(held, a.batch)
    call_s: dict[str, list[float]] = {name: [] for name in calls}
    ips: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for r in range(a.repeats):
            for name, fn in calls.items():
                call_s[name].append(statistics.median(timed(lambda: fn(*bench_batch)) for _ in range(a.calls)))
                t = timed(lambda: gens[name].generate_tensor(a.n, labels=labels, seed=0, steps=a.steps))
                ips[name].append(a.n / t)
            print(f"round {r + 1}/{a.repeats} done", flush=True)
    load_after = os.getloadavg()

    ref_call, ref_ips = statistics.median(call_s["fp32 eager"]), statistics.median(ips["fp32 eager"])
    print(f"\n{a.model}: network call at batch {a.batch} (median of {a.calls} calls, median of {a.repeats} rounds); "
          f"sampling {a.n} images at {a.steps} steps; errors vs fp32 on the same inputs")
    print("| variant | ms / call | call speed vs fp32 | images/s | vs fp32 | net max abs | net mean abs | image max abs | image mean abs |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for name in calls:
        c, i, e = statistics.median(call_s[name]), statistics.median(ips[name]), errors[name]
        rows[name] = {"call_ms": c * 1e3, "images_per_s": i, "call_ms_rounds": [x * 1e3 for x in call_s[name]],
                      "images_per_s_rounds": ips[name], **e}
        print(f"| {name} | {c * 1e3:.1f} | {ref_call / c:.2f} | {i:.2f} | {i / ref_ips:.2f} | {e['net_max_abs']:.4f} | "
              f"{e['net_mean_abs']:.5f} | {e['image_max_abs']:.4f} | {e['image_mean_abs']:.5f} |")
    if compile_s is not None:
        print(f"torch.compile first call: {compile_s:.1f} s (batch {a.batch}); first calls at other batches "
              f"(accuracy pass, recompiles included): {errors['PT2E int8 compiled']['warm_up_s']:.1f} s")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} thread(s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "compile_first_call_s": compile_s,
                                            "load": [load_before, load_after], "threads": torch.get_num_threads()},
                                           indent=1))


if __name__ == "__main__":
    main()
