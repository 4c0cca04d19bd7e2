"""Several processes, one training: the process group torchrun starts (gloo on CPU, NCCL on CUDA), and the
few collective operations the trainer and the families need. In one process every helper is the identity,
so single-process training runs exactly the code and draws exactly the numbers it always did.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each process's environment;
`setup()` reads them (docs/distributed.md shows the commands).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0  # how long a collective waits for a process before the job fails (PIXELFORGE_DIST_TIMEOUT)


class DistributedFailure(RuntimeError):
    """A collective operation failed: another process of the job ended, hung past the timeout, or the
    network between them broke."""


def failure(e: BaseException) -> DistributedFailure | None:
    """The DistributedFailure an exception raised inside a distributed training stands for, or None when
    it is not a communication error (then it is the process's own and is raised as it is)."""
    text = " ".join(str(e).split())
    comm = isinstance(e, getattr(dist, "DistError", ())) or (
        isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "Gloo", "NCCL", "Connection closed", "Timed out")))
    if not comm:
        return None
    return DistributedFailure(
        f"process {current().rank} lost contact with the other processes of the job ({text[:200]}): one of them ended or "
        f"stalled for more than PIXELFORGE_DIST_TIMEOUT ({timeout_seconds():g} s); its own output says why")


@dataclass(frozen=True)
class World:
    """Where this process stands: rank 0 of 1 when training alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, shows progress and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launched_world() -> World:
    """The world torchrun described in the environment (rank 0 of 1 without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"environment: RANK {rank} is not in [0, WORLD_SIZE {size})")
    return World(rank, size, local_rank)


def current() -> World:
    """This process's place in the initialised process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return World()


def timeout_seconds() -> float:
    """PIXELFORGE_DIST_TIMEOUT (seconds, > 0) or DEFAULT_TIMEOUT_S: how long a collective may wait."""
    raw = os.environ.get("PIXELFORGE_DIST_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"environment variable PIXELFORGE_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def setup(device: torch.device) -> bool:
    """Join the process group torchrun described, if any and not joined yet: NCCL for a CUDA device, gloo
    otherwise, with the PIXELFORGE_DIST_TIMEOUT timeout so a lost process fails the job instead of
    hanging it. Returns True when this call created the group (the caller then tears it down)."""
    world = launched_world()
    if world.size == 1 or dist.is_initialized():
        return False
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL's collectives run on this process's GPU
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()),
                            rank=world.rank, world_size=world.size)
    return True


def teardown() -> None:
    """Leave the process group setup() joined. A trained model and its DistributedDataParallel wrapper
    refer to each other (FamilyModule.parallel), so only the cycle collector frees them, and with them the
    wrapper's hold on the group; left to interpreter exit, gloo's threads were sometimes destroyed
    while still joinable ("terminate called without an active exception", SIGABRT after a finished
    job). Collect first, so the group is released here while the interpreter is whole."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors (and CUDA ones, but CPU is what it is for)
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of t over all processes (t itself in one process)."""
    if not current().distributed:
        return t
    buf = t.detach().to(_comm_device(t), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every process's t concatenated along dim 0 in rank order (t itself in one process); each process
    must pass the same shape."""
    world = current()
    if not world.distributed:
        return t
    buf = t.detach().contiguous().to(_comm_device(t))
    parts = [torch.empty_like(buf) for _ in range(world.size)]
    dist.all_gather(parts, buf)
    return torch.cat(parts).to(t.device)


def shard(n: int, world: World | None = None) -> range:
    """This process's share of n items split over the processes in contiguous runs whose lengths differ by at
    most one: rank r takes [r * n // size, (r + 1) * n // size); the shares in rank order are range(n) (all of
    it in one process), and none is empty where n >= size."""
    world = world or current()
    return range(world.rank * n // world.size, (world.rank + 1) * n // world.size)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's t (the same shape after dim 0, any number of rows, none too) concatenated along dim 0
    in rank order (t itself in one process): shard()'s pieces put back together."""
    world = current()
    if not world.distributed:
        return t
    counts = all_gather_cat(torch.tensor([len(t)], dtype=torch.long)).tolist()  # (W,) rows of each process
    if max(counts) == 0:
        return t
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=t.device)  # all_gather needs one shape
    padded[: len(t)] = t
    every = all_gather_cat(padded)  # (W * max, ...)
    return torch.cat([every[r * max(counts) : r * max(counts) + c] for r, c in enumerate(counts)])


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite t in place with rank src's value (nothing in one process); returns t."""
    if current().distributed:
        buf = t.detach().to(_comm_device(t), copy=True)
        dist.broadcast(buf, src)
        with torch.no_grad():
            t.copy_(buf.to(t.device))
    return t


def broadcast_module_state_(module: torch.nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of module set to rank src's (nothing in one process)."""
    if current().distributed:
        for t in [*module.parameters(), *module.buffers()]:
            broadcast_(t.data, src)


def broadcast_long(values: torch.Tensor | None, src: int = 0) -> torch.Tensor:
    """A 1-D int64 tensor known on rank src only (others pass None), sent to every process."""
    if not current().distributed:
        if values is None:
            raise RuntimeError("broadcast_long: the source process passed no values")
        return values
    n = torch.tensor([len(values) if values is not None else 0], dtype=torch.long)
    broadcast_(n, src)
    buf = values.clone() if values is not None and current().rank == src else torch.zeros(int(n), dtype=torch.long)
    return broadcast_(buf, src)


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank r's stream derived from a run's seed: the seed itself for rank 0 (so one process
    draws what it always drew), a distinct 63-bit number for every other rank."""
    if rank == 0:
        return seed
    # numpy's SeedSequence is made for this: well-mixed, independent streams from (seed, rank)
    return int(np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, rank]).generate_state(1, np.uint64)[0] >> 1)
