"""The segmentation fast paths give the bits of the plain recipe on real model output.

``postprocess.segment`` may softmax the box into reused planes, resize the probability
planes one by one (IPP off, where a per-geometry check says OpenCV's code then matches
the multi-channel call) and decide in row blocks. Every one of these must leave masks
and probabilities unchanged: checked here on the demo model's logits for a 512x512 slice
and an odd letterboxed one (511x300), with ties, saturation and NaN, against the
interleaved path and the plain NumPy/OpenCV recipe.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import edgemed
from edgemed import Pipeline
from edgemed import postprocess as post
from edgemed._scratch import scratch
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.preprocess import preprocess
from tests.segment_reference import reference_masks


@pytest.fixture(scope="module")
def demo_logits(ct_small_hu):
    """Demo-model logits and placements for CT_small resized to 512x512 and 511x300."""
    pipe = Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime")
    try:
        slices = [
            cv2.resize(ct_small_hu, (512, 512), interpolation=cv2.INTER_LINEAR),
            cv2.resize(ct_small_hu, (300, 511), interpolation=cv2.INTER_LINEAR),
        ]
        batch, placements = preprocess(slices, pipe.spec)
        raw = pipe.backend.infer({pipe._input.name: batch})
        logits = np.array(raw[pipe.backend.outputs[0].name])
        return logits, placements, list(pipe.bundle.labels)
    finally:
        pipe.close()


def _variants(logits: np.ndarray) -> dict[str, np.ndarray]:
    tied = logits.copy()
    tied[:, :, 100:120, 90:130] = 0.25  # exact ties between every channel
    tied[:, 1:3, 30:50, 30:50] = tied[:, :1, 30:50, 30:50]  # ties with the winner
    tied[:, 2, 60:70, 60:70] = 90.0  # saturated softmax
    nan = logits.copy()
    nan[0, 3, 128, 128] = np.nan
    nan[1, 1, 40, 200] = np.nan
    return {"real": logits, "ties": tied, "nan": nan}


def _segment(logits, placements, spec, labels, monkeypatch, *, planes=True):
    with monkeypatch.context() as m:
        m.setattr(post, "_BLOCK_BYTES", 7 * 512 * 27)  # blocks of 7 rows: ragged ends
        m.setattr(post, "_UNBLOCKED_BYTES", 0)
        m.setattr(post, "_PLANE_RESIZE_EXACT", {})
        if not planes:
            m.setattr(post, "_plane_resize_exact", lambda *a: False)
        with np.errstate(invalid="ignore"):
            return post.segment(logits, placements, spec, labels)


@pytest.mark.parametrize("case", ["real", "ties", "nan"])
@pytest.mark.parametrize("decision", ["argmax", "threshold"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_plane_and_blocked_paths_equal_the_recipe(
    demo_logits, case, decision, activation, monkeypatch
):
    logits, placements, labels = demo_logits
    x = _variants(logits)[case]
    spec = SegmentationSpec(activation=activation, decision=decision, threshold=0.4)
    with np.errstate(invalid="ignore"):
        want = reference_masks(x, placements, spec)
    got = {
        "interleaved": _segment(x, placements, spec, labels, monkeypatch, planes=False),
        "planes": _segment(x, placements, spec, labels, monkeypatch),
    }
    for name, masks in got.items():
        for g, w in zip(masks, want, strict=True):
            assert g.shape == w.shape and g.dtype == np.uint8, name
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_box_softmax_gives_the_same_probabilities(demo_logits):
    logits, placements, _ = demo_logits
    for x in _variants(logits).values():
        p = placements[1]
        box = x[1, :, p.top : p.top + p.height, p.left : p.left + p.width]
        with np.errstate(invalid="ignore"):
            want = post.activate(box, "softmax", axis=0)
            got = post._activate_box(box, "softmax", None)
        np.testing.assert_array_equal(got, want)  # NaN == NaN here


@pytest.mark.parametrize("c", [2, 3, 4, 5, 6, 9])
def test_plane_resize_is_used_only_where_it_gives_the_same_bits(c, monkeypatch):
    """Wherever the per-geometry check allows plane-by-plane resizing, the planes equal
    the channels of the multi-channel resize (on fresh data, not the check's own)."""
    monkeypatch.setattr(post, "_PLANE_RESIZE_EXACT", {})
    ipp = cv2.ipp.useIPP()
    rng = np.random.default_rng(c)
    sources = [(1, 7), (7, 1), (2, 2), (3, 5), (16, 16), (37, 100), (256, 256)]
    targets = [1, 2, 3, 8, 31, 128, 255, 300, 511, 512]
    for sh, sw in sources:
        hwc = rng.random((sh, sw, c), dtype=np.float32)
        hwc[0, 0] = np.nan
        planes = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        for h in targets:
            for w in targets[::3] + [2 * sw, sw // 2 or 1]:
                if not post._plane_resize_exact((sh, sw), (h, w), c):
                    continue
                want = post._resize_hwc(hwc, (h, w), reuse=False)
                got = post._resize_planes(planes, (h, w), reuse=False)
                np.testing.assert_array_equal(got, want.transpose(2, 0, 1))
    assert not post._plane_resize_exact((512, 512), (256, 256), c)  # OpenCV's area path
    assert not post._plane_resize_exact((8, 8), (16, 16), 1)
    assert cv2.ipp.useIPP() == ipp  # the caller's IPP setting is restored


def test_the_demo_geometry_takes_the_plane_path(monkeypatch):
    """256x256 box -> 512x512 with 5 classes: the case issue #5 measures."""
    monkeypatch.setattr(post, "_PLANE_RESIZE_EXACT", {})
    before = cv2.ipp.useIPP()
    assert post._plane_resize_exact((256, 256), (512, 512), 5)
    assert cv2.ipp.useIPP() == before


def test_scratch_view_reuses_one_buffer_for_varying_shapes():
    a = scratch.view("test.view", (7, 10), np.float32)
    b = scratch.view("test.view", (3, 10), np.float32)
    assert b.shape == (3, 10) and np.shares_memory(a, b)
    c = scratch.view("test.view", (20, 10), np.float32)
    assert c.shape == (20, 10) and c.flags.c_contiguous
