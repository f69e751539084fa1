"""Postprocessing heads: segmentation, classification, embedding (+ matching)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from edgemed.errors import BundleError, UsageError
from edgemed.preprocess.cpu import Placement

__all__ = [
    "PostprocessSpec",
    "activate",
    "classify",
    "decide",
    "embed",
    "keep_largest_component",
    "match",
    "segment",
    "segmentation_stats",
]

_ACTIVATIONS = ("softmax", "sigmoid", "none")
_DECISIONS = ("argmax", "threshold")


@dataclass(frozen=True)
class PostprocessSpec:
    """How raw model outputs become results.

    Attributes:
        activation: ``softmax`` (mutually exclusive classes), ``sigmoid`` (independent
            channels) or ``none`` (outputs are already probabilities / features).
        decision: segmentation only: ``argmax`` or ``threshold`` (sigmoid channels
            above ``threshold``; with several channels a pixel takes the most probable
            channel that passes, label index = channel + 1, 0 where none passes).
        threshold: the threshold for ``decision="threshold"``.
        largest_component: segmentation only: labels (names) for which only the largest
            connected component is kept.
        top_k: classification only: how many classes to report.
        normalize: embedding only: ``l2`` or ``none``.
    """

    activation: str = "softmax"
    decision: str = "argmax"
    threshold: float = 0.5
    largest_component: tuple[str, ...] = field(default_factory=tuple)
    top_k: int = 5
    normalize: str = "l2"

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise BundleError(f"postprocess: activation must be one of {_ACTIVATIONS}")
        if self.decision not in _DECISIONS:
            raise BundleError(f"postprocess: decision must be one of {_DECISIONS}")
        if self.normalize not in ("l2", "none"):
            raise BundleError("postprocess: normalize must be 'l2' or 'none'")
        if self.top_k < 1:
            raise BundleError("postprocess: top_k must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any], task: str = "segmentation") -> PostprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BundleError(f"postprocess: unknown keys {sorted(unknown)}")
        kw = dict(data)
        if task == "embedding":
            kw.setdefault("activation", "none")
        if "largest_component" in kw:
            kw["largest_component"] = tuple(str(x) for x in kw["largest_component"])
        if "threshold" in kw:
            kw["threshold"] = float(kw["threshold"])
        if "top_k" in kw:
            kw["top_k"] = int(kw["top_k"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["largest_component"] = list(self.largest_component)
        return d


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
    hwc = np.ascontiguousarray(box.transpose(1, 2, 0))
    h, w = p.source
    if (h, w) != (p.height, p.width):
        # cv2.resize handles up to 512 channels in one call; it drops a size-1 channel axis.
        hwc = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return hwc


def decide(probs_hwc: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """Per-pixel label from ``(h, w, C)`` probabilities: uint8 ``(h, w)``.

    ``argmax``: the most probable channel (ties go to the lowest index).
    ``threshold``: label ``c + 1`` for the most probable channel ``c`` whose probability
    is ``>= threshold``, 0 where none is.
    """
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
    mask: np.ndarray, spacing: Sequence[float], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-label pixel counts and physical size.

    ``mask`` is ``(Y, X)`` (sizes in mm^2, key ``area_mm2``) or ``(Z, Y, X)`` (mm^3,
    ``volume_mm3``); ``spacing`` follows the mask's axes in mm.
    """
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    unit = float(np.prod([float(s) for s in spacing]))
    key = "volume_mm3" if mask.ndim == 3 else "area_mm2"
    names = label_names(labels, len(counts))
    return {
        names[i]: {"pixels": int(c), key: round(float(c) * unit, 4)} for i, c in enumerate(counts)
    }


def segment(
    logits: np.ndarray,
    placements: Sequence[Placement],
    spec: PostprocessSpec,
    labels: Sequence[str],
) -> list[np.ndarray]:
    """Model output ``(N, C, H, W)`` -> one uint8 mask per slice at its source size.

    Activation at model resolution, probabilities resized bilinearly to the source
    geometry (inverting the letterbox), then the decision, then largest-component
    filtering for the labels the spec names.
    """
    probs = activate(logits, spec.activation, axis=1)
    lcc = [labels.index(name) for name in spec.largest_component if name in labels]
    masks = []
    for i, p in enumerate(placements):
        mask = decide(_to_source(probs[i], p), spec)
        for label in lcc:
            keep_largest_component(mask, label)
        masks.append(mask)
    return masks


def classify(
    logits: np.ndarray, spec: PostprocessSpec, labels: Sequence[str]
) -> list[dict[str, Any]]:
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


def embed(features: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
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
