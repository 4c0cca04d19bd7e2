"""C2PA manifests on generated images: signing one that says which generator, model, weights and settings
made an image and that it is AI-generated, and verifying what an image's manifest says (docs/provenance.md).

The manifest is a hard binding: it signs the file's bytes, so any re-encode or edit removes or breaks it;
the invisible watermark (watermark.py) is what survives, and verification falls back to it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import atomic_target
from .keys import MissingExtraError, SigningKey, _crypto, resolve_signing_key

ASSERTION = "pixelforge.generation"  # the assertion holding the model and the settings
CREATED = "c2pa.created"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# The IPTC source types that mean "made by a trained model", in whole or in part.
AI_SOURCE_TYPES = (TRAINED_ALGORITHMIC_MEDIA,
                   "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia")
# Settings left out of a manifest: a local path says nothing about the image and much about the machine.
PRIVATE_SETTINGS = ("model_path",)
# No thumbnail (the default one grows a 12 KB PNG to 288 KB; without it the manifest adds about 3.5 KB), and
# nothing fetched over the network, signing or reading: no remote manifests, no OCSP.
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
SIGN_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, **OFFLINE}


def _c2pa():
    """The c2pa module, or an error naming the extra that installs it."""
    try:
        import c2pa
    except ImportError as e:
        raise MissingExtraError(f"C2PA manifests need the provenance extra (pip install 'pixelforge[provenance]'): "
                                f"{e}") from None
    return c2pa


def sha256_file(path: str | os.PathLike) -> str:
    """The full SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The model a manifest names: its name, family and the SHA-256 of the weights that drew the image (None
    where those weights are not at hand: a pixelforge image post-processed on a machine without its model)."""

    name: str
    family: str
    weights_sha256: str | None

    def __post_init__(self) -> None:
        if self.weights_sha256 is not None and (len(self.weights_sha256) != 64
                                                or any(c not in "0123456789abcdef" for c in self.weights_sha256)):
            raise ValueError(f"weights_sha256 {self.weights_sha256!r}: expected 64 lower-case hex digits")

    @classmethod
    def of(cls, generator) -> "ModelInfo":
        """From a loaded pixelforge.api.Generator (its name, family and run folder's network file, whose first
        12 hex digits are the `checkpoint` its images record); hash once per generator, not per image."""
        from ..runs.store import network_file

        return cls(name=generator.name, family=generator.config.family,
                   weights_sha256=sha256_file(network_file(generator.run_dir)))


@dataclasses.dataclass(frozen=True)
class ProvenanceSigner:
    """Signs manifests with one key (keys.SigningKey): `ProvenanceSigner.default()` takes the configured
    key, or makes the local one on first use (keys.resolve_signing_key)."""

    key: SigningKey

    @classmethod
    def default(cls) -> "ProvenanceSigner":
        return cls(resolve_signing_key())

    @classmethod
    def from_files(cls, cert: str | os.PathLike, key: str | os.PathLike) -> "ProvenanceSigner":
        return cls(SigningKey.load(cert, key))

    def _context(self) -> Any:
        """A c2pa.Context holding a fresh native signer (a Context consumes the signer it is given)."""
        c2pa = _c2pa()
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.key.cert_chain, self.key.private_key, None)
        settings = c2pa.Settings.from_dict(SIGN_SETTINGS)
        try:
            return c2pa.Context(settings=settings, signer=c2pa.Signer.from_info(info))
        finally:
            settings.close()


def _public(settings: dict) -> dict:
    """The settings without PRIVATE_SETTINGS, also in each tile's settings of a grid ("grid_of")."""
    kept = {k: v for k, v in settings.items() if k not in PRIVATE_SETTINGS}
    if isinstance(kept.get("grid_of"), list):
        kept["grid_of"] = [_public(s) if isinstance(s, dict) else s for s in kept["grid_of"]]
    return kept


