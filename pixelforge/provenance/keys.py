"""Signing keys for C2PA manifests: a local CA and an ES256 signing certificate it issued (`pixelforge keys
create`), where they live by default, and loading a configured key with clear errors (docs/provenance.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; two first uses at once there may race
    fcntl = None  # type: ignore[assignment]

from ..files import atomic_target

log = logging.getLogger("pixelforge.provenance")

HOME_ENV = "PIXELFORGE_HOME"  # the user's pixelforge folder; keys go in its keys/ sub-folder
CERT_ENV = "PIXELFORGE_SIGNING_CERT"  # a configured signing certificate chain (PEM: signer first, then its CA)
KEY_ENV = "PIXELFORGE_SIGNING_KEY"  # ... and its private key (PEM, EC P-256)
DEFAULT_NAME = "signing"
CA_DAYS = 3650
# Without a timestamp authority a verifier judges the certificate at the time it verifies: an image stays
# Valid only while its signing certificate is, hence a long life for a key that stays on this machine.
LEAF_DAYS = 1825


class MissingExtraError(ValueError):
    """A provenance feature was asked for without the packages of the `provenance` extra."""


def _crypto():
    """The `cryptography` modules, or an error naming the extra that installs them."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as e:
        raise MissingExtraError("signing keys need the provenance extra (pip install 'pixelforge[provenance]'): "
                                f"{e}") from None
    return x509, hashes, serialization, ec


def default_keys_dir() -> Path:
    """Where keys live unless told otherwise: $PIXELFORGE_HOME/keys, else $XDG_CONFIG_HOME/pixelforge/keys,
    else ~/.config/pixelforge/keys. Never inside a run folder, which is shared and exported."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "keys"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "pixelforge" / "keys"


@dataclasses.dataclass(frozen=True)
class KeyFiles:
    """The four files of one named key: the CA (certificate and key) and the signer it issued (its chain
    and key). `ca_cert` is what a verifier passes as --trust."""

    cert: Path  # PEM: the signing certificate, then the CA certificate (the chain a manifest embeds)
    key: Path  # PEM PKCS#8: the signing certificate's EC P-256 private key (mode 0600)
    ca_cert: Path  # PEM: the local CA's self-signed certificate, the trust anchor
    ca_key: Path  # PEM PKCS#8: the CA's private key (mode 0600), kept so its owner can issue other signers

    @classmethod
    def named(cls, folder: str | os.PathLike, name: str = DEFAULT_NAME) -> "KeyFiles":
        folder = Path(folder).expanduser()
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"--name {name!r}: a key name is a plain file name (no '/', not empty)")
        return cls(cert=folder / f"{name}.pem", key=folder / f"{name}.key",
                   ca_cert=folder / f"{name}-ca.pem", ca_key=folder / f"{name}-ca.key")

    def all(self) -> tuple[Path, ...]:
        return (self.cert, self.key, self.ca_cert, self.ca_key)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    with atomic_target(path, suffix=path.suffix, mode=0o600 if private else None) as tmp:
        tmp.write_bytes(data)


def create_keys(folder: str | os.PathLike | None = None, name: str = DEFAULT_NAME, *, force: bool = False,
                organization: str = "pixelforge") -> KeyFiles:
    """Make a local CA (self-signed, CA:true) and an ES256 signing certificate issued by it, with the
    extensions C2PA asks of a signer (key usage digitalSignature, an accepted extended key usage, subject
    and authority key identifiers). c2pa-rs refuses to sign with a lone self-signed certificate, hence
    the CA. Private keys are written with mode 0600 in a folder of mode 0700. Refuses to replace an
    existing file unless `force`."""
    x509, hashes, serialization, ec = _crypto()
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = KeyFiles.named(default_keys_dir() if folder is None else folder, name)
    if not force:
        for p in files.all():
            if p.exists():
                raise FileExistsError(f"{p} exists: pass --force to replace key {name!r} (images signed with it "
                                      "then verify only against its old CA)")
    folder = files.cert.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # a verifier whose clock is a little behind still accepts it
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} local CA ({name})"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(x509, cert_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} signer ({name})"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(x509, cert_sign=False), critical=True)
            # emailProtection, measured by signing with each candidate through c2pa-python 0.38.1 (c2pa-rs
            # 0.91.3): it signs; documentSigning (1.3.6.1.5.5.7.3.36) and the C2PA claim-signing EKU
            # (1.3.6.1.4.1.62558.2.1) are refused with "certificate missing required EKU"; codeSigning and
            # anyExtendedKeyUsage with "the certificate is invalid".
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def private(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    # Keys first: a crash between the writes leaves no certificate without its key.
    _write(files.ca_key, private(ca_key), private=True)
    _write(files.key, private(key), private=True)
    _write(files.ca_cert, pem(ca), private=False)
    _write(files.cert, pem(leaf) + pem(ca), private=False)
    return files


def _key_usage(x509, *, cert_sign: bool):
    """digitalSignature for a signer; keyCertSign and cRLSign for a CA."""
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A loaded, checked signing key: the certificate chain a manifest embeds and its private key."""

    cert_chain: bytes = dataclasses.field(repr=False)  # PEM, signer first
    private_key: bytes = dataclasses.field(repr=False)  # PEM; never in a repr, a log line or a traceback
    cert_path: Path
    subject: str  # the signer's common name, for messages

    @classmethod
    def load(cls, cert: str | os.PathLike, key: str | os.PathLike) -> "SigningKey":
        """Read and check a chain and key: ValueError naming the file when either is missing, not PEM, not
        an EC P-256 key (ES256), a lone certificate (C2PA needs the CA too), expired, or not a pair."""
        x509, _, serialization, ec = _crypto()
        cert, key = Path(cert).expanduser(), Path(key).expanduser()
        for p in (cert, key):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such signing {'certificate' if p == cert else 'key'} file "
                                        "(make one with `pixelforge keys create`)")
        chain_pem, key_pem = cert.read_bytes(), key.read_bytes()
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as e:
            raise ValueError(f"{cert}: not a PEM certificate chain ({e})") from None
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:  # TypeError: an encrypted key (no password is asked for)
            raise ValueError(f"{key}: not an unencrypted PEM private key ({e})") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise ValueError(f"{key}: signing takes an EC P-256 key (ES256); make one with `pixelforge keys create`")
        if len(chain) < 2:
            raise ValueError(f"{cert}: holds one certificate; C2PA refuses a lone self-signed signer, so the file "
                             "must hold the signing certificate followed by the CA that issued it")
        leaf = chain[0]
        if leaf.public_key().public_numbers() != private.public_key().public_numbers():
            raise ValueError(f"{key}: this private key does not belong to the first certificate in {cert}")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise ValueError(f"{cert}: the signing certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d} to "
                             f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now; make a new one with "
                             "`pixelforge keys create --force`")
        names = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return cls(cert_chain=chain_pem, private_key=key_pem, cert_path=cert,
                   subject=str(names[0].value) if names else leaf.subject.rfc4514_string())


