"""C2PA provenance manifests: `pixelforge keys create` makes a local CA and an ES256 signer (private keys 0600,
never overwritten without --force); a signed image states its generator, model, weights hash and settings and
that it is AI-generated; verification says Valid, Trusted with the CA, Invalid once a byte of the image or the
manifest changes, and "no manifest" after a re-encode, where it asks the watermark instead."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelforge import __version__
from pixelforge.cli import main
from pixelforge.provenance.c2pa_manifest import (ASSERTION, TRAINED_ALGORITHMIC_MEDIA, ModelInfo, ProvenanceSigner,
                                                 sign_file, sign_image, verify)
from pixelforge.provenance.keys import (CERT_ENV, HOME_ENV, KEY_ENV, KeyFiles, MissingExtraError, SigningKey,
                                        create_keys, default_keys_dir, resolve_signing_key)

pytest.importorskip("c2pa", reason="the provenance extra is not installed (scripts/setup.sh installs it)")
x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

MODEL = ModelInfo(name="mnist-diffusion", family="diffusion", weights_sha256=hashlib.sha256(b"weights").hexdigest())
SETTINGS = {"model": "mnist-diffusion", "model_path": "/home/someone/runs/x", "family": "diffusion",
            "checkpoint": "0123456789ab", "seed": 7, "sampler": "heun", "steps": 18, "guidance": 2.0,
            "label": 3, "prompt": "a red circle", "version": __version__}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyFiles:
    return create_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signer(keys) -> ProvenanceSigner:
    return ProvenanceSigner.from_files(keys.cert, keys.key)


@pytest.fixture(autouse=True)
def no_user_keys(tmp_path, monkeypatch):
    """Keys made by default land in the test's folder, never the home folder; no configured key leaks in."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(CERT_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


