"""Time to quality: FID after 2, 5, 10 and 20 minutes of training on a folder of colour photos, ours against
diffusers' UNet2DModel trained as its unconditional example trains it.

Data: a folder of 510 colour photo crops in three classes (bench/photos.py: cat, tissue, galaxies, made from
  scikit-image's own photos, in no bundled data set), trained and scored at 32x32.
Ours (one line each in CONFIGS): `pixelforge train PHOTOS --name N --image-size 32 --minutes M --seed 0`
  in a subprocess, a fresh run per budget (`minutes`; the planner plans for the budget), the same with
  `--init-from none` (`scratch`), with `--precision fp32` (`fp32`) and with `--batch-size 32` (`batch32`);
  `readme`: the defaults of a run of steps (`--steps 10000`, nothing planned), one run continued budget by
  budget with `--max-minutes` of the difference. The budget is training time as `--minutes` counts it
  (metrics.csv's elapsed_s: steps and the validations, grids and checkpoints between them; not data
  preparation, the planner's timing or the final checkpoint); each subprocess's wall time and CPU time
  (getrusage of children) are recorded beside it.
Latent (`latent`): `minutes` with `--set latent=ae-32`, diffusion in the 4x8x8 latents of the bundled ae-32
  autoencoder; the planner sizes the UNet for the latents and trains it from scratch (base-32's pixel UNet does
  not fit them). docs/latent.md gives the FID of ae-32's own reconstructions of the folder: the floor it cannot beat.
Peer (`peer`): diffusers' UNet2DModel in our layout (three levels of DownBlock2D / UpBlock2D, attention in the
  middle block; bench/train_speed_peer.py's candidates) with the parameter count closest to PEER_PARAMETERS,
  DDPMScheduler (1000 steps, linear betas), epsilon-MSE, AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6),
  cosine schedule with 500 warm-up steps over 100 epochs, batch 16, random horizontal flips, EMA (inv_gamma 1,
  power 0.75, max decay 0.9999), clipping at 1, fp32, torch.manual_seed(0); unconditional. The images are the
  folder as pixelforge prepares it at 32x32 (pixelforge.data.load_dataset: the same pixels as ours). One run;
  at each budget mark of training time (the clock paused while a copy is taken) the EMA weights are kept.
Sampling: SAMPLES images per (config, budget), seeds 0..n-1, 35 network evaluations each: ours with the
  run's own sampling defaults (a budget run's: Euler with 35 steps; a run of steps': Heun with 18 steps)
  through pixelforge.load(...).generate_tensor, labels balanced over the classes, guidance 1 (no
  classifier-free guidance, which would double the evaluations); the peer DDIM with 35 steps (DDIMPipeline).
  `--sampling SAMPLER:STEPS[:RHO[:GUIDANCE]]` samples ours with that instead (the row's config is then e.g.
  `minutes+heun18`; a guidance other than 1 counts two evaluations a step, `euler:17:2:2` is 34),
  and `--score-only` scores the runs a previous invocation trained, without training again.
Scoring: FID, KID and precision/recall with the Inception extractor against all the folder's images at
  32x32 (pixelforge.metrics.evaluate.evaluate_images, what `pixelforge evaluate` uses), and for labelled
  samples the class agreement: the share whose nearest folder image in Inception features is of their class.
  A grid per (config, budget) is saved in --out (ours: a row per class).
Results merge into --out/results.json, keyed by config and budget, so configs run in separate invocations
  end in one table. Both sides use --threads torch threads (OMP_NUM_THREADS in the subprocesses). `--seed S`
  trains both sides from seed S instead of 0 (runs and rows CONFIG-sS), for a second draw of a training run.

Usage:
    .venv/bin/python bench/time_to_quality.py --threads 2                     # every config, 2/5/10/20 min
    .venv/bin/python bench/time_to_quality.py --configs peer --budgets 2,5    # adds to the same results.json
    .venv/bin/python bench/time_to_quality.py --quick                         # smoke run; figures mean nothing
    .venv/bin/python bench/time_to_quality.py --configs minutes --score-only --sampling heun:18   # the same runs, Heun
    .venv/bin/python bench/time_to_quality.py --configs minutes,peer --budgets 10 --seed 1   # rows minutes-s1, peer-s1
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):  # run from a checkout without `pip install -e .`; sibling bench modules
    if _p not in sys.path:
        sys.path.insert(0, _p)

import photos as bench_photos  # noqa: E402  (bench/photos.py)
import train_speed_peer  # noqa: E402  (bench/train_speed_peer.py)

from pixelforge.data import DataConfig, load_dataset  # noqa: E402
from pixelforge.device import pick_device  # noqa: E402
from pixelforge.files import atomic_target  # noqa: E402
from pixelforge.images import make_grid, to_pil  # noqa: E402
from pixelforge.metrics.evaluate import EvalOptions, balanced_labels, evaluate_images, to_uint8  # noqa: E402
from pixelforge.precision import describe_cpu  # noqa: E402
from pixelforge.progress import image_bar, stage_bar  # noqa: E402

IMAGE_SIZE = 32
SEED = 0
EVALS = 35  # network evaluations per sample on both sides
GUIDANCE = 1.0  # ours: no classifier-free guidance (it would double the evaluations)
PEER_DDIM_STEPS = 35  # DDIM: one evaluation a step
PEER_PARAMETERS = 1_600_000  # the peer's size: the candidate closest to this
PEER_BATCH = 16
PEER_EPOCHS = 100  # the example's num_epochs: the length of its cosine schedule
PEER_WARMUP = 500
GRID_COLS = 10
DEFAULT_BUDGETS = (2.0, 5.0, 10.0, 20.0)
QUICK_BUDGETS = (0.1, 0.2)
QUICK_SAMPLES = 30


@dataclass(frozen=True)
class Config:
    """How one config trains: "budget" (a fresh `--minutes` run per budget), "continued" (one run of steps
    continued with `--max-minutes` of each budget's difference) or "peer" (diffusers, in this process);
    `args`: what it adds to the train command."""

    kind: str
    args: tuple[str, ...] = ()
    note: str = ""


CONFIGS: dict[str, Config] = {
    "minutes": Config("budget", (), "our default: --minutes M, nothing else given"),
    "scratch": Config("budget", ("--init-from", "none"), "--minutes M without the base model"),
    "fp32": Config("budget", ("--precision", "fp32"), "--minutes M in fp32"),
    "latent": Config("budget", ("--set", "latent=ae-32"), "--minutes M in the latents of the bundled ae-32 autoencoder"),
    "batch32": Config("budget", ("--batch-size", "32"), "--minutes M at batch 32 (what the plan takes on a CPU)"),
    "hflip": Config("budget", ("--hflip",), "--minutes M with random horizontal flips (as the peer flips)"),
    "cooldown": Config("budget", ("--cooldown", "0.2"),
                       "--minutes M with the rate falling to 0 over the last 20% of the steps"),
    "lownoise": Config("budget", ("--set", "P_mean=-0.4"),
                       "--minutes M at P_mean -0.4 (the plan's on colour images since 2026-12-01; the family's 0.2)"),
    "midnoise": Config("budget", ("--set", "P_mean=-0.8"), "--minutes M at P_mean -0.8 (between lownoise and edmnoise)"),
    "edmnoise": Config("budget", ("--set", "P_mean=-1.2"), "--minutes M with EDM's own noise levels (P_mean -1.2)"),
    "labellr": Config("budget", ("--set", "label_lr_scale=10"),
                      "--minutes M with the label embedding learning at 10 times the run's rate"),
    "gan": Config("budget", ("--model", "gan"), "a GAN: --model gan --minutes M"),
    "gan-latent": Config("budget", ("--model", "gan", "--set", "latent=ae-32"),
                         "a GAN in the latents of the bundled ae-32 autoencoder"),
    "readme": Config("continued", ("--steps", "10000"), "the defaults of a run of steps, stopped at each budget"),
    "peer": Config("peer", (), "diffusers UNet2DModel + DDPMScheduler, the unconditional example's loop"),
}


def fmt(minutes: float) -> str:
    """A budget as the command line takes it: 2, 0.1, 2.5."""
    return f"{minutes:g}"


def seeded(config: str, seed: int = SEED) -> str:
    """A config's name with its training seed where that is not SEED: `minutes`, `minutes-s1`."""
    return config if seed == SEED else f"{config}-s{seed}"


def base_config(label: str) -> str:
    """The CONFIGS name a row's label starts with: `minutes` of `minutes-s1+heun18`."""
    name = label.split("+")[0]
    head, _, tail = name.rpartition("-s")
    return head if head in CONFIGS and tail.isdigit() else name


def run_name(config: str, minutes: float | None = None, seed: int = SEED) -> str:
    name = seeded(config, seed)
    return name if minutes is None else f"{name}-{fmt(minutes).replace('.', 'p')}min"


def train_commands(config: str, photos: str | Path, runs_dir: str | Path, budgets: list[float],
                   device: str = "auto", seed: int = SEED) -> list[tuple[float, str, list[str]]]:
    """(budget, run name, `pixelforge` arguments) of each training call of one of our configs, in order:
    a fresh run per budget, or one run continued with --max-minutes of the difference to the budget before.
    `seed` is the training's (--seed); a seed other than SEED names the runs CONFIG-sSEED."""
    cfg = CONFIGS[config]
    if cfg.kind == "peer":
        raise ValueError(f"config {config!r} is the peer: it trains in this process, not with pixelforge train")
    base = ["train", str(photos), "--runs-dir", str(runs_dir), "--image-size", str(IMAGE_SIZE), "--seed", str(seed),
            "--device", device]
    out = []
    before = 0.0
    for minutes in sorted(budgets):
        if cfg.kind == "budget":
            name = run_name(config, minutes, seed)
            out.append((minutes, name, [*base, "--name", name, "--minutes", fmt(minutes), *cfg.args]))
        else:
            name = run_name(config, seed=seed)
            out.append((minutes, name, [*base, "--name", name, *cfg.args, "--max-minutes", fmt(round(minutes - before, 6))]))
        before = minutes
    return out


def read_metrics(run_dir: Path) -> dict:
    """The last step, images seen and training seconds (elapsed_s) a run's metrics.csv records."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no metrics.csv (did the training start?)")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step")]
    if not rows:  # a budget too short to reach the first metrics row (log_every steps)
        return {"steps": None, "images": None, "train_s": None}
    last = rows[-1]
    elapsed = next((float(r["elapsed_s"]) for r in reversed(rows) if r.get("elapsed_s")), None)
    return {"steps": int(last["step"]), "images": int(float(last["images"])) if last.get("images") else None,
            "train_s": elapsed}


def machine() -> dict:
    return {"load": list(os.getloadavg()), "nproc": os.cpu_count(), "cpu": describe_cpu()}


def run_pixelforge(argv: list[str], threads: int) -> dict:
    """One `pixelforge` call in a subprocess with `threads` torch threads: its exit status, last error line,
    wall and CPU seconds (getrusage of children) and the load average before and after."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # stdout (the plan) goes straight through; stderr (the training's progress bar, an error line) is passed on
    # as it comes and its tail kept for the error
    proc = subprocess.Popen([sys.executable, "-m", "pixelforge.cli", *argv], env=env, stderr=subprocess.PIPE)
    tail = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-8192:]
    rc = proc.wait()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line.strip() for line in tail.decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines[-1:]
    return {"rc": rc, "error": errors[-1] if rc and errors else None,
            "wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "load_before": list(load_before), "load_after": list(os.getloadavg())}


# --- scoring -----------------------------------------------------------------------------------------------


class Scorer:
    """FID, KID and precision/recall of uint8 samples against the folder's images at IMAGE_SIZE, with Inception; and
    the class agreement of labelled samples: the share whose nearest folder image (Inception features, L2) is of
    the sample's class (1 for the folder's own images, each against the others, on both bench folders)."""

    def __init__(self, photos: Path, device: str):
        from pixelforge.data import DataConfig, load_dataset
        from pixelforge.metrics.features import load_extractor

        self.extractor = load_extractor("inception", device=device)
        # the folder as `pixelforge evaluate --real` loads it (evaluate.load_real), with its class of each image
        data = load_dataset(DataConfig(source=str(photos), image_size=IMAGE_SIZE, channels=3, val_fraction=0.0),
                            progress=False)
        self.real, self.real_labels = data.images, data.labels  # (N, 3, 32, 32) uint8, (N,) int64 or None
        self._real_features: torch.Tensor | None = None  # (N, 2048), on first use

    def __call__(self, fake: torch.Tensor, labels: list[int] | None = None) -> dict:
        figures = evaluate_images(fake, self.real, self.extractor, options=EvalOptions(), real_label="photos")
        return {**{k: figures[k] for k in ("fid", "kid", "precision", "recall", "extractor", "n_fake", "n_real")},
                "class_agreement": self.class_agreement(fake, labels)}

    def class_agreement(self, fake: torch.Tensor, labels: list[int] | None) -> float | None:
        """Share of the samples whose nearest folder image is of their label's class; None without labels on
        either side (the peer is unconditional)."""
        if labels is None or self.real_labels is None:
            return None
        if self._real_features is None:
            self._real_features = torch.as_tensor(self.extractor.features(self.real)).float()
        fake_features = torch.as_tensor(self.extractor.features(fake)).float()  # (n, 2048)
        near = self.real_labels[torch.cdist(fake_features, self._real_features).argmin(1)]
        return float((near == torch.as_tensor(labels)).float().mean())


def class_rows(images: torch.Tensor, labels: list[int] | None, cols: int = GRID_COLS) -> list:
    """PIL images for a grid: a row of `cols` per class where labels are given, else the first rows."""
    if not labels:
        return to_pil(images[: 3 * cols])
    picked = []
    for k in sorted(set(labels)):
        picked += [i for i, label in enumerate(labels) if label == k][:cols]
    return to_pil(images[picked])


def evaluations(sampler: str, steps: int, guidance: float = 1.0) -> int:
    """Network evaluations of one sample: Heun's last step is a single Euler step (2 * steps - 1); every
    other solver here evaluates the network once a step. Classifier-free guidance (guidance != 1) runs the
    conditional and the unconditional half in one batch of twice the size: two evaluations a call."""
    calls = 2 * steps - 1 if sampler == "heun" else steps
    return calls * (2 if guidance != 1.0 else 1)


def parse_sampling(text: str) -> dict:
    """--sampling SAMPLER:STEPS[:RHO[:GUIDANCE]] -> {"sampler": ..., "steps": ..., "rho": ..., "guidance": ...} (rho:
    the Karras schedule's, 7, the family's default, where not given; guidance: classifier-free, GUIDANCE where not
    given)."""
    from pixelforge.sampling.solvers import SAMPLERS

    name, steps, rho, guidance, *rest = text.split(":") + ["", "", ""]

    def number(field: str, default: float) -> float | None:
        try:
            return float(field) if field else default
        except ValueError:
            return None

    rho, guidance = number(rho, 7.0), number(guidance, GUIDANCE)
    if (name not in SAMPLERS or not steps.isdigit() or int(steps) < 1 or rho is None or not rho >= 1
            or guidance is None or not guidance >= 0 or any(rest)):
        raise ValueError(f"--sampling: expected SAMPLER:STEPS[:RHO[:GUIDANCE]] with SAMPLER one of {', '.join(SAMPLERS)}, "
                         f"RHO at least 1 and GUIDANCE at least 0, got {text!r}")
    return {"sampler": name, "steps": int(steps), "rho": rho, "guidance": guidance}


def sampling_label(sampling: dict) -> str:
    """heun18, or euler35rho2 where rho is not the default 7, euler17rho2g2 with guidance 2."""
    guidance = sampling.get("guidance", GUIDANCE)
    return (f"{sampling['sampler']}{sampling['steps']}" + (f"rho{sampling['rho']:g}" if sampling["rho"] != 7.0 else "")
            + (f"g{guidance:g}" if guidance != GUIDANCE else ""))


def sample_ours(run_dir: Path, n: int, device: str, sampling: dict | None = None) -> tuple[torch.Tensor, list[int] | None, dict]:
    """n images (n, 3, 32, 32) in [-1, 1] of a run through the public API, labels balanced over its classes,
    with the run's own sampling defaults (sampler, steps, schedule) or `sampling` over them; guidance GUIDANCE.
    Also the options used, with their network evaluations per image."""
    import pixelforge

    g = pixelforge.load(run_dir, device=device)
    # guidance where the family takes it (a GAN draws in one call: no sampler, no guidance)
    sampling = dict(sampling or {})
    guidance = sampling.pop("guidance", GUIDANCE)
    options = g.resolve_options(**sampling, **({"guidance": guidance} if "guidance" in g.option_specs else {}))
    labels = balanced_labels(n, g.num_classes)
    bar, callback = image_bar(n, f"sampling {run_dir.name}")
    images, _ = g.generate_tensor(n, labels=labels, seed=SEED, callback=callback, **options)  # (n, 3, 32, 32)
    callback(n, n)  # a family that reports no progress still ends its bar at n
    bar.close()
    calls = (evaluations(options["sampler"], options["steps"], options.get("guidance", GUIDANCE)) if "sampler" in options
             else 1)  # 1: one generator call
    return images, labels, {**options, "evaluations": calls}


# --- the peer ----------------------------------------------------------------------------------------------


def peer_config(target: int = PEER_PARAMETERS, image_size: int = IMAGE_SIZE) -> tuple[dict, int]:
    """train_speed_peer's UNet2DModel candidate (our layout) whose parameter count is closest to `target`."""
    from diffusers import UNet2DModel

    return min(((cfg, train_speed_peer.count(lambda cfg=cfg: UNet2DModel(**cfg)))
                for cfg in train_speed_peer.peer_candidates(image_size)), key=lambda pair: abs(pair[1] - target))


class PeerTrainer:
    """diffusers' unconditional example's loop: train_speed_peer.PeerStep (DDPM noise, epsilon-MSE, clipping,
    AdamW) plus its cosine schedule and EMAModel, over a shuffled loader with random horizontal flips."""

    def __init__(self, config: dict, images: torch.Tensor, device: torch.device, *, batch_size: int = PEER_BATCH,
                 epochs: int = PEER_EPOCHS, warmup: int = PEER_WARMUP, seed: int = SEED):
        from diffusers import UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.step_fn = train_speed_peer.PeerStep(config, device, seed=seed)  # torch.manual_seed(seed), then the UNet
        self.model = self.step_fn.model
        self.device = device
        data = torch.utils.data.TensorDataset(images)  # uint8 (N, 3, H, W)
        self.loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                                  generator=torch.Generator().manual_seed(seed))
        self.lr_scheduler = get_scheduler("cosine", optimizer=self.step_fn.optimizer, num_warmup_steps=warmup,
                                          num_training_steps=len(self.loader) * epochs)
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                            model_cls=UNet2DModel, model_config=self.model.config)
        self.flips = torch.Generator().manual_seed(seed + 2)
        self.steps = 0
        self.images = 0

    def batches(self):
        """Endless batches (B, 3, H, W) in [-1, 1], each image flipped left-right with probability 1/2."""
        while True:
            for (batch,) in self.loader:
                x = batch.float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
                flip = torch.rand(len(x), generator=self.flips) < 0.5  # (B,)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                yield x.to(self.device)

    def step(self, x: torch.Tensor) -> float:
        loss = self.step_fn(x)
        self.lr_scheduler.step()
        self.ema.step(self.model.parameters())
        self.steps += 1
        self.images += len(x)
        return loss

    def ema_copy(self) -> torch.nn.Module:
        """A copy of the network holding the EMA weights (the training weights are left as they are)."""
        snapshot = copy.deepcopy(self.model).eval()
        self.ema.copy_to(snapshot.parameters())
        return snapshot


