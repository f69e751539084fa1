"""The segmentation masks by the straightforward NumPy/OpenCV recipe that
``edgemed.postprocess.segment`` replaced: the reference of tests/test_postprocess_exact.py
and tests/test_postprocess_parallel.py."""

from __future__ import annotations

import cv2
import numpy as np

from edgemed import postprocess as post

__all__ = ["reference_masks"]


def reference_masks(logits, placements, spec):
    """The plain recipe: activate the whole batch, crop each placement's box, one
    multi-channel ``cv2.resize`` to the source size, ``argmax`` (or threshold) over the
    last axis."""
    probs = post.activate(logits, spec.activation, axis=1)
    masks = []
    for i, p in enumerate(placements):
        box = probs[i][:, p.top : p.top + p.height, p.left : p.left + p.width]
        hwc = np.ascontiguousarray(box.transpose(1, 2, 0))
        h, w = p.source
        if (h, w) != (p.height, p.width):
            hwc = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        best = hwc.argmax(axis=-1)
        if spec.decision == "argmax":
            masks.append(best.astype(np.uint8))
        else:
            best_p = np.take_along_axis(hwc, best[..., None], axis=-1)[..., 0]
            masks.append(np.where(best_p >= spec.threshold, best + 1, 0).astype(np.uint8))
    return masks
