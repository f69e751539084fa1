"""3D models: a volume is resampled, windowed and covered by sliding windows, and the
blended outputs are decided slab by slab in the source's own voxel grid.

A bundle is a volume bundle when its manifest has a ``volume`` block (and its
``preprocess.size`` is the ROI ``[D, H, W]``)::

    "volume": {"spacing": [1.5, 1.5, 2.0],
               "sliding_window": {"rule": "monai", "roi_size": [96, 96, 96],
                                  "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4}}

The steps, for an image already in the canonical orientation
(:func:`edgemed.io.orientation.canonical`):

1. :func:`prepare`: resample to the bundle's target ``spacing`` (x, y, z mm; ``null``: the
   model runs on the source grid) by :func:`resample`, then the intensity steps of the
   2D path per channel (window/clip, ``unit`` or ``zscore`` scaling; ``zscore`` uses the
   whole volume's mean and standard deviation).
2. :func:`segment_volume`: windows of the ROI in MONAI's positions, blended with its
   importance map (:mod:`edgemed.sliding_window`), activation on the blended outputs, the
   probabilities resampled back to the source grid (:func:`resample`'s rule, plane by
   plane as slabs become final), then the decision (argmax or threshold) and, for the
   labels the bundle names, the largest 26-connected component in 3D.

Resampling is trilinear with half-pixel centres: ``src = (dst + 0.5) * n_in / n_out - 0.5``
clamped to the edge, i.e. ``torch.nn.functional.interpolate(mode="trilinear",
align_corners=False)``; in-plane by OpenCV's ``INTER_LINEAR`` (the same rule), along Z by
blending two planes. Blended outputs are the model's raw outputs (logits), as MONAI
blends them; the activation follows the blend.

Memory: neither the blended outputs nor the probabilities exist for the whole volume at
once. Besides the input and the uint8 mask, the peak is about one ROI depth of planes per
output channel in the model grid plus two source-grid planes per channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgemed import postprocess as ops
from edgemed.errors import BundleError, InputError
from edgemed.io import MedicalImage
from edgemed.preprocess.cpu import scale_intensity
from edgemed.preprocess.spec import PreprocessSpec
from edgemed.sliding_window import Predictor, SlidingWindow, sliding_window, window_starts

__all__ = [
    "VolumeSpec",
    "count_windows",
    "model_shape",
    "prepare",
    "resample",
    "segment_volume",
]


@dataclass(frozen=True)
class VolumeSpec:
    """A bundle's ``volume`` block.

    Attributes:
        spacing: the model's voxel size ``(x, y, z)`` in mm, or None: no resampling (the
            model runs on the source grid).
        window: the sliding-window parameters (MONAI's rule).
    """

    spacing: tuple[float, float, float] | None
    window: SlidingWindow

    @classmethod
    def from_dict(cls, block: Mapping[str, Any], roi: Sequence[int]) -> VolumeSpec:
        """Read a ``volume`` block; ``roi`` is the preprocess ``size`` it must agree with.

        Raises:
            BundleError: ``BUNDLE_INVALID`` for unknown keys or values out of range.
        """
        if not isinstance(block, Mapping):
            raise BundleError("volume must be an object")
        unknown = sorted(set(block) - {"spacing", "sliding_window"})
        if unknown:
            raise BundleError(f"volume has unknown keys {unknown}")
        spacing: tuple[float, float, float] | None = None
        if block.get("spacing") is not None:
            try:
                given = tuple(float(s) for s in block["spacing"])
            except (TypeError, ValueError) as exc:
                raise BundleError("volume.spacing must be [x, y, z] mm or null") from exc
            if len(given) != 3 or not all(math.isfinite(s) and s > 0 for s in given):
                raise BundleError("volume.spacing must be three positive sizes in mm")
            spacing = (given[0], given[1], given[2])
        sw = dict(block.get("sliding_window") or {})
        sw.setdefault("roi_size", list(roi))
        window = SlidingWindow.from_dict(sw)
        if tuple(window.roi_size) != tuple(int(r) for r in roi):
            raise BundleError(
                f"volume.sliding_window.roi_size {list(window.roi_size)} differs from the "
                f"preprocess size {list(roi)} (the model's input)"
            )
        return cls(spacing=spacing, window=window)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "sliding_window": self.window.as_dict(),
        }


# -- resampling --------------------------------------------------------------------------


def model_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None
) -> tuple[int, int, int]:
    """The grid a ``(Z, Y, X)`` volume of ``spacing`` ``(dz, dy, dx)`` has at the
    ``target`` ``(x, y, z)`` mm: ``round(n * s / t)`` per axis, at least 1."""
    if target is None:
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    t_zyx = (target[2], target[1], target[0])
    return tuple(  # type: ignore[return-value]
        max(1, int(round(n * float(s) / float(t))))
        for n, s, t in zip(shape, spacing, t_zyx, strict=True)
    )


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two input indices and the weight of the second
    (half-pixel centres, clamped to the edge)."""
    c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    c = np.clip(c, 0.0, n_in - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (c - i0).astype(np.float32)


def _resize_planes(planes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(..., Y, X)`` float32 resized in-plane to ``hw`` by INTER_LINEAR, plane by plane."""
    if tuple(planes.shape[-2:]) == tuple(hw):
        return planes
    flat = planes.reshape(-1, *planes.shape[-2:])
    out = np.empty((flat.shape[0], *hw), dtype=np.float32)
    for i, p in enumerate(flat):
        out[i] = cv2.resize(p, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*planes.shape[:-2], *hw)


def resample(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of ``(..., Z, Y, X)`` float32 to the spatial ``shape``
    (half-pixel centres, edge-clamped; see the module doc). Unchanged when equal."""
    shape = tuple(int(s) for s in shape)
    a = np.asarray(array, dtype=np.float32)
    if tuple(a.shape[-3:]) == shape:
        return a
    a = _resize_planes(a, (shape[1], shape[2]))
    z_in = a.shape[-3]
    if z_in == shape[0]:
        return a
    i0, i1, t = _taps(z_in, shape[0])
    lo, hi = np.take(a, i0, axis=-3), np.take(a, i1, axis=-3)
    t = t.reshape(-1, 1, 1)
    return (lo + (hi - lo) * t).astype(np.float32, copy=False)


# -- preprocessing -----------------------------------------------------------------------


def _volume_array(image: MedicalImage) -> tuple[np.ndarray, tuple[float, float, float]]:
    arr = np.asarray(image.array)
    if arr.ndim == 2:
        arr = arr[None]
        spacing = (1.0, *image.spacing[-2:])
    elif arr.ndim == 3 and image.is_volume:
        spacing = tuple(float(s) for s in image.spacing)
    else:
        raise InputError(
            f"a 3D model needs a grayscale volume or slice, got shape {arr.shape}",
            code="INPUT_SHAPE",
        )
    return arr, spacing  # type: ignore[return-value]


def prepare(image: MedicalImage, spec: PreprocessSpec, vol: VolumeSpec) -> np.ndarray:
    """The model-space volume ``(C, Z', Y', X')`` float32 of ``image`` (already in the
    canonical orientation): resampled to ``vol.spacing``, then each channel's intensity
    step. What every backend and the export's calibration see.

    Raises:
        InputError: ``INPUT_SPACING_UNKNOWN`` when the bundle resamples to a spacing and
            the input states none (a 3D model's sizes are in mm; ``--spacing`` gives it).
    """
    arr, spacing = _volume_array(image)
    if vol.spacing is not None and image.spacing_source == "unknown":
        raise InputError(
            "this 3D model runs at a fixed voxel size and the input does not state its "
            "spacing; give it with --spacing X,Y,Z (mm)",
            code="INPUT_SPACING_UNKNOWN",
        )
    grid = model_shape(arr.shape, spacing, vol.spacing)
    src = resample(arr.astype(np.float32, copy=False), grid)
    out = np.empty((spec.num_channels, *grid), dtype=np.float32)
    for c, rng in enumerate(spec.ranges):
        scale_intensity(src, rng, spec.scale, out=out[c])
    return out


def count_windows(shape: Sequence[int], window: SlidingWindow) -> int:
    """How many windows cover a model-space volume of spatial ``shape``."""
    from edgemed.sliding_window import pad_widths, scan_interval

    roi = window.roi_size
    pads = pad_widths(shape, roi)
    padded = [n + lo + hi for n, (lo, hi) in zip(shape, pads, strict=True)]
    starts = window_starts(padded, roi, scan_interval(padded, roi, window.overlap))
    return int(np.prod([len(s) for s in starts]))


# -- blending, back to the source grid, decision -------------------------------------------


class _BackToSource:
    """Receives blended model-grid slabs in order and writes the decided source planes.

    Model planes are activated and resized in-plane to the source ``(Y, X)`` as they
    arrive; a source plane is decided once both model planes it blends from are in.
    Only the planes a pending source plane still needs are kept.
    """

    def __init__(self, head_spec: Any, model_z: int, mask: np.ndarray) -> None:
        self.spec = head_spec
        self.mask = mask
        self.hw = mask.shape[1:]
        self.i0, self.i1, self.t = _taps(model_z, mask.shape[0])
        self.planes: dict[int, np.ndarray] = {}
        self.next = 0  # the next source plane to decide

    def __call__(self, first: int, slab: np.ndarray) -> None:
        probs = ops.activate(slab, self.spec.activation, axis=0)  # (K, d, y, x)
        for j in range(probs.shape[1]):
            self.planes[first + j] = _resize_planes(np.ascontiguousarray(probs[:, j]), self.hw)
        have = first + probs.shape[1]
        while self.next < len(self.i0) and self.i1[self.next] < have:
            s = self.next
            a, b, t = self.i0[s], self.i1[s], self.t[s]
            p = (
                self.planes[a]
                if t == 0 or a == b
                else self.planes[a] + (self.planes[b] - self.planes[a]) * t
            )
            self.mask[s] = ops.decide_planes(np.ascontiguousarray(p, np.float32), self.spec)
            self.next += 1
            keep = self.i0[self.next] if self.next < len(self.i0) else have
            for k in [k for k in self.planes if k < keep]:
                del self.planes[k]


def segment_volume(
    prepared: np.ndarray,
    predictor: Predictor,
    vol: VolumeSpec,
    head_spec: Any,
    out_shape: Sequence[int],
    labels: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sliding-window segmentation of a :func:`prepare`-d volume: the uint8 ``(Z, Y, X)``
    mask in the source (canonical) grid ``out_shape``.

    Args:
        prepared: ``(C, Z', Y', X')`` float32 model-space volume.
        predictor: ``(N, C, *roi)`` windows -> ``(N, K, *roi)`` raw outputs.
        vol: the bundle's volume block.
        head_spec: the segmentation head's spec (activation, decision, threshold,
            largest_component).
        out_shape: the source grid ``(Z, Y, X)``.
        labels: label names (for ``largest_component``).
        progress: ``(windows done, windows in all)`` after each model call.
    """
    mask = np.zeros(tuple(int(n) for n in out_shape), dtype=np.uint8)
    sink = _BackToSource(head_spec, prepared.shape[1], mask)
    sliding_window(prepared, predictor, vol.window, on_slab=sink, progress=progress)
    for name in head_spec.largest_component:
        if name in labels:
            keep_largest_component_3d(mask, list(labels).index(name))
    return mask


def keep_largest_component_3d(mask: np.ndarray, label: int) -> None:
    """In place: voxels of ``label`` outside its largest 26-connected component become 0
    (ties: the component met first in C order)."""
    from scipy import ndimage

    sel = mask == label
    comp, n = ndimage.label(sel, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return
    sizes = np.bincount(comp.ravel())[1:]
    mask[sel & (comp != 1 + int(np.argmax(sizes)))] = 0
