"""Postprocessing as array functions: activation, segmentation decision and statistics,
classification, embedding and matching.

The task heads (:mod:`edgemed.heads`) own the specs and call these; the CUDA kernels
reproduce :func:`segment` exactly. A ``spec`` argument is a head's spec: these functions
read only its attributes (``activation``, ``decision``, ``threshold``,
``largest_component``, ``top_k``, ``normalize``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from edgemed._scratch import scratch
from edgemed.errors import UsageError
from edgemed.preprocess.cpu import Placement

__all__ = [
    "ACTIVATIONS",
    "DECISIONS",
    "activate",
    "check_activation",
    "classify",
    "decide",
    "decide_planes",
    "embed",
    "keep_largest_component",
    "label_names",
    "match",
    "segment",
    "segmentation_stats",
]

ACTIVATIONS = ("softmax", "sigmoid", "none")
DECISIONS = ("argmax", "threshold")


def check_activation(activation: str) -> None:
    """``ValueError`` unless ``activation`` is one :func:`activate` knows."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}")


# --- array functions ------------------------------------------------------------------


def activate(x: np.ndarray, activation: str, axis: int = 1) -> np.ndarray:
    """Apply ``softmax`` (numerically stable, over ``axis``), ``sigmoid`` or ``none``.

    Returns float32; the input is not modified.
    """
    x = np.asarray(x, dtype=np.float32)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        return e
    if activation == "sigmoid":
        # 0.5 * (1 + tanh(x/2)) == 1 / (1 + exp(-x)) without overflow for large |x|.
        return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)
    return x.copy()


def _to_source(probs: np.ndarray, placement: Placement) -> np.ndarray:
    """Crop ``(C, H, W)`` probabilities to the placement box and resize them bilinearly
    (OpenCV ``INTER_LINEAR``, half-pixel centres) to the source ``(h, w)``: ``(h, w, C)``."""
    p = placement
    box = probs[:, p.top : p.top + p.height, p.left : p.left + p.width]
    return _resize_hwc(np.ascontiguousarray(box.transpose(1, 2, 0)), p.source, reuse=False)


def _resize_hwc(hwc: np.ndarray, source: tuple[int, int], *, reuse: bool = True) -> np.ndarray:
    """``(h, w, C)`` resized to ``source`` with ``INTER_LINEAR`` (unchanged when equal);
    with ``reuse``, into this thread's work array (valid until the next call).

    Always one multi-channel call: OpenCV picks its code path (IPP or its own) by channel
    count, and the two round the source coordinate differently (see preprocess.cpu), so
    channel-by-channel resizing would not give the same bits.
    """
    h, w = source
    c = hwc.shape[2]
    if (h, w) == hwc.shape[:2]:
        return hwc
    if c == 1:  # cv2.resize drops a size-1 channel axis
        return cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 1)
    # Up to 512 channels in one call; into a reused buffer (see edgemed._scratch).
    reusable = reuse and hwc.dtype == np.float32
    dst = scratch.get("post.resized", (h, w, c), np.float32) if reusable else None
    return cv2.resize(hwc, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)


