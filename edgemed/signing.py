"""Optional ed25519 signatures for bundles (``pip install "edgemed[signing]"``).

What is signed: the exact bytes of ``bundle.json``, as stored, with nothing added or
re-serialised. ``bundle.sig`` beside it holds the detached 64-byte ed25519 signature.
The manifest pins every artifact's sha256 and size, so one signature over the manifest
covers the artifacts too: :meth:`edgemed.bundle.Bundle.load` checks the signature
first, then hashes each artifact against the (now trusted) manifest, and backends
parse only bytes that :meth:`~edgemed.bundle.Bundle.read_artifact` hashed again. Files
in the directory that the manifest does not list are covered by nothing and read by
nothing, with one exception: the engine cache (``engines/``, or ``--cache DIR``) holds
TensorRT plans built on the device, after signing. A plan is loaded only when its
sidecar names the verified ONNX's sha256 and the plan's own sha256 matches, and the
cache is trusted through its permissions (owned by this user, writable by no one else;
see :mod:`edgemed.backends.tensorrt.cache`).

Signing raw bytes rather than a canonical re-serialisation is deliberate: no JSON
parser ever sees unverified bytes, every changed byte (even whitespace) is refused, and
the signature can be checked with stock tools::

    openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin \\
        -in bundle.json -sigfile bundle.sig

Verification happens when a trusted public key is configured (``trusted_key=`` or
``EDGEMED_TRUSTED_KEY``): then a bundle without ``bundle.sig`` is ``BUNDLE_UNSIGNED``
and one whose signature does not verify is ``BUNDLE_SIGNATURE``. A key file that is
missing or holds no ed25519 public key is a configuration problem, not a bundle one:
``UsageError`` with code ``USAGE_KEY_INVALID`` (exit 2). With no key configured,
signatures are neither required nor read.

``cryptography`` is imported only here and only when a key is used, so ``import
edgemed`` works without it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

from edgemed._lazy import require
from edgemed.errors import BundleError, OutputError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "SIGNATURE",
    "PublicKeySource",
    "generate_keypair",
    "key_fingerprint",
    "load_private_key",
    "load_public_key",
    "verify_manifest",
]

#: The detached signature's file name inside a bundle.
SIGNATURE = "bundle.sig"
#: File names ``generate_keypair`` writes.
PRIVATE_KEY_NAME = "private_key.pem"
PUBLIC_KEY_NAME = "public_key.pem"

_SIG_BYTES = 64  # an ed25519 signature is always exactly this long
_MAX_KEY_BYTES = 64 * 1024  # PEM keys are < 1 KB; the cap stops a key path at /dev/zero

#: A trusted key: a PEM file's path, the PEM bytes, or a loaded public key.
PublicKeySource = Union[str, "os.PathLike[str]", bytes, "Ed25519PublicKey"]


def _crypto(purpose: str) -> None:
    # One clear MissingDependencyError naming the extra, before any submodule import.
    require("cryptography", "signing", purpose)


def _read_capped(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit + 1)


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Hex sha256 of the raw 32-byte public key: names a key in messages and ``info``."""
    _crypto("bundle signatures")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def load_public_key(source: PublicKeySource, *, origin: str = "trusted key") -> Ed25519PublicKey:
    """The ed25519 public key in ``source`` (a PEM path, PEM bytes, or a key object).

    Args:
        source: where the key is.
        origin: what to call it in messages (``EDGEMED_TRUSTED_KEY`` when it came from
            the environment).

    Raises:
        UsageError: ``USAGE_KEY_INVALID`` when the file cannot be read or holds no
            ed25519 public key (a private key included: configure the public half).
        MissingDependencyError: ``cryptography`` is not installed.
    """
    _crypto("verifying bundle signatures")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(source, Ed25519PublicKey):
        return source
    path = None
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            data = _read_capped(path, _MAX_KEY_BYTES)
        except OSError as exc:
            raise UsageError(
                f"{origin}: the public key file cannot be read ({exc.__class__.__name__})",
                code="USAGE_KEY_INVALID",
                path=path,
            ) from exc
    if len(data) > _MAX_KEY_BYTES:
        raise UsageError(
            f"{origin}: not a public key PEM (too large)", code="USAGE_KEY_INVALID", path=path
        )
    if b"PRIVATE KEY" in data:
        raise UsageError(
            f"{origin}: this is a private key; configure the public key "
            f"({PUBLIC_KEY_NAME}) and keep the private one off the device",
            code="USAGE_KEY_INVALID",
            path=path,
        )
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:  # cryptography's "could not deserialize"
        raise UsageError(
            f"{origin}: not a PEM public key", code="USAGE_KEY_INVALID", path=path
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(
            f"{origin}: a {type(key).__name__}, not an ed25519 public key",
            code="USAGE_KEY_INVALID",
            path=path,
        )
    return key


def load_private_key(source: str | os.PathLike[str] | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """The unencrypted ed25519 private key PEM at ``source`` (as ``generate_keypair`` writes).

    Raises:
        UsageError: ``USAGE_KEY_INVALID`` (unreadable, not PEM, encrypted, not ed25519).
        MissingDependencyError: ``cryptography`` is not installed.
    """
    _crypto("signing bundles")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if isinstance(source, Ed25519PrivateKey):
        return source
    path = Path(source)

    def bad(why: str) -> UsageError:
        return UsageError(f"signing key: {why}", code="USAGE_KEY_INVALID", path=path)

    try:
        data = _read_capped(path, _MAX_KEY_BYTES)
    except OSError as exc:
        raise bad(f"the file cannot be read ({exc.__class__.__name__})") from exc
    if len(data) > _MAX_KEY_BYTES:
        raise bad("not a private key PEM (too large)")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # raised for an encrypted key given no password
        raise bad("encrypted private keys are not supported") from exc
    except ValueError as exc:
        raise bad("not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise bad(f"a {type(key).__name__}, not an ed25519 private key")
    return key


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new ed25519 key pair into ``out_dir``: ``private_key.pem`` and ``public_key.pem``.

    The private key is unencrypted PKCS#8 PEM with mode 0600, created exclusively (an
    existing file or a planted symlink is never written through). A directory that does
    not exist yet is created with mode 0700.

    Returns:
        (private key path, public key path).

    Raises:
        UsageError: ``USAGE_KEY_EXISTS`` when either file already exists (a signing key
            is never overwritten: bundles signed with it would become unverifiable).
        OutputError: the directory or files cannot be written.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    _crypto("creating signing keys")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    out = Path(out_dir)
    private_path, public_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    for p in (private_path, public_path):
        if os.path.lexists(p):
            raise UsageError(
                f"{p.name} already exists; signing keys are never overwritten",
                code="USAGE_KEY_EXISTS",
                path=p,
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, data, secret in (
            (private_path, private_pem, True),
            (public_path, public_pem, False),
        ):
            # O_EXCL: never through an existing file or a planted symlink. The public key
            # gets 0666 less the umask, like any file; the private one exactly 0600.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o666)
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                if secret:
                    os.fchmod(f.fileno(), 0o600)
                f.write(data)
    except OSError as exc:
        for path in written:  # no half key pair left behind
            path.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write the key pair ({exc.strerror or exc.__class__.__name__})", path=out
        ) from exc
    return private_path, public_path


def verify_manifest(root: Path, manifest: bytes, key: Ed25519PublicKey) -> None:
    """Check ``root/bundle.sig`` against the exact ``manifest`` bytes and ``key``.

    Called before the manifest is parsed or any artifact is hashed.

    Raises:
        BundleError: ``BUNDLE_UNSIGNED`` (no ``bundle.sig``) or ``BUNDLE_SIGNATURE``
            (unreadable, malformed, made by another key, or the manifest changed since).
    """
    _crypto("verifying bundle signatures")
    from cryptography.exceptions import InvalidSignature

    sig_path = root / SIGNATURE
    try:
        sig = _read_capped(sig_path, _SIG_BYTES)
    except FileNotFoundError as exc:
        raise BundleError(
            f"the bundle is not signed ({SIGNATURE} is missing) and a trusted key is configured",
            code="BUNDLE_UNSIGNED",
            path=root,
        ) from exc
    except OSError as exc:
        raise BundleError(
            f"{SIGNATURE} cannot be read ({exc.__class__.__name__})",
            code="BUNDLE_SIGNATURE",
            path=sig_path,
        ) from exc
    if len(sig) != _SIG_BYTES:
        raise BundleError(
            f"{SIGNATURE} is not an ed25519 signature ({_SIG_BYTES} bytes)",
            code="BUNDLE_SIGNATURE",
            path=sig_path,
        )
    try:
        key.verify(sig, manifest)
    except InvalidSignature as exc:
        raise BundleError(
            f"{SIGNATURE} does not verify with the trusted key "
            f"{key_fingerprint(key)[:16]}: bundle.json changed after signing, or another "
            "key signed it",
            code="BUNDLE_SIGNATURE",
            path=sig_path,
        ) from exc
