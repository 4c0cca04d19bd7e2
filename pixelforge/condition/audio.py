"""Audio as a condition: WAV clips read and resampled, log-mel spectrograms, and a small CNN audio encoder
(log-mel -> embedding) trained in the project, whose output is `Cond.audio`.

The path a clip takes (docs/audio.md):
  read_wav (scipy.io.wavfile: PCM 8/16/32-bit or float, stereo mixed to mono) -> resampled to the encoder's
  rate (scipy.signal.resample_poly, with a warning naming both rates) -> silence trimmed and centred in a
  fixed-length window -> log-mel spectrogram (torch.stft and a Slaney-style mel filter bank) ->
  AudioEncoder -> (D,) embedding.

The encoder is first trained as a spoken-digit classifier on the training voices of a spoken-digit set
(scripts/make_spoken_digits.py), then frozen: its penultimate layer is the embedding. A diffusion model
holds a frozen copy of it (so a run folder is all sampling needs) and learns only a small map from the
embedding to its condition vector (`AudioConditioner`). Why frozen, not trained jointly with the
diffusion model: the classifier separates the digits in a few seconds of CPU training, its held-out-voice
accuracy can be measured on its own, and the diffusion loss is a weak and noisy signal for an encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import Cond

AudioInput = Union[str, os.PathLike, bytes]
ENCODER_FORMAT = 1
ENCODER_KIND = "audio-encoder"
MAX_AUDIO_SECONDS = 60.0  # a longer clip is refused: the encoder looks at about a second


# ---------------------------------------------------------------------------------------------------
# Reading and preparing a clip


def read_wav(item: AudioInput, name: str | None = None) -> tuple[np.ndarray, int, str]:
    """A WAV file (a path or its bytes) -> (samples (T,) float32 mono in [-1, 1], sample rate, SHA-256 of
    the file's bytes). PCM 8-bit (unsigned), 16- and 32-bit, and 32/64-bit float are read by scipy; several
    channels are averaged to mono. Anything else (empty, truncated, not RIFF/WAVE, no samples, over
    MAX_AUDIO_SECONDS) is a ValueError naming the file."""
    from scipy.io import wavfile

    if isinstance(item, (bytes, bytearray)):
        data, name = bytes(item), name or "the audio clip"
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        name = name or f"audio {path}"
        if not path.is_file():
            raise ValueError(f"{name}: no such file")
        data = path.read_bytes()
    else:
        raise ValueError(f"an audio clip must be a WAV file path or its bytes, got {type(item).__name__}")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{name}: not a WAV file (RIFF/WAVE header missing)" if data else f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about chunks it skips (LIST, ...): not the user's problem
            rate, samples = wavfile.read(io.BytesIO(data))
    except (ValueError, EOFError, OSError, IndexError, struct.error) as e:  # scipy's errors for damaged files
        raise ValueError(f"{name}: not a readable WAV file ({e})") from None
    if samples.size == 0:
        raise ValueError(f"{name}: the WAV file holds no samples")
    if not 1000 <= rate <= 192_000:
        raise ValueError(f"{name}: sample rate {rate} Hz is outside 1000..192000")
    if samples.shape[0] / rate > MAX_AUDIO_SECONDS:
        raise ValueError(f"{name}: {samples.shape[0] / rate:.1f} s long; at most {MAX_AUDIO_SECONDS:.0f} s")
    kind = samples.dtype
    x = samples.astype(np.float64)
    if kind == np.uint8:
        x = (x - 128.0) / 128.0
    elif kind == np.int16:
        x = x / 32768.0
    elif kind == np.int32:
        x = x / 2147483648.0
    elif kind.kind != "f":
        raise ValueError(f"{name}: unsupported WAV sample type {kind}")
    if x.ndim == 2:
        x = x.mean(axis=1)  # (T, channels) -> (T,): stereo mixed to mono
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clip(-1.0, 1.0)
    return x.astype(np.float32), int(rate), hashlib.sha256(data).hexdigest()


def resample(x: np.ndarray, rate: int, target: int, name: str = "the audio clip") -> np.ndarray:
    """(T,) at `rate` Hz -> (T',) at `target` Hz with scipy's polyphase resampler (anti-aliased), warning
    with both rates when they differ."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    warnings.warn(f"{name} is sampled at {rate} Hz: resampled to the audio encoder's {target} Hz", stacklevel=3)
    f = Fraction(target, rate)
    return resample_poly(x.astype(np.float64), f.numerator, f.denominator).astype(np.float32)


def fit_length(x: np.ndarray, length: int, *, threshold: float = 0.02, frame: int = 80) -> np.ndarray:
    """(T,) -> (length,): silence at both ends trimmed (frames of `frame` samples whose RMS is under
    `threshold` of the clip's peak), the rest centred in zeros, or its middle kept when longer. A silent
    clip gives zeros."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= 0:
        return np.zeros(length, np.float32)
    n = len(x) // frame
    if n:
        rms = np.sqrt(np.square(x[: n * frame].reshape(n, frame)).mean(axis=1))  # (n,) per frame
        loud = np.nonzero(rms >= threshold * peak)[0]
        x = x[loud[0] * frame: (loud[-1] + 1) * frame] if loud.size else x
    if len(x) >= length:
        start = (len(x) - length) // 2
        return x[start: start + length].astype(np.float32)
    out = np.zeros(length, np.float32)
    start = (length - len(x)) // 2
    out[start: start + len(x)] = x
    return out


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filter_bank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters on Slaney's mel scale, each normalised to unit area
    (Slaney's norm), as librosa.filters.mel(htk=False, norm="slaney") makes them. Written here (twenty
    lines) rather than taken from librosa, which would bring numba and llvmlite (about 200 MB) for it;
    torchaudio is not a dependency either."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (K,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (n_mels + 2,) Hz
    lower = (fft_freqs[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]  # (n_mels, K) rising slopes
    upper = (edges[2:, None] - fft_freqs[None]) / np.diff(edges)[1:, None]  # (n_mels, K) falling slopes
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: equal area per filter
    return torch.from_numpy(weights.astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# The encoder


@dataclass(frozen=True)
class AudioEncoderConfig:
    """What fixes the features and the encoder's shape.

    sample_rate: Hz a clip is resampled to; clip_seconds: the fixed window a trimmed clip is centred in;
    n_fft, hop: the STFT's window and step in samples (32 ms and 10 ms at 8 kHz); n_mels: mel bands;
    channels: the CNN's widths, one 3x3 conv block (conv, batch norm, ReLU, 2x2 max pool) each;
    embed_dim: the embedding's width D (what Cond.audio holds); num_classes: the classifier head's classes
    (the digits) used to train it.
    """

    sample_rate: int = 8000
    clip_seconds: float = 1.0
    n_fft: int = 256
    hop: int = 80
    n_mels: int = 40
    channels: tuple[int, ...] = (16, 32, 64)
    embed_dim: int = 64
    num_classes: int = 10

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "sample_rate": (4000, 48000), "n_fft": (64, 4096), "hop": (16, 2048), "n_mels": (8, 256),
        "embed_dim": (4, 1024), "num_classes": (2, 1000),
    }

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels) if isinstance(self.channels, list) else self.channels)
        for name, (lo, hi) in self.BOUNDS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"audio encoder {name} must be an integer in [{lo}, {hi}], got {v!r}")
        if not isinstance(self.clip_seconds, (int, float)) or not 0.1 <= self.clip_seconds <= 10:
            raise ValueError(f"audio encoder clip_seconds must be in [0.1, 10], got {self.clip_seconds!r}")
        if (not isinstance(self.channels, tuple) or not 1 <= len(self.channels) <= 6
                or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 512 for c in self.channels)):
            raise ValueError(f"audio encoder channels must be 1 to 6 widths in [1, 512], got {self.channels!r}")
        if self.hop > self.n_fft:
            raise ValueError(f"audio encoder hop {self.hop} must not exceed n_fft {self.n_fft}")

    @property
    def length(self) -> int:
        """Samples in the fixed window."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        return self.length // self.hop + 1  # torch.stft with center=True


class AudioEncoder(nn.Module):
    """Log-mel spectrogram (B, n_mels, frames) -> embedding (B, embed_dim); `classify` adds the digit head.

    A plain CNN over the spectrogram as an image: conv blocks that halve time and frequency, an average over
    time (so a word said a little earlier or later gives the same embedding; the bands are kept, as which
    band sounds is what tells the sounds apart), then a linear layer and LayerNorm to the embedding. The log-mels are normalised per clip (zero mean, unit std), so loudness
    does not matter."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mel", mel_filter_bank(config.sample_rate, config.n_fft, config.n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        blocks, c_in = [], 1
        for c in config.channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        bands = config.n_mels
        for _ in config.channels:
            bands = math.ceil(bands / 2)
        self.embed = nn.Sequential(nn.Linear(c_in * bands, config.embed_dim), nn.LayerNorm(config.embed_dim))
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) float waveforms at the encoder's rate -> (B, n_mels, frames) log-mel power, log(1e-6 + P)."""
        cfg = self.config
        spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop, window=self.window, center=True, return_complex=True)
        power = spec.abs().square()  # (B, K, frames), K = n_fft // 2 + 1
        return torch.log(torch.einsum("mk,bkt->bmt", self.mel, power) + 1e-6)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) -> (B, embed_dim)."""
        mean = logmel.mean(dim=(1, 2), keepdim=True)
        std = logmel.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        h = self.features(((logmel - mean) / std)[:, None])  # (B, C, n_mels / 2^k, frames / 2^k)
        return self.embed(h.mean(dim=3).flatten(1))  # (B, embed_dim): averaged over time, bands kept

    def classify(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) -> (B, num_classes) logits."""
        return self.head(self(logmel))


