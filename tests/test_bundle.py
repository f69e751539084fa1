"""Bundles: manifest schema, sha256 verification and artifact lookup, on real files.

Every bundle here is written into ``tmp_path`` around a tiny real ONNX model built with
``onnx.helper`` and sealed with :func:`edgemed.bundle.write_manifest`. Errors are
asserted by their stable ``code``, never by message text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemed.bundle import SCHEMA_VERSION, Bundle, write_manifest
from edgemed.errors import BundleError, UsageError
from edgemed.fsutil import sha256_file
from tests.support import error_code


def _conv_model(seed: int = 0) -> bytes:
    """A real ONNX graph: 3x3 Conv 1 -> 2 channels (+ Relu), input "image" [N, 1, 8, 8]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(2,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _manifest(**override: Any) -> dict[str, Any]:
    """A complete manifest in canonical form (what ``Bundle.to_dict`` writes back)."""
    m: dict[str, Any] = {
        "name": "tiny-seg",
        "version": "0.1.0",
        "description": "test bundle",
        "task": "segmentation",
        "labels": ["background", "foreground"],
        "input": {
            "name": "image",
            "layout": "NCHW",
            "shape": ["batch", 1, 8, 8],
            "dtype": "float32",
        },
        "outputs": [{"name": "logits", "shape": ["batch", 2, 8, 8], "dtype": "float32"}],
        "preprocess": {
            "size": [8, 8],
            "windows": [{"center": 40.0, "width": 400.0}],
            "clip": None,
            "scale": "unit",
            "edges": False,
            "resize": "letterbox",
            "pad_value": 0.0,
            "dtype": "float32",
            "color": "gray",
        },
        "postprocess": {
            "activation": "softmax",
            "decision": "argmax",
            "threshold": 0.5,
            "largest_component": ["foreground"],
        },
        "artifacts": [
            {"path": "model.onnx", "kind": "onnx", "precision": "fp32"},
            {"path": "fp16/model.onnx", "kind": "onnx", "precision": "fp16"},
        ],
        "provenance": {"made_by": "tests/test_bundle.py", "seed": 0},
    }
    m.update(override)
    return m


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A sealed bundle: fp32 and fp16 ONNX artifacts (different bytes)."""
    root = tmp_path / "bundle"
    (root / "fp16").mkdir(parents=True)
    (root / "model.onnx").write_bytes(_conv_model(0))
    (root / "fp16" / "model.onnx").write_bytes(_conv_model(1))
    write_manifest(root, _manifest())
    return root


def _raw(root: Path) -> dict[str, Any]:
    return json.loads((root / "bundle.json").read_text(encoding="utf-8"))


def _rewrite(root: Path, data: Any) -> None:
    (root / "bundle.json").write_text(json.dumps(data), encoding="utf-8")


# --- a good bundle ---------------------------------------------------------------------


def test_load_verifies_and_exposes_the_manifest(bundle_dir):
    b = Bundle.load(bundle_dir)
    assert b.name == "tiny-seg" and b.task == "segmentation"
    assert b.input.name == "image" and b.input.shape == ("batch", 1, 8, 8)
    assert b.preprocess.size == (8, 8) and b.preprocess.resize == "letterbox"
    assert b.postprocess.largest_component == ("foreground",)
    assert b.precisions == ["fp32", "fp16"]
    art = b.artifact("onnx", "fp16")
    assert art.path == "fp16/model.onnx"
    assert art.sha256 == sha256_file(bundle_dir / "fp16" / "model.onnx")
    assert art.bytes == (bundle_dir / "fp16" / "model.onnx").stat().st_size
    assert b.artifact().path == "model.onnx"  # default: onnx fp32


def test_read_artifact_returns_the_exact_bytes_of_a_real_model(bundle_dir):
    b = Bundle.load(bundle_dir)
    for precision, path in [("fp32", "model.onnx"), ("fp16", "fp16/model.onnx")]:
        data = b.read_artifact(b.artifact("onnx", precision))
        assert data == (bundle_dir / path).read_bytes()
    model = onnx.load_from_string(b.read_artifact(b.artifact()))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]


def test_precisions_follow_preference_order_not_manifest_order(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    for name, seed in [("a.onnx", 0), ("b.onnx", 1), ("c.onnx", 2), ("d.plan", 3)]:
        (root / name).write_bytes(_conv_model(seed))
    arts = [
        {"path": "a.onnx", "kind": "onnx", "precision": "int8"},
        {"path": "b.onnx", "kind": "onnx", "precision": "fp16"},
        {"path": "c.onnx", "kind": "onnx", "precision": "fp32"},
        {"path": "d.plan", "kind": "engine", "precision": "fp16"},
    ]
    b = write_manifest(root, _manifest(artifacts=arts))
    assert b.precisions == ["fp32", "fp16", "int8"]
    assert b.artifact("engine", "fp16").path == "d.plan"


def test_a_precision_the_bundle_lacks_is_the_users_choice(bundle_dir):
    # The bundle is valid; asking it for a precision it does not list is a usage error
    # (exit 2), the same code from run, bench, build and the API, naming what it has.
    b = Bundle.load(bundle_dir)
    assert b.precisions == ["fp32", "fp16"]
    for precision in ("int8", "bf16"):
        with pytest.raises(UsageError) as exc:
            b.artifact("onnx", precision)
        assert exc.value.code == "USAGE_PRECISION_MISSING" and exc.value.exit_code == 2
        assert exc.value.message.endswith("(it has fp32, fp16)")
    # An engine is not something a user picks by precision: a bundle without the one
    # asked for is the bundle's fault.
    assert error_code(b.artifact, "engine", "fp32", kind=BundleError) == "BUNDLE_ARTIFACT_MISSING"


def test_round_trip_to_dict_equals_the_written_manifest(bundle_dir):
    assert Bundle.load(bundle_dir).to_dict() == _raw(bundle_dir)
    # ... and what write_manifest was given, plus the filled-in fields.
    raw = _raw(bundle_dir)
    assert raw["schema_version"] == SCHEMA_VERSION
    for a in raw["artifacts"]:
        assert set(a) == {"path", "kind", "precision", "sha256", "bytes"}
        del a["sha256"], a["bytes"]
    del raw["schema_version"]
    assert raw == _manifest()


def test_round_trip_of_a_minimal_manifest_is_stable(tmp_path):
    """Defaults filled on load survive a second write/load unchanged."""
    root = tmp_path / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(_conv_model())
    minimal = {
        "name": "m",
        "version": "1",
        "task": "classification",
        "input": {"name": "image", "shape": [1, 1, 8, 8]},
        "outputs": [{"name": "logits", "shape": [1, 2, 8, 8]}],
        "preprocess": {"size": [8, 8], "scale": "none"},
        "artifacts": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32"}],
    }
    first = write_manifest(root, minimal).to_dict()
    second = write_manifest(root, first).to_dict()
    assert first == second == _raw(root) == Bundle.load(root).to_dict()


def test_write_manifest_is_atomic_and_leaves_no_temporary_files(bundle_dir):
    write_manifest(bundle_dir, _manifest(version="0.2.0"))
    names = sorted(p.name for p in bundle_dir.iterdir())
    assert names == ["bundle.json", "fp16", "model.onnx"]
    assert Bundle.load(bundle_dir).version == "0.2.0"


def test_uppercase_sha256_in_a_manifest_still_verifies(bundle_dir):
    data = _raw(bundle_dir)
    for a in data["artifacts"]:
        a["sha256"] = a["sha256"].upper()
    _rewrite(bundle_dir, data)
    assert Bundle.load(bundle_dir).artifact().sha256 == sha256_file(bundle_dir / "model.onnx")


# --- integrity -------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, None, -1], ids=["first", "middle", "last"])
def test_a_flipped_byte_fails_at_load(bundle_dir, offset):
    _flip_byte(bundle_dir / "model.onnx", offset)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INTEGRITY"


def test_a_flipped_byte_in_a_second_artifact_fails_at_load(bundle_dir):
    _flip_byte(bundle_dir / "fp16" / "model.onnx")
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INTEGRITY"


def test_a_file_swapped_after_load_fails_at_read_artifact(bundle_dir):
    b = Bundle.load(bundle_dir)
    art = b.artifact()
    _flip_byte(bundle_dir / "model.onnx")
    with pytest.raises(BundleError) as exc:
        b.read_artifact(art)
    assert exc.value.code == "BUNDLE_INTEGRITY"
    # A different but valid model of the same size is no better.
    (bundle_dir / "model.onnx").write_bytes(_conv_model(5))
    assert len(_conv_model(5)) == art.bytes
    with pytest.raises(BundleError) as exc:
        b.read_artifact(art)
    assert exc.value.code == "BUNDLE_INTEGRITY"


def test_a_truncated_model_fails(bundle_dir):
    b = Bundle.load(bundle_dir)
    p = bundle_dir / "model.onnx"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(BundleError) as exc:
        b.read_artifact(b.artifact())
    assert exc.value.code == "BUNDLE_INTEGRITY"
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INTEGRITY"
    p.write_bytes(b"")
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INTEGRITY"


def test_verify_false_defers_the_check_to_read_artifact(bundle_dir):
    _flip_byte(bundle_dir / "model.onnx")
    b = Bundle.load(bundle_dir, verify=False)
    with pytest.raises(BundleError) as exc:
        b.read_artifact(b.artifact())
    assert exc.value.code == "BUNDLE_INTEGRITY"


def test_manifest_size_that_disagrees_with_the_file_fails(bundle_dir):
    data = _raw(bundle_dir)
    data["artifacts"][0]["bytes"] += 1
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INTEGRITY"


def test_a_missing_artifact(bundle_dir):
    b = Bundle.load(bundle_dir)
    (bundle_dir / "fp16" / "model.onnx").unlink()
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_ARTIFACT_MISSING"
    with pytest.raises(BundleError) as exc:
        b.read_artifact(b.artifact("onnx", "fp16"))
    assert exc.value.code == "BUNDLE_ARTIFACT_MISSING"


def test_an_artifact_that_is_a_directory_is_missing(bundle_dir):
    (bundle_dir / "model.onnx").unlink()
    (bundle_dir / "model.onnx").mkdir()
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_ARTIFACT_MISSING"


# --- the manifest itself -----------------------------------------------------------------


def test_no_bundle_json_is_not_found(tmp_path, bundle_dir):
    assert error_code(Bundle.load, tmp_path, kind=BundleError) == "BUNDLE_NOT_FOUND"
    assert (
        error_code(Bundle.load, tmp_path / "does-not-exist", kind=BundleError) == "BUNDLE_NOT_FOUND"
    )
    # a file, not a bundle:
    assert (
        error_code(Bundle.load, bundle_dir / "model.onnx", kind=BundleError) == "BUNDLE_NOT_FOUND"
    )
    (bundle_dir / "bundle.json").unlink()
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_NOT_FOUND"


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b'{"schema_version": 1,}', b"\xff\xfe{}", b"null", b"[]", b'"bundle"'],
    ids=["empty", "unclosed", "trailing-comma", "not-utf8", "null", "list", "string"],
)
def test_unparseable_or_non_object_manifest_is_invalid(bundle_dir, text):
    (bundle_dir / "bundle.json").write_bytes(text)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize("version", [2, 0, "1", None, True, 1.0, 1.5], ids=repr)
def test_wrong_schema_version(bundle_dir, version):
    data = _raw(bundle_dir)
    data["schema_version"] = version
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_SCHEMA_VERSION"


def test_missing_schema_version(bundle_dir):
    data = _raw(bundle_dir)
    del data["schema_version"]
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_SCHEMA_VERSION"


@pytest.mark.parametrize("key", ["name", "version", "task", "input", "outputs", "preprocess"])
def test_missing_top_level_key_is_invalid(bundle_dir, key):
    data = _raw(bundle_dir)
    del data[key]
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize(
    "patch",
    [{"postprocesss": {}}, {"labels": "abc"}, {"labels": ["a", 1]}, {"labels": {"0": "a"}}],
    ids=["typo-key", "labels-string", "labels-non-string", "labels-object"],
)
def test_unknown_keys_and_malformed_labels_are_invalid(bundle_dir, patch):
    data = _raw(bundle_dir)
    data.update(patch)
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


def test_missing_artifacts_is_invalid(bundle_dir):
    data = _raw(bundle_dir)
    del data["artifacts"]
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"
    data["artifacts"] = []
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize("key", ["path", "kind", "precision", "sha256"])
def test_missing_artifact_key_is_invalid(bundle_dir, key):
    data = _raw(bundle_dir)
    del data["artifacts"][0][key]
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize(
    "patch",
    [
        {"task": "detection"},
        {"task": "Segmentation"},
        {"task": None},
        {"input": {"name": "image"}},  # no shape
        {"input": {"shape": [1, 1, 8, 8]}},  # no name
        {"input": "image"},
        {"outputs": [{"name": "logits"}]},
        {"outputs": None},
        {"preprocess": {"size": [8, 8], "scale": "unit"}},  # unit without a range
        {"preprocess": {"size": [8, 8], "clip": [0, 1], "colour": "gray"}},  # typo
        {"postprocess": {"activation": "relu"}},
        {"postprocess": {"threshold": "high"}},
        {"postprocess": {"unknown": 1}},
        {"provenance": [1, 2, 3]},
    ],
    ids=lambda p: json.dumps(p),
)
def test_malformed_fields_are_invalid(bundle_dir, patch):
    data = _raw(bundle_dir)
    data.update(patch)
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize(
    "patch",
    [
        {"kind": "tflite"},
        {"precision": "fp8"},
        {"precision": "FP32"},
        {"sha256": "abc"},
        {"sha256": "0" * 63},
        {"sha256": "0" * 65},
        {"sha256": "g" * 64},  # 64 characters, not hex
        {"sha256": None},
        {"bytes": "many"},
        {"bytes": -1},
        {"bytes": True},
    ],
    ids=lambda p: json.dumps(p),
)
def test_malformed_artifact_entries_are_invalid(bundle_dir, patch):
    data = _raw(bundle_dir)
    data["artifacts"][0].update(patch)
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"


@pytest.mark.parametrize(
    "rel",
    ["../outside.onnx", "fp16/../../outside.onnx", "ABSOLUTE"],
    ids=["dotdot", "nested-dotdot", "absolute"],
)
def test_artifact_paths_must_stay_inside_the_bundle(bundle_dir, rel):
    """Rejected for the path itself, even when the file there exists and its hash matches."""
    outside = bundle_dir.parent / "outside.onnx"
    outside.write_bytes(_conv_model(9))
    path = str(outside) if rel == "ABSOLUTE" else rel
    data = _raw(bundle_dir)
    data["artifacts"][0].update(path=path, sha256=sha256_file(outside), bytes=len(_conv_model(9)))
    _rewrite(bundle_dir, data)
    assert error_code(Bundle.load, bundle_dir, kind=BundleError) == "BUNDLE_INVALID"
    # write_manifest refuses it too, whether or not the file out there exists: it checks
    # the path before it reads anything.
    for target in (path, path.replace("outside.onnx", "absent.onnx")):
        with pytest.raises(BundleError) as exc:
            write_manifest(
                bundle_dir,
                _manifest(artifacts=[{"path": target, "kind": "onnx", "precision": "fp32"}]),
            )
        assert exc.value.code == "BUNDLE_INVALID"


def test_write_manifest_with_a_missing_artifact(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(_conv_model())
    with pytest.raises(BundleError) as exc:
        write_manifest(root, _manifest())  # lists fp16/model.onnx, which is not there
    assert exc.value.code == "BUNDLE_ARTIFACT_MISSING"
    assert not (root / "bundle.json").exists()
    assert sorted(os.listdir(root)) == ["model.onnx"]


def test_write_manifest_refuses_an_invalid_manifest_without_writing(bundle_dir):
    before = (bundle_dir / "bundle.json").read_bytes()
    bads = [
        _manifest(task="detection"),
        {k: v for k, v in _manifest().items() if k != "name"},
        {k: v for k, v in _manifest().items() if k != "artifacts"},
        _manifest(artifacts=[{"kind": "onnx", "precision": "fp32"}]),  # no path
        _manifest(artifacts=["model.onnx"]),
    ]
    for bad in bads:
        with pytest.raises(BundleError) as exc:
            write_manifest(bundle_dir, bad)
        assert exc.value.code == "BUNDLE_INVALID"
    assert (bundle_dir / "bundle.json").read_bytes() == before


def test_read_artifact_hashes_the_bytes_it_returns(bundle_dir):
    b = Bundle.load(bundle_dir)
    data = b.read_artifact(b.artifact())
    assert hashlib.sha256(data).hexdigest() == b.artifact().sha256
