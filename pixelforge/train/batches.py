"""Training batches made ahead: background threads preparing the coming steps' batches (--workers), and a
batch's copy to a CUDA device through pinned memory (docs/distributed.md, "Data loading")."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

MAX_WORKERS = 64  # the most batch-preparing threads a training may ask for (--workers)


def check_workers(workers: object) -> int:
    """workers (the number of batch-preparing threads, --workers) if it is an integer in [0, MAX_WORKERS]."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers (--workers) must be an integer in [0, {MAX_WORKERS}], got {workers!r}")
    return workers


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """t (on the CPU) on `device` (a torch.device or its name): to a CUDA device through pinned (page-locked)
    memory and an asynchronous copy, which the GPU's copy engine runs while it computes; elsewhere a plain .to()."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Prefetch:
    """The batches of the coming steps, made by `workers` background threads while the current step trains
    (workers 0: made when asked, in this thread). make(step) is a pure function of the step (its images,
    augmentation and conditions are drawn from streams seeded by the step), so the batches are bit-identical
    whatever the number of workers; the order is the steps'. Threads, not processes: the batch is a few
    tensor operations, which release the GIL, on tensors every thread shares (nothing is copied or
    pickled), and on CUDA they queue their work on the same device as the training."""

    def __init__(self, make: Callable[[int], object], end: int, workers: int, device: torch.device):
        self.make, self.end, self.workers = make, end, workers
        self.pool: ThreadPoolExecutor | None = None
        if workers:
            # a new thread's current CUDA device is GPU 0: each worker takes this process's GPU, as the trainer's
            # thread does, so that pinned memory and any kernel land there (torch's DataLoader does the same)
            on_gpu = device.type == "cuda" and device.index is not None
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pixelforge-batches",
                                           initializer=(lambda: torch.cuda.set_device(device)) if on_gpu else None)
        self.pending: dict[int, Future] = {}

    def get(self, step: int):
        if self.pool is None:
            return self.make(step)
        for ahead in range(step, min(step + self.workers + 1, self.end)):  # this step and the next `workers`
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(self.make, ahead)
        return self.pending.pop(step).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # batches of steps that will not run
            self.pending.clear()