def png(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def signed(tmp_path, signer) -> Path:
    path = tmp_path / "signed.png"
    path.write_bytes(sign_image(png(), model=MODEL, settings=SETTINGS, signer=signer))
    return path


def chunks(data: bytes) -> dict[bytes, tuple[int, int]]:
    """PNG chunk type -> (offset of its data, length), first of each type."""
    out, i = {}, 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.setdefault(data[i + 4:i + 8], (i + 8, n))
        i += 12 + n
    return out


def with_crc(data: bytes, chunk: bytes) -> bytes:
    """The PNG with `chunk`'s CRC recomputed, as a deliberate editor of the chunk would leave it."""
    offset, n = chunks(data)[chunk]
    crc = struct.pack(">I", zlib.crc32(data[offset - 4:offset + n]))
    return data[:offset + n] + crc + data[offset + n + 4:]


def flipped(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


# --- keys --------------------------------------------------------------------------------------------------

def test_keys_create_makes_a_ca_and_a_signer_it_issued_with_private_keys_0600(tmp_path, capsys):
    folder = tmp_path / "k"
    assert main(["keys", "create", "--dir", str(folder), "--name", "studio"]) == 0
    files = KeyFiles.named(folder, "studio")
    assert "--trust " + str(files.ca_cert) in capsys.readouterr().out
    for p in (files.key, files.ca_key):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    leaf, ca = x509.load_pem_x509_certificates(files.cert.read_bytes())  # the chain: signer, then its CA
    assert ca == x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(ca)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert (x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION
            in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert leaf.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    loaded = SigningKey.load(files.cert, files.key)  # a consistent pair
    assert b"PRIVATE KEY" not in repr(loaded).encode() and "studio" in loaded.subject


def test_keys_create_refuses_to_overwrite_without_force(tmp_path, capsys):
    folder = tmp_path / "k"
    assert main(["keys", "create", "--dir", str(folder)]) == 0
    before = {p: p.read_bytes() for p in KeyFiles.named(folder).all()}
    capsys.readouterr()
    assert main(["keys", "create", "--dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "signing.pem" in err
    assert {p: p.read_bytes() for p in before} == before
    assert main(["keys", "create", "--dir", str(folder), "--force"]) == 0
    assert all(p.read_bytes() != b for p, b in before.items())


def test_key_name_must_be_a_plain_file_name(tmp_path, capsys):
    assert main(["keys", "create", "--dir", str(tmp_path), "--name", "../elsewhere"]) == 2
    assert "--name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_default_keys_dir_is_in_the_user_config_never_a_run(tmp_path, monkeypatch):
    assert default_keys_dir() == tmp_path / "home" / "keys"
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_keys_dir() == tmp_path / "xdg" / "pixelforge" / "keys"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_keys_dir() == tmp_path / "user" / ".config" / "pixelforge" / "keys"


def test_without_a_configured_key_the_first_signing_makes_one_and_says_so_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pixelforge.provenance"):
        first = sign_image(png(), model=MODEL, settings=SETTINGS)
        second = ProvenanceSigner.default()
    made = [r for r in caplog.records if "made a local signing key" in r.getMessage()]
    assert len(made) == 1 and "\n" not in made[0].getMessage()
    files = KeyFiles.named(tmp_path / "home" / "keys")
    assert second.key.cert_chain == files.cert.read_bytes()
    path = tmp_path / "x.png"
    path.write_bytes(first)
    assert verify(path, trust=files.ca_cert).state == "Trusted"


def test_workers_signing_their_first_images_at_once_make_one_key(tmp_path, monkeypatch, caplog):
    import threading
    import time

    from pixelforge.provenance import keys as keys_module

    real = keys_module.create_keys

    def slow_create(*args, **kwargs):  # widen the window in which a second worker could start its own key
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(keys_module, "create_keys", slow_create)
    chains, errors = [], []

    def worker():
        try:
            chains.append(resolve_signing_key().cert_chain)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    with caplog.at_level(logging.WARNING, logger="pixelforge.provenance"):
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(chains) == 3 and len(set(chains)) == 1
    assert sum("made a local signing key" in r.getMessage() for r in caplog.records) == 1


def test_a_configured_key_is_used_and_none_is_made(tmp_path, keys, monkeypatch):
    monkeypatch.setenv(CERT_ENV, str(keys.cert))
    monkeypatch.setenv(KEY_ENV, str(keys.key))
    assert resolve_signing_key().cert_chain == keys.cert.read_bytes()
    assert not (tmp_path / "home").exists()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=KEY_ENV):
        resolve_signing_key()


def test_bad_keys_are_refused_naming_the_file(tmp_path, keys):
    lone = tmp_path / "lone.pem"
    lone.write_bytes(x509.load_pem_x509_certificates(keys.cert.read_bytes())[0].public_bytes(Encoding.PEM))
    with pytest.raises(ValueError, match=rf"{lone}: holds one certificate"):
        SigningKey.load(lone, keys.key)
    with pytest.raises(ValueError, match=rf"{keys.ca_key}: this private key does not belong"):
        SigningKey.load(keys.cert, keys.ca_key)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match=rf"{garbage}: not an unencrypted PEM private key"):
        SigningKey.load(keys.cert, garbage)
    with pytest.raises(FileNotFoundError, match="keys create"):
        SigningKey.load(tmp_path / "none.pem", keys.key)


# --- signing and what a manifest says -----------------------------------------------------------------------

def test_manifest_states_generator_ai_action_model_hash_and_settings(signed, keys):
    import c2pa

    r = verify(signed, trust=keys.ca_cert)
    assert r.manifest and r.state == "Trusted" and r.problems == ()
    assert r.generator == f"pixelforge {__version__}"
    assert r.ai_generated is True
    assert [(a["action"], a["digitalSourceType"]) for a in r.actions] == [("c2pa.created", TRAINED_ALGORITHMIC_MEDIA)]
    assert r.model == {"name": "mnist-diffusion", "family": "diffusion", "weights_sha256": MODEL.weights_sha256}
    assert r.settings == {k: v for k, v in SETTINGS.items() if k != "model_path"}  # no local path leaks out
    with c2pa.Reader("image/png", io.BytesIO(signed.read_bytes())) as reader:
        manifest = reader.get_active_manifest()
    assert "thumbnail" not in manifest
    assert [a["label"] for a in manifest["assertions"]] == ["c2pa.actions.v2", ASSERTION]


def test_a_manifest_adds_kilobytes_not_a_thumbnail(signer):
    data = png(size=64)  # 12 KB of noise
    grown = len(sign_image(data, model=MODEL, settings=SETTINGS, signer=signer)) - len(data)
    assert 2_000 < grown < 8_000  # measured 3.6 KB; the default thumbnail would add ~270 KB


def test_signed_image_pixels_are_unchanged(signed):
    assert np.array_equal(np.asarray(Image.open(signed)), np.asarray(Image.open(io.BytesIO(png()))))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_sign_file_signs_in_place_and_jpeg_and_webp_work_too(tmp_path, signer, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.open(io.BytesIO(png())).save(path, fmt, quality=90)
    sign_file(path, model=MODEL, settings=SETTINGS, signer=signer)
    r = verify(path)
    assert r.state == "Valid" and r.model["weights_sha256"] == MODEL.weights_sha256
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # inside the compressed image data, which both formats end with
    path.write_bytes(bytes(data))
    assert verify(path).state == "Invalid"


def test_model_info_hashes_the_weights_sampling_reads():
    from pixelforge.runs import BUNDLED_MODELS_DIR, weights_hash

    run = BUNDLED_MODELS_DIR / "mnist-diffusion"
    generator = types.SimpleNamespace(name="mnist-diffusion", config=types.SimpleNamespace(family="diffusion"),
                                      run_dir=run)
    info = ModelInfo.of(generator)
    assert info.weights_sha256 == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert info.weights_sha256.startswith(weights_hash(run))  # the short hash each image's settings record


def test_a_generated_image_signed_with_its_own_settings_keeps_them_readable(tmp_path, signer, keys):
    """The path every output takes once joined: Generator -> PNG with its settings -> signed."""
    import pixelforge
    from pixelforge.images import png_bytes, read_settings

    generator = pixelforge.load(device="cpu", moderation=None)
    image = generator.generate(1, seed=3, steps=2, label=5)[0]
    settings = image.info["pixelforge"]
    path = tmp_path / "five.png"
    path.write_bytes(sign_image(png_bytes(image, settings), model=ModelInfo.of(generator), settings=settings,
                                signer=signer))
    assert read_settings(path) == settings  # `pixelforge sample --from` still reads them
    r = verify(path, trust=keys.ca_cert)
    assert r.state == "Trusted" and r.settings["seed"] == 3 and r.settings["label"] == 5
    assert r.model["weights_sha256"].startswith(settings["checkpoint"])


def test_bad_signing_input_is_one_clear_error(tmp_path, signer):
    with pytest.raises(ValueError, match="weights_sha256"):
        ModelInfo("m", "diffusion", "abc")
    with pytest.raises(ValueError, match="settings cannot go into a manifest"):
        sign_image(png(), model=MODEL, settings={"guidance": float("nan")}, signer=signer)
    gif = tmp_path / "x.gif"
    Image.new("L", (8, 8)).save(gif)
    with pytest.raises(ValueError, match=rf"{gif}: not a PNG, JPEG or WebP file"):
        sign_image(gif, model=MODEL, settings={}, signer=signer)


def test_missing_packages_name_the_extra(monkeypatch, signer, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "c2pa", None)  # import c2pa now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pixelforge\[provenance\]"):
        sign_image(png(), model=MODEL, settings={}, signer=signer)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    assert main(["keys", "create", "--dir", str(tmp_path / "k")]) == 2
    assert "pip install 'pixelforge[provenance]'" in capsys.readouterr().err


# --- verification: valid, trusted, tampered, stripped -------------------------------------------------------

def test_valid_without_trust_anchors_trusted_with_its_ca_not_with_another(signed, keys, tmp_path):
    assert verify(signed).state == "Valid"
    assert verify(signed, trust=keys.ca_cert).state == "Trusted"
    other = create_keys(tmp_path / "other")
    r = verify(signed, trust=other.ca_cert)
    assert r.state == "Valid" and not r.passed(trust_required=True)


def test_one_flipped_byte_in_the_image_data_is_invalid(signed):
    data = signed.read_bytes()
    offset, _ = chunks(data)[b"IDAT"]
    signed.write_bytes(flipped(data, offset + 100))
    r = verify(signed)
    assert r.manifest and r.state == "Invalid"
    assert any(p.startswith("assertion.dataHash.mismatch") for p in r.problems)


def test_edited_settings_in_the_manifest_are_invalid(signed):
    data = signed.read_bytes()
    at = data.index(b"a red circle")  # the prompt inside the pixelforge assertion
    signed.write_bytes(with_crc(data[:at] + b"a big circle" + data[at + 12:], b"caBX"))
    r = verify(signed)
    assert r.state == "Invalid" and any("mismatch" in p for p in r.problems)


def test_a_flipped_byte_in_the_signature_is_invalid(signed):
    data = signed.read_bytes()
    offset, n = chunks(data)[b"caBX"]  # the manifest store; the COSE signature closes it
    signed.write_bytes(flipped(data, offset + n - 10))
    r = verify(signed)
    assert r.state == "Invalid" and any(p.startswith("claimSignature.mismatch") for p in r.problems)


def test_a_damaged_manifest_store_is_reported_invalid_not_a_crash(signed):
    data = signed.read_bytes()
    offset, _ = chunks(data)[b"caBX"]
    signed.write_bytes(flipped(data, offset + 200))  # inside the store's box headers
    r = verify(signed)
    assert r.manifest and r.state == "Invalid" and r.problems


def test_a_reencoded_image_has_no_manifest_and_the_watermark_is_asked(signed, tmp_path):
    from pixelforge.provenance.marks import mark_image

    Image.open(signed).save(signed)  # load and save: same pixels, manifest gone
    r = verify(signed)
    assert not r.manifest and r.state is None
    assert r.watermark["available"] and r.watermark["result"]["detected"] is False  # never marked
    marked = tmp_path / "marked.png"
    image = Image.new("RGB", (64, 64), (90, 140, 200))
    image.paste((200, 60, 40), (10, 10, 40, 50))
    mark_image(image, settings={"model": "m", "seed": 1}).save(marked)
    signed_bytes = sign_image(marked, model=MODEL, settings={"seed": 1})
    marked.write_bytes(signed_bytes)
    Image.open(marked).save(marked)  # re-encoded: the manifest goes, the mark stays
    r = verify(marked)
    assert not r.manifest and r.watermark["available"] and r.watermark["result"]["detected"] is True


# --- the command --------------------------------------------------------------------------------------------

def test_cli_verify_exit_status_and_text(signed, keys, tmp_path, capsys):
    assert main(["provenance", "verify", str(signed)]) == 0
    out = capsys.readouterr().out
    assert "manifest Valid" in out and "AI-generated: yes" in out and MODEL.weights_sha256 in out
    assert main(["provenance", "verify", str(signed), "--trust", str(keys.ca_cert)]) == 0
    assert "manifest Trusted" in capsys.readouterr().out
    other = create_keys(tmp_path / "other")
    assert main(["provenance", "verify", str(signed), "--trust", str(other.ca_cert)]) == 1  # valid, not trusted
    plain = tmp_path / "plain.png"
    plain.write_bytes(png())
    assert main(["provenance", "verify", str(signed), str(plain)]) == 1
    assert "plain.png: no C2PA manifest" in capsys.readouterr().out


def test_cli_verify_json(signed, keys, tmp_path, capsys):
    tampered = tmp_path / "tampered.png"
    data = signed.read_bytes()
    tampered.write_bytes(flipped(data, chunks(data)[b"IDAT"][0] + 5))
    assert main(["provenance", "verify", str(signed), str(tampered), "--trust", str(keys.ca_cert), "--json"]) == 1
    first, second = json.loads(capsys.readouterr().out)
    assert first["state"] == "Trusted" and first["passed"] and first["ai_generated"]
    assert first["model"]["weights_sha256"] == MODEL.weights_sha256 and first["settings"]["seed"] == 7
    assert second["state"] == "Invalid" and not second["passed"] and second["problems"]


def test_cli_verify_bad_input_is_exit_2_with_one_line(tmp_path, capsys):
    assert main(["provenance", "verify", str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main(["provenance", "verify", str(tmp_path)]) == 2
    assert "a folder, not an image file" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("hello")
    assert main(["provenance", "verify", str(text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.png: not a PNG, JPEG or WebP file" in err
    ca = tmp_path / "ca.pem"
    ca.write_text("nope")
    img = tmp_path / "i.png"
    img.write_bytes(png())
    assert main(["provenance", "verify", str(img), "--trust", str(ca)]) == 2
    assert "--trust" in capsys.readouterr().err


def test_a_truncated_png_never_signed_is_bad_input_not_an_invalid_manifest(tmp_path, capsys):
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(png()[:600])  # cut in its image data: no manifest store, and no image either
    with pytest.raises(ValueError, match="trunc.png: truncated image"):
        verify(trunc)
    assert main(["provenance", "verify", str(trunc)]) == 2
    captured = capsys.readouterr()
    assert "trunc.png: error: " in captured.err and "Invalid" not in captured.out + captured.err


def test_cli_verify_reports_every_file_then_exits_2_if_one_was_bad(signed, tmp_path, capsys):
    from pixelforge.provenance.marks import mark_image

    marked = tmp_path / "marked.png"
    image = Image.new("RGB", (64, 64), (90, 140, 200))
    image.paste((200, 60, 40), (10, 10, 40, 50))
    mark_image(image, settings={"model": "m", "seed": 1}).save(marked)
    plain = tmp_path / "plain.png"
    plain.write_bytes(png())
    files = [str(signed), str(tmp_path / "nosuch.png"), str(plain), str(marked)]
    assert main(["provenance", "verify", *files]) == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert "manifest Valid" in out[0] and "nosuch.png: error: " in captured.err
    # without a manifest, the watermark's word in words (no Python dict)
    said = {line.split(":", 1)[0]: line for line in out if "no C2PA manifest" in line}
    assert "no watermark found (score " in said[str(plain)] and "{" not in said[str(plain)]
    assert "watermark found: payload " in said[str(marked)] and "model id " in said[str(marked)]
    assert main(["provenance", "verify", "--json", *files]) == 2
    records = json.loads(capsys.readouterr().out)
    assert [r.get("error", "").endswith("nosuch.png: no such file") for r in records] == [False, True, False, False]
    assert records[0]["passed"] and records[3]["watermark"]["result"]["detected"] is True


def test_default_keys_written_by_the_command_go_to_pixelforge_home(tmp_path, capsys):
    assert main(["keys", "create"]) == 0
    assert os.path.isfile(tmp_path / "home" / "keys" / "signing.key")