def _planes(hwc: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` -> contiguous ``(C, h, w)``.

    The decision's comparisons are several times faster on contiguous planes than on
    strided channel views. cv2.transpose is a blocked 2D copy (exact), ~3x faster than
    NumPy's strided copy of an ``(h*w, C)`` float32 array.
    """
    h, w, c = hwc.shape
    if c == 1 or c > 4096 or hwc.dtype != np.float32 or not hwc.flags.c_contiguous:
        return np.ascontiguousarray(np.moveaxis(hwc, -1, 0))
    dst = scratch.get("post.planes", (c, h * w), np.float32)
    return cv2.transpose(hwc.reshape(h * w, c), dst=dst).reshape(c, h, w)


def _best_channel(
    planes: np.ndarray, index: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per pixel, the index (uint8) and value of the largest of ``C`` float32 planes,
    the lowest index on ties: exactly what ``argmax`` over the channel axis picks.

    Branch-free (``argmax`` over a short last axis, and masked assignment, are ~5x
    slower): a channel replaces the running best only when strictly greater, and channel
    indices only grow, so the index is ``max(index, c * greater)``. Returns ``None``
    where this cannot reproduce ``argmax``: a NaN anywhere (``argmax`` then picks the
    first NaN), more than 255 channels, or not float32. The index goes into ``index``
    (uint8, the planes' pixel shape) when given.
    """
    n = planes.shape[0]
    if n > 255 or planes.dtype != np.float32 or planes.ndim != 3:
        return None
    shape = planes.shape[1:]
    # view(): callers hand in row blocks of varying height (see _decide_planes).
    best = scratch.view("post.best", shape, np.float32)
    best[...] = planes[0]
    if index is None:
        index = np.zeros(shape, dtype=np.uint8)  # becomes the caller's mask: never reused
    else:
        index.fill(0)
    greater = scratch.view("post.greater", shape, np.bool_)
    times_c = scratch.view("post.times_c", shape, np.uint8)
    for c in range(1, n):
        np.greater(planes[c], best, out=greater)
        np.multiply(greater.view(np.uint8), np.uint8(c), out=times_c)
        np.maximum(index, times_c, out=index)
        # np.maximum propagates NaN, so one check at the end sees a NaN in any channel.
        np.maximum(best, planes[c], out=best)
    if np.isnan(best).any():
        return None
    return index, best  # ``best`` is scratch: valid until the next call


def _label(index: np.ndarray, best_p: np.ndarray, spec: Any) -> np.ndarray:
    """The decision from :func:`_best_channel`'s index and value (modifies ``index``)."""
    if spec.decision == "argmax":
        return index
    index += np.uint8(1)  # at most 255 channels: no wrap-around
    # ``not >=`` rather than ``<``: the same comparison as decide() makes.
    index[~(best_p >= spec.threshold)] = 0
    return index


def decide_planes(planes: np.ndarray, spec: Any) -> np.ndarray:
    """:func:`decide` on ``(C, h, w)`` float32 planes (the same result): uint8 ``(h, w)``."""
    return _decide_planes(planes, spec)


def _decide_planes(planes: np.ndarray, spec: Any) -> np.ndarray:
    """:func:`decide` on ``(C, h, w)`` planes (the same result).

    Row block by row block: :func:`_best_channel` makes ~4 passes per channel over its
    planes, and on blocks that fit in L2 cache (~1.5 MB of planes and work arrays) the
    later passes read from cache rather than memory (512x512x5: ~0.8 -> ~0.5 ms). Each
    pixel's comparisons are its own, so blocks give the same result.
    """
    n, h, w = planes.shape
    # Bytes per pixel: C float32 planes, the float32 best, bool and uint8 work, the index.
    row_bytes = max(1, w * (4 * n + 7))
    if n > 255 or planes.dtype != np.float32 or h * row_bytes <= _UNBLOCKED_BYTES:
        found = _best_channel(planes)
        if found is None:
            return decide(np.moveaxis(planes, 0, -1), spec)
        return _label(*found, spec)
    index = np.empty((h, w), dtype=np.uint8)  # becomes the caller's mask: never reused
    block = max(1, _BLOCK_BYTES // row_bytes)
    # Not over threads: its many short NumPy calls contend for the GIL, and two bands
    # took longer than one at every size measured (256..1024 squared, 5 channels).
    for r in range(0, h, block):
        s = min(h, r + block)
        found = _best_channel(planes[:, r:s], index[r:s])
        if found is None:
            return decide(np.moveaxis(planes, 0, -1), spec)  # a NaN somewhere: argmax's rules
        _label(*found, spec)  # in place: index[r:s] is a view of the mask
    return index


def decide(probs_hwc: np.ndarray, spec: Any) -> np.ndarray:
    """Per-pixel label from ``(h, w, C)`` probabilities: uint8 ``(h, w)``.

    ``argmax``: the most probable channel (ties go to the lowest index).
    ``threshold``: label ``c + 1`` for the most probable channel ``c`` whose probability
    is ``>= threshold``, 0 where none is.
    """
    found = _best_channel(np.moveaxis(probs_hwc, -1, 0)) if probs_hwc.ndim == 3 else None
    if found is not None:
        return _label(*found, spec)
    if spec.decision == "argmax":
        return probs_hwc.argmax(axis=-1).astype(np.uint8)
    best = probs_hwc.argmax(axis=-1)
    best_p = np.take_along_axis(probs_hwc, best[..., None], axis=-1)[..., 0]
    return np.where(best_p >= spec.threshold, best + 1, 0).astype(np.uint8)


def keep_largest_component(mask: np.ndarray, label: int) -> None:
    """In place: pixels of ``label`` outside its largest 8-connected 2D component become 0."""
    sel = (mask == label).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(sel, connectivity=8)
    if n <= 2:  # background + at most one component: nothing to remove
        return
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask[(comp != largest) & (sel == 1)] = 0


def label_names(spec_labels: Sequence[str], n_values: int) -> list[str]:
    """Names for label values ``0..n_values-1`` (``label_<i>`` where the bundle has none)."""
    return [spec_labels[i] if i < len(spec_labels) else f"label_{i}" for i in range(n_values)]


def segmentation_stats(
    mask: np.ndarray, spacing: Sequence[float] | None, labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-label pixel counts and physical size.

    ``mask`` is ``(Y, X)`` (sizes in mm^2, key ``area_mm2``) or ``(Z, Y, X)`` (mm^3,
    ``volume_mm3``); ``spacing`` follows the mask's axes in mm. ``None`` (the spacing
    is unknown): pixel counts only, never millimetres made up from a placeholder.
    """
    counts = _label_counts(mask, len(labels))
    names = label_names(labels, len(counts))
    if spacing is None:
        return {names[i]: {"pixels": int(c)} for i, c in enumerate(counts)}
    unit = float(np.prod([float(s) for s in spacing]))
    key = "volume_mm3" if mask.ndim == 3 else "area_mm2"
    return {
        names[i]: {"pixels": int(c), key: round(float(c) * unit, 4)} for i, c in enumerate(counts)
    }


def _label_counts(mask: np.ndarray, minlength: int) -> np.ndarray:
    """``np.bincount(mask.ravel(), minlength=minlength)``, faster for uint8 masks.

    bincount first converts every uint8 value to a 64-bit index (8x the mask's bytes);
    with the few labels a segmentation model has, one comparison and count per label
    reads the mask as it is (~10x faster on a 512x512 mask). Same counts, same length.
    """
    if mask.dtype == np.uint8 and mask.size:
        top = int(mask.max())
        if top < 32:
            flat = mask.reshape(-1)
            hit = scratch.get("post.hit", flat.shape, np.bool_)
            counts = np.zeros(max(minlength, top + 1), dtype=np.intp)
            for k in range(top + 1):
                np.equal(flat, np.uint8(k), out=hit)
                counts[k] = np.count_nonzero(hit)
            return counts
    return np.bincount(mask.ravel(), minlength=minlength)


def segment(
    logits: np.ndarray,
    placements: Sequence[Placement],
    spec: Any,
    labels: Sequence[str],
) -> list[np.ndarray]:
    """Model output ``(N, C, H, W)`` -> one uint8 mask per slice at its source size.

    Activation at model resolution, probabilities resized bilinearly to the source
    geometry (inverting the letterbox), then the decision, then largest-component
    filtering for the labels the spec names.
    """
    x = np.asarray(logits, dtype=np.float32)
    lcc = [labels.index(name) for name in spec.largest_component if name in labels]
    masks = []
    for i, p in enumerate(placements):
        # Everything before the resize is per pixel, so only the placement box (not the
        # letterbox padding) is activated.
        box = x[i, :, p.top : p.top + p.height, p.left : p.left + p.width]
        if (p.height, p.width) == p.source:
            planes = _activate_box(box, spec.activation, None)
        elif _plane_resize_exact((p.height, p.width), p.source, box.shape[0]):
            # Plane by plane: no interleave into (h, w, C) and back (see _resize_planes).
            planes = _resize_planes(_activate_box(box, spec.activation, None), p.source)
        else:
            # The probabilities go straight into the (h, w, C) layout of one
            # multi-channel resize.
            hwc = scratch.get("post.hwc", (p.height, p.width, box.shape[0]), np.float32)
            planes = _planes(_resize_hwc(_activate_box(box, spec.activation, hwc), p.source))
        mask = _decide_planes(planes, spec)
        for label in lcc:
            keep_largest_component(mask, label)
        masks.append(mask)
    return masks


#: Working set of one decision block (see _decide_planes); L2 is 1-2 MB per core on
#: current x86-64 and ARM server cores. Working sets up to _UNBLOCKED_BYTES stay whole:
#: measured on 5 channels (ms, whole vs 1.5 MB blocks), 256x256 (1.8 MB) 0.114 vs 0.125,
#: 362x362 (3.5 MB) 0.26 vs 0.29, 512x512 (7 MB) 0.95 vs 0.60.
_BLOCK_BYTES = 3 << 19
_UNBLOCKED_BYTES = 4 << 20


# --- resizing plane by plane ----------------------------------------------------------

#: (box (h, w), source (h, w), channels, IPP on, optimised code on) -> whether
#: :func:`_resize_planes` gives the bits of the multi-channel resize; filled by
#: :func:`_plane_resize_exact`.
_PLANE_RESIZE_EXACT: dict[tuple[Any, ...], bool] = {}


def _resize_planes(
    planes: np.ndarray, source: tuple[int, int], *, reuse: bool = True
) -> np.ndarray:
    """Contiguous float32 ``(C, h, w)`` planes resized one by one to ``source`` with
    ``INTER_LINEAR`` and IPP off: ``(C, H, W)``; with ``reuse``, into this thread's work
    array (valid until the next call).

    Why IPP off: OpenCV hands 1-, 3- and 4-channel resizes to IPP, which rounds the
    source coordinate differently (see preprocess.cpu); other channel counts run
    OpenCV's own code. Its own code on single planes is the same arithmetic per element
    as on the interleaved ``(h, w, C)`` array, except for an exact 2x downscale (an area
    average whose code depends on the channel count): :func:`_plane_resize_exact` checks
    each geometry once. ``cv2.ipp.setUseIPP`` is per thread, so no other thread's
    resizes change. Single planes also spread over OpenCV's threads better (5 planes
    256->512 in a loop: ~0.26 ms on 2 cores against ~0.46 ms for the (h, w, 5) call),
    and the interleave before and the transpose after go away (in the pipeline at
    512x512: segment ~3.5 -> ~2.7 ms).
    """
    h, w = source
    c = planes.shape[0]
    if reuse:
        out = scratch.get("post.resized_planes", (c, h, w), np.float32)
    else:
        out = np.empty((c, h, w), dtype=np.float32)
    use_ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        for k in range(c):
            got = cv2.resize(planes[k], (w, h), dst=out[k], interpolation=cv2.INTER_LINEAR)
            if not np.shares_memory(got, out[k]):  # OpenCV reallocated: copy it in
                out[k] = got.reshape(h, w)
    finally:
        cv2.ipp.setUseIPP(use_ipp)
    return out


def _plane_resize_exact(box: tuple[int, int], source: tuple[int, int], c: int) -> bool:
    """Whether :func:`_resize_planes` reproduces :func:`_resize_hwc` bit for bit for
    this geometry and channel count, under this thread's OpenCV settings.

    Checked once per geometry by resizing seeded random probabilities both ways: a
    coordinate or arithmetic difference between two code paths changes the last bit of
    a sizeable fraction of random pixels (measured: 10-60 %), so equal results on all of
    them mean the same code. Exact 2x downscales are known to differ (see
    :func:`_resize_planes`); one channel has no interleave to save. Outputs under
    4096 pixels are left to the interleaved path: a check over a few pixels can pass by
    chance (a 1x8 output with 3 channels did, IPP against OpenCV's code), and there is
    little to save.
    """
    (bh, bw), (h, w) = box, source
    if c == 1 or c > 255 or h * w < 4096 or (bh == 2 * h and bw == 2 * w):
        return False
    # The OpenCV settings the multi-channel call runs under (IPP is per thread).
    key = ((bh, bw), (h, w), c, cv2.ipp.useIPP(), cv2.useOptimized())
    known = _PLANE_RESIZE_EXACT.get(key)
    if known is not None:
        return known
    if max(bh * bw, h * w) * c > (1 << 24):
        return False  # too large to check cheaply: the interleaved path
    hwc = np.random.default_rng(0).random((bh, bw, c), dtype=np.float32)
    want = _resize_hwc(hwc, source, reuse=False)
    got = _resize_planes(np.ascontiguousarray(hwc.transpose(2, 0, 1)), source, reuse=False)
    exact = bool(np.array_equal(got, want.transpose(2, 0, 1)))
    if len(_PLANE_RESIZE_EXACT) >= 256:  # bounded: odd sizes come and go
        _PLANE_RESIZE_EXACT.clear()
    _PLANE_RESIZE_EXACT[key] = exact
    return exact


def _activate_box(box: np.ndarray, activation: str, hwc: np.ndarray | None) -> np.ndarray:
    """:func:`activate` over axis 0 of a float32 ``(C, h, w)`` box, same arithmetic.

    Written into ``hwc`` (``(h, w, C)``) when given and returned; else returned as
    contiguous ``(C, h, w)`` planes.
    """
    if activation != "softmax":
        probs = activate(box, activation, axis=0)
        if hwc is None:
            return probs
        hwc[...] = probs.transpose(1, 2, 0)
        return hwc
    # activate() computes e = exp(x - max); e /= e.sum(axis). NumPy sums over a
    # non-innermost axis in channel order, as the loop below does: the same bits.
    e = scratch.get("post.e", box.shape, np.float32)
    total = scratch.get("post.total", box.shape[1:], np.float32)
    _softmax_into(box, e, total)
    if hwc is None:
        return e
    if e.shape[0] <= 512:
        # cv2.merge interleaves contiguous planes ~1.5x faster than NumPy divides into
        # the strided (h, w, C) view; it copies, so the values are the same.
        merged = cv2.merge(list(e), dst=hwc)
        if merged is not hwc:  # OpenCV reallocated (it does not for a matching dst)
            hwc[...] = merged.reshape(hwc.shape)
        return hwc
    hwc[...] = e.transpose(1, 2, 0)
    return hwc


def _softmax_into(x: np.ndarray, e: np.ndarray, total: np.ndarray) -> None:
    """Softmax over axis 0 of ``x`` into ``e`` (``total``: work array of one plane)."""
    np.max(x, axis=0, out=total)
    np.subtract(x, total, out=e)
    np.exp(e, out=e)
    total[...] = e[0]
    for c in range(1, e.shape[0]):
        total += e[c]
    np.divide(e, total, out=e)


def classify(logits: np.ndarray, spec: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Model output ``(N, K)`` -> per item ``{"probabilities": [...], "top_k": [...]}``.

    ``top_k`` entries are ``{"index", "label", "probability"}``, most probable first.
    """
    x = np.asarray(logits, dtype=np.float32).reshape(len(logits), -1)
    probs = activate(x, spec.activation, axis=1)
    names = label_names(labels, probs.shape[1])
    k = min(spec.top_k, probs.shape[1])
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        out.append(
            {
                "probabilities": [float(v) for v in row],
                "top_k": [
                    {"index": int(j), "label": names[j], "probability": float(row[j])}
                    for j in order
                ],
            }
        )
    return out


def embed(features: np.ndarray, spec: Any) -> np.ndarray:
    """Model output ``(N, D...)`` -> ``(N, D)`` float32, L2-normalised when the spec says."""
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if spec.normalize == "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, np.float32(1e-12))
    return x


def match(
    embedding: np.ndarray,
    gallery: np.ndarray | Mapping[str, np.ndarray],
    k: int = 5,
) -> list[tuple[str | int, float]]:
    """The ``k`` gallery entries most similar to ``embedding`` by cosine similarity.

    Args:
        embedding: one ``(D,)`` vector (need not be normalised).
        gallery: ``(M, D)`` array (entries are returned by row index) or a mapping from
            a key to a ``(D,)`` vector (returned by key).
        k: how many to return.

    Returns:
        ``[(key_or_index, cosine), ...]`` most similar first (ties keep gallery order).
    """
    if isinstance(gallery, Mapping):
        names = list(gallery.keys())
        mat = np.stack([np.asarray(gallery[key], dtype=np.float32).ravel() for key in names])
        keys: list[str | int] = list(names)
    else:
        mat = np.asarray(gallery, dtype=np.float32)
        if mat.ndim != 2:
            raise UsageError(f"gallery must be (M, D), got shape {mat.shape}")
        keys = list(range(len(mat)))
    q = np.asarray(embedding, dtype=np.float32).ravel()
    if mat.shape[0] == 0:
        return []
    if mat.shape[1] != q.shape[0]:
        raise UsageError(f"embedding has {q.shape[0]} dims, gallery has {mat.shape[1]}")
    qn = q / max(float(np.linalg.norm(q)), 1e-12)
    gn = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), np.float32(1e-12))
    sims = gn @ qn
    order = np.argsort(-sims, kind="stable")[: max(0, k)]
    return [(keys[i], float(sims[i])) for i in order]
