"""Training precision: whether the hardware has native bfloat16, and fp32, bf16 autocast or (CUDA) fp16 autocast
with a gradient scaler for a training run, as asked or, for "auto", chosen by timing the run's own training step
in fp32 and bf16 (docs/precision.md)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # what a run may ask for; fp32 is the default
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the precisions that train under autocast
# "auto" takes bf16 only where a training step is at least this much faster in it: a smaller measured gain
# is within what a busy machine's timing varies by, and not worth bf16's coarser arithmetic
MIN_SPEEDUP = 1.15
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic on x86


def check_precision(value: object, where: str = "train.precision") -> str:
    """value, if it is one of PRECISIONS; else a ValueError naming `where` and the choices."""
    if value not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """Those of CPU_BF16_FLAGS the first processor in `path` lists; () where the file is absent (not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return tuple(f for f in CPU_BF16_FLAGS if f in flags)
    return ()


def cpu_name(path: str | Path = "/proc/cpuinfo") -> str:
    """The first processor's "model name" in `path`; platform.processor() (or the machine's type) where the file
    is absent or names none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu(path: str | Path = "/proc/cpuinfo") -> str:
    """One line naming this machine's CPU for a benchmark's record: model name, cores, the widest vector unit torch
    uses and the native bfloat16 flags. Two machines with one model name can differ in the last (AMX or not), and
    a training step's speed in bf16 with it (a latent GAN's step: 0.7x fp32 without AMX, 1.6x with it;
    docs/gan-budget.md, "On a CPU with AMX"), so a figure measured on one says which."""
    flags = cpu_flags(path)
    return (f"{cpu_name(path)}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 flags: {', '.join(flags) or 'none'}")


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether bfloat16 matrix products are native on `device`, what that was read from). Elsewhere
    PyTorch emulates them, on a CPU hundreds of times slower than fp32.

    CUDA: torch.cuda.is_bf16_supported without emulation (compute capability 8 and up). CPU: oneDNN's own
    check (AVX512-BF16 or AMX on x86, the BF16 extension on Arm), which is what runs the bf16 convolutions
    and matrix products; /proc/cpuinfo's flags only where this torch build does not offer that check."""
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no including_emulation
            native = torch.cuda.is_bf16_supported()
        return bool(native), f"CUDA {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return False, f"{device.type}: bf16 autocast is used on CPU and CUDA only"
    capability = torch.backends.cpu.get_cpu_capability()  # the widest vector unit torch uses: AVX512, AVX2, ...
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        native, flags = bool(check()), cpu_flags()
        return native, f"CPU {capability}, oneDNN bf16 {'yes' if native else 'no'}" + (f" ({', '.join(flags)})" if flags else "")
    flags = cpu_flags()
    return bool(flags), f"CPU {capability}, flags: {', '.join(flags) or 'no ' + ' or '.join(CPU_BF16_FLAGS)}"


