"""Loading a compressed run folder: the model the config describes, its remaining weights, and its network
call replaced by the variant's (an ONNX Runtime session, or the modules in bfloat16)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..runs.checkpoint import check_shapes, read_tensors, state_shapes, tensor_shapes
from .config import CompressConfig
from .graph import OnnxCall, declared_call, use_bf16

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"


def graph_free_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's tensors outside the modules its network call runs: what an ONNX
    variant keeps in model.safetensors (the graph holds the others)."""
    prefixes = tuple(f"{name}." for name in declared_call(model).modules)
    return {k: v for k, v in state_shapes(model).items() if not k.startswith(prefixes)}


def load_compressed(model: nn.Module, run_dir: Path, cc: CompressConfig) -> None:
    """Fill `model` (built from the run's config.json) from a compressed run folder, in place.

    onnx: model.safetensors holds the tensors outside the exported modules (checked name by name and
    shape by shape), model.onnx the graph that replaces the network call. none: model.safetensors holds
    every tensor (bf16 stores them as bfloat16), checked the same way."""
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir} is a compressed run ({cc.variant}) without its {WEIGHTS_FILE}")
    expected = graph_free_shapes(model) if cc.export == "onnx" else state_shapes(model)
    check_shapes(tensor_shapes(weights), expected, weights)
    tensors = read_tensors(weights)
    if tensors:
        model.load_state_dict(tensors, strict=cc.export != "onnx")
    if cc.export == "onnx":
        graph = run_dir / ONNX_FILE
        if not graph.is_file():
            raise FileNotFoundError(f"{run_dir} is a compressed run ({cc.variant}) without its graph {ONNX_FILE}")
        from .graph import replace_call

        replace_call(model, OnnxCall(model, graph))
        for name in declared_call(model).modules:  # the graph holds these weights: free the PyTorch copies
            module = getattr(model, name)
            for p in module.parameters() if module is not None else ():
                p.data = p.data.new_empty(0)
    elif cc.quantize == "bf16":
        use_bf16(model)
