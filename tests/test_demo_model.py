"""The shipped demo model on the real CT slice, checked against ONNX Runtime run
directly on independently preprocessed input, and against the HU rules it learned."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import edgemed
from edgemed import Pipeline


@pytest.fixture(scope="module")
def bundle():
    return edgemed.Bundle.load(edgemed.demo_bundle())


def _independent_input(hu: np.ndarray, bundle) -> np.ndarray:
    """Window each channel and resize with OpenCV, written from the bundle's numbers
    (not with edgemed.preprocess). CT_small is square, so letterbox == full canvas."""
    spec = bundle.to_dict()["preprocess"]
    h, w = spec["size"]
    assert hu.shape[0] == hu.shape[1] and spec["scale"] == "unit"
    channels = []
    for win in spec["windows"]:
        lo = win["center"] - win["width"] / 2
        hi = win["center"] + win["width"] / 2
        x = (np.clip(hu, lo, hi) - lo) / (hi - lo)
        channels.append(cv2.resize(x.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))
    return np.stack(channels)[None].astype(np.float32)


def test_pipeline_matches_direct_onnxruntime(bundle, ct_small_path, ct_small_hu):
    x = _independent_input(ct_small_hu, bundle)
    session = ort.InferenceSession(
        str(bundle.root / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {"image": x})
    # Reference mask: softmax, probabilities resized to 128x128, argmax.
    e = np.exp(logits[0] - logits[0].max(axis=0))
    probs = e / e.sum(axis=0)
    up = cv2.resize(probs.transpose(1, 2, 0), (128, 128), interpolation=cv2.INTER_LINEAR)
    ref = up.argmax(axis=-1)

    with Pipeline.from_bundle(bundle.root, "onnxruntime") as pipe:
        result = pipe(ct_small_path)
        raw = pipe.backend.infer({"image": x})["logits"]
    np.testing.assert_allclose(raw, logits, rtol=1e-4, atol=1e-4)
    assert result.mask.shape == (128, 128)
    agreement = (result.mask == ref).mean()
    assert agreement > 0.999, agreement


def test_mask_follows_hu_rules_on_real_ct(ct_small_path, ct_small_hu):
    """A sanity bar for the demo model on real CT: broadly where the HU says."""
    result = Pipeline.from_bundle(edgemed.demo_bundle())(ct_small_path)
    m, hu = result.mask, ct_small_hu
    labels = result.labels
    lung, bone = labels.index("lung"), labels.index("bone")
    soft = labels.index("soft_tissue")
    assert (m[hu < -700] == lung).mean() > 0.8  # both lung bases
    assert (m[hu > 400] == bone).mean() > 0.8  # vertebra
    assert (m[(hu > 20) & (hu < 80)] == soft).mean() > 0.6  # muscle, aorta
    assert result.stats["lung"]["area_mm2"] == pytest.approx(
        result.stats["lung"]["pixels"] * 0.661468**2, rel=1e-5
    )
