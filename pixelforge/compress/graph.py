"""A family's network call as a function of tensors alone, and what replaces it in a compressed run: an
ONNX Runtime session (fp32 or int8) or the same PyTorch modules in bfloat16.

The calls are those a family declares in `network_call` and `other_calls` (models/family.py), e.g. the
diffusion family's `network(x_in, c_noise, cond)`, the GAN's `synthesize(z, cond)`, the VAE's
`decode(z, cond)` and `encode(x, cond)`: their tensor arguments, then a Cond. An exported graph cannot take a
dataclass, so the Cond's fields the model takes become inputs of their own, always all of them (an
absent condition is passed as its empty value): labels (B,) int64; text (B, D) float, text_tokens
(B, T, D) float, text_mask (B, T) bool and present (B,) bool. Conditions the model does not take are
not inputs."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..condition import NO_LABEL, Cond
from ..models.family import NetworkCall
from ..precision import bf16_available

ONNX_EXTRA_HINT = "pip install 'pixelforge[onnx]' (onnx, onnxruntime, onnxscript)"


def require_onnx():
    """The onnxruntime module, or a clear error naming the extra that installs it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise ModuleNotFoundError(f"ONNX export and int8 need onnx and onnxruntime, which are not installed; "
                                  f"install them with: {ONNX_EXTRA_HINT}") from e
    return onnxruntime


def declared_call(model: nn.Module) -> NetworkCall:
    """The model's NetworkCall (its sampling's), or a ValueError naming the family when it declares none,
    with the family's reason (compress_note) where it gives one."""
    call = getattr(model, "network_call", None)
    if call is None:
        family = getattr(model, "family", type(model).__name__)
        note = getattr(model, "compress_note", "")
        raise ValueError(f"{family} models cannot be compressed" + (f": {note}" if note else
                         " yet: the family declares no network call to export (network_call)"))
    return call


def declared_calls(model: nn.Module) -> tuple[NetworkCall, ...]:
    """Every call a compressed run replaces: network_call first, then the family's other_calls."""
    return (declared_call(model), *getattr(model, "other_calls", ()))


def call_modules(model: nn.Module) -> tuple[str, ...]:
    """The submodules any declared call runs (each once): their weights live in the graphs."""
    return tuple(dict.fromkeys(name for call in declared_calls(model) for name in call.modules))


def cond_inputs(model: nn.Module) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape after B) of each Cond field the model takes, in the graph's input order."""
    cfg = model.config
    out: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    if "labels" in model.takes():
        out.append(("labels", torch.int64, ()))
    if "text" in model.takes():
        d, t = cfg.text_dim, cfg.text_tokens
        out += [("text", torch.float32, (d,)), ("text_tokens", torch.float32, (t, d)),
                ("text_mask", torch.bool, (t,)), ("present", torch.bool, ())]
    return out


def input_names(model: nn.Module, call: NetworkCall | None = None) -> list[str]:
    return [*(call or declared_call(model)).args, *(name for name, _, _ in cond_inputs(model))]


