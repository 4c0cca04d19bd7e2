"""`pixelforge compress` and `pixelforge bench`: thin shells over pixelforge.compression."""

from __future__ import annotations

from pathlib import Path

from .compress.config import EXPORTERS, EXPORTS, PRUNED_VARIANT, QUANTIZE, VARIANTS, CompressConfig


def _prompts_file(path: str | None) -> list[str] | None:
    """One prompt a line (blank lines skipped), or a ValueError naming the file."""
    if path is None:
        return None
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the calibration prompts ({e})") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"{path}: no calibration prompt in it (one prompt a line)")
    return prompts


def _calibration_prompts(a) -> list[str]:
    from .cli_demo import DEMO_PROMPTS

    return _prompts_file(a.calibration_prompts) or list(DEMO_PROMPTS)


def add_compress(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="write a faster or smaller variant of a run: ONNX Runtime (fp32, int8) or bf16",
        description="Write a compressed variant of RUN to the new folder OUT: a run that sample, evaluate, edit and "
        "serve take like any other, whose config.json records the variant (docs/compress.md). Diffusion, GAN, VAE "
        "and VQ-VAE runs: each family's network calls are exported (the EDM preconditioning, guidance and the sampler "
        "stay in Python around them; an autoencoder's encoder is a second graph); PixelCNN and transformer runs are "
        "refused with the reason.",
    )
    p.add_argument("run", metavar="RUN", help="run folder, run name, or bundled model")
    p.add_argument("-o", "--out", required=True, help="the new run folder (must not exist, or be empty)")
    p.add_argument("--export", choices=EXPORTS, default="none",
                   help="onnx: the network runs in ONNX Runtime (default none: PyTorch)")
    p.add_argument("--quantize", choices=QUANTIZE, default="none",
                   help="int8 (with --export onnx): static QDQ, calibrated on the sampler's own inputs (and an "
                   "autoencoder's encoder on the run's training images); "
                   "bf16 (without export): bfloat16 weights and compute where the hardware has it")
    p.add_argument("--prune", type=float, default=0.0, metavar="SHARE", help="remove this share (0 < SHARE < 1) of the "
                   "channels of every level of a diffusion UNet first, keeping those of largest weights; fine-tune the "
                   "result with `pixelforge train DATA --init-from OUT` (docs/compress.md)")
    p.add_argument("--exporter", choices=EXPORTERS, default=CompressConfig.exporter,
                   help="torch.onnx's TorchScript tracer (seconds) or torch.export (dynamo; needs onnxscript)")
    p.add_argument("--opset", type=int, default=CompressConfig.opset, help="ONNX opset (17..23)")
    p.add_argument("--calibration-images", type=int, default=CompressConfig.calibration_images,
                   help="int8: images sampled to record the activation ranges (1..4096)")
    p.add_argument("--calibration-prompts", metavar="FILE", default=None,
                   help="int8 of a text model: prompts to calibrate with, one a line (default: the demo's prompts)")
    p.add_argument("--seed", type=int, default=0, help="int8: seed of the calibration images")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)


def cmd_compress(a) -> int:
    from .compression import compress_run

    info = compress_run(a.run, a.out, export=a.export, quantize=a.quantize, prune=a.prune, exporter=a.exporter,
                        opset=a.opset, calibration_images=a.calibration_images, calibration_prompts=_calibration_prompts(a),
                        seed=a.seed, device=a.device, runs_dir=a.runs_dir, progress=not a.quiet)
    sizes = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in info["files"].items() if size > 1000)
    parity = f"; ONNX fp32 vs PyTorch: max abs {info['parity_max_abs']:.2g}" if info["parity_max_abs"] is not None else ""
    print(f"wrote {info['variant']} variant of {a.run} to {info['out']} ({sizes}{parity})")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="images/s and peak memory of each compressed variant of a run on this machine",
        description="Write each variant of RUN (fp32 eager, ONNX Runtime fp32 and int8, bf16) and time sampling with "
        "each, the variants interleaved in every round so a changing load touches them alike; every "
        "measurement runs in a fresh process, whose peak resident memory is reported (Python and the "
        "libraries included). Ratios are to fp32 eager in the same run.",
    )
    p.add_argument("run", metavar="RUN", help="run folder, run name, or bundled model")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}, "
                   f"{PRUNED_VARIANT} (fp32 eager pruned by --prune; a diffusion UNet)")
    p.add_argument("--prune", type=float, default=0.3, metavar="SHARE", help=f"the {PRUNED_VARIANT} variant's share of "
                   "channels removed (default 0.3)")
    p.add_argument("-n", type=int, default=64, help="images timed per measurement")
    p.add_argument("--steps", type=int, default=None, help="sampler steps, the same for every variant (default: the run's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="rounds over the variants; the median images/s is shown")
    p.add_argument("--calibration-prompts", metavar="FILE", default=None,
                   help="int8 of a text model: prompts to calibrate with, one a line (default: the demo's prompts)")
    p.add_argument("--work-dir", default=None, help="keep the variants' folders here (default: a temporary folder)")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)


def cmd_bench(a) -> int:
    import os
    import torch

    from .compression import bench_run

    load = os.getloadavg()
    rows = bench_run(a.run, variants=tuple(v.strip() for v in a.variants.split(",") if v.strip()), n=a.n,
                     steps=a.steps, batch_size=a.batch_size, repeats=a.repeats, calibration_prompts=_calibration_prompts(a),
                     work_dir=a.work_dir, device=a.device, runs_dir=a.runs_dir, progress=not a.quiet, prune=a.prune)
    steps = f"{rows[0]['steps']} steps" if rows[0]["steps"] else "one network call per batch"  # a GAN, a VAE
    print(f"{a.run}: {rows[0]['n']} images, {steps}, median of {a.repeats} interleaved rounds; "
          f"{torch.get_num_threads()} threads; load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<10} {'size MB':>8} {'images/s':>9} {'x fp32':>7} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['variant']:<10} {r['bytes'] / 1e6:>8.2f} {r['images_per_s']:>9.2f} {r['ratio']:>7.2f} "
              f"{r['peak_mib']:>9.0f}" + (f"  ({r['note']})" if r["note"] else ""))
    return 0