def manifest_definition(model: ModelInfo | None, settings: dict, *, title: str | None = None) -> dict:
    """The manifest a generated image carries: pixelforge as claim generator, a c2pa.created action with
    digitalSourceType trainedAlgorithmicMedia, and the model (None: not known, e.g. a grid of several models'
    images) and its generation settings."""
    kept = _public(settings)
    agent = {"name": "pixelforge", "version": __version__}
    definition: dict[str, Any] = {
        "claim_generator_info": [agent],
        "assertions": [
            {"label": "c2pa.actions",
             "data": {"actions": [{"action": CREATED, "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                   "softwareAgent": agent}]}},
            {"label": ASSERTION, "data": {"model": dataclasses.asdict(model) if model else None, "settings": kept}},
        ],
    }
    if title:
        definition["title"] = title
    return definition


def _image_format(data: bytes, where: str) -> str:
    """The MIME type of image bytes (PNG, JPEG or WebP) from their signature, or a ValueError naming `where`.
    By the leading bytes rather than by Pillow: Pillow refuses a PNG whose manifest chunk fails its CRC, and
    such a file is a tampered image to report as Invalid, not "not an image"."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError(f"{where}: not a PNG, JPEG or WebP file; only those carry a manifest here")


def sign_image(image: bytes | str | os.PathLike, *, model: ModelInfo | None, settings: dict,
               signer: ProvenanceSigner | None = None, title: str | None = None) -> bytes:
    """The image (PNG, JPEG or WebP bytes, or a file's path) with a signed C2PA manifest embedded:
    manifest_definition(model, settings). `signer` None takes ProvenanceSigner.default(), which reads the
    key files again: for many images, make the signer once and pass it."""
    c2pa = _c2pa()
    where = "image" if isinstance(image, bytes) else str(image)
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    if title is None and not isinstance(image, bytes):
        title = Path(image).name
    mime = _image_format(data, where)
    try:
        definition = manifest_definition(model, settings, title=title)
        json.dumps(definition, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the generation settings cannot go into a manifest ({e})") from None
    context = (signer or ProvenanceSigner.default())._context()
    out = io.BytesIO()
    try:
        with c2pa.Builder(definition, context=context) as builder:
            builder.sign(mime, io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise ValueError(f"{where}: signing failed: {e}") from None
    finally:
        context.close()
    return out.getvalue()


def sign_file(path: str | os.PathLike, *, model: ModelInfo | None, settings: dict,
              signer: ProvenanceSigner | None = None) -> Path:
    """Sign an image file in place (written atomically: a reader never sees half a file)."""
    path = Path(path)
    signed = sign_image(path, model=model, settings=settings, signer=signer)
    with atomic_target(path, suffix=path.suffix) as tmp:
        tmp.write_bytes(signed)
    return path


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What one image's manifest says and whether it holds.

    state: "Trusted" (signature and hashes check, and the signer chains to a given trust anchor), "Valid"
    (they check; the signer is not in a trust list), "Invalid" (a hash or the signature fails, or the
    manifest is damaged: `problems` says which), or None when the image has no manifest, in which case
    `watermark` says what the invisible watermark still says."""

    path: str
    manifest: bool
    state: str | None = None
    problems: tuple[str, ...] = ()
    generator: str | None = None
    signer: str | None = None
    ai_generated: bool | None = None
    actions: tuple[dict, ...] = ()
    model: dict | None = None
    settings: dict | None = None
    watermark: dict | None = None

    def passed(self, *, trust_required: bool = False) -> bool:
        return self.state == "Trusted" or (self.state == "Valid" and not trust_required)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _trust_anchors(trust: str | os.PathLike) -> str:
    """The PEM text of a trust file (one or more CA certificates), checked: ValueError naming the file."""
    x509 = _crypto()[0]
    path = Path(trust).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--trust {path}: no such file")
    data = path.read_bytes()
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"--trust {path}: not a PEM certificate file ({e})") from None
    return data.decode("utf-8", errors="replace")  # PEM is ASCII; only a comment line could be otherwise


def _reader_context(trust_pem: str | None):
    c2pa = _c2pa()
    config: dict[str, Any] = {**OFFLINE, "verify": {**OFFLINE["verify"], "verify_trust": True}}
    if trust_pem is not None:
        config["trust"] = {"trust_anchors": trust_pem}
    return c2pa.Context.from_dict(config)


def _problems(results: dict | None) -> tuple[str, ...]:
    """The active manifest's failures as "code (explanation)", leaving out "untrusted", which the state
    already says (Valid rather than Trusted)."""
    failures = ((results or {}).get("activeManifest") or {}).get("failure") or []
    return tuple(f"{f.get('code')} ({f.get('explanation')})" for f in failures
                 if f.get("code") != "signingCredential.untrusted")


def _summary(path: str, state: str | None, problems: tuple[str, ...], manifest: dict) -> VerifyReport:
    actions: list[dict] = []
    model = settings = None
    for a in manifest.get("assertions") or []:
        label, data = a.get("label", ""), a.get("data") or {}
        if label.split(".v")[0] == "c2pa.actions":  # c2pa.actions or c2pa.actions.v2
            actions += [x for x in data.get("actions") or [] if isinstance(x, dict)]
        elif label == ASSERTION:
            model, settings = data.get("model"), data.get("settings")
    info = (manifest.get("claim_generator_info") or [{}])[0]
    generator = " ".join(str(info[k]) for k in ("name", "version") if info.get(k)) or manifest.get("claim_generator")
    sig = manifest.get("signature_info") or {}
    signer = " / ".join(str(sig[k]) for k in ("common_name", "issuer") if sig.get(k)) or None
    ai = any(x.get("digitalSourceType") in AI_SOURCE_TYPES for x in actions)
    return VerifyReport(path=path, manifest=True, state=state, problems=problems, generator=generator or None,
                        signer=signer, ai_generated=ai, actions=tuple(actions), model=model, settings=settings)


def verify(path: str | os.PathLike, *, trust: str | os.PathLike | None = None) -> VerifyReport:
    """Read and validate an image's C2PA manifest, offline. `trust`: a PEM file of CA certificates (the
    `-ca.pem` of `pixelforge keys create`) a signer must chain to for "Trusted". A missing file, or one that
    is not a readable image and holds no manifest store (a truncated PNG never signed), is a FileNotFoundError
    or ValueError naming it; a readable image without a store is a report without a manifest (and the
    watermark's word); a manifest store that is there but fails to parse or validate is an Invalid report."""
    c2pa = _c2pa()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'a folder, not an image file' if path.is_dir() else 'no such file'}")
    data = path.read_bytes()
    mime = _image_format(data, str(path))
    context = _reader_context(None if trust is None else _trust_anchors(trust))
    try:
        try:
            reader = c2pa.Reader(mime, io.BytesIO(data), context=context)
        except c2pa.C2paError as e:
            if isinstance(e, c2pa.C2paError.ManifestNotFound) or not _has_manifest_store(data):
                return _without_manifest(path)  # the reader fails on a damaged file as on a damaged store
            # a manifest store is there but cannot be parsed: damaged
            detail = str(e).strip().rstrip(":").strip() or type(e).__name__.lstrip("_")
            return VerifyReport(path=str(path), manifest=True, state="Invalid",
                                problems=(f"manifest unreadable ({detail})",))
        with reader:
            store = json.loads(reader.json())
            manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
            return _summary(str(path), reader.get_validation_state(),
                            _problems(reader.get_validation_results()), manifest)
    finally:
        context.close()


def _has_manifest_store(data: bytes) -> bool:
    """Whether image bytes hold a C2PA manifest store: its JUMBF box is labelled "c2pa" (in a PNG's caBX chunk,
    a JPEG's APP11 segments or a WebP's C2PA chunk); a PNG's caBX chunk is looked for too, in case the label
    was cut off. Four given bytes turn up by chance in a file once in about four billion positions."""
    return b"c2pa" in data or (data.startswith(b"\x89PNG") and b"caBX" in data)


def _without_manifest(path: Path) -> "VerifyReport":
    """The report on an image without a manifest store, after checking that it is an image at all (a truncated or
    corrupt file is a ValueError naming it, as `pixelforge detect` says, not a manifest problem)."""
    from .marks import _read

    _read(path)
    return VerifyReport(path=str(path), manifest=False, watermark=watermark_check(path))


def watermark_check(path: str | os.PathLike) -> dict:
    """What the invisible watermark says about an image whose manifest is gone: the one place
    verification asks it. {"available": True, "result": marks.detect_file's record (detected, score,
    payload, model and generation ids)}, or {"available": False, "message": why} when it cannot tell."""
    from .marks import detect_file

    try:
        return {"available": True, "result": detect_file(path)}
    except (OSError, ValueError) as e:
        return {"available": False, "message": f"watermark check failed: {e}"}
