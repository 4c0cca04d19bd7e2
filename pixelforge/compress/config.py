"""What a compressed run records in its config.json ("compress"): how its network was exported and
quantised, and from which run. Imports nothing heavy, so reading a run config never loads onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

EXPORTS = ("none", "onnx")  # none: the PyTorch network itself; onnx: an ONNX Runtime session in its place
QUANTIZE = ("none", "int8", "bf16")  # int8: ONNX Runtime static QDQ; bf16: PyTorch bfloat16 weights and compute
EXPORTERS = ("torchscript", "dynamo")  # torch.onnx.export's legacy tracer, or torch.export (needs onnxscript)


@dataclass(frozen=True)
class CompressConfig:
    """One compressed variant of a run.

    export, quantize: one of EXPORTS and QUANTIZE; int8 needs export "onnx" (ONNX Runtime's quantiser),
        bf16 needs export "none" (ONNX Runtime's CPU provider has no bfloat16 kernels for most operators).
    exporter: which torch.onnx path wrote the graph (one of EXPORTERS); opset: its ONNX opset.
    prune: share of the channels of every level of a diffusion UNet removed before export (compress/prune.py),
        in [0, 1); 0: none.
    calibration_images: images sampled to calibrate int8 activations (their sampler's inputs, every step).
    source, source_checkpoint: the run compressed (its name) and the hash of its weights.
    """

    export: str = "none"
    quantize: str = "none"
    exporter: str = "torchscript"
    opset: int = 18
    prune: float = 0.0
    calibration_images: int = 32
    source: str = ""
    source_checkpoint: str = ""

    def __post_init__(self):
        for name, valid in (("export", EXPORTS), ("quantize", QUANTIZE), ("exporter", EXPORTERS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"compress.{name} {getattr(self, name)!r} is not one of: {', '.join(valid)}")
        if self.quantize == "int8" and self.export != "onnx":
            raise ValueError("compress.quantize int8 needs export onnx (ONNX Runtime's static quantiser)")
        if self.quantize == "bf16" and self.export != "none":
            raise ValueError("compress.quantize bf16 needs export none: ONNX Runtime's CPU provider runs "
                             "few operators in bfloat16, PyTorch runs them all")
        if not isinstance(self.opset, int) or not 17 <= self.opset <= 23:
            raise ValueError(f"compress.opset must be a whole number in 17..23, got {self.opset!r}")
        if isinstance(self.prune, bool) or not isinstance(self.prune, (int, float)) or not 0 <= self.prune < 1:
            raise ValueError(f"compress.prune must be a share of channels in [0, 1) (0: no pruning), got {self.prune!r}")
        if not isinstance(self.calibration_images, int) or not 1 <= self.calibration_images <= 4096:
            raise ValueError(f"compress.calibration_images must be a whole number in 1..4096, got {self.calibration_images!r}")

    @property
    def variant(self) -> str:
        """The variant's name: fp32 (eager PyTorch), bf16, onnx-fp32, onnx-int8; a pruned one says its share
        first: pruned30 (fp32 eager), pruned30-onnx-int8."""
        if self.export == "none":
            name = "fp32" if self.quantize == "none" else self.quantize
        else:
            name = f"{self.export}-{'fp32' if self.quantize == 'none' else self.quantize}"
        if not self.prune:
            return name
        pruned = f"pruned{self.prune * 100:.3g}"  # pruned30, pruned12.5
        return pruned if name == "fp32" else f"{pruned}-{name}"


PRUNED_VARIANT = "pruned"  # the benchmark's pruned fp32 eager variant (its share: bench_run's prune, --prune)

VARIANTS = {  # name -> (export, quantize): what `pixelforge compress --variant` and the benchmark offer
    "fp32": ("none", "none"),
    "onnx-fp32": ("onnx", "none"),
    "onnx-int8": ("onnx", "int8"),
    "bf16": ("none", "bf16"),
}