def sample_peer(model: torch.nn.Module, n: int, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """n images (n, 3, H, W) uint8 with DDIM (35 steps, eta 0) from the DDPM config; image i from seed i."""
    from diffusers import DDIMPipeline, DDPMScheduler

    pipe = DDIMPipeline(unet=model, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")).to(device)
    pipe.set_progress_bar_config(disable=True)
    out = []
    with stage_bar(n, "sampling peer") as bar:
        for start in range(0, n, batch_size):
            gens = [torch.Generator().manual_seed(SEED + i) for i in range(start, min(n, start + batch_size))]
            arr = pipe(batch_size=len(gens), generator=gens, num_inference_steps=PEER_DDIM_STEPS, eta=0.0,
                       output_type="np").images  # (b, H, W, 3) in [0, 1]
            out.append(torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1)
            bar.update(len(gens))
    return to_uint8(torch.cat(out))  # the same rounding as ours


def train_peer(budgets: list[float], photos: Path, device: torch.device, work: Path, seed: int = SEED) -> list[dict]:
    """One peer run from torch.manual_seed(seed); at each budget mark of training time a copy of the EMA weights
    (saved as safetensors in `work`), with the steps, images, training/wall/CPU seconds and load there."""
    from safetensors.torch import save_file

    data = load_dataset(DataConfig(source=str(photos), image_size=IMAGE_SIZE, channels=3, val_fraction=0.0),
                        cache_dir=work / "cache", progress=False)
    config, params = peer_config()
    trainer = PeerTrainer(config, data.images, device, seed=seed)
    marks = sorted(budgets)
    out: list[dict] = []
    load_before = os.getloadavg()
    train_s = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    batches = trainer.batches()
    with stage_bar(round(marks[-1] * 60), "peer training", unit="s") as bar:
        while marks:
            t = time.perf_counter()
            trainer.step(next(batches))
            train_s += time.perf_counter() - t  # the loop's time; snapshots are outside it
            bar.update(min(int(train_s), bar.total) - bar.n)
            if train_s >= marks[0] * 60:
                snapshot = trainer.ema_copy()
                path = work / seeded("peer", seed) / f"ema-{fmt(marks[0])}min.safetensors"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in snapshot.state_dict().items()}, str(path))
                out.append({"budget_min": marks.pop(0), "model": snapshot, "steps": trainer.steps, "images": trainer.images,
                            "train_s": train_s, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                            "load_before": list(load_before), "load_after": list(os.getloadavg()),
                            "parameters": params, "peer_config": config, "weights": str(path)})
    return out


