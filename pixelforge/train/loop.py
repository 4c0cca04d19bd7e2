"""The training loop: one readable function, generic over model families (it never asks which)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..condition import Cond
from ..data import ImageSet, load_dataset, skipped_note, split_indices, to_model
from ..device import pick_device
from ..distributed import World, all_gather_cat, all_reduce_sum, barrier, broadcast_, broadcast_long, current, rank_seed
from ..distributed import failure as distributed_failure
from ..distributed import setup as setup_distributed
from ..distributed import teardown as teardown_distributed
from ..models import get_family
from ..models.family import distribute, set_grad_scalers, set_micro_batch, set_precision
from ..models.optim import scaled_lr
from ..files import remove_stale_temporaries
from ..images import labelled_rows, make_grid, save_png, to_pil
from ..precision import PrecisionChoice, grad_scaler, pick_precision
from ..progress import eta_seconds, train_postfix
from ..runs.checkpoint import (
    atomic_write_text,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    load_state,
    save_checkpoint,
    unflatten_state,
)
from ..runs.config import RunConfig, build_model
from ..runs.latent import load_frozen_parts, load_reference_parts
from ..runs.store import load_weights, resolve_run
from .batches import Prefetch, check_workers
from .conditions import TrainingConditions, align_text
from .budget import write_budget_sampling
from .compiled import compile_networks
from .lock import run_lock

METRIC_COLUMNS = ["step", "images", "loss", "grad_norm", "lr", "img_per_s", "val_loss", "fid", "kid", "kid_std", "elapsed_s"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "finished", "early-stopped", "interrupted", "time-budget"
    losses: dict[int, float]  # step -> training loss of that step (the mean over the processes of a distributed run)
    last_checkpoint: Path | None


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            if p.requires_grad:  # a frozen part (an adapter's base, latent's autoencoder) is a copy that never moves
                pe.lerp_(p, 1.0 - decay)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    # Stateless: the order of epoch e depends only on (seed, e), so a resumed run replays it exactly.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _batch_indices(train_idx: torch.Tensor, step: int, batch: int, seed: int) -> torch.Tensor:
    """The images (indices into the data set) of step `step`: positions step * batch ... of the stream of
    epoch permutations. Each epoch the batch touches is permuted once (at most two for batch <= n)."""
    n = len(train_idx)
    if n == 1:
        return train_idx[torch.zeros(batch, dtype=torch.long)]
    positions = torch.arange(step * batch, (step + 1) * batch)  # (B,)
    epochs, within = positions // n, positions % n
    out = torch.empty(batch, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        here = epochs == epoch
        out[here] = _epoch_perm(n, seed, epoch)[within[here]]
    return train_idx[out]


class _MetricsLog:
    """metrics.csv (appended; rows past the resumed step are dropped) and TensorBoard when installed."""

    def __init__(self, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.csv"
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
        # the last kept row's elapsed_s (or 0): where a resume from a checkpoint that did not store it counts on
        self.last_elapsed_s = next((float(r["elapsed_s"]) for r in reversed(rows) if r.get("elapsed_s")), 0.0)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        try:  # optional: TensorBoard events beside the CSV when the package is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:
            self.tb = None

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_COLUMNS).writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step",) and v != "" and v is not None:
                    self.tb.add_scalar(k, float(v), int(row["step"]))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _validation_loss(model, data: ImageSet, conds: TrainingConditions, val_idx: torch.Tensor, cfg: RunConfig, device,
                     world: World = World(), chunk_size: int | None = None) -> float:
    """The mean validation loss of the first val_images held-out images. Distributed, process r takes
    chunks r, r + W, ..., chunk i drawing its noise from a stream of its own (chunk 0's is the one stream
    of a single process), and the sums are added up: the same figure for any number of processes."""
    idx = val_idx[: cfg.train.val_images]
    total, count = 0.0, 0
    if not world.distributed:
        gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 12345)  # same noise every time
        for chunk in idx.split(cfg.train.batch_size):
            x = to_model(data.images[chunk].to(device), cfg.data)
            total += float(model.validation_loss(x, conds(chunk, device, data_cfg=cfg.data), gen).sum())
            count += len(chunk)
        return total / max(count, 1)
    for i, chunk in enumerate(idx.split(chunk_size or cfg.train.batch_size)):
        if i % world.size == world.rank:
            gen = torch.Generator(device=device).manual_seed(rank_seed(cfg.train.seed + 12345, i))
            x = to_model(data.images[chunk].to(device), cfg.data)
            total += float(model.validation_loss(x, conds(chunk, device, data_cfg=cfg.data), gen).double().sum())
            count += len(chunk)
    total, count = all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def _logged_lr(model, figures: dict[str, float]) -> float:
    """The learning rate the step used: the family's own figure when its step reports one (a family
    whose optimisers take turns, like the transformer's two stages), else the first optimiser's."""
    if "lr" in figures:
        return float(figures["lr"])
    return next(iter(model.optimizers().values())).param_groups[0]["lr"]


_NO_STEP_LIMIT = 2**62  # the step limit of a run with a time budget: none
GRID_CLASSES = 16  # sample grids show one row for each of the first 16 classes


def _save_samples(ema, data: ImageSet, conds: TrainingConditions, cfg: RunConfig, run_dir: Path, step: int) -> Path:
    n = cfg.train.sample_count
    scale = 2 if cfg.data.image_size <= 32 else 1
    if "reconstruct" in getattr(ema, "capabilities", ()):
        # an autoencoder: pairs of columns, each image spread over the set beside its reconstruction
        shown = torch.linspace(0, len(data) - 1, max(1, n // 2)).round().long()  # (k,) image indices
        x = to_model(data.images[shown].to(ema.device), cfg.data)  # (k, C, H, W) in [-1, 1]
        cells = torch.stack([x, ema.reconstruct(x)], dim=1).flatten(0, 1)  # (2k, C, H, W): input, reconstruction, ...
        grid = make_grid(to_pil(cells.cpu()), cols=2 * math.ceil(math.sqrt(len(shown))), scale=scale)  # pairs per row
    elif conds.lowres is not None:
        # an upscaler: rows of (low-res input, nearest-neighbour enlarged | sample | original) of images spread over the set
        from ..condition.lowres import downsample, resize

        shown = torch.linspace(0, len(data) - 1, max(1, n // 3)).round().long()  # (k,) image indices
        x = to_model(data.images[shown].to(ema.device), cfg.data)  # (k, C, H, W) in [-1, 1]
        low = resize(downsample(x, conds.lowres), x.shape[-1], "nearest")  # (k, C, H, W)
        images = ema.sample(len(shown), conds(shown, ema.device, data_cfg=cfg.data), seed=0)
        cells = torch.stack([low, images, x], dim=1).flatten(0, 1)  # (3k, C, H, W)
        grid = make_grid(to_pil(cells.cpu()), cols=3 * max(1, math.isqrt(len(shown))), scale=scale)
    elif conds.spatial is not None:
        # one row per edge map of images spread over the set (a set sorted by class shows several): the
        # map, then samples drawn from it
        rows = min(len(conds.spatial), GRID_CLASSES, max(1, n // 2))
        per = math.ceil(n / rows)
        shown = torch.linspace(0, len(conds.spatial) - 1, rows).round().long()  # (rows,) image indices
        idx = shown.repeat_interleave(per)  # (rows * per,) each row's image, per times
        images = ema.sample(len(idx), conds(idx, ema.device, data_cfg=cfg.data), seed=0).cpu()  # (rows * per, C, H, W)
        maps = to_model(conds.spatial[shown], cfg.data).expand(-1, images.shape[1], -1, -1)  # (rows, C, H, W) white edges
        cells = torch.cat([maps[:, None], images.reshape(rows, per, *images.shape[1:])], dim=1).flatten(0, 1)
        grid = make_grid(to_pil(cells), cols=per + 1, scale=scale)
    elif conds.audio is not None:
        # one labelled row per class, each drawn from the first training clip of its digit
        rows = min(data.num_classes, GRID_CLASSES)
        per = math.ceil(n / rows)
        heard = conds.audio.first_of_each(conds.audio.digit_of_class[:rows].tolist())  # (rows, D)
        images = ema.sample(rows * per, Cond(audio=heard.repeat_interleave(per, 0).to(ema.device)), seed=0)
        grid = labelled_rows(to_pil(images), [f"said {c}" for c in data.class_names[:rows]], cols=per, scale=scale)
    elif conds.text is not None:
        # one labelled row per prompt: the captions of the first images, a few samples each
        rows = min(len(conds.captions), GRID_CLASSES, max(1, n // 2))
        per = math.ceil(n / rows)
        idx = torch.arange(rows).repeat_interleave(per)  # (rows * per,) 0, 0, ..., 1, 1, ...
        images = ema.sample(len(idx), conds(idx, ema.device, data_cfg=cfg.data), seed=0)
        grid = labelled_rows(to_pil(images), conds.captions[:rows], cols=per, scale=scale)
    elif data.labels is not None and data.num_classes > 0:
        # one full row per class, labelled with its name: about sample_count images in all
        rows = min(data.num_classes, GRID_CLASSES)
        per = math.ceil(n / rows)
        labels = torch.arange(rows).repeat_interleave(per)  # (rows * per,) 0, 0, ..., 1, 1, ...
        images = ema.sample(len(labels), Cond(labels=labels), seed=0)
        grid = labelled_rows(to_pil(images), data.class_names[:rows], cols=per, scale=scale)
    else:
        grid = make_grid(to_pil(ema.sample(n, None, seed=0)), scale=scale)
    return save_png(grid, run_dir / "samples" / f"step_{step:07d}.png", {"step": step})


class NotCopied(list):
    """The weight names `_init_from` did not copy (a list), with those the source has in another shape."""

    def __init__(self, names, differ):
        super().__init__(names)
        self.differ = sorted(differ)

    def describe(self) -> str:
        """ "" when everything was copied; otherwise which weights start fresh and why."""
        absent = [k for k in self if k not in self.differ]
        parts = ([f"shapes differ: {', '.join(self.differ)}"] if self.differ else []) + (
            [f"not in the source: {', '.join(absent)}"] if absent else [])
        return f" (not copied, {'; '.join(parts)})" if parts else ""


def _init_from(model, ema, source: str, runs_dir: Path | None = None) -> NotCopied:
    """Copy matching weights from another run (a name looked up in runs_dir) or a bundled model (transfer
    learning); returns the names not copied."""
    run_dir = resolve_run(source, runs_dir)
    state = load_weights(run_dir)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # A class table (`embed`) of another class count: every row starts as the one its module's new_classes_row
    # picks from the source's table (a diffusion model's "no label" row: LabelEmbedding; the mean of a GAN
    # generator's classes: ConditionalNorm), and the new run learns its own classes from there.
    for name, module in model.named_modules():
        key = f"{name}.embed.weight" if name else "embed.weight"
        start_row = getattr(module, "new_classes_row", None)
        if start_row is not None and key in state and key not in usable and state[key].ndim == 2 \
                and state[key].shape[1] == own[key].shape[1]:
            usable[key] = start_row(state[key]).expand_as(own[key]).clone()  # (rows, dim)
    model.load_state_dict(usable, strict=False)
    ema.load_state_dict(model.state_dict())
    missing = sorted(set(own) - set(usable))
    return NotCopied(missing, [k for k in missing if k in state])


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    device: str = "auto",
    init_from: str | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    cache_dir: str | Path | None = None,
    evaluator: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    max_seconds: float | None = None,
    compile: bool = False,
    workers: int = 0,
) -> TrainResult:
    """Train (or resume) the run in run_dir; stop_at ends early at that step as an interruption would.

    compile: train with the family's networks compiled by torch.compile (tried first on a copy of the model;
    where that fails the training says why and runs eagerly). workers: background threads that prepare the
    batches of the coming steps (0: each batch is made when its step starts); the batches, and so the run,
    are the same for any number. Neither is part of the run's config: they say how this call computes it.

    evaluator(ema_model, step) -> figures (e.g. {"fid": ..., "kid": ...}) is called every
    cfg.train.eval_every steps; the loop knows nothing of how they are computed. max_seconds: a
    wall-clock budget for this call; when it runs out the loop checkpoints and stops ("time-budget").

    The run folder is locked for the whole call: a second training of the same run fails at once with
    a RunLockedError naming the owner. A folder this call creates is removed again when the call fails
    before its first checkpoint (no data, a model too big to allocate), so no half-made run is left.

    Started by torchrun (WORLD_SIZE > 1 in the environment) it is one process of a distributed data
    parallel training (docs/distributed.md): it joins the process group, trains its share of every batch,
    and only rank 0 locks the folder, writes files, logs and shows progress; every decision to stop is
    taken together.
    """
    run_dir = Path(run_dir)
    dev = pick_device(device)
    cfg.model_config()  # a bad model field fails here, before any folder exists
    check_workers(workers)
    created_group = setup_distributed(dev)
    try:
        world = current()
        if world.distributed:
            try:
                return _train_in_group(cfg, run_dir, dev, world, init_from=init_from, progress=progress, stop_at=stop_at,
                                       cache_dir=cache_dir, evaluator=evaluator, max_seconds=max_seconds,
                                       compile=compile, workers=workers)
            except RuntimeError as e:
                lost = distributed_failure(e)
                if lost is None:
                    raise
                raise lost from e
        return _train_in_group(cfg, run_dir, dev, world, init_from=init_from, progress=progress, stop_at=stop_at,
                               cache_dir=cache_dir, evaluator=evaluator, max_seconds=max_seconds, compile=compile,
                               workers=workers)
    finally:
        if created_group:
            teardown_distributed()


def _train_in_group(cfg: RunConfig, run_dir: Path, dev: torch.device, world: World, **kwargs) -> TrainResult:
    """train() as one process of `world`: rank 0 locks the run folder and removes one its failure leaves
    without a checkpoint."""
    if not world.main:
        return _train_locked(cfg, run_dir, dev, world, **kwargs)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as stale_owner:
        if stale_owner:
            tqdm.write(f"taking over the stale lock of {run_dir}: {stale_owner} ended without releasing it")
        try:
            return _train_locked(cfg, run_dir, dev, world, **kwargs)
        except BaseException:
            if created and not list_checkpoints(run_dir / "checkpoints"):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def data_parallel(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """Wrap `model` in PyTorch's DistributedDataParallel (the process group joined) and make its family
    compute every loss through the wrapper (FamilyModule.parallel), with rank `rank`'s random streams;
    returns the wrapper. DDP then averages the gradients as backward runs.

    A family with several optimisers (a GAN's D and G, the transformer's two stages) uses only some of
    its weights in each update, hence find_unused_parameters there. Buffers are not broadcast before
    each forward: those that change in training (a VQ-VAE's codebook statistics) are kept equal by the
    family itself, from the whole batch."""
    from torch.nn.parallel import DistributedDataParallel

    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel).parameters else {"broadcast_buffers": False}  # the name before torch 2.13
    ddp = DistributedDataParallel(model, find_unused_parameters=len(model.optimizers()) > 1, **no_buffer_sync)
    distribute(model, ddp, rank)
    return ddp


def _local_main_first(world: World, fn: Callable[[], object]):
    """fn() on each machine's first process, then on the others: they find what it prepared (the data
    cache, caption embeddings) instead of all preparing it at once. Just fn() in one process."""
    if not world.distributed:
        return fn()
    if world.local_rank == 0:
        out = fn()
        barrier()
        return out
    barrier()
    return fn()


def _batch_shares(cfg: RunConfig, world: World) -> tuple[int, int]:
    """(images per process, images per micro-batch) of the effective batch cfg.train.batch_size."""
    batch, accum = cfg.train.batch_size, cfg.train.grad_accum
    if batch % (world.size * accum):
        raise ValueError(f"train.batch_size {batch} (--batch-size, the effective batch) must be a multiple of "
                         f"processes x grad_accum = {world.size} x {accum} = {world.size * accum}")
    return batch // world.size, batch // (world.size * accum)


def _training_precision(cfg: RunConfig, model, data: ImageSet, conds: TrainingConditions, train_idx: torch.Tensor, micro: int,
                        dev: torch.device, world: World, resumed_from: Path | None) -> PrecisionChoice:
    """What this call trains in: a resumed run goes on in the precision its checkpoint recorded, a new one
    takes cfg.train.precision, "auto" timing the training step of a copy of the model on step 0's first
    micro-batch (the global random state is restored afterwards, so "auto" choosing fp32 trains exactly
    as fp32 does). Distributed, process 0 decides for all."""
    requested = cfg.train.precision
    if resumed_from is not None:
        try:
            recorded = json.loads(resumed_from.with_suffix(".json").read_text()).get("precision")
        except (json.JSONDecodeError, AttributeError):  # loading the checkpoint next names the damage
            recorded = None
        requested = recorded if recorded in TRAINED_PRECISIONS else requested  # older checkpoints record none
    choice = None
    if world.main:
        step = None
        if requested == "auto":
            x, cond = _first_batch(cfg, data, conds, train_idx, micro, dev)
            twin = copy.deepcopy(model)  # its own weights, optimiser and random stream: the run's stay untouched

            def step(precision: str) -> None:
                set_precision(twin, precision)
                twin.training_step(x, cond, 0)

            tqdm.write("precision auto: timing training steps in fp32 and in bf16 autocast")
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            choice = pick_precision(requested, dev, step)
        if requested != cfg.train.precision and choice.precision == requested:
            choice = dataclasses.replace(choice, reason=f"the run's checkpoint records {requested}; its config asks "
                                         f"{cfg.train.precision}")
        elif cfg.train.minutes is not None and choice.reason == "as asked":
            # a --minutes run's config holds what its plan chose, or what the user gave: either way the plan says which
            choice = dataclasses.replace(choice, reason="as the time budget's plan says")
    if not world.distributed:
        return choice
    chosen = broadcast_long(torch.tensor([TRAINED_PRECISIONS.index(choice.precision)]) if world.main else None)
    return choice or PrecisionChoice(TRAINED_PRECISIONS[int(chosen[0])], requested, "process 0's choice")


TRAINED_PRECISIONS = ("fp32", "bf16", "fp16")  # what a training runs in (a checkpoint's "precision")


def _first_batch(cfg: RunConfig, data: ImageSet, conds: TrainingConditions, train_idx: torch.Tensor, micro: int,
                 dev: torch.device) -> tuple[torch.Tensor, Cond]:
    """Step 0's first micro-batch, augmented by a stream of its own: what a trial step on a copy of the model
    (precision auto's timing, --compile's check) trains on."""
    idx = _batch_indices(train_idx, 0, micro, cfg.train.seed)
    return conds.augmented(data, idx, cfg.data, torch.Generator(device=dev).manual_seed(0), dev, 0, cfg.train.seed)


def _rng_states(model, dev: torch.device) -> dict[str, torch.Tensor]:
    rng = {"torch_cpu": torch.get_rng_state(), "train_generator": model.train_generator.get_state()}
    if dev.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    return rng


def _set_rng_states(model, dev: torch.device, rng: dict[str, torch.Tensor]) -> None:
    model.train_generator.set_state(rng["train_generator"])
    torch.set_rng_state(rng["torch_cpu"])
    if dev.type == "cuda" and "torch_cuda" in rng:
        torch.cuda.set_rng_state(rng["torch_cuda"])


def _gathered_rng_states(model, dev: torch.device, world: World) -> dict[str, torch.Tensor]:
    """Every process's random states, as a checkpoint stores them: rank 0's under their plain names,
    rank r's as NAME.rank{r}, so each process of a resumed run continues its own streams."""
    own = _rng_states(model, dev)
    if not world.distributed:
        return own
    rng = {}
    for name, state in own.items():
        every = all_gather_cat(state[None].to(dev)).cpu()  # (W, n) uint8: the states are the same size on each
        rng.update({name if r == 0 else f"{name}.rank{r}": every[r] for r in range(world.size)})
    return rng


