"""The training loop: one readable function, generic over model families (it never asks which)."""

from __future__ import annotations

import copy
import csv
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
from ..data import ImageSet, augment, load_dataset, skipped_note, split_indices, to_model
from ..device import pick_device
from ..files import remove_stale_temporaries
from ..images import labelled_rows, make_grid, save_png, to_pil
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
from ..runs.store import load_weights, resolve_run
from .lock import run_lock

METRIC_COLUMNS = ["step", "images", "loss", "grad_norm", "lr", "img_per_s", "val_loss", "fid", "kid", "kid_std", "elapsed_s"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "finished", "early-stopped", "interrupted", "time-budget"
    losses: dict[int, float]  # step -> training loss of that step (this process only)
    last_checkpoint: Path | None


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


class _Conditions:
    """What each image of the data set is conditioned on: its label where the set has classes, its
    caption's embedding (pooled vector and tokens) where the model takes text, and its edge map where the
    model takes a spatial condition."""

    def __init__(self, data: ImageSet, model, cache_dir=None, progress: bool = True):
        self.labels = data.labels if data.labels is not None and data.num_classes > 0 else None
        self.text = None
        self.spatial = None  # (N, 1, S, S) uint8 edge maps of the prepared images, 255 on an edge
        if "spatial" in model.takes():
            from ..condition.edges import edge_maps

            self.spatial = edge_maps(data.images, model.config.edge_detector, cache_dir, progress=progress)
        self.captions: list[str] = []
        if "text" in model.takes():
            from ..condition.text import caption_embeddings, load_text_encoder
            from ..condition.text_embed import fit_text_statistics

            if not data.captions or not any(data.captions):
                raise ValueError(f"{data.source} has no captions, but the model is conditioned on text: give the folder a "
                                 "captions.jsonl ({\"file\": ..., \"caption\": ...} a line) or train without text")
            cfg = model.config
            encoder = load_text_encoder(cfg.text_encoder, max_tokens=cfg.text_tokens)
            tqdm.write(f"text encoder {cfg.text_encoder}: embedding {len(data.captions)} captions (cached after the first run)")
            self.text = caption_embeddings(data.captions, encoder, None if cache_dir is None else Path(cache_dir))
            self.captions = [c or "" for c in data.captions]
            # the conditioner's whitening from the captions; a resumed run's checkpoint overwrites it
            fit_text_statistics(model, self.text.pooled, self.text.tokens, self.text.mask)

    def augmented(self, data: ImageSet, idx: torch.Tensor, data_cfg, generator: torch.Generator, device):
        """The training batch idx: images (B, C, H, W) in [-1, 1] augmented (data.augment) and their Cond.
        An edge map rides along as one more channel through the same augment call, so it gets its image's
        crop and flip, and the random draws are those of the images alone."""
        batch = data.images[idx]
        if self.spatial is not None:
            batch = torch.cat([batch, self.spatial[idx]], dim=1)  # (B, C + 1, S, S)
        x = augment(batch.to(device), data_cfg, generator)
        c = data.images.shape[1]
        spatial = (x[:, c:] + 1) / 2 if self.spatial is not None else None  # (B, 1, H, W): 1 on an edge
        return x[:, :c], self(idx, device, spatial=spatial)

    def __call__(self, idx: torch.Tensor, device, *, data_cfg=None, spatial: torch.Tensor | None = None) -> Cond:
        """The Cond of images idx; their edge maps centre-cropped as data.to_model crops the images
        (data_cfg), unless `spatial` gives them already augmented."""
        fields = {}
        if self.labels is not None:
            fields["labels"] = self.labels[idx].to(device)
        if self.text is not None:
            fields.update(text=self.text.pooled[idx].to(device), text_tokens=self.text.tokens[idx].to(device),
                          text_mask=self.text.mask[idx].to(device))
        if self.spatial is not None:
            fields["spatial"] = spatial if spatial is not None else (to_model(self.spatial[idx].to(device), data_cfg) + 1) / 2
        return Cond(**fields)


def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    # Stateless: the order of epoch e depends only on (seed, e), so a resumed run replays it exactly.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _batch_indices(train_idx: torch.Tensor, step: int, batch: int, seed: int) -> torch.Tensor:
    n = len(train_idx)
    out = []
    for pos in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(pos, n)
        out.append(_epoch_perm(n, seed, epoch)[i] if n > 1 else torch.tensor(0))
    return train_idx[torch.stack(out)]


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


def _validation_loss(model, data: ImageSet, conds: _Conditions, val_idx: torch.Tensor, cfg: RunConfig, device) -> float:
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 12345)  # same noise every time
    idx = val_idx[: cfg.train.val_images]
    total, count = 0.0, 0
    for chunk in idx.split(cfg.train.batch_size):
        x = to_model(data.images[chunk].to(device), cfg.data)
        total += float(model.validation_loss(x, conds(chunk, device, data_cfg=cfg.data), gen).sum())
        count += len(chunk)
    return total / max(count, 1)


