"""Tampered artifacts and manifests are refused before any parser sees them.

One small real bundle is built per module; every case copies it, damages one file
(seeded single-bit flips spread over the whole file, or truncations from 0 bytes to one
byte short), loads it the way users do, and asserts the refusal's ``BUNDLE_*`` code.
``onnxruntime.InferenceSession`` is replaced by a spy that records every model it is
handed, so each case also proves that no tampered byte ever reached the parser.

Cases: 100 flips + 10 truncations of ``model.onnx``, and the same of ``bundle.json``,
each with and without a trusted key; plus every byte of ``bundle.sig``.

Without a trusted key the sha256 hashes protect the artifacts only. A flip in JSON
whitespace, in a free-text string, in a label, or the case of a hex digit can leave a
manifest that still parses and whose hashes still match; such a manifest loads, and the
test then proves that the artifact bytes it leads to are the original ones, byte for
byte. Its other fields may differ: that is what signing is for. With a trusted key,
every changed byte of ``bundle.json`` is ``BUNDLE_SIGNATURE``, checked before the
manifest is parsed.

TensorRT engines and their sidecar JSON files do not exist in bundles yet (the TensorRT
backend is a later issue); when they do, they are artifacts listed in the manifest and
need the same cases here.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from edgemed.backends import create_backend
from edgemed.bundle import Bundle, sign_bundle
from edgemed.errors import BundleError
from edgemed.pipeline import Pipeline
from edgemed.signing import SIGNATURE, generate_keypair, load_public_key
from tests.bundles import make_bundle

SEED = 20260101
N_FLIPS = 100


def _flips(size: int, seed: int) -> list[tuple[int, int]]:
    """``N_FLIPS`` (offset, bit mask) pairs: one offset drawn in each of ``N_FLIPS`` equal
    slices of the file, so flips reach the header, the middle and the tail alike."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_FLIPS):
        lo, hi = i * size // N_FLIPS, max((i + 1) * size // N_FLIPS, i * size // N_FLIPS + 1)
        out.append((int(rng.integers(lo, hi)), 1 << int(rng.integers(0, 8))))
    return out