# --- results -----------------------------------------------------------------------------------------------


def row_key(config: str, minutes: float) -> str:
    return f"{config}@{fmt(minutes)}"


def merge_results(path: Path, meta: dict, rows: dict[str, dict]) -> dict:
    """results.json with `rows` added (a row of the same config and budget replaced): configs run in separate
    invocations end in one file. Each invocation's settings are kept in `runs`."""
    results = {"runs": [], "rows": {}}
    if path.is_file():
        results = json.loads(path.read_text())
        results.setdefault("runs", [])
        results.setdefault("rows", {})
    if meta not in results["runs"]:  # saved after every row: one entry per invocation
        results["runs"].append(meta)
    results["rows"].update(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str))
    return results


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: dict[str, dict]) -> str:
    """A markdown table of the rows, in CONFIGS order then by budget."""
    order = {name: i for i, name in enumerate(CONFIGS)}  # a row CONFIG+SAMPLING sorts with CONFIG
    lines = ["| config | budget min | steps | images seen | FID | precision | recall | class agreement | train s | wall s | "
             "cpu s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows.values(), key=lambda r: (order.get(base_config(r["config"]), len(order)), r["config"], r["budget_min"])):
        load = f"{r['load_before'][0]:.1f}/{r['load_after'][0]:.1f}" if r.get("load_before") else "-"
        if r.get("error"):
            lines.append(f"| {r['config']} | {fmt(r['budget_min'])} | skipped: {r['error']} | | | | | | | | | {load} |")
            continue
        lines.append(f"| {r['config']} | {fmt(r['budget_min'])} | {_num(r.get('steps'), 'd')} | {_num(r.get('images'), ',')} | "
                     f"{_num(r.get('fid'), '.2f')} | {_num(r.get('precision'), '.3f')} | {_num(r.get('recall'), '.3f')} | "
                     f"{_num(r.get('class_agreement'), '.3f')} | "
                     f"{_num(r.get('train_s'), '.1f')} | {_num(r.get('wall_s'), '.1f')} | {_num(r.get('cpu_s'), '.1f')} | {load} |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------------


def parse_list(text: str, what: str, cast):
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{what}: expected a comma-separated list, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=None, help="the folder to train on (default: made by bench/photos.py in --work)")
    p.add_argument("--work", default="/tmp/pixelforge-ttq", help="runs and peer weights (default /tmp/pixelforge-ttq)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "time_to_quality"),
                   help="results.json and grids (default bench/results/time_to_quality)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--budgets", default=None, help="training minutes, comma-separated (default 2,5,10,20)")
    p.add_argument("--samples", type=int, default=None, help="samples scored per config and budget (default 300)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: all, torch.get_num_threads())")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"training seed, ours (--seed) and the peer's (torch.manual_seed) (default {SEED}); another seed "
                        "names the runs and rows CONFIG-sSEED, so seeds sit side by side. Sampling seeds stay 0..n-1")
    p.add_argument("--sampling", default=None, metavar="SAMPLER:STEPS[:RHO[:GUIDANCE]]",
                   help="sample ours with this instead of each run's defaults (e.g. heun:18, rho 7 unless given; "
                        "euler:17:2:2, classifier-free guidance 2 at two evaluations a step); rows become CONFIG+heun18")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: sample and score the runs an earlier invocation left in --work")
    p.add_argument("--quick", action="store_true", help=f"smoke run: budgets {','.join(map(fmt, QUICK_BUDGETS))} min, "
                   f"{QUICK_SAMPLES} samples; figures mean nothing")
    a = p.parse_args(argv)
    try:
        a.configs = parse_list(a.configs, "configs", str)
        a.budgets = parse_list(a.budgets, "budgets", float) if a.budgets else list(QUICK_BUDGETS if a.quick else DEFAULT_BUDGETS)
    except ValueError as e:
        p.error(str(e))
    unknown = [c for c in a.configs if c not in CONFIGS]
    if unknown or not a.configs:
        p.error(f"--configs: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(CONFIGS)}")
    if not a.budgets or any(not (b > 0) for b in a.budgets) or len(set(a.budgets)) != len(a.budgets):
        p.error(f"--budgets: distinct minutes above 0, got {a.budgets}")
    try:
        a.sampling = parse_sampling(a.sampling) if a.sampling else None
    except ValueError as e:
        p.error(str(e))
    a.samples = a.samples or (QUICK_SAMPLES if a.quick else 300)
    if a.samples < 2:
        p.error("--samples must be at least 2")
    if a.seed < 0:
        p.error(f"--seed must be 0 or more, got {a.seed}")
    a.threads = a.threads or torch.get_num_threads()
    if a.threads < 1:
        p.error("--threads must be at least 1")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    work, out = Path(a.work), Path(a.out)
    photos = Path(a.photos) if a.photos else bench_photos.make_photos(work / "photos")
    runs_dir = work / "runs"
    device = pick_device(a.device)
    print(f"time to quality: {', '.join(a.configs)} at {', '.join(map(fmt, a.budgets))} min; {a.samples} samples; "
          f"{a.threads} thread(s); {os.cpu_count()} cores; device {device}; photos {photos}"
          + ("  [--quick: figures mean nothing]" if a.quick else ""), flush=True)
    guidance = a.sampling["guidance"] if a.sampling else GUIDANCE
    ours = (f"{a.sampling['sampler']} {a.sampling['steps']} steps, rho {a.sampling['rho']:g} "
            f"({evaluations(a.sampling['sampler'], a.sampling['steps'], guidance)} evaluations)" if a.sampling
            else "each run's own sampling defaults")
    guided = ("guidance 1 (no classifier-free guidance: it would double the evaluations)" if guidance == GUIDANCE
              else f"guidance {guidance:g} (classifier-free: two evaluations a step)")
    print(f"sampling: ours {ours}, {guided}; peer DDIM {PEER_DDIM_STEPS} steps ({EVALS} evaluations)", flush=True)
    scorer = Scorer(photos, a.device)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "configs": a.configs, "budgets": a.budgets,
            "samples": a.samples, "seed": a.seed, "threads": a.threads, "device": str(device), "quick": a.quick, "photos": str(photos),
            "machine": machine(), "torch": torch.__version__, "diffusers": _version("diffusers"),
            "sampling": {"ours": a.sampling or "the run's defaults", "guidance": guidance, "peer": {"sampler": "ddim", "steps": PEER_DDIM_STEPS, "eta": 0.0},
                         "evaluations": EVALS, "guidance_note": ("guidance 1: no classifier-free guidance" if guidance == GUIDANCE
                                                                   else "classifier-free guidance: two evaluations a step")}}

    def keep(row: dict) -> None:
        """Add a row and save results.json at once, so an interrupted run keeps what it measured."""
        row["quick"] = a.quick
        rows[row_key(row["config"], row["budget_min"])] = row
        merge_results(out / "results.json", meta, {row_key(row["config"], row["budget_min"]): row})

    def finish(row: dict, images: torch.Tensor, labels: list[int] | None) -> None:
        fake = images if images.dtype == torch.uint8 else to_uint8(images)
        row.update(scorer(fake, labels))
        grid_images = class_rows(fake.float() / 127.5 - 1, labels)
        grid = out / f"{row['config']}-{fmt(row['budget_min'])}min.png"
        make_grid(grid_images, cols=GRID_COLS, scale=2).save(grid)
        row["grid"] = str(grid)
        keep(row)
        if row.get("evaluations") not in (None, EVALS):
            print(f"  note: {row['config']} sampled with {row['evaluations']} network evaluations an image, not {EVALS}",
                  flush=True)
        agreement = row.get("class_agreement")
        print(f"  {row['config']} {fmt(row['budget_min'])} min: {row.get('steps')} steps, FID {row['fid']:.2f}, "
              f"precision {row['precision']:.3f}, recall {row['recall']:.3f}"
              + (f", class agreement {agreement:.3f}" if agreement is not None else ""), flush=True)

    def label(config: str) -> str:
        """The row's config: CONFIG, CONFIG-sSEED, CONFIG+SAMPLING."""
        return seeded(config, a.seed) + (f"+{sampling_label(a.sampling)}" if a.sampling else "")

    for config in a.configs:
        if a.score_only:
            score_again(config, label(config), a, photos, runs_dir, out, finish)
            continue
        if CONFIGS[config].kind == "peer":
            try:
                import diffusers  # noqa: F401
            except ImportError:
                print("skip peer: diffusers is not installed (pip install 'pixelforge[bench]')", flush=True)
                continue
            print(f"peer: training to {fmt(max(a.budgets))} min of training time", flush=True)
            for snap in train_peer(a.budgets, photos, device, work, a.seed):
                model = snap.pop("model")
                row = {"config": seeded(config, a.seed), "seed": a.seed, **snap}
                finish(row, sample_peer(model, a.samples, device), None)
            continue
        if CONFIGS[config].kind == "continued":
            shutil.rmtree(runs_dir / run_name(config, seed=a.seed), ignore_errors=True)  # one fresh run, continued below
        spent = {"wall_s": 0.0, "cpu_s": 0.0}  # a continued run's calls so far
        for minutes, name, argv in train_commands(config, photos, runs_dir, a.budgets, a.device, a.seed):
            if CONFIGS[config].kind == "budget":
                shutil.rmtree(runs_dir / name, ignore_errors=True)  # a fresh run per budget
            print(f"{config} {fmt(minutes)} min: pixelforge {' '.join(argv)}", flush=True)
            res = run_pixelforge(argv, a.threads)
            if CONFIGS[config].kind == "continued":  # its row counts every call up to this budget
                for k in spent:
                    res[k] = spent[k] = spent[k] + res[k]
            row = {"config": label(config), "budget_min": minutes, "seed": a.seed, "command": ["pixelforge", *argv],
                   **{k: res[k] for k in ("wall_s", "cpu_s", "load_before", "load_after")}}
            if res["rc"] != 0:
                row["error"] = res["error"] or f"exit status {res['rc']}"
                keep(row)
                print(f"skip {config} at {fmt(minutes)} min: {row['error']}", flush=True)
                if CONFIGS[config].kind == "continued":
                    break  # the later budgets continue this run
                continue
            row.update(read_metrics(runs_dir / name))
            images, labels, used = sample_ours(runs_dir / name, a.samples, a.device, a.sampling)
            row.update(sampling=used, evaluations=used["evaluations"])
            finish(row, images, labels)

    results = merge_results(out / "results.json", meta, rows)
    print()
    print(table(results["rows"]))
    print(f"\nresults: {out / 'results.json'}" + ("  [--quick rows: figures mean nothing]" if a.quick else ""))
    return results