def _train_locked(
    cfg: RunConfig,
    run_dir: Path,
    dev: torch.device,
    world: World,
    *,
    init_from: str | None,
    progress: bool,
    stop_at: int | None,
    cache_dir: str | Path | None,
    evaluator: Callable[[torch.nn.Module, int], dict[str, float]] | None,
    max_seconds: float | None,
    compile: bool = False,
    workers: int = 0,
) -> TrainResult:
    """train() itself, run while rank 0 holds the run folder's lock (every process runs it)."""
    say = tqdm.write if world.main else (lambda text: None)  # one process speaks
    ckpt_dir = run_dir / "checkpoints"
    per_process, micro = _batch_shares(cfg, world)
    if cfg.train.grad_accum > 1 and not get_family(cfg.family).accumulates:
        raise ValueError(f"train.grad_accum {cfg.train.grad_accum}: {cfg.family} models cannot accumulate gradients "
                         "(their updates within a step depend on each other); use --grad-accum 1")
    if world.main:
        # Only a training writes in these folders, and none but this one can run now: any temporary file
        # there is what a killed write left behind.
        removed = [*remove_stale_temporaries(ckpt_dir), *remove_stale_temporaries(run_dir / "samples")]
        if removed:
            say(f"removed {len(removed)} temporary file(s) an interrupted write left in {run_dir}")
    existing = list_checkpoints(ckpt_dir)
    if world.distributed:  # rank 0's list decides: every process resumes from the same step
        last = broadcast_long(torch.tensor([int(existing[-1].name[5:]) if existing else -1]))
        existing = [] if int(last) < 0 else [ckpt_dir / f"step_{int(last):07d}"]
        if existing and not existing[0].with_suffix(".json").exists():
            raise ValueError(f"process {world.rank} cannot read {existing[0]}.json, which process 0 resumes from: "
                             "the run folder must be on storage every machine shares")
    if (run_dir / "config.json").exists():
        saved = RunConfig.load(run_dir / "config.json")
        # Compare the built model configs, not the raw dicts: JSON turns tuples such as channel_mult into lists.
        if existing and (saved.family, saved.model_config(), saved.data) != (cfg.family, cfg.model_config(), cfg.data):
            raise ValueError(
                f"{run_dir} already holds a {saved.family} run with another model or data config; "
                "choose another --name to start afresh (or delete the folder)"
            )
    cfg = cfg.resolved()
    if world.main:
        atomic_write_text(run_dir / "config.json", cfg.to_json())

    data = _local_main_first(world, lambda: load_dataset(cfg.data, cache_dir=cache_dir, progress=progress and world.main))
    if data.skipped:
        say(skipped_note(data.skipped, cfg.data))
    split_path = run_dir / "split.json"
    train_idx = val_idx = None
    if world.main:
        if split_path.exists():
            split = json.loads(split_path.read_text())
            train_idx, val_idx = torch.tensor(split["train"], dtype=torch.long), torch.tensor(split["val"], dtype=torch.long)
        else:
            train_idx, val_idx = split_indices(len(data), cfg.data.val_fraction, cfg.data.split_seed)
            atomic_write_text(split_path, json.dumps({"seed": cfg.data.split_seed, "train": train_idx.tolist(), "val": val_idx.tolist()}))
        atomic_write_text(run_dir / "classes.json", json.dumps(data.class_names))
        write_budget_sampling(cfg, run_dir)
    train_idx, val_idx = broadcast_long(train_idx), broadcast_long(val_idx)  # rank 0's split, the saved one
    model_classes = getattr(cfg.model_config(), "num_classes", 0)
    if model_classes and data.num_classes > model_classes:
        raise ValueError(f"the data has {data.num_classes} classes but the model config allows {model_classes}")

    lr = scaled_lr(cfg.optim, cfg.train.batch_size)
    # the model trains at the scaled rate; config.json keeps the rate as given and the rule
    model = build_model(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr)), dev)
    if not existing:  # a new run copies its frozen parts (a latent diffusion run's autoencoder) from their runs, once
        for source in load_frozen_parts(model):
            say(f"frozen parts copied from {source}")
    for source in load_reference_parts(model):  # a distillation's teacher: kept out of checkpoints, read at every start
        say(f"teacher read from {source}")
    conds = _local_main_first(world, lambda: TrainingConditions(data, model, cache_dir, progress, cfg.data))
    if not existing and not init_from:  # a resumed or initialised run has its aligned pooling in its weights
        align_text(model, conds, data, train_idx, cfg, dev, progress and world.main, say)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizers = model.optimizers()
    precision = _training_precision(cfg, model, data, conds, train_idx, micro, dev, world, existing[-1] if existing else None)
    say(precision.describe())
    set_precision(model, precision.precision)
    # fp16: one gradient scaler per optimiser, its state in every checkpoint (a resumed run goes on with its scale)
    scalers = {name: grad_scaler(dev) for name in optimizers} if precision.precision == "fp16" else {}
    set_grad_scalers(model, scalers)
    if compile:
        compile_networks(model, _first_batch(cfg, data, conds, train_idx, micro, dev), dev, world, say)
    if world.distributed:  # before resuming: each process then restores the random streams of its own rank
        data_parallel(model, world.rank)
    if world.distributed or cfg.train.grad_accum > 1 or cfg.optim.lr_scaling != "none":
        backend = f" ({torch.distributed.get_backend()})" if world.distributed else ""
        scaling = "as given" if cfg.optim.lr_scaling == "none" else (
            f"{cfg.optim.lr:.3g} scaled {cfg.optim.lr_scaling}ly from batch {cfg.optim.lr_base_batch}")
        say(f"{world.size} process(es){backend}: effective batch {cfg.train.batch_size} = {world.size} x {per_process} "
            f"per process ({cfg.train.grad_accum} micro-batch(es) of {micro}); lr {lr:.3g} ({scaling})")
    start, best_val, bad_vals = 0, math.inf, 0
    saved_elapsed = None
    if existing:
        parts, state = load_checkpoint(existing[-1])
        load_state(model, parts.get("model", {}), existing[-1].with_suffix(".safetensors"))
        load_state(ema, parts.get("ema", {}), existing[-1].with_suffix(".safetensors"))
        for name, opt in optimizers.items():
            # an optimiser that has not stepped yet (the transformer's prior during stage 1) holds no tensors
            opt.load_state_dict(unflatten_state(state["optim"][name], parts.get(f"optim.{name}", {})))
        rng = parts["rng"]
        if world.rank > 0:
            suffix = f".rank{world.rank}"
            rng = {k[: -len(suffix)]: v for k, v in rng.items() if k.endswith(suffix)}
        if rng:
            _set_rng_states(model, dev, rng)
        else:  # written by fewer processes: this one's streams start afresh from the seed and its rank
            tqdm.write(f"process {world.rank}: {existing[-1]} holds no random state for it; its streams start afresh")
        for name, scaler_state in state.get("grad_scalers", {}).items():
            if name in scalers:
                scalers[name].load_state_dict(scaler_state)
        start, best_val, bad_vals = state["step"], state.get("best_val", math.inf), state.get("bad_vals", 0)
        saved_elapsed = state.get("elapsed_s")  # absent from checkpoints written before it was stored
        say(f"resuming {run_dir} from step {start}")
    elif init_from:
        skipped = _init_from(model, ema, init_from, run_dir.parent)
        say(f"initialised from {init_from}{skipped.describe()}")

    log = _MetricsLog(run_dir, start) if world.main else None
    # training seconds of the earlier calls: elapsed_s counts on from them
    elapsed_before = float(saved_elapsed) if saved_elapsed is not None else (log.last_elapsed_s if log else 0.0)
    last_ckpt = existing[-1].with_suffix(".safetensors") if existing else None
    # A run with a time budget (train.minutes) trains until its training time over every call reaches it: the
    # budget's time left ends this call as --max-minutes does (max_seconds), but ends the run ("finished").
    budget_left = None if cfg.train.minutes is None else cfg.train.minutes * 60 - elapsed_before
    budget_ends_run = budget_left is not None and (max_seconds is None or budget_left <= max_seconds)
    if budget_ends_run:
        max_seconds = budget_left
        say(f"time budget {cfg.train.minutes:g} min: {max(budget_left, 0) / 60:.2f} min left")

    def checkpoint(step: int) -> Path:
        """Every process takes part (their random states are gathered); rank 0 writes."""
        rng = _gathered_rng_states(model, dev, world)
        if not world.main:
            return ckpt_dir / f"step_{step:07d}.safetensors"
        optim_parts, optim_skel = {}, {}
        for name, opt in optimizers.items():
            tensors: dict[str, torch.Tensor] = {}
            optim_skel[name] = flatten_state(opt.state_dict(), "s", tensors)
            optim_parts[f"optim.{name}"] = tensors
        extra = {"processes": world.size, "grad_accum": cfg.train.grad_accum} if world.distributed or cfg.train.grad_accum > 1 else {}
        if scalers:
            extra["grad_scalers"] = {name: scaler.state_dict() for name, scaler in scalers.items()}
        return save_checkpoint(
            ckpt_dir,
            step,
            {"model": model.state_dict(), "ema": ema.state_dict(), "rng": rng, **optim_parts},
            {"images_seen": step * cfg.train.batch_size, "best_val": best_val, "bad_vals": bad_vals, "optim": optim_skel,
             "device": str(dev), "elapsed_s": elapsed_before + time.perf_counter() - t0, "precision": precision.precision,
             **extra},
            keep=cfg.train.keep_checkpoints,
        )

    # Ctrl-C: finish the current step, write a checkpoint, exit cleanly.
    interrupted = {"flag": False}
    old_handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if interrupted["flag"]:
            signal.signal(signal.SIGINT, old_handler)
            raise KeyboardInterrupt
        interrupted["flag"] = True
        say("interrupt: saving a checkpoint after this step (press Ctrl-C again to abort at once)")

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (e.g. inside a server worker): no handler
        old_handler = None

    # Decisions every process must take alike. In one process: read when asked, as ever. Distributed:
    # agreed once a step (agree()), together with the losses, in one all-reduce.
    agreed = {"interrupted": False, "time_up": False}

    def interrupted_now() -> bool:
        return agreed["interrupted"] if world.distributed else interrupted["flag"]

    def time_up() -> bool:
        if world.distributed:
            return agreed["time_up"]
        return max_seconds is not None and time.perf_counter() - t0 > max_seconds

    def agree(loss: float, grad_norm: float) -> tuple[float, float]:
        """The mean loss and grad norm over the processes; sets the agreed flags (any process's)."""
        late = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        t = all_reduce_sum(torch.tensor([loss, grad_norm, float(interrupted["flag"]), float(late)], dtype=torch.float64))
        agreed["interrupted"], agreed["time_up"] = bool(t[2] > 0), bool(t[3] > 0)
        return float(t[0]) / world.size, float(t[1]) / world.size

    losses: dict[int, float] = {}
    stopped = "finished"
    # a budgeted run's steps are an estimate, not a limit: it ends when the budget does, or where its learning rate's
    # cool-down reaches 0 (steps after it would train nothing)
    cooled = cfg.optim.cooldown_end if cfg.optim.cooldown_steps else _NO_STEP_LIMIT
    steps_total = cfg.train.steps if cfg.train.minutes is None else cooled
    end = steps_total if stop_at is None else min(stop_at, steps_total)
    budget_spent = budget_ends_run and max_seconds <= 0  # the run is over: nothing left to train
    if budget_spent:
        end = start
    # tqdm's own ETA knows nothing of --max-minutes: the postfix's left= says which limit ends the run first
    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (progress and world.main), unit="step", dynamic_ncols=True,
               desc=run_dir.name, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]")
    figures_shown: dict[str, str] = {}  # the last in-training FID/KID, kept on the bar
    t0 = time.perf_counter()
    window_t, window_imgs, window_loss, window_gn, window_n = time.perf_counter(), 0, 0.0, 0.0, 0
    step = start

    def step_batches(at: int) -> list[tuple[torch.Tensor, Cond]]:
        """This process's micro-batches of step `at`: images (B, C, H, W) augmented, and their Cond."""
        idx = _batch_indices(train_idx, at, cfg.train.batch_size, cfg.train.seed)
        mine = idx[world.rank * per_process : (world.rank + 1) * per_process]  # this process's share
        # each process its own augmentation stream (rank 0's is the one of a single process)
        aug_gen = torch.Generator(device=dev).manual_seed(rank_seed(cfg.train.seed * 7919 + at, world.rank))
        return [conds.augmented(data, chunk, cfg.data, aug_gen, dev, at, cfg.train.seed) for chunk in mine.split(micro)]

    batches = Prefetch(step_batches, end, workers, dev)
    if workers:
        say(f"data: {workers} background thread(s) prepare the batches of the next {workers} step(s)")
    try:
        while step < end:
            micro_losses = []
            for i, (x, cond) in enumerate(batches.get(step)):
                if cfg.train.grad_accum > 1:
                    set_micro_batch(model, i, cfg.train.grad_accum)
                figures = model.training_step(x, cond, step)
                micro_losses.append(figures["loss"])
            loss = figures["loss"] if len(micro_losses) == 1 else sum(micro_losses) / len(micro_losses)
            grad_norm = figures.get("grad_norm", 0.0)
            if world.distributed:
                loss, grad_norm = agree(loss, grad_norm)
            decay = min(cfg.train.ema_decay, (1 + step) / (10 + step))
            _ema_update(ema, model, decay)
            losses[step] = loss
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr or check the data")
            step += 1
            window_imgs += cfg.train.batch_size
            window_loss += loss
            window_gn += grad_norm
            window_n += 1
            elapsed = time.perf_counter() - t0
            eta = eta_seconds(end - step, elapsed / (step - start), None if max_seconds is None else max_seconds - elapsed)
            bar.set_postfix({**train_postfix(window_loss / window_n, window_imgs, time.perf_counter() - window_t, eta),
                             **figures_shown}, refresh=False)
            if budget_ends_run:  # the bar's total: the steps done and those the budget left allows at the rate so far
                bar.total = step + int(max(max_seconds - elapsed, 0.0) / max(elapsed / (step - start), 1e-9))
            bar.update(1)
            row = None
            if step % cfg.train.log_every == 0 or step == end:
                dt = time.perf_counter() - window_t
                row = {
                    "step": step,
                    "images": step * cfg.train.batch_size,
                    "loss": f"{window_loss / window_n:.6f}",
                    "grad_norm": f"{window_gn / window_n:.4f}",
                    "lr": f"{_logged_lr(model, figures):.3g}",
                    "img_per_s": f"{window_imgs / max(dt, 1e-9):.1f}",
                    "elapsed_s": f"{elapsed_before + time.perf_counter() - t0:.1f}",
                }
                window_t, window_imgs, window_loss, window_gn, window_n = time.perf_counter(), 0, 0.0, 0.0, 0
            if len(val_idx) and (step % cfg.train.val_every == 0 or step == end):
                val = _validation_loss(ema, data, conds, val_idx, cfg, dev, world, micro)
                row = row or {"step": step, "images": step * cfg.train.batch_size}
                row["val_loss"] = f"{val:.6f}"
                if cfg.train.early_stop_on == "val_loss":
                    if val < best_val - 1e-6:
                        best_val, bad_vals = val, 0
                    else:
                        bad_vals += 1
            # distributed, a sharded evaluator (pixelforge.api.train's) runs on every process, each sampling its
            # share, and rank 0 computes the figure; any other runs on rank 0 alone; the others wait for its figure
            if ((evaluator is not None or world.distributed) and cfg.train.eval_every
                    and (step % cfg.train.eval_every == 0 or step == end)):
                runs_here = evaluator is not None and (world.main or getattr(evaluator, "sharded", False))
                figures = evaluator(ema, step) if runs_here else {}
                if figures or not world.distributed:
                    row = row or {"step": step, "images": step * cfg.train.batch_size}
                    row.update({k: f"{v:.6g}" for k, v in figures.items() if k in METRIC_COLUMNS})
                figures_shown = {k: f"{v:.3g}" for k, v in figures.items() if k in ("fid", "kid")}
                watched = figures.get(cfg.train.early_stop_on)
                if world.distributed:  # rank 0's figure decides for all
                    sent = broadcast_(torch.tensor([math.nan if watched is None else float(watched)], dtype=torch.float64))
                    watched = None if math.isnan(float(sent)) else float(sent)
                if watched is not None:
                    if watched < best_val - 1e-6:
                        best_val, bad_vals = watched, 0
                    else:
                        bad_vals += 1
            if row is not None and log is not None:
                log.write(row)
            if world.main and (step % cfg.train.sample_every == 0 or step == end):
                _save_samples(ema, data, conds, cfg, run_dir, step)
            if cfg.train.patience and bad_vals >= cfg.train.patience:
                stopped = "early-stopped"
                say(f"early stop at step {step}: no better {cfg.train.early_stop_on} in {bad_vals} evaluations")
                last_ckpt = checkpoint(step)
                break
            if step % cfg.train.ckpt_every == 0 or step == end or interrupted_now():
                last_ckpt = checkpoint(step)
            if interrupted_now():
                stopped = "interrupted"
                break
            if step < end and time_up():
                stopped = "finished" if budget_ends_run else "time-budget"
                budget_spent = budget_ends_run
                if world.main:
                    _save_samples(ema, data, conds, cfg, run_dir, step)
                last_ckpt = checkpoint(step)
                break
        if stop_at is not None and step < steps_total and stopped == "finished" and not budget_spent:
            stopped = "interrupted"
        if budget_ends_run and stopped == "finished" and not budget_spent and step >= cooled and step > start:
            left = max(0.0, max_seconds - (time.perf_counter() - t0))
            say(f"the learning rate's cool-down reached 0 at step {step:,}: the run ends there, "
                + (f"{left / 60:.1f} min" if left >= 60 else f"{left:.0f} s") + " before its budget")
    finally:
        batches.close()
        bar.close()
        if log is not None:
            log.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        if world.distributed:  # drop the DDP wrapper now: it holds the process group, which teardown then releases
            distribute(model, None, world.rank)
    return TrainResult(run_dir, step, stopped, losses, last_ckpt)