def _truncations(size: int) -> list[int]:
    """Ten lengths from empty to one byte short."""
    return [0, 1, 2, size // 10, size // 4, size // 2, 3 * size // 4, size - 16, size - 2, size - 1]


def _flip(data: bytes, offset: int, mask: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


class _Spy:
    """Stands in for ``onnxruntime.InferenceSession``; records what it is asked to parse."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.seen: list[Any] = []

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(model)
        return self.real(model, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("EDGEMED_TRUSTED_KEY", raising=False)


@pytest.fixture
def spy(monkeypatch) -> _Spy:
    s = _Spy(onnxruntime.InferenceSession)
    # ort.py looks the class up on the module at call time, so this catches every session.
    monkeypatch.setattr(onnxruntime, "InferenceSession", s)
    return s


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Any]:
    """One plain and one signed copy of a real segmentation bundle, plus their bytes."""
    base = tmp_path_factory.mktemp("tamper")
    plain = make_bundle(base / "plain", "segmentation", channels=1, classes=3, size=16)
    private, public = generate_keypair(base / "keys")
    signed = base / "signed"
    shutil.copytree(plain, signed)
    sign_bundle(signed, private)
    model = (plain / "model.onnx").read_bytes()
    out = {
        "plain": plain,
        "signed": signed,
        "public": public,
        "key": load_public_key(public),
        "model": model,
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "manifest": (plain / "bundle.json").read_bytes(),
        "sig": (signed / SIGNATURE).read_bytes(),
    }
    assert len(out["model"]) == _sizes()["model"]  # the cases were drawn for these sizes
    assert len(out["manifest"]) == _sizes()["manifest"]
    return out


def _copy(pristine: dict[str, Any], which: str, dest: Path) -> Path:
    root = dest / which
    shutil.copytree(pristine[which], root)
    return root


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(BundleError) as exc:
        call()
    assert exc.value.code.startswith("BUNDLE_"), exc.value.code
    return exc.value.code


def _only_original_models(spy: _Spy, pristine: dict[str, Any]) -> None:
    for model in spy.seen:
        # The runtime hands ORT bytes it hashed, never a path ORT would read itself.
        assert isinstance(model, bytes), type(model)
        assert model == pristine["model"]


# Offsets are computed from the pristine files at collection time, so the cases and
# their ids are the same on every run.
_SIZES: dict[str, int] = {}


def _sizes() -> dict[str, int]:
    if not _SIZES:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            root = make_bundle(Path(d) / "b", "segmentation", channels=1, classes=3, size=16)
            _SIZES["model"] = (root / "model.onnx").stat().st_size
            _SIZES["manifest"] = (root / "bundle.json").stat().st_size
    return _SIZES


def _cases(kind: str) -> list[Any]:
    size = _sizes()[kind]
    seed = SEED + (0 if kind == "model" else 1)
    flips = [pytest.param(("flip", o, m), id=f"flip@{o}^{m:#04x}") for o, m in _flips(size, seed)]
    cuts = [pytest.param(("cut", n, 0), id=f"truncate-to-{n}") for n in _truncations(size)]
    return flips + cuts


def _damage(data: bytes, case: tuple[str, int, int]) -> bytes:
    what, n, mask = case
    out = _flip(data, n, mask) if what == "flip" else data[:n]
    assert out != data
    return out


# --- positive controls: the spy sees the real model, so its silence below means something


@pytest.mark.parametrize("which", ["plain", "signed"])
def test_untampered_bundles_load_and_the_spy_sees_the_original_model(
    pristine, spy, tmp_path, monkeypatch, which
):
    root = _copy(pristine, which, tmp_path)
    if which == "signed":
        monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(pristine["public"]))
    with Pipeline.from_bundle(root, "onnxruntime", threads=1) as pipe:
        assert pipe.bundle.signature == ("verified" if which == "signed" else "unsigned")
    assert spy.seen == [pristine["model"]]


def test_the_case_lists_are_as_documented():
    sizes = _sizes()
    assert len(_cases("model")) == len(_cases("manifest")) == 110
    for kind in ("model", "manifest"):
        offsets = [o for o, _ in _flips(sizes[kind], SEED)]
        n = sizes[kind]
        assert len(set(offsets)) == N_FLIPS  # one per slice: head to tail
        assert min(offsets) < n // N_FLIPS and max(offsets) >= (N_FLIPS - 1) * n // N_FLIPS
        assert _flips(sizes[kind], SEED) == _flips(sizes[kind], SEED)  # seeded


# --- model.onnx ------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["no-key", "trusted-key"])
@pytest.mark.parametrize("case", _cases("model"))
def test_tampered_model_is_refused_before_parsing(
    pristine, spy, tmp_path, monkeypatch, case, signed
):
    root = _copy(pristine, "signed" if signed else "plain", tmp_path)
    if signed:
        monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(pristine["public"]))
    # Loaded while intact, to try the swap-after-load path too.
    loaded = Bundle.load(root)
    (root / "model.onnx").write_bytes(_damage(pristine["model"], case))

    assert _refused(lambda: Pipeline.from_bundle(root, "onnxruntime", threads=1)) == (
        "BUNDLE_INTEGRITY"
    )
    assert _refused(lambda: Bundle.load(root, verify=False).read_artifact(loaded.artifact())) == (
        "BUNDLE_INTEGRITY"
    )
    assert _refused(lambda: create_backend("onnxruntime", loaded, "fp32", 1)) == (
        "BUNDLE_INTEGRITY"
    )
    assert spy.seen == []


# --- bundle.json -------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("manifest"))
def test_tampered_manifest_without_a_key_loads_only_original_artifacts(
    pristine, spy, tmp_path, case
):
    root = _copy(pristine, "plain", tmp_path)
    (root / "bundle.json").write_bytes(_damage(pristine["manifest"], case))
    try:
        bundle = Bundle.load(root)
    except BundleError as exc:  # the usual outcome: invalid JSON, schema, hash or size
        assert exc.code.startswith("BUNDLE_"), exc.code
        assert spy.seen == []
        return
    # Still valid, and its hashes still match (whitespace, a string, a hex digit's case):
    # whatever it leads to must be the original bytes.
    assert [a.sha256 for a in bundle.artifacts] == [pristine["model_sha256"]]
    for art in bundle.artifacts:
        assert bundle.read_artifact(art) == pristine["model"]
    try:
        create_backend("onnxruntime", bundle, bundle.precisions[0], 1).close()
    except BundleError as exc:
        assert exc.code.startswith("BUNDLE_"), exc.code
    _only_original_models(spy, pristine)


@pytest.mark.parametrize("case", _cases("manifest"))
def test_tampered_manifest_with_a_key_is_a_signature_error(
    pristine, spy, tmp_path, monkeypatch, case
):
    root = _copy(pristine, "signed", tmp_path)
    (root / "bundle.json").write_bytes(_damage(pristine["manifest"], case))
    key = pristine["key"]
    assert _refused(lambda: Bundle.load(root, trusted_key=key)) == "BUNDLE_SIGNATURE"
    assert _refused(lambda: Bundle.load(root, trusted_key=key, verify=False)) == (
        "BUNDLE_SIGNATURE"
    )
    monkeypatch.setenv("EDGEMED_TRUSTED_KEY", str(pristine["public"]))
    assert _refused(lambda: Pipeline.from_bundle(root, "onnxruntime", threads=1)) == (
        "BUNDLE_SIGNATURE"
    )
    assert spy.seen == []


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.replace(b'  "', b'\t"', 1), id="whitespace"),
        pytest.param(lambda t: t.replace(b"tiny-segmentation", b"tiny-segmentatioN"), id="name"),
        pytest.param(lambda t: t.replace(b'"class1"', b'"class2"', 1), id="label"),
        pytest.param(lambda t: t[:-1], id="final-newline"),
    ],
)
def test_manifest_edits_that_keep_it_valid(pristine, spy, tmp_path, edit):
    """Edits known to leave a valid manifest: they load without a key (the artifacts
    are still the originals) and are ``BUNDLE_SIGNATURE`` with one."""
    for which in ("plain", "signed"):
        root = _copy(pristine, which, tmp_path)
        edited = edit(pristine["manifest"])
        assert edited != pristine["manifest"]
        (root / "bundle.json").write_bytes(edited)
        if which == "plain":
            bundle = Bundle.load(root)
            assert bundle.read_artifact(bundle.artifact()) == pristine["model"]
        else:
            assert _refused(lambda r=root: Bundle.load(r, trusted_key=pristine["key"])) == (
                "BUNDLE_SIGNATURE"
            )
    # The upper-case hex digit case, made deliberately: same hash to the loader.
    root = _copy(pristine, "signed", tmp_path / "hex")
    text = pristine["manifest"].replace(
        pristine["model_sha256"].encode(), pristine["model_sha256"].upper().encode()
    )
    (root / "bundle.json").write_bytes(text)
    assert Bundle.load(root).read_artifact(Bundle.load(root).artifact()) == pristine["model"]
    assert _refused(lambda: Bundle.load(root, trusted_key=pristine["key"])) == "BUNDLE_SIGNATURE"
    _only_original_models(spy, pristine)


# --- bundle.sig ----------------------------------------------------------------------------


def test_every_byte_of_the_signature_matters(pristine, spy, tmp_path):
    rng = np.random.default_rng(SEED + 2)
    sig = pristine["sig"]
    assert len(sig) == 64
    damaged = [_flip(sig, i, 1 << int(rng.integers(0, 8))) for i in range(len(sig))]
    damaged += [sig[:n] for n in (0, 1, 32, 63)] + [sig + b"\0"]
    root = _copy(pristine, "signed", tmp_path)
    for bad in damaged:
        (root / SIGNATURE).write_bytes(bad)
        assert _refused(lambda: Bundle.load(root, trusted_key=pristine["key"])) == (
            "BUNDLE_SIGNATURE"
        )
    assert spy.seen == []