def _logged_lr(model, figures: dict[str, float]) -> float:
    """The learning rate the step used: the family's own figure when its step reports one (a family
    whose optimisers take turns, like the transformer's two stages), else the first optimiser's."""
    if "lr" in figures:
        return float(figures["lr"])
    return next(iter(model.optimizers().values())).param_groups[0]["lr"]


GRID_CLASSES = 16  # sample grids show one row for each of the first 16 classes


def _save_samples(ema, data: ImageSet, conds: _Conditions, cfg: RunConfig, run_dir: Path, step: int) -> Path:
    n = cfg.train.sample_count
    scale = 2 if cfg.data.image_size <= 32 else 1
    if conds.spatial is not None:
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


def _init_from(model, ema, source: str) -> list[str]:
    """Copy matching weights from another run or a bundled model (transfer learning); returns skipped names."""
    run_dir = resolve_run(source)
    state = load_weights(run_dir)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    ema.load_state_dict(model.state_dict())
    return sorted(set(own) - set(usable))


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
) -> TrainResult:
    """Train (or resume) the run in run_dir; stop_at ends early at that step as an interruption would.

    evaluator(ema_model, step) -> figures (e.g. {"fid": ..., "kid": ...}) is called every
    cfg.train.eval_every steps; the loop knows nothing of how they are computed. max_seconds: a
    wall-clock budget for this call; when it runs out the loop checkpoints and stops ("time-budget").

    The run folder is locked for the whole call: a second training of the same run fails at once with
    a RunLockedError naming the owner. A folder this call creates is removed again when the call fails
    before its first checkpoint (no data, a model too big to allocate), so no half-made run is left.
    """
    run_dir = Path(run_dir)
    dev = pick_device(device)
    cfg.model_config()  # a bad model field fails here, before any folder exists
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as stale_owner:
        if stale_owner:
            tqdm.write(f"taking over the stale lock of {run_dir}: {stale_owner} ended without releasing it")
        try:
            return _train_locked(cfg, run_dir, dev, init_from=init_from, progress=progress, stop_at=stop_at,
                                 cache_dir=cache_dir, evaluator=evaluator, max_seconds=max_seconds)
        except BaseException:
            if created and not list_checkpoints(run_dir / "checkpoints"):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _train_locked(
    cfg: RunConfig,
    run_dir: Path,
    dev: torch.device,
    *,
    init_from: str | None,
    progress: bool,
    stop_at: int | None,
    cache_dir: str | Path | None,
    evaluator: Callable[[torch.nn.Module, int], dict[str, float]] | None,
    max_seconds: float | None,
) -> TrainResult:
    """train() itself, run while this process holds the run folder's lock."""
    ckpt_dir = run_dir / "checkpoints"
    # Only a training writes in these folders, and none but this one can run now: any temporary file
    # there is what a killed write left behind.
    removed = [*remove_stale_temporaries(ckpt_dir), *remove_stale_temporaries(run_dir / "samples")]
    if removed:
        tqdm.write(f"removed {len(removed)} temporary file(s) an interrupted write left in {run_dir}")
    existing = list_checkpoints(ckpt_dir)
    if (run_dir / "config.json").exists():
        saved = RunConfig.load(run_dir / "config.json")
        # Compare the built model configs, not the raw dicts: JSON turns tuples such as channel_mult into lists.
        if existing and (saved.family, saved.model_config(), saved.data) != (cfg.family, cfg.model_config(), cfg.data):
            raise ValueError(
                f"{run_dir} already holds a {saved.family} run with another model or data config; "
                "choose another --name to start afresh (or delete the folder)"
            )
    cfg = cfg.resolved()
    atomic_write_text(run_dir / "config.json", cfg.to_json())

    data = load_dataset(cfg.data, cache_dir=cache_dir, progress=progress)
    if data.skipped:
        tqdm.write(skipped_note(data.skipped, cfg.data))
    split_path = run_dir / "split.json"
    if split_path.exists():
        split = json.loads(split_path.read_text())
        train_idx, val_idx = torch.tensor(split["train"], dtype=torch.long), torch.tensor(split["val"], dtype=torch.long)
    else:
        train_idx, val_idx = split_indices(len(data), cfg.data.val_fraction, cfg.data.split_seed)
        atomic_write_text(split_path, json.dumps({"seed": cfg.data.split_seed, "train": train_idx.tolist(), "val": val_idx.tolist()}))
    atomic_write_text(run_dir / "classes.json", json.dumps(data.class_names))
    model_classes = getattr(cfg.model_config(), "num_classes", 0)
    if model_classes and data.num_classes > model_classes:
        raise ValueError(f"the data has {data.num_classes} classes but the model config allows {model_classes}")

    model = build_model(cfg, dev)
    conds = _Conditions(data, model, cache_dir, progress)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizers = model.optimizers()
    start, best_val, bad_vals = 0, math.inf, 0
    saved_elapsed = None
    if existing:
        parts, state = load_checkpoint(existing[-1])
        load_state(model, parts.get("model", {}), existing[-1].with_suffix(".safetensors"))
        load_state(ema, parts.get("ema", {}), existing[-1].with_suffix(".safetensors"))
        for name, opt in optimizers.items():
            # an optimiser that has not stepped yet (the transformer's prior during stage 1) holds no tensors
            opt.load_state_dict(unflatten_state(state["optim"][name], parts.get(f"optim.{name}", {})))
        model.train_generator.set_state(parts["rng"]["train_generator"])
        torch.set_rng_state(parts["rng"]["torch_cpu"])
        if dev.type == "cuda" and "torch_cuda" in parts["rng"]:
            torch.cuda.set_rng_state(parts["rng"]["torch_cuda"])
        start, best_val, bad_vals = state["step"], state.get("best_val", math.inf), state.get("bad_vals", 0)
        saved_elapsed = state.get("elapsed_s")  # absent from checkpoints written before it was stored
        tqdm.write(f"resuming {run_dir} from step {start}")
    elif init_from:
        skipped = _init_from(model, ema, init_from)
        tqdm.write(f"initialised from {init_from}" + (f" (not copied, shapes differ: {', '.join(skipped)})" if skipped else ""))

    log = _MetricsLog(run_dir, start)
    # training seconds of the earlier calls: elapsed_s counts on from them
    elapsed_before = float(saved_elapsed) if saved_elapsed is not None else log.last_elapsed_s
    last_ckpt = existing[-1].with_suffix(".safetensors") if existing else None

    def checkpoint(step: int) -> Path:
        optim_parts, optim_skel = {}, {}
        for name, opt in optimizers.items():
            tensors: dict[str, torch.Tensor] = {}
            optim_skel[name] = flatten_state(opt.state_dict(), "s", tensors)
            optim_parts[f"optim.{name}"] = tensors
        rng = {"torch_cpu": torch.get_rng_state(), "train_generator": model.train_generator.get_state()}
        if dev.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        return save_checkpoint(
            ckpt_dir,
            step,
            {"model": model.state_dict(), "ema": ema.state_dict(), "rng": rng, **optim_parts},
            {"images_seen": step * cfg.train.batch_size, "best_val": best_val, "bad_vals": bad_vals, "optim": optim_skel,
             "device": str(dev), "elapsed_s": elapsed_before + time.perf_counter() - t0},
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
        tqdm.write("interrupt: saving a checkpoint after this step (press Ctrl-C again to abort at once)")

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (e.g. inside a server worker): no handler
        old_handler = None

    losses: dict[int, float] = {}
    stopped = "finished"
    end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
    # tqdm's own ETA knows nothing of --max-minutes: the postfix's left= says which limit ends the run first
    bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True, desc=run_dir.name,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]")
    figures_shown: dict[str, str] = {}  # the last in-training FID/KID, kept on the bar
    t0 = time.perf_counter()
    window_t, window_imgs, window_loss, window_gn, window_n = time.perf_counter(), 0, 0.0, 0.0, 0
    step = start
    try:
        while step < end:
            idx = _batch_indices(train_idx, step, cfg.train.batch_size, cfg.train.seed)
            aug_gen = torch.Generator(device=dev).manual_seed(cfg.train.seed * 7919 + step)
            x, cond = conds.augmented(data, idx, cfg.data, aug_gen, dev)
            figures = model.training_step(x, cond, step)
            decay = min(cfg.train.ema_decay, (1 + step) / (10 + step))
            _ema_update(ema, model, decay)
            losses[step] = figures["loss"]
            if not math.isfinite(figures["loss"]):
                raise FloatingPointError(f"loss became {figures['loss']} at step {step}; lower --lr or check the data")
            step += 1
            window_imgs += len(idx)
            window_loss += figures["loss"]
            window_gn += figures.get("grad_norm", 0.0)
            window_n += 1
            elapsed = time.perf_counter() - t0
            eta = eta_seconds(end - step, elapsed / (step - start), None if max_seconds is None else max_seconds - elapsed)
            bar.set_postfix({**train_postfix(window_loss / window_n, window_imgs, time.perf_counter() - window_t, eta),
                             **figures_shown}, refresh=False)
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
                val = _validation_loss(ema, data, conds, val_idx, cfg, dev)
                row = row or {"step": step, "images": step * cfg.train.batch_size}
                row["val_loss"] = f"{val:.6f}"
                if cfg.train.early_stop_on == "val_loss":
                    if val < best_val - 1e-6:
                        best_val, bad_vals = val, 0
                    else:
                        bad_vals += 1
            if evaluator is not None and cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == end):
                figures = evaluator(ema, step)
                row = row or {"step": step, "images": step * cfg.train.batch_size}
                row.update({k: f"{v:.6g}" for k, v in figures.items() if k in METRIC_COLUMNS})
                figures_shown = {k: f"{v:.3g}" for k, v in figures.items() if k in ("fid", "kid")}
                watched = figures.get(cfg.train.early_stop_on)
                if watched is not None:
                    if watched < best_val - 1e-6:
                        best_val, bad_vals = watched, 0
                    else:
                        bad_vals += 1
            if row is not None:
                log.write(row)
            if step % cfg.train.sample_every == 0 or step == end:
                _save_samples(ema, data, conds, cfg, run_dir, step)
            if cfg.train.patience and bad_vals >= cfg.train.patience:
                stopped = "early-stopped"
                tqdm.write(f"early stop at step {step}: no better {cfg.train.early_stop_on} in {bad_vals} evaluations")
                last_ckpt = checkpoint(step)
                break
            if step % cfg.train.ckpt_every == 0 or step == end or interrupted["flag"]:
                last_ckpt = checkpoint(step)
            if interrupted["flag"]:
                stopped = "interrupted"
                break
            if max_seconds is not None and step < end and time.perf_counter() - t0 > max_seconds:
                stopped = "time-budget"
                _save_samples(ema, data, conds, cfg, run_dir, step)
                last_ckpt = checkpoint(step)
                break
        if stop_at is not None and step < cfg.train.steps and stopped == "finished":
            stopped = "interrupted"
    finally:
        bar.close()
        log.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    return TrainResult(run_dir, step, stopped, losses, last_ckpt)
