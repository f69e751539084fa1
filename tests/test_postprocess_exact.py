"""The fast segmentation path gives exactly the masks of the plain NumPy/OpenCV recipe.

``postprocess.segment`` activates only the placement box, writes probabilities into
the resize's layout and decides with branch-free plane comparisons (see its helpers).
The reference (tests/segment_reference.py) is the straightforward recipe it replaced:
activate the whole batch, crop, one multi-channel ``cv2.resize``, ``argmax`` over the
last axis.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgemed import postprocess as post
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.preprocess import PreprocessSpec, place
from tests.segment_reference import reference_masks


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 9, 33])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("decision", ["argmax", "threshold"])
def test_segment_is_bit_identical_to_the_plain_recipe(channels, activation, decision):
    rng = np.random.default_rng(channels)
    logits = rng.normal(0, 3, (4, channels, 48, 48)).astype(np.float32)
    logits[0, :, 10:14, 10:14] = 1.5  # exact ties between every channel
    logits[1, :, :4, :4] = 80.0  # saturated softmax: ties at 1/C
    grid = PreprocessSpec(size=(48, 48), clip=(0.0, 1.0), resize="letterbox")
    sources = [(48, 48), (96, 96), (24, 70), (131, 40)]  # same, 2x up, down, letterbox
    placements = [place(s, grid) for s in sources]
    spec = SegmentationSpec(activation=activation, decision=decision, threshold=0.4)
    got = post.segment(logits, placements, spec, [f"c{i}" for i in range(channels)])
    for g, want in zip(got, reference_masks(logits, placements, spec), strict=True):
        assert g.dtype == np.uint8
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("activation", ["softmax", "none"])
def test_nan_and_inf_logits_follow_argmax(activation):
    """argmax picks the first NaN: the comparison path must hand such slices back."""
    logits = np.random.default_rng(0).normal(0, 2, (2, 5, 16, 16)).astype(np.float32)
    logits[0, 3, 2, 2] = np.nan
    logits[1, 1, 5, 5] = np.inf
    logits[1, 4, 6, 6] = -np.inf
    grid = PreprocessSpec(size=(16, 16), clip=(0.0, 1.0))
    placements = [place((16, 16), grid), place((40, 40), grid)]
    spec = SegmentationSpec(activation=activation)
    with np.errstate(invalid="ignore"):
        got = post.segment(logits, placements, spec, list("abcde"))
        want = reference_masks(logits, placements, spec)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_decide_on_strided_and_contiguous_probabilities_matches_argmax():
    probs = np.random.default_rng(1).random((6, 30, 40), dtype=np.float32)
    probs[:, 3, 3] = 0.5
    for hwc in (probs.transpose(1, 2, 0), np.ascontiguousarray(probs.transpose(1, 2, 0))):
        got = post.decide(hwc, SegmentationSpec())
        np.testing.assert_array_equal(got, hwc.argmax(axis=-1).astype(np.uint8))


def test_label_counts_equal_bincount_and_masks_are_not_reused():
    rng = np.random.default_rng(2)
    for mask in (
        rng.integers(0, 5, (3, 20, 30)).astype(np.uint8),
        rng.integers(0, 200, (20, 30)).astype(np.uint8),  # many labels: bincount path
        np.zeros((7, 7), np.uint8),
    ):
        stats = post.segmentation_stats(mask, (1.0,) * mask.ndim, ["a", "b", "c"])
        want = np.bincount(mask.ravel(), minlength=3)
        assert [v["pixels"] for v in stats.values()] == want.tolist()
    logits = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    grid = PreprocessSpec(size=(8, 8), clip=(0.0, 1.0))
    a, b = post.segment(logits, [place((16, 16), grid)] * 2, SegmentationSpec(), list("abc"))
    assert not np.shares_memory(a, b)  # each call's masks are the caller's own
