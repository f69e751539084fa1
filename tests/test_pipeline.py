"""Pipeline behaviour on small real ONNX bundles (the demo model has its own tests)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import edgemed
from edgemed import MedicalImage, Options, Pipeline
from edgemed.errors import UsageError
from edgemed.pipeline import STAGES
from edgemed.settings import MAX_BATCH_SIZE
from tests.cli_run import cli


def _image(seed, shape=(20, 30)):
    return np.random.default_rng(seed).normal(0, 400, shape).astype(np.float32)


def test_batch_of_slices_runs_as_one_call_and_equals_single_runs(tiny_bundle, monkeypatch):
    pipe = Pipeline.from_bundle(tiny_bundle("segmentation", classes=3), "onnxruntime")
    calls = []
    original = pipe.backend.infer
    monkeypatch.setattr(
        pipe.backend, "infer", lambda feeds: calls.append(feeds["image"].shape) or original(feeds)
    )
    images = [_image(1), _image(2, (40, 12)), _image(3)]
    batch = pipe.run_batch(images)
    assert calls == [(3, 1, 16, 16)]
    for img, res in zip(images, batch, strict=True):
        single = pipe(img)
        assert res.mask.shape == img.shape
        np.testing.assert_array_equal(res.mask, single.mask)


def test_volume_runs_slice_by_slice_in_batches(tiny_bundle, monkeypatch):
    pipe = Pipeline.from_bundle(tiny_bundle("segmentation"), "onnxruntime", batch_size=4)
    calls = []
    original = pipe.backend.infer
    monkeypatch.setattr(
        pipe.backend,
        "infer",
        lambda feeds: calls.append(feeds["image"].shape[0]) or original(feeds),
    )
    vol = _image(5, (10, 20, 30))
    image = MedicalImage(vol, spacing=(2.5, 0.5, 0.5), modality="CT")
    res = pipe(image)
    assert calls == [4, 4, 2]
    assert res.mask.shape == (10, 20, 30)
    np.testing.assert_array_equal(res.mask[7], pipe(vol[7]).mask)
    voxels = sum(v["pixels"] for v in res.stats.values())
    assert voxels == vol.size
    some = next(v for v in res.stats.values() if v["pixels"])
    assert some["volume_mm3"] == pytest.approx(some["pixels"] * 2.5 * 0.25)


def test_result_has_timings_and_provenance(tiny_bundle):
    path = tiny_bundle("segmentation")
    with Pipeline.from_bundle(path, "onnxruntime") as pipe:
        res = pipe(_image(0))
    d = json.loads(json.dumps(res.to_dict()))  # JSON-able
    assert set(d["timings_ms"]) == set(STAGES)
    assert all(v >= 0 for v in d["timings_ms"].values())
    assert d["timings_ms"]["total"] >= d["timings_ms"]["infer"]
    prov = d["provenance"]
    bundle = edgemed.Bundle.load(path)
    assert prov["artifact"]["sha256"] == bundle.artifact().sha256
    assert prov["bundle"] == {
        "name": "tiny-segmentation",
        "version": "1.0",
        "manifest_sha256": hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest(),
        "signature": "unsigned",
    }
    assert prov["backend"] == "onnxruntime" and prov["precision"] == "fp32"
    assert prov["edgemed_version"] == edgemed.__version__
    assert prov["backend_version"] and prov["device"].startswith("cpu")
    assert len(prov["input_id"]) == 32


def test_classification_matches_numpy(tiny_bundle):
    import onnx
    from onnx import numpy_helper

    path = tiny_bundle("classification", channels=1, classes=4)
    w, b = (numpy_helper.to_array(t) for t in onnx.load(path / "model.onnx").graph.initializer)
    img = _image(7, (16, 16))  # model size: no resize, so the input is just clip + scale
    x = (np.clip(img, -1000, 1000) + 1000) / 2000
    logits = x.mean() * w[0] + b
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    res = Pipeline.from_bundle(path)(img)
    np.testing.assert_allclose(res.classes[0]["probabilities"], probs, rtol=1e-5)
    assert res.classes[0]["top_k"][0]["index"] == int(np.argmax(probs))
    assert len(res.classes[0]["top_k"]) == 2  # bundle's top_k


def test_embedding_is_unit_norm_and_matchable(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle("embedding"))
    a, b = pipe(_image(1)), pipe(_image(1) + 300)
    assert a.embedding.shape == (1, 8)
    np.testing.assert_allclose(np.linalg.norm(a.embedding, axis=1), 1.0, rtol=1e-6)
    gallery = {"same": a.embedding[0], "other": b.embedding[0]}
    assert edgemed.match(a.embedding[0], gallery, k=1)[0][0] == "same"


def test_bad_inputs_are_usage_errors(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle("segmentation"))
    with pytest.raises(UsageError):
        pipe(np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(UsageError):
        pipe(42)


def test_batch_size_has_a_documented_bound():
    assert Options(batch_size=MAX_BATCH_SIZE).batch_size == 1024
    for bad in (0, MAX_BATCH_SIZE + 1, 1_000_000, 10**30):
        with pytest.raises(UsageError):
            Options(batch_size=bad)


@pytest.mark.parametrize("value", ["1000000", "1025", "0", str(10**30)])
def test_cli_batch_size_beyond_the_bound_is_a_usage_error(value, tmp_path, ct_small_path):
    proc = cli("run", ct_small_path, "--batch-size", value, "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemed: error USAGE: --batch-size")


def test_input_buffer_is_sized_by_what_runs_not_by_batch_size(tiny_bundle):
    # A batch size of 1024 used to allocate 1024 slices of model input up front; now
    # memory follows the largest chunk actually run. tracemalloc sees numpy's buffers.
    path = tiny_bundle("segmentation", size=128)  # 64 KiB of float32 input per slice
    images = [_image(i, (30, 40)) for i in range(3)]
    with Pipeline.from_bundle(path, "onnxruntime", batch_size=8) as small:
        expected = [r.mask for r in small.run_batch(images)]
    tracemalloc.start()
    try:
        with Pipeline.from_bundle(path, "onnxruntime", batch_size=MAX_BATCH_SIZE) as pipe:
            got = [r.mask for r in pipe.run_batch(images)]
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_slice = 128 * 128 * 4
    assert peak < 64 * per_slice, peak  # 1024 slices would be 64 MiB
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_reader_imports_are_startup_not_the_first_read():
    # In a fresh interpreter: building the pipeline imports the readers (pydicom,
    # nibabel), reported as startup_ms; the first input's read time does not pay them.
    code = (
        "import json, sys, edgemed\n"
        "pipe = edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), 'onnxruntime', threads=1)\n"
        "loaded = [m for m in ('pydicom', 'nibabel', 'edgemed.io.dicom', 'edgemed.io.nifti')"
        " if m in sys.modules]\n"
        "from pydicom.data import get_testdata_file\n"
        "r = pipe(get_testdata_file('CT_small.dcm'))\n"
        "print(json.dumps({'loaded': loaded, 'read': r.timings['read'],"
        " 'startup': r.to_dict()['provenance']['startup_ms']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EDGEMED_ORT_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["loaded"] == ["pydicom", "nibabel", "edgemed.io.dicom", "edgemed.io.nifti"]
    startup = facts["startup"]
    assert set(startup) == {"readers", "bundle", "backend", "total"}
    assert startup["total"] >= startup["readers"] + startup["bundle"] + startup["backend"] - 1
    # The imports take hundreds of ms, a 128x128 slice's read a few: the read is no
    # longer the start-up figure.
    assert facts["read"] < startup["readers"], facts
