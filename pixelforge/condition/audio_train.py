"""Training the audio encoder (condition/audio.py) as a spoken-digit classifier on the training voices of a
spoken-digit set, with the held-out voices measured at the end (never used to choose anything)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .audio import AudioEncoder, AudioEncoderConfig, embed_waves, load_clips, read_manifest, save_encoder


@dataclass(frozen=True)
class EncoderTrainConfig:
    """steps of batch_size clips at Adam's lr; seed fixes the weights, the batches and the augmentation.
    Augmentation (per clip, drawn from the seeded stream): a time shift of up to shift_seconds, Gaussian
    noise at up to noise of the clip's RMS, and one band of up to freq_mask mel bands zeroed (SpecAugment,
    Park et al. 2019), so the encoder does not lean on one voice's timing or formants."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    shift_seconds: float = 0.1
    noise: float = 0.1
    freq_mask: int = 6

    def __post_init__(self):
        for name, lo, hi in (("steps", 1, 1_000_000), ("batch_size", 1, 4096), ("freq_mask", 0, 64)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"audio encoder training: {name} must be an integer in [{lo}, {hi}], got {v!r}")
        for name, lo, hi in (("lr", 1e-6, 1.0), ("shift_seconds", 0.0, 1.0), ("noise", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"audio encoder training: {name} must be in [{lo}, {hi}], got {v!r}")


def _augment(waves: torch.Tensor, cfg: EncoderTrainConfig, rate: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) -> (B, T): each clip shifted in time (zeros shifted in) and with noise added."""
    b, t = waves.shape
    max_shift = int(cfg.shift_seconds * rate)
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=g)  # (B,)
    pos = torch.arange(t)[None] - shifts[:, None]  # (B, T) source sample of each output sample
    out = torch.where((pos >= 0) & (pos < t), waves.gather(1, pos.clamp(0, t - 1)), torch.zeros(()))
    rms = out.square().mean(dim=1, keepdim=True).sqrt()  # (B, 1)
    level = torch.rand(b, 1, generator=g) * cfg.noise
    return out + torch.randn(b, t, generator=g) * rms * level


def _mask_bands(logmel: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    """(B, M, F) -> the same with one band of up to `width` mel bands per clip set to the clip's mean."""
    if width <= 0:
        return logmel
    b, m, _ = logmel.shape
    w = torch.randint(0, width + 1, (b, 1), generator=g)
    start = (torch.rand(b, 1, generator=g) * (m - w + 1)).long()
    band = torch.arange(m)[None]  # (1, M)
    hit = ((band >= start) & (band < start + w))[:, :, None].to(logmel.device)  # (B, M, 1)
    return torch.where(hit, logmel.mean(dim=(1, 2), keepdim=True), logmel)


@torch.no_grad()
def accuracy(encoder: AudioEncoder, waves: torch.Tensor, digits: torch.Tensor) -> tuple[float, list[float]]:
    """(share of clips classified as their digit, per digit 0..num_classes-1 (nan where none))."""
    logits = encoder.head(embed_waves(encoder, waves)).cpu()  # (N, classes)
    right = logits.argmax(1) == digits
    per = [float(right[digits == d].float().mean()) if bool((digits == d).any()) else float("nan")
           for d in range(encoder.config.num_classes)]
    return float(right.float().mean()), per


def train_encoder(audio_set: str | os.PathLike, out: str | os.PathLike, *, config: AudioEncoderConfig = AudioEncoderConfig(),
                  train: EncoderTrainConfig = EncoderTrainConfig(), device: str | None = "auto",
                  progress: bool = True) -> dict:
    """Train an AudioEncoder on the "train" clips of a spoken-digit set, measure it on its "test" clips
    (voices held out) and write it to `out` (save_encoder). Returns its card: the data, the settings, the
    training and held-out accuracy per digit and overall, and the seconds it took."""
    from ..device import pick_device
    from ..progress import stage_bar

    dev = pick_device(device)
    manifest = read_manifest(audio_set)
    tr = load_clips(audio_set, "train", config)
    te = load_clips(audio_set, "test", config)
    g = torch.Generator().manual_seed(train.seed)
    with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the global stream untouched
        torch.manual_seed(train.seed)
        encoder = AudioEncoder(config).to(dev)
    opt = torch.optim.AdamW(encoder.parameters(), lr=train.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.lr, total_steps=train.steps, pct_start=0.1)
    bar = stage_bar(train.steps, "audio encoder", unit="step", enabled=progress)
    start = time.perf_counter()
    encoder.train()
    for _ in range(train.steps):
        idx = torch.randint(0, len(tr.waves), (train.batch_size,), generator=g)  # (B,)
        waves = _augment(tr.waves[idx], train, config.sample_rate, g)  # (B, T)
        logmel = _mask_bands(encoder.log_mel(waves.to(dev)), train.freq_mask, g)  # (B, M, F)
        loss = F.cross_entropy(encoder.classify(logmel), tr.digits[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    train_acc, _ = accuracy(encoder, tr.waves, tr.digits)
    test_acc, test_per = accuracy(encoder, te.waves, te.digits)
    card = {
        "audio_set": str(Path(audio_set).resolve()), "recipe": manifest.get("recipe", {}),
        "train_clips": len(tr.waves), "test_clips": len(te.waves),
        "train_voices": sorted({c.get("voice", "?") for c in tr.entries}),
        "held_out_voices": sorted({c.get("voice", "?") for c in te.entries}),
        "training": {**dataclasses.asdict(train), "seconds": round(seconds, 1), "device": str(dev)},
        "train_accuracy": round(train_acc, 4), "held_out_accuracy": round(test_acc, 4),
        "held_out_accuracy_per_digit": [round(a, 4) for a in test_per],
    }
    save_encoder(encoder.cpu(), out, card)
    return card
