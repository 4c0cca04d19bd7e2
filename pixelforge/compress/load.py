"""Loading a compressed run folder: the model the config describes, its remaining weights, and its network
call replaced by the variant's (an ONNX Runtime session, or the modules in bfloat16)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..runs.checkpoint import check_shapes, read_tensors, state_shapes, tensor_shapes
from .config import CompressConfig
from ..models.family import NetworkCall
from .graph import OnnxCall, call_modules, declared_calls, replace_call, use_bf16

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"


def graph_files(model: nn.Module) -> list[tuple[NetworkCall, str]]:
    """(call, file name) of each graph an ONNX variant holds: model.onnx for the sampling's network call,
    model.METHOD.onnx for each of the family's other calls (the VAE's model.encode.onnx)."""
    calls = declared_calls(model)
    return [(calls[0], ONNX_FILE), *((c, f"model.{c.method}.onnx") for c in calls[1:])]


def graph_free_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's tensors outside the modules its network calls run: what an ONNX
    variant keeps in model.safetensors (the graphs hold the others)."""
    prefixes = tuple(f"{name}." for name in call_modules(model))
    return {k: v for k, v in state_shapes(model).items() if not k.startswith(prefixes)}


def load_compressed(model: nn.Module, run_dir: Path, cc: CompressConfig) -> None:
    """Fill `model` (built from the run's config.json) from a compressed run folder, in place.

    onnx: model.safetensors holds the tensors outside the exported modules (checked name by name and
    shape by shape), model.onnx (and model.METHOD.onnx for the family's other calls) the graph that
    replaces each network call. none: model.safetensors holds
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
        calls = []
        for call, name in graph_files(model):
            graph = run_dir / name
            if not graph.is_file():
                raise FileNotFoundError(f"{run_dir} is a compressed run ({cc.variant}) without its graph {name}")
            calls.append((call, OnnxCall(model, graph, call=call)))
        for call, session in calls:
            replace_call(model, session, call)
        for name in call_modules(model):  # the graphs hold these weights: free the PyTorch copies
            module = getattr(model, name)
            for p in module.parameters() if module is not None else ():
                p.data = p.data.new_empty(0)
    elif cc.quantize == "bf16":
        use_bf16(model)
