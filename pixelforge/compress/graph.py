"""A family's network call as a function of tensors alone, and what replaces it in a compressed run: an
ONNX Runtime session (fp32 or int8) or the same PyTorch modules in bfloat16.

The call is the one a family declares in `network_call` (models/family.py), e.g. the diffusion family's
`network(x_in, c_noise, cond)`: its tensor arguments, then a Cond. An exported graph cannot take a
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
OUTPUT_NAME = "out"


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
    """The model's NetworkCall, or a ValueError naming the family when it declares none."""
    call = getattr(model, "network_call", None)
    if call is None:
        raise ValueError(f"{getattr(model, 'family', type(model).__name__)} models cannot be compressed yet: the "
                         "family declares no network call to export (network_call); the diffusion family can")
    return call


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


def input_names(model: nn.Module) -> list[str]:
    return [*declared_call(model).args, *(name for name, _, _ in cond_inputs(model))]


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


def numpy_feeds(model: nn.Module, tensors, cond: Cond | None) -> dict[str, np.ndarray]:
    """An ONNX Runtime feed (input name -> array) of the network call's arguments: the tensor arguments,
    then every condition input (full_cond), floats as float32."""
    b = tensors[0].shape[0]
    named = dict(zip(declared_call(model).args, tensors))
    named.update(full_cond(model, cond, b, torch.device("cpu")))
    return {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy() for k, v in named.items()}


class TensorCall(nn.Module):
    """The family's network call with tensors only: forward(*args, *conditions) in input_names order ->
    (B, ...); what torch.onnx.export traces. It runs the family's own method, not a replacement."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.call = declared_call(model)
        self.cond_names = [name for name, _, _ in cond_inputs(model)]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        k = len(self.call.args)
        fields = dict(zip(self.cond_names, tensors[k:]))
        return original(self.model)(*tensors[:k], unchecked_cond(fields) if fields else None)


def unchecked_cond(fields: dict[str, torch.Tensor]) -> Cond:
    """A Cond of these fields without Cond's checks: they read the batch size as a Python int, which
    would fix it in a torch.export graph; the graph's inputs (cond_inputs) have the checked shapes."""
    cond = object.__new__(Cond)
    for f in dataclasses.fields(Cond):
        object.__setattr__(cond, f.name, fields.get(f.name))
    return cond


def original(model: nn.Module) -> Callable:
    """The family's own network method, bound to the model, even where a compressed run replaced it."""
    return getattr(type(model), declared_call(model).method).__get__(model)


def replace_call(model: nn.Module, call: Callable) -> None:
    """Make the model's sampling use `call` for its network call (an instance attribute shadowing the method)."""
    object.__setattr__(model, declared_call(model).method, call)


def example_inputs(model: nn.Module, b: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Inputs of the network call for a batch of b: x_in (B, C, H, W) at unit scale, c_noise (B,) over the
    training range ln(sigma) / 4, conditions random but valid (labels in range or NO_LABEL)."""
    cfg = model.config
    device = model.device
    # the denoiser's input shape: the image's, or a latent diffusion model's latents (its net_shape)
    shape = getattr(model, "net_shape", (cfg.channels, cfg.image_size, cfg.image_size))
    x_in = torch.randn(b, *shape, generator=generator).to(device)
    c_noise = (torch.rand(b, generator=generator) * 10 - 6.2).div(4).to(device)  # ln(0.002)..ln(80), / 4
    conds = []
    for name, dtype, shape in cond_inputs(model):
        if name == "labels":
            value = torch.randint(-1, cfg.num_classes, (b,), generator=generator)
        elif dtype == torch.bool:
            value = torch.rand((b, *shape), generator=generator) < 0.7
        else:
            value = torch.randn((b, *shape), generator=generator)
        conds.append(value.to(device))
    return (x_in, c_noise, *conds)


class OnnxCall:
    """The network call run by an ONNX Runtime InferenceSession: same arguments, same (B, ...) float32
    output on the model's device. CUDAExecutionProvider where the model is on CUDA and onnxruntime has it."""

    def __init__(self, model: nn.Module, path, *, threads: int | None = None):
        ort = require_onnx()
        self.model_ref = [model]  # a list, not an attribute nn.Module would register
        self.names = input_names(model)
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

    def __call__(self, *args) -> torch.Tensor:
        *tensors, cond = args  # the declared tensor arguments, then the Cond (or None)
        feeds = numpy_feeds(self.model_ref[0], tensors, cond)
        (out,) = self.session.run([OUTPUT_NAME], {k: v for k, v in feeds.items() if k in self.graph_inputs})
        return torch.from_numpy(out).to(tensors[0].device)


class Bf16Call:
    """The family's network call with its modules in bfloat16 under autocast (which also covers the odd
    fp32 buffer meeting a bf16 weight); the output goes back to float32, so preconditioning, guidance
    and the sampler stay in fp32 around it."""

    def __init__(self, model: nn.Module):
        self.fn = original(model)
        self.device_type = model.device.type

    def __call__(self, *args) -> torch.Tensor:
        *tensors, cond = args  # the declared tensor arguments, then the Cond (or None)
        tensors = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in tensors]
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.fn(*tensors, cond).float()


def use_bf16(model: nn.Module) -> bool:
    """Put the declared modules in bfloat16 and route the network call through Bf16Call where the device
    has native bfloat16; otherwise keep fp32 and say so. Returns whether bf16 is in use."""
    call = declared_call(model)
    if not bf16_available(model.device):
        warnings.warn(f"bf16: this {model.device.type} has no native bfloat16 (AVX512-BF16 or AMX on a CPU, compute "
                      "capability 8+ on CUDA), where it runs slower than fp32: running in fp32 instead", stacklevel=2)
        return False
    for name in call.modules:
        module = getattr(model, name)
        if module is not None:
            module.to(torch.bfloat16)
    replace_call(model, Bf16Call(model))
    return True
