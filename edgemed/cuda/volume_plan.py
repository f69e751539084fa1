"""Parameters of the 3D kernels (``kernels/volume.cu``): the C-struct mirrors and the plan
of one volume, pure NumPy (shared by the GPU launches and the host build, as
:mod:`edgemed.cuda.packing` is for the 2D kernels).

:func:`plan_volume` fixes everything the kernels need before the first window: MONAI's
window positions, padding and importance map (from :mod:`edgemed.sliding_window`), the
batches of ``sw_batch_size`` windows, after which batch which planes are final, the size
of the accumulator ring (the most planes any batch keeps live) and, when the source grid
differs from the model grid, the bilinear taps back to it (:func:`resample_taps`, the rule
of :func:`edgemed.volume.resample`) and the size of the probability ring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemed.cuda.packing import TAP_DTYPE, Geometry, bilinear_taps, opencv_coord32
from edgemed.errors import BundleError, UsageError
from edgemed.sliding_window import (
    PADDING_MODES,
    SlidingWindow,
    importance_map,
    pad_widths,
    scan_interval,
    window_starts,
)

__all__ = [
    "ACTIVATIONS",
    "DECISIONS",
    "PAD_MODES",
    "RESAMPLE_DTYPES",
    "VOL_SPEC_DTYPE",
    "VOL_WINDOW_DTYPE",
    "DeviceArray",
    "VolumePlan",
    "geometry",
    "pad_volume",
    "plan_volume",
    "resample_taps",
    "vol_spec",
]

ACTIVATIONS = {"none": 0, "softmax": 1, "sigmoid": 2}
DECISIONS = {"argmax": 0, "threshold": 1}
#: EM_PAD_* in volume.cu, by edgemed.sliding_window's padding-mode names.
PAD_MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}
_BLOCK = (32, 8, 1)

#: Mirror of ``EmVolSpec`` (volume.cu): 36 four-byte fields, int32 but ``threshold`` and
#: ``cval``.
_SPEC_FIELDS = [
    "channels",
    "activation",
    "decision",
    "threshold",
    "roi_d",
    "roi_h",
    "roi_w",
    "first_window",
    "n_windows",
    "plane0",
    "row0",
    "col0",
    "planes",
    "rows",
    "cols",
    "acc_slots",
    "acc_h",
    "acc_w",
    "src_base",
    "src_slots",
    "src_h",
    "src_w",
    "dst_base",
    "dst_slots",
    "dst_h",
    "dst_w",
    "crop_z",
    "crop_y",
    "crop_x",
    "out_z",
    "tap_x",
    "tap_y",
    "tap_z",
    "pad_mode",
    "cval",
    "out_half",
]
VOL_SPEC_DTYPE = np.dtype(
    {
        "names": _SPEC_FIELDS,
        "formats": ["<f4" if f in ("threshold", "cval") else "<i4" for f in _SPEC_FIELDS],
        "offsets": [4 * i for i in range(len(_SPEC_FIELDS))],
        "itemsize": 144,
    }
)
#: Mirror of ``EmVolWindow``: a window's start (z, y, x) in the padded volume.
VOL_WINDOW_DTYPE = np.dtype(
    {"names": ["z", "y", "x"], "formats": ["<i4"] * 3, "offsets": [0, 4, 8], "itemsize": 16}
)
#: Source types of ``em_vol_resample_*`` and their entry-point suffixes.
RESAMPLE_DTYPES = {
    np.dtype(np.float32): "f32",
    np.dtype(np.int16): "i16",
    np.dtype(np.uint16): "u16",
    np.dtype(np.uint8): "u8",
}


def vol_spec(**values: float) -> np.ndarray:
    """One ``EmVolSpec`` record (shape ``(1,)``): the named fields set, the rest 0."""
    rec = np.zeros(1, dtype=VOL_SPEC_DTYPE)
    for name, value in values.items():
        rec[name] = value
    return rec


def geometry(cols: int, rows: int, planes: int) -> Geometry:
    """The launch over ``planes`` planes of ``rows x cols`` threads (32 x 8 blocks)."""
    return Geometry((-(-cols // _BLOCK[0]), -(-rows // _BLOCK[1]), planes), _BLOCK)


def resample_taps(
    n_in: Sequence[int], n_out: Sequence[int], coord32: bool | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The taps of a ``(Z, Y, X)`` -> ``(Z', Y', X')`` resampling, as
    :func:`edgemed.volume.resample` computes it: in-plane OpenCV ``INTER_LINEAR`` on
    single planes (the coordinate rule OpenCV uses for that plane size, unless
    ``coord32`` forces one: see :func:`edgemed.cuda.packing.opencv_coord32`), along Z the
    float64 half-pixel rule. Returns the ``TAP_DTYPE`` array (columns, rows, planes) and
    where the column, row and plane taps start."""
    (zi, yi, xi), (zo, yo, xo) = n_in, n_out
    c32 = opencv_coord32(yi, xi, 1) if coord32 is None else coord32
    tx, ty = bilinear_taps(xi, xo, c32), bilinear_taps(yi, yo, c32)
    tz = bilinear_taps(zi, zo, False)
    taps = np.concatenate([tx, ty, tz], dtype=TAP_DTYPE)
    return taps, (0, len(tx), len(tx) + len(ty))


