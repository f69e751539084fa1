"""A volume with more slices than the batch size, through TensorRT, for every task head.

The TensorRT backend returns views of its pinned output buffers, which the next call
overwrites (the backend contract: valid until the next call; the stand-in reuses its
pinned memory the same way). A head that kept those views across chunks would give every
chunk but the last the last chunk's values. Each task runs a 7-slice volume in chunks of
2 (4 backend calls, the last one short) on the stand-in TensorRT and is compared with
ONNX Runtime run on the same bundle.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle, write_manifest
from edgemed.pipeline import Pipeline
from tests.bundles import make_bundle

SLICES, BATCH = 7, 2


def _bundle(root, task: str) -> Bundle:
    path = make_bundle(root / task, task, classes=4, size=16, seed=3)
    if task == "embedding":
        # Raw float32 vectors: the head's own arithmetic returns the backend's rows
        # as they are, the case where views of reused buffers would survive.
        manifest = json.loads((path / "bundle.json").read_text())
        manifest["postprocess"] = {"normalize": "none"}
        for a in manifest["artifacts"]:
            a.pop("sha256", None), a.pop("size", None)
        write_manifest(path, manifest)
    bundle = Bundle.load(path)
    build_engine(bundle, BuildOptions(ranges={"batch": f"1:{BATCH}:{BATCH}"}))
    return bundle


def _volume() -> np.ndarray:
    # Slices that differ from each other a lot: a repeated chunk cannot pass as right.
    rng = np.random.default_rng(11)
    return np.stack(
        [rng.normal(-800 + 250 * k, 150, (20, 24)).astype(np.float32) for k in range(SLICES)]
    )


@pytest.mark.parametrize("task", ["segmentation", "classification", "embedding"])
def test_every_chunk_keeps_its_own_values_on_tensorrt(standin_gpu, tmp_path, task):
    sim = standin_gpu
    bundle = _bundle(tmp_path, task)
    volume = _volume()
    with Pipeline.from_bundle(bundle.root, "onnxruntime") as ref_pipe:
        want = ref_pipe(volume)
    executed = sim.n("execute")
    with Pipeline.from_bundle(bundle.root, "tensorrt", preprocess="cpu", batch_size=BATCH) as pipe:
        got = pipe(volume)
    assert sim.n("execute") - executed == -(-SLICES // BATCH)  # 4 calls: chunked for real
    assert got.provenance["backend"] == "tensorrt"
    if task == "segmentation":
        assert got.mask.shape == want.mask.shape == (SLICES, 20, 24)
        np.testing.assert_array_equal(got.mask, want.mask)
        per_slice = [np.bincount(m.ravel(), minlength=4) for m in want.mask]
        assert len({tuple(c) for c in per_slice}) > 1  # the slices really differ
    elif task == "classification":
        g, w = got.classes, want.classes
        assert len(g) == len(w) == SLICES

        def top(rows, key):
            return [[t[key] for t in row["top_k"]] for row in rows]

        assert top(g, "label") == top(w, "label")
        np.testing.assert_allclose(top(g, "probability"), top(w, "probability"), atol=1e-5)
        assert len({json.dumps(top([row], "probability")) for row in w}) > 1  # rows differ
    else:
        assert got.embedding.shape == want.embedding.shape == (SLICES, 8)
        np.testing.assert_allclose(got.embedding, want.embedding, rtol=1e-5, atol=1e-5)
        assert np.ptp(want.embedding, axis=0).max() > 0.1  # rows differ