def bf16_available(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are native on `device` (see bf16_support)."""
    return bf16_support(device)[0]


def fp16_support(device: torch.device) -> tuple[bool, str]:
    """(whether fp16 training with a gradient scaler is offered on `device`, what that was read from): on CUDA
    GPUs only, where float16 arithmetic is native (tensor cores from compute capability 7). CPUs emulate most
    float16 products, and bf16 is the mixed precision they have."""
    if device.type == "cuda":
        return True, f"CUDA {torch.cuda.get_device_name(device)}"
    return False, f"{device.type}: fp16 with a gradient scaler is offered on CUDA GPUs only"


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context a training step's forward and loss run in: bf16 or fp16 autocast (matrix products and
    convolutions in that type, reductions and losses in fp32, weights untouched) or nothing for fp32."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler for fp16 training on `device` (torch.amp.GradScaler: the loss is multiplied by a
    scale before backward so that small fp16 gradients do not flush to zero; the gradients are divided back
    before clipping and the step; a step whose gradients overflowed is skipped and the scale halved, and after
    2000 steps without overflow it doubles). One per optimiser; its state is saved in checkpoints."""
    return torch.amp.GradScaler(device.type)


@dataclass(frozen=True)
class PrecisionChoice:
    """What a training runs in and why.

    precision: "fp32", "bf16" (autocast) or "fp16" (autocast and a gradient scaler). requested: what the run asked for (PRECISIONS).
    reason: one line saying why. speedup: for "auto" on native bf16, the measured fp32 step time over
    the bf16 one (> 1: bf16 is faster); None where nothing was measured.
    """

    precision: str
    requested: str
    reason: str
    speedup: float | None = None

    @property
    def fell_back(self) -> bool:
        """bf16 or fp16 was asked for but the hardware has none: the one case worth a warning."""
        return self.requested in AUTOCAST_DTYPES and self.precision == "fp32"

    def describe(self) -> str:
        """The line a training prints at its start."""
        return f"{'warning: ' if self.fell_back else ''}precision {self.precision} ({self.reason})"


def measure_speedup(step: Callable[[str], object], device: torch.device, *, trials: int = 3,
                    min_seconds: float = 0.2, timer: Callable[[], float] = time.perf_counter) -> float:
    """fp32 seconds over bf16 seconds of step(precision), a training step of the actual model at the actual
    batch: one untimed warm-up each (oneDNN builds its kernels then), then `trials` rounds of both,
    interleaved so that the machine's other load falls on both alike, each round repeating the step until
    it lasts about min_seconds; the best round of each counts (load only ever slows a round down)."""

    def timed(precision: str, repeats: int) -> float:
        _synchronize(device)
        start = timer()
        for _ in range(repeats):
            step(precision)
        _synchronize(device)
        return (timer() - start) / repeats

    warm = {p: timed(p, 1) for p in ("fp32", "bf16")}
    repeats = max(1, math.ceil(min_seconds / max(min(warm.values()), 1e-6)))
    best = {"fp32": math.inf, "bf16": math.inf}
    for i in range(trials):
        for p in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):  # alternate which goes first
            best[p] = min(best[p], timed(p, repeats))
    return best["fp32"] / max(best["bf16"], 1e-12)


def pick_precision(requested: str, device: torch.device, step: Callable[[str], object] | None = None,
                   *, min_speedup: float = MIN_SPEEDUP) -> PrecisionChoice:
    """The precision a training runs in, for `requested` in PRECISIONS on `device`.

    "fp32": fp32. "bf16": bf16 where native, else fp32 (the reason says so: emulated bf16 would be far
    slower). "fp16": fp16 autocast with a gradient scaler on CUDA, else fp32 (fp16_support). "auto": bf16 only where native and step(precision), one training step of the actual model
    and batch (see measure_speedup), is measured at least min_speedup times faster in it; else fp32.
    step may be None for "fp32" and "bf16"."""
    check_precision(requested, "precision")
    if requested == "fp32":
        return PrecisionChoice("fp32", requested, "as asked")
    if requested == "fp16":
        native, found = fp16_support(device)
        if not native:
            return PrecisionChoice("fp32", requested, f"fp16 asked for, but {found} ({device.type} training has bf16 "
                                   "where the hardware has it: --precision bf16 or auto): training in fp32")
        return PrecisionChoice("fp16", requested, f"as asked, with a gradient scaler: {found}")
    native, found = bf16_support(device)
    if not native:
        return PrecisionChoice("fp32", requested, f"{requested} asked for, but this {device.type} has no native "
                               f"bfloat16 ({found}; AVX512-BF16 or AMX on a CPU, compute capability 8+ on CUDA), where "
                               "it runs slower than fp32: training in fp32")
    if requested == "bf16":
        return PrecisionChoice("bf16", requested, f"as asked, native here: {found}")
    if step is None:
        raise ValueError("precision auto needs a training step to time")
    speedup = measure_speedup(step, device)
    verdict = "bf16" if speedup >= min_speedup else "fp32"
    return PrecisionChoice(verdict, requested, f"auto: a training step measured {speedup:.2f}x as fast in bf16 autocast "
                           f"as in fp32 (bf16 needs {min_speedup:.2f}x; {found})", speedup)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
