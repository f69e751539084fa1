from __future__ import annotations

import numpy as np
import pytest

from edgemed import postprocess as post
from edgemed.errors import BundleError, UsageError
from edgemed.heads.classification import ClassificationSpec
from edgemed.heads.embedding import EmbeddingSpec
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.preprocess import Placement


def test_softmax_matches_definition_and_is_stable():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0]], dtype=np.float32)
    p = post.activate(x, "softmax", axis=1)
    ref = np.exp(x[0] - 3.0) / np.exp(x[0] - 3.0).sum()
    np.testing.assert_allclose(p[0], ref, rtol=1e-6)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_sigmoid_handles_extremes():
    p = post.activate(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32), "sigmoid")
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0], atol=1e-7)


def test_threshold_decision_labels_channel_plus_one():
    probs = np.array([[[0.9, 0.2], [0.4, 0.6], [0.1, 0.3]]], dtype=np.float32)  # (1, 3, 2)
    mask = post.decide(probs, SegmentationSpec(decision="threshold", threshold=0.5))
    assert mask.tolist() == [[1, 2, 0]]


def test_segment_inverts_letterbox_and_resizes_to_source():
    # Model space 4x4, the source (2x4) sits in rows 1..2; class 1 wins in the left half.
    logits = np.zeros((1, 2, 4, 4), dtype=np.float32)
    logits[0, 1, :, :2] = 5.0
    logits[0, 0, :, 2:] = 5.0
    logits[0, 0, 0, :] = 50.0  # padding rows must not leak into the result
    logits[0, 0, 3, :] = 50.0
    p = Placement(source=(4, 8), top=1, left=0, height=2, width=4)
    (mask,) = post.segment(logits, [p], SegmentationSpec(), ["bg", "fg"])
    assert mask.shape == (4, 8)
    assert (mask[:, :4] == 1).all() and (mask[:, 4:] == 0).all()


def test_largest_component_keeps_only_biggest():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[1:4, 1:4] = 2  # 9 px
    mask[6:9, 6:10] = 2  # 12 px
    mask[0, 9] = 1
    post.keep_largest_component(mask, 2)
    assert (mask == 2).sum() == 12 and mask[2, 2] == 0 and mask[0, 9] == 1


def test_stats_area_and_volume():
    mask = np.zeros((2, 3, 4), dtype=np.uint8)
    mask[0, 0, :] = 1
    s3 = post.segmentation_stats(mask, (2.0, 0.5, 0.5), ["bg", "a", "b"])
    assert s3["a"] == {"pixels": 4, "volume_mm3": 2.0}
    assert s3["b"]["pixels"] == 0 and s3["bg"]["pixels"] == 20
    s2 = post.segmentation_stats(mask[0], (0.5, 0.25), ["bg", "a"])
    assert s2["a"] == {"pixels": 4, "area_mm2": 0.5}
    # Unknown spacing: counts only, no key in mm at all.
    assert post.segmentation_stats(mask, None, ["bg", "a"]) == {
        "bg": {"pixels": 20},
        "a": {"pixels": 4},
    }


def test_classify_top_k_order_and_labels():
    logits = np.array([[0.0, 3.0, 1.0]], dtype=np.float32)
    (res,) = post.classify(logits, ClassificationSpec(top_k=2), ["a", "b", "c"])
    assert [t["label"] for t in res["top_k"]] == ["b", "c"]
    assert res["top_k"][0]["probability"] == pytest.approx(np.exp(3) / (1 + np.exp(3) + np.e))


def test_embed_normalises_and_match_ranks_by_cosine():
    e = post.embed(np.array([[3.0, 4.0]], dtype=np.float32), EmbeddingSpec())
    np.testing.assert_allclose(e, [[0.6, 0.8]], rtol=1e-6)
    gallery = {"x": np.array([1.0, 0.0]), "y": np.array([0.0, 2.0]), "z": np.array([3.0, 4.1])}
    hits = post.match(e[0], gallery, k=2)
    assert [h[0] for h in hits] == ["z", "y"]
    assert hits[0][1] == pytest.approx((0.6 * 3 + 0.8 * 4.1) / np.hypot(3, 4.1), rel=1e-6)
    by_row = post.match(e[0], np.array([[0.0, 1.0], [1.0, 0.0]]), k=5)
    assert [h[0] for h in by_row] == [0, 1]
    with pytest.raises(UsageError):
        post.match(e[0], np.ones((2, 3)), k=1)


def test_spec_validation_codes():
    with pytest.raises(BundleError):
        SegmentationSpec.from_dict({"activation": "relu"})
    with pytest.raises(BundleError):
        SegmentationSpec.from_dict({"bogus": 1})
    spec = SegmentationSpec.from_dict({"largest_component": ["lung"], "threshold": "0.3"})
    assert SegmentationSpec.from_dict(spec.to_dict()) == spec