def prepare_clip(item: AudioInput, config: AudioEncoderConfig, name: str | None = None) -> tuple[torch.Tensor, str]:
    """A WAV clip -> ((length,) float32 at the encoder's rate, trimmed and centred; the file's SHA-256)."""
    x, rate, digest = read_wav(item, name)
    x = resample(x, rate, config.sample_rate, name or (f"audio {item}" if not isinstance(item, bytes) else "the audio clip"))
    return torch.from_numpy(fit_length(x, config.length)), digest


@torch.no_grad()
def embed_waves(encoder: AudioEncoder, waves: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N, length) prepared clips -> (N, embed_dim) embeddings, in eval mode on the encoder's device."""
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = [encoder(encoder.log_mel(w.to(dev))) for w in waves.split(chunk)] if len(waves) else []
    return torch.cat(out).float() if out else torch.zeros(0, encoder.config.embed_dim, device=dev)


def save_encoder(encoder: AudioEncoder, out: str | os.PathLike, card: dict | None = None) -> Path:
    """An encoder folder: config.json (kind, format, encoder config, card) and model.safetensors (its weights
    under "net.", the name a diffusion model's frozen copy takes them from; runs/latent.load_frozen_parts)."""
    from ..runs.checkpoint import atomic_save_tensors, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors({f"net.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
                        out / "model.safetensors")
    meta = {"kind": ENCODER_KIND, "format_version": ENCODER_FORMAT,
            "encoder": json.loads(json.dumps(dataclasses.asdict(encoder.config))), "card": card or {}}
    atomic_write_text(out / "config.json", json.dumps(meta, indent=1))
    return out


def read_encoder_config(folder: str | os.PathLike) -> AudioEncoderConfig:
    """The AudioEncoderConfig of an encoder folder, with a ValueError naming the file and field when wrong."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"audio encoder {folder}: no config.json there (train one: pixelforge audio-encoder SET -o DIR)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != ENCODER_KIND:
        raise ValueError(f"{path}: not an audio encoder (kind must be {ENCODER_KIND!r})")
    if meta.get("format_version") != ENCODER_FORMAT:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not {ENCODER_FORMAT}, the one known")
    return encoder_config(meta.get("encoder"), str(path))


def encoder_config(fields, where: str) -> AudioEncoderConfig:
    """An AudioEncoderConfig from a dict of its fields (or one), a ValueError naming `where` otherwise."""
    from ..fields import from_fields

    return from_fields(AudioEncoderConfig, fields, f"{where}: the audio encoder config")


def load_encoder(folder: str | os.PathLike, device: torch.device | str | None = None) -> AudioEncoder:
    """An encoder folder -> the AudioEncoder in eval mode (weights checked name by name and shape by shape)."""
    from ..runs.checkpoint import check_shapes, load_state, read_tensors, state_shapes

    encoder = AudioEncoder(read_encoder_config(folder))
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"audio encoder {folder}: no model.safetensors there")
    state = {k[4:]: v for k, v in read_tensors(path).items() if k.startswith("net.")}
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, state_shapes(encoder), path)
    load_state(encoder, state, path)
    return encoder.to(device if device is not None else "cpu").eval()


# ---------------------------------------------------------------------------------------------------
# A spoken-digit set (scripts/make_spoken_digits.py)


@dataclass
class ClipSet:
    """The clips of one split of a spoken-digit set: waves (N, length) prepared for an encoder config,
    digits (N,) int64, and each clip's manifest entry."""

    waves: torch.Tensor
    digits: torch.Tensor
    entries: list[dict]


def read_manifest(folder: str | os.PathLike) -> dict:
    """A spoken-digit set's manifest.json, checked: a ValueError naming the file and the field otherwise."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"audio set {folder}: no manifest.json (make one: python scripts/make_spoken_digits.py {folder})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    clips = manifest.get("clips") if isinstance(manifest, dict) else None
    if not isinstance(clips, list) or not clips:
        raise ValueError(f"{path}: clips must be a non-empty list")
    for i, c in enumerate(clips):
        if not isinstance(c, dict) or not isinstance(c.get("file"), str) or c.get("split") not in ("train", "test") \
                or isinstance(c.get("digit"), bool) or not isinstance(c.get("digit"), int) or not 0 <= c["digit"] <= 9:
            raise ValueError(f"{path}: clips[{i}] needs file (a string), digit (0..9) and split (train or test)")
        if Path(c["file"]).is_absolute() or ".." in Path(c["file"]).parts:
            raise ValueError(f"{path}: clips[{i}].file {c['file']!r} must be a path inside the set")
    return manifest


def load_clips(folder: str | os.PathLike, split: str, config: AudioEncoderConfig) -> ClipSet:
    """The clips of `split` ("train" or "test") of a spoken-digit set, read, resampled and fitted to the
    encoder's window. A set made at another rate is resampled without a warning per clip (one in all)."""
    manifest = read_manifest(folder)
    entries = [c for c in manifest["clips"] if c["split"] == split]
    if not entries:
        raise ValueError(f"audio set {folder}: no {split} clips in manifest.json")
    waves = []
    rates = set()
    for c in entries:
        x, rate, _ = read_wav(Path(folder) / c["file"])
        rates.add(rate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = resample(x, rate, config.sample_rate)
        waves.append(torch.from_numpy(fit_length(x, config.length)))
    if rates != {config.sample_rate}:
        warnings.warn(f"audio set {folder} is sampled at {', '.join(map(str, sorted(rates)))} Hz: resampled to the "
                      f"encoder's {config.sample_rate} Hz", stacklevel=2)
    return ClipSet(torch.stack(waves), torch.tensor([c["digit"] for c in entries], dtype=torch.int64), entries)


# ---------------------------------------------------------------------------------------------------
# The fields a diffusion model's config takes, and its conditioner


@dataclass(frozen=True)
class AudioFields:
    """The audio-condition fields of a family's config (its config derives from this dataclass).

    audio_encoder: the encoder folder a run was made with (recorded when the run is created; its weights are
        copied once, when the run starts, into the model's frozen `audio_net`, so the run does not need it
        afterwards). "" : no audio condition.
    audio_net: that encoder's config (AudioEncoderConfig fields), so the model rebuilds from its own folder.
    audio_set: the spoken-digit set (scripts/make_spoken_digits.py) whose training clips are paired with the
        training images by digit.
    """

    audio_encoder: str = ""
    audio_net: AudioEncoderConfig | dict | None = None
    audio_set: str = ""

    @property
    def audio_dim(self) -> int:
        """The width of Cond.audio this config takes: the encoder's embedding width; 0 without audio."""
        return self.audio_net.embed_dim if isinstance(self.audio_net, AudioEncoderConfig) else 0


AUDIO_FIELD_NAMES = ("audio_encoder", "audio_net", "audio_set")


def check_audio_fields(config) -> None:
    """audio_net an encoder config (kept as a frozen AudioEncoderConfig) where audio_encoder is given, None
    otherwise; the paths strings."""
    for name in ("audio_encoder", "audio_set"):
        if not isinstance(getattr(config, name), str):
            raise ValueError(f"{name} must be a folder path (a string), got {getattr(config, name)!r}")
    if config.audio_net is None:
        if config.audio_encoder:
            raise ValueError(f"audio_encoder {config.audio_encoder!r}: the encoder's config is read from that folder when "
                             "a run is created (pixelforge train ... --audio-encoder DIR)")
        return
    object.__setattr__(config, "audio_net", encoder_config(config.audio_net, "audio_net"))


def unused_audio_fields(config) -> tuple[str, ...]:
    return () if config.audio_net is not None else AUDIO_FIELD_NAMES


def audio_fields(encoder: str, audio_set: str) -> dict:
    """The model config fields of an audio-conditioned run: the encoder folder (resolved) and its config,
    and the set's folder (resolved; its manifest checked now, not mid-run)."""
    enc = read_encoder_config(encoder)
    read_manifest(audio_set)
    return {"audio_encoder": str(Path(encoder).resolve()), "audio_set": str(Path(audio_set).resolve()),
            "audio_net": json.loads(json.dumps(dataclasses.asdict(enc)))}


class AudioConditioner(nn.Module):
    """Cond.audio (B, D) embedding -> (B, out_dim) vector added to the network's condition embedding: a
    two-layer MLP, and a learned "no audio" vector where `present` is False (guidance's empty condition)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.null = nn.Parameter(torch.zeros(out_dim))

    def forward(self, cond: Cond | None, batch: int, device) -> torch.Tensor:
        if cond is None or cond.audio is None:
            return self.null.expand(batch, -1)
        if cond.audio.dim() != 2 or cond.audio.shape[1] != self.proj[0].in_features:
            raise ValueError(f"Cond.audio must be (B, {self.proj[0].in_features}) for this model (the audio encoder's "
                             f"embedding), got {tuple(cond.audio.shape)}")
        v = self.proj(cond.audio.to(device, self.null.dtype))  # (B, out_dim)
        return torch.where(cond.present.to(device)[:, None], v, self.null.expand_as(v))


class TrainingClips:
    """The training clips of an audio-conditioned run, embedded once, and the clip each training image is
    paired with at a step: a clip of the image's digit, drawn uniformly for (seed, step).

    The draw is stateless (one uniform per image of the whole set from a generator seeded by seed and
    step, as the trainer draws caption wordings), so a resumed run, any batch split and any number of
    processes pair the same clips; step None (validation, sample grids) is a fixed draw of its own."""

    def __init__(self, config, class_names: list[str], progress: bool = True):
        from ..progress import stage_bar

        digits_of_class = []
        for name in class_names:
            if name.strip() not in [str(d) for d in range(10)]:
                raise ValueError(f"audio conditioning pairs images with spoken digits by class, so the classes must be "
                                 f"named 0..9; the data has {', '.join(class_names)}")
            digits_of_class.append(int(name))
        self.digit_of_class = torch.tensor(digits_of_class, dtype=torch.int64)  # (classes,)
        clips = load_clips(config.audio_set, "train", config.audio_net)
        encoder = load_encoder(config.audio_encoder)
        bar = stage_bar(len(clips.waves), "embedding clips", unit="clip", enabled=progress)
        self.embeddings = embed_waves(encoder, clips.waves).cpu()  # (M, D)
        bar.update(len(clips.waves))
        bar.close()
        missing = sorted(set(digits_of_class) - set(clips.digits.tolist()))
        if missing:
            raise ValueError(f"audio set {config.audio_set}: no training clips of digit(s) {missing}")
        order = torch.argsort(clips.digits, stable=True)  # (M,) clips grouped by digit
        self.order = order
        self.counts = torch.bincount(clips.digits, minlength=10)  # (10,)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (10,)
        self.digits = clips.digits

    def draw(self, labels: torch.Tensor, idx: torch.Tensor, n_images: int, step: int | None, seed: int) -> torch.Tensor:
        """The embeddings (B, D) of the clips paired with images idx (B,) of classes labels (B,) at `step`."""
        key = seed * 1_000_003 + (step if step is not None else -1) + 55_555
        u = torch.rand(n_images, generator=torch.Generator().manual_seed(key))[idx.cpu()]  # (B,)
        d = self.digit_of_class[labels.cpu()]
        k = torch.minimum((u * self.counts[d]).long(), self.counts[d] - 1)  # (B,) index among the digit's clips
        return self.embeddings[self.order[self.starts[d] + k]]  # (B, D)

    def first_of_each(self, digits: list[int]) -> torch.Tensor:
        """(len(digits), D): the embedding of the first training clip of each digit (sample grids)."""
        return self.embeddings[self.order[self.starts[torch.tensor(digits)]]]
