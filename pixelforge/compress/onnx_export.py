"""A family's network call to an ONNX file (torch.onnx.export, dynamic batch) and to int8 (onnxruntime's
static QDQ quantiser calibrated on the sampler's own inputs); parity of a graph against PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.family import NetworkCall
from .graph import OnnxCall, TensorCall, declared_call, example_inputs, input_names, original, require_onnx


EXCLUDED_NODES = ("conv_out",)  # parts of node names int8 leaves in fp32 (the backbone's output layer)


def export_onnx(model: nn.Module, path: Path, *, exporter: str = "torchscript", opset: int = 18,
                call: NetworkCall | None = None) -> list[Path]:
    """Write one of the model's network calls (default the sampling's) as an ONNX graph at path (batch
    dimension dynamic); returns the files written (the dynamo exporter puts the weights in an external
    path.data beside it). Plain protobuf and raw tensor data: nothing is pickled."""
    require_onnx()
    call = call or declared_call(model)
    module = TensorCall(model, call).eval()
    names = input_names(model, call)
    outputs = list(call.outputs)
    args = example_inputs(model, 2, torch.Generator().manual_seed(0), call)
    axes = {name: {0: "batch"} for name in [*names, *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    # The tracers warn about every Python-level check they pass (Cond's, the text conditioner's): those
    # checks hold for any batch of the declared inputs, so the warnings are noise to a user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":  # torch.export; needs onnxscript
            batch = torch.export.Dim("batch", min=1, max=65_536)  # forward(*tensors): one varargs entry
            program = torch.onnx.export(module, args, input_names=names, output_names=outputs, opset_version=opset,
                                        dynamic_shapes=(tuple({0: batch} for _ in args),), dynamo=True, verbose=False)
            program.save(str(path), external_data=True)
        else:  # the TorchScript tracer: one self-contained file, ten times faster to export
            torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs, opset_version=opset,
                              dynamic_axes=axes, dynamo=False)
    return [p for p in (path, path.with_name(path.name + ".data")) if p.is_file()]


def parity(model: nn.Module, path: Path, *, batch: int = 16, seed: int = 1, call: NetworkCall | None = None) -> float:
    """Max absolute difference between the graph at path (ONNX Runtime) and the model's own network call
    (default the sampling's), on one batch of example inputs, over every output."""
    from ..condition import Cond
    from .graph import cond_inputs

    call = call or declared_call(model)
    args = example_inputs(model, batch, torch.Generator().manual_seed(seed), call)
    k = len(call.args)
    fields = dict(zip((n for n, _, _ in cond_inputs(model)), args[k:]))
    cond = Cond(**fields) if fields else None
    with torch.no_grad():
        ref = original(model, call)(*args[:k], cond)
    out = OnnxCall(model, path, call=call)(*args[:k], cond)
    pairs = zip(out, ref) if isinstance(ref, tuple) else [(out, ref)]
    return max(float((o - r).abs().max()) for o, r in pairs)


def quantize_int8(fp32_path: Path, out_path: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """onnxruntime's quantize_static: QDQ format, int8 weights per output channel, uint8 activations whose
    ranges (min-max) come from `feeds`, the network call's inputs recorded while sampling."""
    require_onnx()
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise ValueError("int8 calibration needs at least one recorded batch of inputs")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    import onnx

    # The convolutions alone, and not the last one: quantising every operator (the noise-level embedding's
    # Fourier features and MLP, the attention products, the output layer that c_out scales by up to
    # sigma_data) changed the bundled digit model's samples by 0.24 on average (of a range of 2).
    nodes = onnx.load(str(fp32_path), load_external_data=False).graph.node
    exclude = [n.name for n in nodes if any(part in n.name for part in EXCLUDED_NODES)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a warning for each GroupNorm bias it leaves alone
    try:
        quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=False)
    finally:
        root.setLevel(level)
