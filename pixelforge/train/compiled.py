"""--compile: a family's networks compiled by torch.compile for training, tried first on a copy of the model
(docs/distributed.md, "torch.compile")."""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from ..condition import Cond
from ..distributed import World, all_reduce_sum
from ..models.family import FamilyModule


def compiled_networks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of the networks --compile compiles: each child of a family module that has weights to
    train, a child that is itself a family module (the transformer's VQ-VAE) searched the same way. Not the
    family module itself: its forward runs whichever loss function training_step passes it."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, FamilyModule):
            out += [(f"{name}.{sub}", m) for sub, m in compiled_networks(child)]
        elif any(p.requires_grad for p in child.parameters()):
            out.append((name, child))
    return out


def compile_networks(model: torch.nn.Module, batch: tuple[torch.Tensor, Cond], dev: torch.device, world: World,
                      say: Callable[[str], None]) -> bool:
    """Compile model's networks (compiled_networks) in place with torch.compile (nn.Module.compile: the same
    parameters and state_dict names, so checkpoints do not change), after one training step on a compiled copy
    of the model (its own weights, optimiser and random stream; the global random state restored) has worked:
    torch.compile fails only when first called (no C++ compiler for its CPU code, an operation it cannot trace),
    and a failure then would end the run. Where it fails on any process, every process trains eagerly and the
    first says why. Returns whether the networks were compiled."""
    twin = copy.deepcopy(model)
    error: BaseException | None = None
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            for _, net in compiled_networks(twin):
                net.compile()
            twin.training_step(*batch, 0)
    except Exception as e:  # noqa: BLE001 - any failure of the trial means: train eagerly
        error = e
    seconds = time.perf_counter() - started
    del twin
    failed = float(all_reduce_sum(torch.tensor([float(error is not None)], dtype=torch.float64))[0]) > 0
    if failed:
        why = "on another process" if error is None else f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        say(f"warning: --compile: torch.compile failed on this machine ({why}); training eagerly")
        return False
    names = [name for name, _ in compiled_networks(model)]
    for _, net in compiled_networks(model):
        net.compile()
    say(f"compile: torch.compile of {', '.join(names)} (a first training step on a copy took {seconds:.1f} s, "
        "most of it compiling)")
    return True