def full_cond(model: nn.Module, cond: Cond | None, b: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every condition input of the graph for a batch of b: the Cond's own fields, and the empty value
    (NO_LABEL, zeros with present False) of those it does not give, as the PyTorch call treats them."""
    out = {}
    for name, dtype, shape in cond_inputs(model):
        value = getattr(cond, name, None) if cond is not None else None
        if value is None and name == "present" and cond is not None and cond.text is not None:
            value = torch.ones(b, dtype=torch.bool)
        if value is None:
            fill = NO_LABEL if name == "labels" else 0
            value = torch.full((b, *shape), fill, dtype=dtype)
        out[name] = value.to(device=device, dtype=dtype)
    return out


def numpy_feeds(model: nn.Module, tensors, cond: Cond | None, call: NetworkCall | None = None) -> dict[str, np.ndarray]:
    """An ONNX Runtime feed (input name -> array) of a network call's arguments (default the sampling's):
    the tensor arguments, then every condition input (full_cond), floats as float32."""
    b = tensors[0].shape[0]
    named = dict(zip((call or declared_call(model)).args, tensors))
    named.update(full_cond(model, cond, b, torch.device("cpu")))
    return {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy() for k, v in named.items()}


def split_args(call: NetworkCall, args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], Cond | None]:
    """(the tensor arguments, the Cond or None) of a call of call.method as its callers make it: the cond
    positional, by keyword, or left out (the VQ-VAE's decode_indices calls decode_latents(e))."""
    k = len(call.args)
    cond = args[k] if len(args) > k else kwargs.get("cond")
    return list(args[:k]), cond


class TensorCall(nn.Module):
    """A family's network call (default the sampling's) with tensors only: forward(*args, *conditions) in
    input_names order -> (B, ...) or a tuple of such (call.outputs); what torch.onnx.export traces. It runs
    the family's own method, not a replacement."""

    def __init__(self, model: nn.Module, call: NetworkCall | None = None):
        super().__init__()
        self.model = model
        self.call = call or declared_call(model)
        self.cond_names = [name for name, _, _ in cond_inputs(model)]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        k = len(self.call.args)
        fields = dict(zip(self.cond_names, tensors[k:]))
        return original(self.model, self.call)(*tensors[:k], unchecked_cond(fields) if fields else None)


def unchecked_cond(fields: dict[str, torch.Tensor]) -> Cond:
    """A Cond of these fields without Cond's checks: they read the batch size as a Python int, which
    would fix it in a torch.export graph; the graph's inputs (cond_inputs) have the checked shapes."""
    cond = object.__new__(Cond)
    for f in dataclasses.fields(Cond):
        object.__setattr__(cond, f.name, fields.get(f.name))
    return cond


def original(model: nn.Module, call: NetworkCall | None = None) -> Callable:
    """The family's own method of a network call (default the sampling's), bound to the model, even where a
    compressed run replaced it."""
    return getattr(type(model), (call or declared_call(model)).method).__get__(model)


def replace_call(model: nn.Module, fn: Callable, call: NetworkCall | None = None) -> None:
    """Make the model use `fn` for a network call (default the sampling's): an instance attribute shadowing
    the method."""
    object.__setattr__(model, (call or declared_call(model)).method, fn)


def restore_call(model: nn.Module, call: NetworkCall) -> None:
    """Undo replace_call: the family's own method again."""
    model.__dict__.pop(call.method, None)


def example_inputs(model: nn.Module, b: int, generator: torch.Generator,
                   call: NetworkCall | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of a network call (default the sampling's) for a batch of b, in input_names order: the tensor
    arguments the family draws (its `example_call_inputs(method, b, generator)`, which may also give a
    condition whose valid values are narrower), the other conditions random but valid (labels in range or
    NO_LABEL)."""
    call = call or declared_call(model)
    named = model.example_call_inputs(call.method, b, generator)  # name -> tensor, on the CPU
    cfg = model.config
    for name, dtype, shape in cond_inputs(model):
        if name in named:
            continue
        if name == "labels":
            named[name] = torch.randint(-1, cfg.num_classes, (b,), generator=generator)
        elif dtype == torch.bool:
            named[name] = torch.rand((b, *shape), generator=generator) < 0.7
        else:
            named[name] = torch.randn((b, *shape), generator=generator)
    return tuple(named[name].to(model.device) for name in input_names(model, call))


class OnnxCall:
    """A network call (default the sampling's) run by an ONNX Runtime InferenceSession: same arguments, same
    (B, ...) float32 output(s) on the model's device. CUDAExecutionProvider where the model is on CUDA and
    onnxruntime has it."""

    def __init__(self, model: nn.Module, path, *, threads: int | None = None, call: NetworkCall | None = None):
        ort = require_onnx()
        self.model_ref = [model]  # a list, not an attribute nn.Module would register
        self.call = call or declared_call(model)
        self.names = input_names(model, self.call)
        device = model.device
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # the same thread count as PyTorch (OMP_NUM_THREADS, torch.set_num_threads), so variants compare fairly
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a damaged file
            raise ValueError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = sorted(set(graph_inputs) - set(self.names))
        if missing:
            raise ValueError(f"{path}: the graph takes input(s) {', '.join(missing)} that this model's network call "
                             f"does not give ({', '.join(self.names)})")
        self.graph_inputs = graph_inputs  # an exporter may drop an input the graph never reads

    def __call__(self, *args, **kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors, cond = split_args(self.call, args, kwargs)  # the declared tensor arguments, then the Cond (or None)
        feeds = numpy_feeds(self.model_ref[0], tensors, cond, self.call)
        outs = self.session.run(list(self.call.outputs), {k: v for k, v in feeds.items() if k in self.graph_inputs})
        outs = tuple(torch.from_numpy(out).to(tensors[0].device) for out in outs)
        return outs if len(outs) > 1 else outs[0]


class Bf16Call:
    """The family's network call with its modules in bfloat16 under autocast (which also covers the odd
    fp32 buffer meeting a bf16 weight); the output goes back to float32, so preconditioning, guidance
    and the sampler stay in fp32 around it."""

    def __init__(self, model: nn.Module, call: NetworkCall | None = None):
        self.call = call or declared_call(model)
        self.fn = original(model, self.call)
        self.device_type = model.device.type

    def __call__(self, *args, **kwargs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tensors, cond = split_args(self.call, args, kwargs)  # the declared tensor arguments, then the Cond (or None)
        tensors = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in tensors]
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.fn(*tensors, cond)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def use_bf16(model: nn.Module) -> bool:
    """Put the declared modules in bfloat16 and route every declared network call through Bf16Call where the
    device has native bfloat16; otherwise keep fp32 and say so. Returns whether bf16 is in use."""
    calls = declared_calls(model)
    if not bf16_available(model.device):
        warnings.warn(f"bf16: this {model.device.type} has no native bfloat16 (AVX512-BF16 or AMX on a CPU, compute "
                      "capability 8+ on CUDA), where it runs slower than fp32: running in fp32 instead", stacklevel=2)
        return False
    for name in call_modules(model):
        module = getattr(model, name)
        if module is not None:
            module.to(torch.bfloat16)
    for call in calls:
        replace_call(model, Bf16Call(model, call), call)
    return True