def resolve_signing_key(cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None, *,
                        create: bool = True) -> SigningKey:
    """The key outputs are signed with, first found of: the files given; $PIXELFORGE_SIGNING_CERT and
    $PIXELFORGE_SIGNING_KEY; the default key in default_keys_dir(). When none is configured and `create`,
    the default key is made on first use, with one line on stderr saying where and how to replace it:
    every output then carries a manifest, and the user's own key takes over once configured."""
    if (cert is None) != (key is None):
        raise ValueError("a signing certificate and its key go together: give both or neither")
    if cert is None:
        env_cert, env_key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
        if bool(env_cert) != bool(env_key):
            raise ValueError(f"${CERT_ENV} and ${KEY_ENV} go together: set both or neither")
        if env_cert:
            cert, key = env_cert, env_key
    if cert is not None:
        return SigningKey.load(cert, key)
    files = KeyFiles.named(default_keys_dir())
    if not files.cert.exists() and create:  # the certificate is written last: without it, no usable key
        with _creation_lock(files.cert.parent):
            if not files.cert.exists():  # another process may have made it while this one waited
                _make_default_key(files)
    return SigningKey.load(files.cert, files.key)


@contextlib.contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """Hold an flock on FOLDER/.lock: server workers signing their first images at once make one key,
    not several whose files interleave. The OS releases it when the process ends, however it ends."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _make_default_key(files: KeyFiles) -> None:
    """create_keys for the default key, and the one line saying so."""
    files = create_keys(files.cert.parent)
    log.warning("pixelforge: made a local signing key in %s to sign the images' C2PA manifests; verifiers "
                "trust it with --trust %s (your own key: `pixelforge keys create --force` or $%s and $%s)",
                files.cert.parent, files.ca_cert, CERT_ENV, KEY_ENV)