@dataclass(frozen=True)
class VolumePlan:
    """Everything the kernels need for one volume, fixed before the first window.

    Attributes:
        shape: the model-space volume's spatial ``(Z, Y, X)``; ``pads`` its padding per
            axis (an axis shorter than the ROI); ``size`` the padded shape.
        roi: the window ``(D, H, W)``; ``weights`` the importance map (float32).
        windows: ``VOL_WINDOW_DTYPE`` starts, MONAI's order; ``batches`` the
            ``(first, stop)`` window ranges of the model calls; ``emits`` the padded
            plane up to which the volume is final after each batch.
        acc_slots: planes of the accumulator ring.
        out_shape: the source grid ``(Z, Y, X)`` of the mask; ``identity`` when it is
            ``shape`` (no resampling back); else ``taps``/``tap_at`` (model -> source) and
            ``prob_slots``, the planes of the probability ring.
    """

    shape: tuple[int, int, int]
    pads: tuple[tuple[int, int], ...]
    size: tuple[int, int, int]
    roi: tuple[int, int, int]
    weights: np.ndarray
    windows: np.ndarray
    batches: list[tuple[int, int]]
    emits: list[int]
    acc_slots: int
    out_shape: tuple[int, int, int]
    identity: bool
    taps: np.ndarray | None = None
    tap_at: tuple[int, int, int] = (0, 0, 0)
    prob_slots: int = 0
    source_ready: list[tuple[int, int]] = field(default_factory=list)

    @property
    def crop(self) -> tuple[int, int, int]:
        """Where the model-space volume starts inside the padded one."""
        return tuple(lo for lo, _ in self.pads)  # type: ignore[return-value]


def plan_volume(
    shape: Sequence[int], window: SlidingWindow, out_shape: Sequence[int] | None = None
) -> VolumePlan:
    """The :class:`VolumePlan` of a model-space volume of spatial ``shape`` ``(Z, Y, X)``
    whose mask is wanted on ``out_shape`` (default: ``shape``).

    Window positions, padding and importance map are :mod:`edgemed.sliding_window`'s (MONAI's
    rule); the emits are where :func:`edgemed.sliding_window.sliding_window` hands slabs on.
    """
    shape = tuple(int(n) for n in shape)
    out = shape if out_shape is None else tuple(int(n) for n in out_shape)
    roi = tuple(int(r) for r in window.roi_size)
    if len(shape) != 3 or len(roi) != 3 or len(out) != 3:
        raise BundleError(f"a 3D sliding window needs (Z, Y, X) shapes and ROI, got {shape}, {roi}")
    if min(shape) < 1 or min(out) < 1:
        raise UsageError(f"empty volume {shape} -> {out}")
    pads = tuple(pad_widths(shape, roi))
    size = tuple(n + lo + hi for n, (lo, hi) in zip(shape, pads, strict=True))
    axes = window_starts(size, roi, scan_interval(size, roi, window.overlap))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    windows = np.zeros(len(grid), dtype=VOL_WINDOW_DTYPE)
    windows["z"], windows["y"], windows["x"] = grid[:, 0], grid[:, 1], grid[:, 2]
    batches, emits = [], []
    z0 = acc_slots = 0
    bs = int(window.sw_batch_size)
    for first in range(0, len(grid), bs):
        stop = min(first + bs, len(grid))
        end = int(grid[first:stop, 0].max()) + roi[0]
        acc_slots = max(acc_slots, end - z0)
        # As sliding_window: no later window starts before the next one's first plane.
        upto = int(grid[stop, 0]) if stop < len(grid) else size[0]
        batches.append((first, stop))
        emits.append(upto)
        z0 = max(z0, upto)
    plan = dict(
        shape=shape, pads=pads, size=size, roi=roi, windows=windows, batches=batches,
        emits=emits, acc_slots=acc_slots, out_shape=out, identity=out == shape,
        weights=importance_map(roi, window.mode, window.sigma_scale),
    )  # fmt: skip
    if out != shape:
        taps, tap_at = resample_taps(shape, out)
        tz = taps[tap_at[2] :]
        i0, i1 = tz["i0"].astype(np.int64), tz["i1"].astype(np.int64)
        # Which source planes each emit completes, and the probability planes alive at once.
        ready, nxt, keep, slots, z0 = [], 0, 0, 1, 0
        for upto in emits:
            have = min(max(upto - pads[0][0], 0), shape[0])
            if have > z0:
                slots = max(slots, have - min(keep, z0))
                s0 = nxt
                while nxt < out[0] and i1[nxt] < have:
                    nxt += 1
                ready.append((s0, nxt))
                keep = int(i0[nxt]) if nxt < out[0] else have
                z0 = have
            else:
                ready.append((nxt, nxt))
        plan.update(taps=taps, tap_at=tap_at, prob_slots=slots, source_ready=ready)
    return VolumePlan(**plan)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeviceArray:
    """An array already in the kernels' memory (an engine's output on the GPU):
    its address, shape and dtype (C order)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype


def pad_volume(volume: np.ndarray, plan: VolumePlan, window: SlidingWindow) -> np.ndarray:
    """``(C, Z, Y, X)`` padded as :func:`edgemed.sliding_window.sliding_window` pads it."""
    if not any(lo or hi for lo, hi in plan.pads):
        return volume
    mode = PADDING_MODES[window.padding_mode]
    kwargs: dict[str, Any] = {"constant_values": window.cval} if mode == "constant" else {}
    return np.pad(volume, [(0, 0), *plan.pads], mode=mode, **kwargs)  # type: ignore[call-overload]
