"""The PNGs pixelforge writes or serves, signed: `sample`, `edit`, `post`, the API's save_images and post_files,
and the server all turn an output image into bytes here, and OutputSigner embeds a signed C2PA manifest
(c2pa_manifest.py) in them unless MarkSettings.manifest is off (docs/provenance.md).

Signing is the last step, where the bytes are made: the manifest signs the file, so it comes after the
post-processing, the watermark (marks.mark_image) and the PNG's own settings chunk, which it leaves in place
(`sample --from` still reads it). Without the `provenance` extra images are written unsigned, with one warning
per process."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from PIL import Image

from ..files import atomic_target
from ..images import png_bytes
from .c2pa_manifest import ModelInfo, ProvenanceSigner, _c2pa, sha256_file, sign_image
from .keys import MissingExtraError
from .marks import MarkSettings, as_mark_settings

log = logging.getLogger("pixelforge.provenance")

MISSING_EXTRA_WARNING = ("pixelforge: images are written without a C2PA manifest: signing needs the provenance extra "
                         "(pip install 'pixelforge[provenance]'); --no-manifest (the API: MarkSettings(manifest=False)) "
                         "turns signing off and silences this warning")
_warned = threading.Event()  # the missing-extra warning is said once per process, however many signers meet it


def _warn_missing_extra(error: MissingExtraError) -> None:
    if not _warned.is_set():
        _warned.set()
        log.warning("%s (%s)", MISSING_EXTRA_WARNING, error)


class OutputSigner:
    """Makes the PNG bytes of output images and signs them as `marks` says (MarkSettings.manifest), with
    `signer` (default: the configured key, else the local one made on first use: keys.resolve_signing_key).

    One per command, API call or server: the key is read once (on the first image, or by `ready()`), and each
    model's weights are hashed once. Safe to share between threads (server workers)."""

    def __init__(self, marks: bool | MarkSettings | None = True, signer: ProvenanceSigner | None = None):
        self.enabled = as_mark_settings(marks).manifest
        self._signer = signer
        self._lock = threading.Lock()
        self._models: dict[tuple[Path, str], str | None] = {}  # (run folder, checkpoint) -> its weights SHA-256

    def ready(self) -> bool:
        """Whether images will be signed: reads the key (making the default one on first use), so that a
        configured key that is broken fails here, before any work. Without the provenance extra: False, after
        the one warning. A bad key is a ValueError (or FileNotFoundError) naming its file."""
        with self._lock:
            if self.enabled and self._signer is None:
                try:
                    _c2pa()
                    self._signer = ProvenanceSigner.default()
                except MissingExtraError as e:
                    _warn_missing_extra(e)
                    self.enabled = False
            return self.enabled

    def model_info(self, settings: dict, run_dir: str | os.PathLike | None = None) -> ModelInfo | None:
        """The model an image's settings name, with the full SHA-256 of its network file, read from `run_dir`
        (default: the settings' model_path). The weights hash is None where that folder is gone or now holds
        other weights than the settings' checkpoint; None for settings that name no model."""
        name = settings.get("model")
        if not isinstance(name, str) or not name:
            return None
        folder = run_dir if run_dir is not None else settings.get("model_path")
        checkpoint = str(settings.get("checkpoint") or "")
        digest = None
        if isinstance(folder, (str, os.PathLike)) and folder:
            key = (Path(folder).resolve(), checkpoint)
            with self._lock:
                if key not in self._models:
                    self._models[key] = self._hash(key[0], checkpoint)
                digest = self._models[key]
        return ModelInfo(name=name, family=str(settings.get("family", "")), weights_sha256=digest)

    @staticmethod
    def _hash(run_dir: Path, checkpoint: str) -> str | None:
        from ..runs.store import network_file

        try:
            digest = sha256_file(network_file(run_dir))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return digest if digest.startswith(checkpoint) else None  # other weights than the image's: name none

    def sign(self, data: bytes, settings: dict, *, model: ModelInfo | None = None, title: str | None = None) -> bytes:
        """PNG bytes with a manifest stating `model` and `settings` (as they are when signing is off)."""
        if not self.ready():
            return data
        return sign_image(data, model=model, settings=settings, signer=self._signer, title=title)

    def png(self, image: Image.Image, settings: dict | None, *, manifest_settings: dict | None = None,
            model: ModelInfo | None = None, run_dir: str | os.PathLike | None = None, title: str | None = None) -> bytes:
        """The PNG of `image` with `settings` in its text chunk (images.png_bytes), signed. The manifest states
        `manifest_settings` (default: `settings`) and `model` (default: the one they name, model_info)."""
        data = png_bytes(image, settings)
        if not self.ready():
            return data
        stated = manifest_settings if manifest_settings is not None else settings or {}
        return self.sign(data, stated, model=model or self.model_info(stated, run_dir), title=title)

    def save(self, image: Image.Image, path: str | os.PathLike, settings: dict | None = None, *,
             manifest_settings: dict | None = None, model: ModelInfo | None = None,
             run_dir: str | os.PathLike | None = None) -> Path:
        """Write the PNG `png` makes (images.save_png's file, signed), atomically: a reader never sees half a file."""
        path = Path(path)
        data = self.png(image, settings, manifest_settings=manifest_settings, model=model, run_dir=run_dir,
                        title=path.name)
        with atomic_target(path, suffix=".png") as tmp:
            tmp.write_bytes(data)
        return path

    def grid_model(self, tiles: list[dict]) -> ModelInfo | None:
        """The one model every tile of a grid was drawn by, else None (tiles of several models, or none, or
        signing off)."""
        if not self.ready():
            return None
        models = {self.model_info(s) for s in tiles}
        return models.pop() if len(models) == 1 else None
