"""Bundle signatures: keygen, sign and verify through the real CLI and through the API.

Errors are asserted by code: ``BUNDLE_UNSIGNED`` / ``BUNDLE_SIGNATURE`` /
``BUNDLE_INTEGRITY`` (exit 4) for the bundle, ``USAGE_KEY_INVALID`` /
``USAGE_KEY_EXISTS`` (exit 2) for a key that is misconfigured or would be overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgemed.bundle import Bundle, sign_bundle, write_manifest
from edgemed.errors import BundleError, UsageError
from edgemed.pipeline import Pipeline
from edgemed.settings import load_settings, trusted_key_path
from edgemed.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    SIGNATURE,
    generate_keypair,
    key_fingerprint,
    load_private_key,
    load_public_key,
)
from tests.support import error_code


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "EDGEMED_TRUSTED_KEY"}
    full.update(EDGEMED_ORT_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "edgemed.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def _error(proc: subprocess.CompletedProcess, code: str, exit_code: int) -> None:
    assert proc.returncode == exit_code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgemed: error {code}:"), proc.stderr


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("EDGEMED_TRUSTED_KEY", raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(base / "ours")
    other_private, other_public = generate_keypair(base / "theirs")
    return {"private": private, "public": public, "other": other_private}


@pytest.fixture
def bundle(tiny_bundle) -> Path:
    return tiny_bundle("segmentation", size=16)


@pytest.fixture
def signed(bundle, keys) -> Path:
    sign_bundle(bundle, keys["private"])
    return bundle


# --- the command line ------------------------------------------------------------------


def test_cli_keygen_sign_info_and_run(tmp_path, bundle, ct_small_path):
    keydir = tmp_path / "new" / "keys"
    proc = cli("keygen", "--out", str(keydir))
    assert proc.returncode == 0, proc.stderr
    private, public = keydir / PRIVATE_KEY_NAME, keydir / PUBLIC_KEY_NAME
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(keydir.stat().st_mode) & 0o077 == 0  # created 0700
    fingerprint = key_fingerprint(load_public_key(public))
    assert fingerprint[:16] in proc.stdout
    assert key_fingerprint(load_private_key(private)) == fingerprint  # one pair

    # Never overwritten: bundles signed with the old key would become unverifiable.
    before = private.read_bytes()
    _error(cli("keygen", "--out", str(keydir)), "USAGE_KEY_EXISTS", 2)
    assert private.read_bytes() == before

    trusted = {"EDGEMED_TRUSTED_KEY": str(public)}
    _error(cli("info", str(bundle), env=trusted), "BUNDLE_UNSIGNED", 4)

    proc = cli("sign", str(bundle), "--key", str(private))
    assert proc.returncode == 0, proc.stderr
    assert len((bundle / SIGNATURE).read_bytes()) == 64

    info = cli("info", str(bundle), env=trusted)
    assert info.returncode == 0, info.stderr
    assert f"signature    verified (ed25519 key {fingerprint[:16]})" in info.stdout
    info = cli("info", str(bundle))
    assert "signature    bundle.sig present, not checked" in info.stdout

    out = tmp_path / "out"
    proc = cli("run", ct_small_path, "--bundle", str(bundle), "--out", str(out), env=trusted)
    assert proc.returncode == 0, proc.stderr
    assert (out / "result.json").is_file()


def test_cli_refusals_name_the_code(tmp_path, signed, keys, ct_small_path):
    other_public = keys["other"].parent / PUBLIC_KEY_NAME
    _error(
        cli("info", str(signed), env={"EDGEMED_TRUSTED_KEY": str(other_public)}),
        "BUNDLE_SIGNATURE",
        4,
    )
    _error(
        cli("info", str(signed), env={"EDGEMED_TRUSTED_KEY": str(tmp_path / "absent.pem")}),
        "USAGE_KEY_INVALID",
        2,
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(os.urandom(300))
    _error(cli("sign", str(signed), "--key", str(garbage)), "USAGE_KEY_INVALID", 2)
    _error(cli("sign", str(signed), "--key", str(keys["public"])), "USAGE_KEY_INVALID", 2)


# --- the API -----------------------------------------------------------------------------


def test_signed_bundle_loads_with_its_key_in_every_form(signed, keys):
    public = keys["public"]
    fingerprint = key_fingerprint(load_public_key(public))
    for key in (public, str(public), public.read_bytes(), load_public_key(public)):
        b = Bundle.load(signed, trusted_key=key)
        assert (b.signature, b.signed_by) == ("verified", fingerprint)
    assert Bundle.load(signed).signature == "unverified"  # present, no key: not read


def test_unsigned_bundle_with_a_key_is_unsigned(bundle, keys):
    assert (
        error_code(Bundle.load, bundle, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_UNSIGNED"
    )
    b = Bundle.load(bundle)  # no key configured: not required
    assert (b.signature, b.signed_by) == ("unsigned", None)


def test_signature_by_another_key(signed, keys):
    other_public = load_private_key(keys["other"]).public_key()
    assert (
        error_code(Bundle.load, signed, trusted_key=other_public, kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )
    sign_bundle(signed, keys["other"])  # re-signing replaces bundle.sig
    assert Bundle.load(signed, trusted_key=other_public).signature == "verified"
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )


@pytest.mark.parametrize("edit", ["label", "window", "whitespace", "reserialised"])
def test_manifest_modified_after_signing(signed, keys, edit):
    path = signed / "bundle.json"
    text = path.read_bytes()
    data = json.loads(text)
    if edit == "label":
        data["labels"][1] = "tumour"
        path.write_text(json.dumps(data, indent=2) + "\n")
    elif edit == "window":
        data["preprocess"]["clip"] = [-1000.0, 3000.0]
        path.write_text(json.dumps(data, indent=2) + "\n")
    elif edit == "whitespace":
        path.write_bytes(text + b"\n")
    else:  # the same data, serialised differently: still not the bytes that were signed
        path.write_text(json.dumps(data))
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )
    assert Bundle.load(signed).signature == "unverified"  # no key: loads, hashes still match


def test_artifact_modified_after_signing_is_integrity(signed, keys):
    model = signed / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x10
    model.write_bytes(bytes(data))
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_INTEGRITY"
    )


def test_signature_is_checked_before_the_manifest_is_parsed(signed, keys):
    """Garbage that would be BUNDLE_INVALID is BUNDLE_SIGNATURE: no parser saw it."""
    (signed / "bundle.json").write_bytes(b"\xff not json {")
    assert error_code(Bundle.load, signed, kind=BundleError) == "BUNDLE_INVALID"
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], verify=False, kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )
    (signed / "bundle.json").unlink()
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_NOT_FOUND"
    )


@pytest.mark.parametrize("sig", [b"", b"\0" * 63, b"\0" * 64, b"\0" * 65, "dir"], ids=repr)
def test_malformed_signature_files(signed, keys, sig):
    target = signed / SIGNATURE
    target.unlink()
    if sig == "dir":
        target.mkdir()
    else:
        target.write_bytes(sig)
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )


def test_no_key_configured_ignores_a_signature_silently(signed, caplog, recwarn):
    (signed / SIGNATURE).write_bytes(b"not a signature at all")
    with caplog.at_level(logging.DEBUG):
        b = Bundle.load(signed)
    assert b.signature == "unverified"
    assert caplog.records == [] and len(recwarn) == 0


def test_the_environment_key_applies_to_the_api_too(monkeypatch, bundle, signed, keys):
    monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(keys["public"]))
    assert Bundle.load(signed).signature == "verified"
    unsigned = bundle.parent / "unsigned"
    shutil.copytree(signed, unsigned)
    (unsigned / SIGNATURE).unlink()
    assert error_code(Bundle.load, unsigned, kind=BundleError) == "BUNDLE_UNSIGNED"
    assert (
        error_code(Pipeline.from_bundle, unsigned, "onnxruntime", threads=1, kind=BundleError)
        == "BUNDLE_UNSIGNED"
    )
    with Pipeline.from_bundle(signed, "onnxruntime", threads=1) as pipe:
        assert pipe.bundle.signature == "verified"
    # An explicit key is used instead of the environment's.
    other_public = load_private_key(keys["other"]).public_key()
    assert (
        error_code(Bundle.load, signed, trusted_key=other_public, kind=BundleError)
        == "BUNDLE_SIGNATURE"
    )
    monkeypatch.setenv("EDGEMED_TRUSTED_KEY", "   ")  # blank is unset
    assert Bundle.load(unsigned).signature == "unsigned"


def _ec_public_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("content", ["missing", "empty", "garbage", "private", "ec", "dir"])
def test_a_bad_trusted_key_is_a_usage_error(monkeypatch, tmp_path, signed, keys, content):
    """A misconfigured key is the operator's to fix, not the bundle's: USAGE_KEY_INVALID
    (UsageError, exit 2), for the environment variable and the parameter alike."""
    path = tmp_path / "key.pem"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "garbage":
        path.write_bytes(os.urandom(200))
    elif content == "private":
        path.write_bytes(keys["private"].read_bytes())
    elif content == "ec":
        path.write_bytes(_ec_public_pem())
    elif content == "dir":
        path.mkdir()
    assert error_code(Bundle.load, signed, trusted_key=path, kind=UsageError) == "USAGE_KEY_INVALID"
    monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(path))
    with pytest.raises(UsageError) as exc:
        Bundle.load(signed)
    assert exc.value.code == "USAGE_KEY_INVALID" and exc.value.exit_code == 2
    assert "EDGEMED_TRUSTED_KEY" in str(exc.value)


def test_private_key_errors(tmp_path, keys):
    for content in (b"", os.urandom(100), keys["public"].read_bytes(), _ec_public_pem()):
        path = tmp_path / "k.pem"
        path.write_bytes(content)
        assert error_code(load_private_key, path, kind=UsageError) == "USAGE_KEY_INVALID"
    assert (
        error_code(load_private_key, tmp_path / "absent.pem", kind=UsageError)
        == "USAGE_KEY_INVALID"
    )


def test_sign_refuses_a_bundle_that_does_not_verify(bundle, keys):
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    assert error_code(sign_bundle, bundle, keys["private"], kind=BundleError) == "BUNDLE_INTEGRITY"
    assert not (bundle / SIGNATURE).exists()


def test_sign_ignores_a_configured_key(monkeypatch, bundle, keys):
    """Signing an unsigned bundle works while EDGEMED_TRUSTED_KEY is set (it must)."""
    monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(keys["public"]))
    sign_bundle(bundle, keys["private"])
    assert Bundle.load(bundle).signature == "verified"


def test_write_manifest_drops_only_a_signature_it_invalidates(bundle, keys):
    manifest = Bundle.load(bundle).to_dict()  # canonical: writing it back changes no byte
    write_manifest(bundle, manifest)
    sign_bundle(bundle, keys["private"])
    signed = bundle
    write_manifest(signed, manifest)  # same bytes: the signature stays valid
    assert Bundle.load(signed, trusted_key=keys["public"]).signature == "verified"
    manifest["labels"][0] = "air"
    b = write_manifest(signed, manifest)
    assert not (signed / SIGNATURE).exists() and b.signature == "unsigned"
    assert (
        error_code(Bundle.load, signed, trusted_key=keys["public"], kind=BundleError)
        == "BUNDLE_UNSIGNED"
    )


def test_generate_keypair_exactly_0600_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        private, public = generate_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o666  # public: the umask decides
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700


def test_generate_keypair_never_writes_through_a_symlink(tmp_path):
    keydir = tmp_path / "k"
    keydir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (keydir / PUBLIC_KEY_NAME).symlink_to(victim)
    assert error_code(generate_keypair, keydir, kind=UsageError) == "USAGE_KEY_EXISTS"
    assert victim.read_text() == "keep" and not (keydir / PRIVATE_KEY_NAME).exists()


def test_settings_read_the_trusted_key():
    assert trusted_key_path({}) is None and trusted_key_path({"EDGEMED_TRUSTED_KEY": " "}) is None
    assert trusted_key_path({"EDGEMED_TRUSTED_KEY": " /k/pub.pem "}) == Path("/k/pub.pem")
    assert load_settings({"EDGEMED_TRUSTED_KEY": "pub.pem"}).trusted_key == Path("pub.pem")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl here")
def test_openssl_verifies_the_signature_over_the_exact_manifest_bytes(signed, keys):
    """The format is plain ed25519 over bundle.json's bytes: stock tools can check it."""
    proc = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["public"]), "-rawin"]
        + ["-in", str(signed / "bundle.json"), "-sigfile", str(signed / SIGNATURE)],
        capture_output=True,
        text=True,
    )
    if "rawin" in proc.stderr and proc.returncode != 0:
        pytest.skip("this openssl has no -rawin (needs 3.0+)")
    assert proc.returncode == 0 and "Signature Verified Successfully" in proc.stdout


def test_without_cryptography_edgemed_imports_and_a_key_names_the_extra(signed, keys):
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"
        "import edgemed, edgemed.signing, edgemed.cli\n"
        "from edgemed.bundle import Bundle\n"
        "assert Bundle.load(sys.argv[1]).signature == 'unverified'\n"
        "try:\n"
        "    Bundle.load(sys.argv[1], trusted_key=sys.argv[2])\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e.code, e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EDGEMED_TRUSTED_KEY"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(signed), str(keys["public"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingDependencyError DEPENDENCY_MISSING")
    assert 'pip install "edgemed[signing]"' in out.stdout