def score_again(config: str, label: str, a: argparse.Namespace, photos: Path, runs_dir: Path, out: Path,
                finish) -> None:
    """--score-only: sample and score the runs of `config` that an earlier invocation trained (its rows in
    results.json give the training's figures; the runs' metrics.csv the steps), as row `label`."""
    if CONFIGS[config].kind == "peer":
        print(f"skip {config}: --score-only scores our runs; the peer's weights are kept only as it trains", flush=True)
        return
    path = out / "results.json"
    before = json.loads(path.read_text())["rows"] if path.is_file() else {}
    commands = train_commands(config, photos, runs_dir, a.budgets, a.device, a.seed)
    if CONFIGS[config].kind == "continued":
        # one run holds only the weights of where it stopped: they are the row of the last budget asked (a run
        # of steps that ended before that budget, as `readme` at 240 min after its 10,000 steps, holds its end)
        print(f"{config}: a continued run holds only its last weights; scoring them as its {fmt(commands[-1][0])}-min row",
              flush=True)
        commands = commands[-1:]
    for minutes, name, argv in commands:
        if not (runs_dir / name / "checkpoints").is_dir():
            print(f"skip {config} at {fmt(minutes)} min: no run {runs_dir / name} to score (train it first)", flush=True)
            continue
        trained = before.get(row_key(seeded(config, a.seed), minutes), {})
        row = {"config": label, "budget_min": minutes, "seed": a.seed, "command": ["pixelforge", *argv], "scored_again": True,
               **{k: trained[k] for k in ("wall_s", "cpu_s", "load_before", "load_after") if k in trained}}
        row.update(read_metrics(runs_dir / name))
        images, labels, used = sample_ours(runs_dir / name, a.samples, a.device, a.sampling)
        row.update(sampling=used, evaluations=used["evaluations"])
        finish(row, images, labels)


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed
        return None


if __name__ == "__main__":
    main()
