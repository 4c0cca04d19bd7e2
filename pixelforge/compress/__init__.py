"""Compressed runs: the network call of a run exported to ONNX Runtime (fp32 or int8) or run in bfloat16,
as a run folder that loads like any other (docs/compress.md). onnx and onnxruntime are imported only by
the functions that need them (the `onnx` extra)."""

from __future__ import annotations

from .config import EXPORTERS, EXPORTS, QUANTIZE, VARIANTS, CompressConfig

__all__ = ["EXPORTERS", "EXPORTS", "QUANTIZE", "VARIANTS", "CompressConfig"]
