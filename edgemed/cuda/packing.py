"""Kernel parameters and launch geometry: the C-struct mirrors and their packing.

The kernels live in ``edgemed/cuda/kernels/*.cu`` (their header comments state the
arithmetic; it is :mod:`edgemed.preprocess.cpu`'s, step by step). This module packs the
per-launch and per-slice parameter blocks (NumPy structured arrays laid out as the C
structs in ``edgemed_kernels.h``) and chooses the launch geometry. It is pure NumPy,
shared by the GPU launchers (:mod:`edgemed.cuda.launchers`) and the host build
(:mod:`edgemed.cuda.host`), so tests exercise the very packing the GPU uses.

Coordinates: OpenCV computes the bilinear source coordinate in float64 when its IPP code
takes a resize and in float32 otherwise (see :mod:`edgemed.preprocess.cpu`, step 4). The
packing computes the taps of every destination row and column here, once per launch
(:func:`bilinear_taps`), with either rule per slice (``coord32``); by default it follows
what this machine's OpenCV does for the same resize (:func:`opencv_coord32`), so the GPU
output matches this machine's CPU reference to float32 rounding. The two rules differ
by at most ``2**-24 * max(h, w)`` of a pixel step. Doing it here rather than per output
pixel in the kernels keeps float64 division out of them (sm_87 runs FP64 at 1/64 of
FP32); NumPy rounds each float64 operation once, as the kernels' former code did.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgemed.errors import UsageError
from edgemed.postprocess import keep_largest_component
from edgemed.preprocess.cpu import Placement, place
from edgemed.preprocess.spec import PreprocessSpec

if TYPE_CHECKING:
    from edgemed.heads.segmentation import SegmentationSpec

__all__ = [
    "MAX_CHANNELS",
    "RAW_DTYPES",
    "PRE_SPEC_DTYPE",
    "PRE_SLICE_DTYPE",
    "POST_SPEC_DTYPE",
    "POST_SLICE_DTYPE",
    "TAP_DTYPE",
    "Geometry",
    "PreprocessLaunch",
    "SegmentLaunch",
    "bilinear_taps",
    "check_preprocess_spec",
    "opencv_coord32",
    "pack_preprocess",
    "pack_segment",
    "pack_raw",
    "split_masks",
    "largest_components",
]

#: EM_MAX_CHANNELS in edgemed_kernels.h: intensity channels one launch computes.
MAX_CHANNELS = 16
#: Raw pixel types with a kernel entry point, and the entry-point suffix.
RAW_DTYPES = {
    np.dtype(np.int16): "i16",
    np.dtype(np.uint16): "u16",
    np.dtype(np.uint8): "u8",
    np.dtype(np.float32): "f32",
}

_SCALES = {"none": 0, "unit": 1, "zscore": 2}
_ACTIVATIONS = {"none": 0, "softmax": 1, "sigmoid": 2}
_DECISIONS = {"argmax": 0, "threshold": 1}
_M = MAX_CHANNELS

# Mirrors of the C structs (edgemed_kernels.h); the itemsizes match its static_asserts.
PRE_SPEC_DTYPE = np.dtype(
    {
        "names": ["height", "width", "channels", "scale", "out_half", "pad_value"]
        + ["has_range", "lo", "hi", "inv"],
        "formats": ["<i4"] * 5 + ["<f4", (np.dtype("<i4"), _M)] + [(np.dtype("<f4"), _M)] * 3,
        "offsets": [0, 4, 8, 12, 16, 32, 48, 48 + 4 * _M, 48 + 8 * _M, 48 + 12 * _M],
        "itemsize": 48 + 16 * _M,
    }
)
PRE_SLICE_DTYPE = np.dtype(
    {
        "names": ["src_offset", "src_h", "src_w", "top", "left", "box_h", "box_w"]
        + ["slope", "intercept", "tap_x", "tap_y"],
        "formats": ["<i8"] + ["<i4"] * 6 + ["<f4", "<f4", "<i4", "<i4"],
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44],
        "itemsize": 48,
    }
)
POST_SPEC_DTYPE = np.dtype(
    {
        "names": ["channels", "height", "width", "activation", "decision", "threshold"],
        "formats": ["<i4"] * 5 + ["<f4"],
        "offsets": [0, 4, 8, 12, 16, 32],
        "itemsize": 48,
    }
)
POST_SLICE_DTYPE = np.dtype(
    {
        "names": ["out_offset", "src_h", "src_w", "top", "left", "box_h", "box_w"]
        + ["tap_x", "tap_y"],
        "formats": ["<i8"] + ["<i4"] * 8,
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32, 36],
        "itemsize": 40,
    }
)
TAP_DTYPE = np.dtype(
    {
        "names": ["i0", "i1", "a"],
        "formats": ["<i4", "<i4", "<f4"],
        "offsets": [0, 4, 8],
        "itemsize": 16,
    }
)

_BLOCK_2D = (32, 8, 1)
_ZSTATS_BLOCK = (256, 1, 1)
_ZSTATS_MAX_BLOCKS = 64  # per slice: enough to fill a GPU, few float64 atomics each


@functools.lru_cache(maxsize=256)
def _taps(n_src: int, n_dst: int, coord32: bool) -> np.ndarray:
    x = np.arange(n_dst, dtype=np.float64)
    # Two roundings, as OpenCV (and the kernels' former per-pixel code): no fused
    # multiply-add in NumPy.
    s = (x + 0.5) * (n_src / n_dst) - 0.5
    if coord32:
        sf = s.astype(np.float32)
        fl32 = np.floor(sf)
        k = fl32.astype(np.int64)
        frac = sf - fl32  # exact: fl32 is the integer part of sf
    else:
        fl = np.floor(s)
        k = fl.astype(np.int64)
        frac = (s - fl).astype(np.float32)
    inside = (k >= 0) & (k < n_src - 1)
    taps = np.zeros(n_dst, dtype=TAP_DTYPE)
    taps["i0"] = np.clip(k, 0, n_src - 1)
    taps["i1"] = np.where(inside, k + 1, taps["i0"])
    taps["a"] = np.where(inside, frac, np.float32(0.0))
    taps.flags.writeable = False  # cached: shared by every launch that asks
    return taps


def _join_taps(parts: list[np.ndarray]) -> np.ndarray:
    """One ``TAP_DTYPE`` array of ``parts``, in order. (``dtype``: without it NumPy's
    promotion drops the records' padding, giving 12-byte records where the kernels read
    16.)"""
    return np.concatenate(parts, dtype=TAP_DTYPE)


def bilinear_taps(n_src: int, n_dst: int, coord32: bool) -> np.ndarray:
    """The ``TAP_DTYPE`` taps of the ``n_dst`` destination pixels of a row (or column)
    when ``n_src`` pixels are resized to ``n_dst`` with OpenCV's ``INTER_LINEAR``.

    Destination ``x`` samples ``sx = (x + 0.5) * (n_src / n_dst) - 0.5`` (float64, each
    operation rounded once), rounded to float32 before the floor when ``coord32`` (OpenCV
    without IPP); ``i0 = floor(sx)``, ``i1 = i0 + 1``, ``a = sx - i0``, clamped to the
    edge pixel with ``a = 0`` outside ``[0, n_src - 1)``. Equal sizes give ``a = 0``: an
    exact copy. The array is cached and read-only.
    """
    if n_src < 1 or n_dst < 1:
        raise UsageError(f"cannot resize {n_src} pixels to {n_dst}")
    return _taps(int(n_src), int(n_dst), bool(coord32))


@dataclass(frozen=True)
class Geometry:
    """A launch configuration: ``grid`` and ``block`` as CUDA ``(x, y, z)`` triples."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]


@dataclass(frozen=True)
class PreprocessLaunch:
    """Everything one preprocessing launch needs besides the memory.

    Attributes:
        kernel: entry point, e.g. ``em_preprocess_i16_f32``.
        zstats_kernel: the statistics entry point (run first) for ``zscore``, else None.
        spec: one ``PRE_SPEC_DTYPE`` record (shape ``(1,)``).
        slices: ``PRE_SLICE_DTYPE`` records, one per slice.
        taps: ``TAP_DTYPE`` records: per slice, its box's column taps then its row taps
            (the slice records hold where they start).
        placements: where each slice lands (as :func:`edgemed.preprocess.cpu.place`).
        raw_elements: total raw pixels of the batch (packed one slice after another).
        geometry: the main launch; ``zstats_geometry`` the statistics launches (passes 0
            and 1), ``zscale_geometry`` pass 2 (one thread per slice).
    """

    kernel: str
    zstats_kernel: str | None
    spec: np.ndarray
    slices: np.ndarray
    taps: np.ndarray
    placements: list[Placement]
    raw_elements: int
    geometry: Geometry
    zstats_geometry: Geometry
    zscale_geometry: Geometry

    @property
    def stats_count(self) -> int:
        """float64 values of the zscore statistics buffer (zeroed before each launch);
        the float32 offsets and scales pass 2 writes are as many."""
        return int(len(self.slices) * int(self.spec["channels"][0]) * 2)


@dataclass(frozen=True)
class SegmentLaunch:
    """Everything one segmentation-postprocessing launch needs besides the memory.

    Attributes:
        kernel: entry point, ``em_segment_f32`` or ``em_segment_f16``.
        spec: one ``POST_SPEC_DTYPE`` record; slices: one ``POST_SLICE_DTYPE`` per slice.
        taps: ``TAP_DTYPE`` records: per slice, its mask's column taps then its row taps.
        shapes: each mask's ``(h, w)``; offsets: its first byte in the mask buffer.
        mask_bytes: size of the mask buffer.
    """

    kernel: str
    spec: np.ndarray
    slices: np.ndarray
    taps: np.ndarray
    shapes: list[tuple[int, int]]
    offsets: list[int]
    mask_bytes: int
    geometry: Geometry


def check_preprocess_spec(spec: PreprocessSpec) -> None:
    """Raise :class:`UsageError` (``USAGE_GPU_UNSUPPORTED``) for what the kernel lacks.

    The kernel is grayscale only; RGB input, luma conversion and the Sobel edge channel
    stay on the CPU path (:func:`edgemed.preprocess.cpu.preprocess`). Refusing is the
    point: the GPU path must never compute something other than the spec says.
    """

    def refuse(what: str) -> UsageError:
        return UsageError(
            f"the CUDA preprocessing kernel does not implement {what}; "
            "use the CPU preprocessing path for this bundle",
            code="USAGE_GPU_UNSUPPORTED",
        )

    if spec.color != "gray":
        raise refuse(f"color={spec.color!r}")
    if spec.edges:
        raise refuse("the edge channel (edges=true)")
    if len(spec.ranges) > MAX_CHANNELS:
        raise refuse(f"more than {MAX_CHANNELS} windows")


def opencv_coord32(h: int, w: int, channels: int = 1) -> bool:
    """Whether this machine's OpenCV rounds the bilinear source coordinate to float32
    when resizing an ``h x w`` float32 image with ``channels`` channels.

    Its IPP code (x86-64 wheels) takes sources of at least 2 x 2 pixels with 1, 3 or 4
    channels and works in float64; everything else runs OpenCV's own float32 code.
    """
    return not (cv2.ipp.useIPP() and channels in (1, 3, 4) and h >= 2 and w >= 2)


def pack_preprocess(
    spec: PreprocessSpec,
    shapes: Sequence[tuple[int, int]],
    raw_dtype: np.dtype | type,
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
    coord32: bool | None = None,
) -> PreprocessLaunch:
    """Parameters for preprocessing slices of ``shapes`` (packed in that order, C order).

    Args:
        spec: the bundle's spec (checked with :func:`check_preprocess_spec`).
        shapes: per slice ``(h, w)`` of its raw pixels.
        raw_dtype: the stored pixel type, one of :data:`RAW_DTYPES`.
        slopes, intercepts: per slice rescale (default 1 and 0).
        coord32: force the float32 (True) or float64 (False) source coordinate; None
            follows this machine's OpenCV (:func:`opencv_coord32`).
    """
    check_preprocess_spec(spec)
    dt = np.dtype(raw_dtype)
    if dt not in RAW_DTYPES:
        raise UsageError(
            f"raw pixels of type {dt} have no CUDA kernel (supported: "
            f"{', '.join(str(d) for d in RAW_DTYPES)})",
            code="USAGE_GPU_UNSUPPORTED",
        )
    n = len(shapes)
    if n == 0:
        raise UsageError("preprocess needs at least one slice")
    slopes = [1.0] * n if slopes is None else list(slopes)
    intercepts = [0.0] * n if intercepts is None else list(intercepts)
    if len(slopes) != n or len(intercepts) != n:
        raise UsageError(f"{n} slices but {len(slopes)} slopes and {len(intercepts)} intercepts")

    ranges = spec.ranges
    rec = np.zeros(1, dtype=PRE_SPEC_DTYPE)
    rec["height"], rec["width"], rec["channels"] = spec.height, spec.width, len(ranges)
    rec["scale"] = _SCALES[spec.scale]
    rec["out_half"] = 1 if spec.dtype == "float16" else 0
    rec["pad_value"] = np.float32(spec.pad_value)
    for c, rng in enumerate(ranges):
        if rng is None:
            continue
        # Exactly cpu._intensity's constants: float32 of the float64 spec values.
        rec["has_range"][0, c] = 1
        rec["lo"][0, c] = np.float32(rng[0])
        rec["hi"][0, c] = np.float32(rng[1])
        rec["inv"][0, c] = np.float32(1.0 / (rng[1] - rng[0]))

    slices = np.zeros(n, dtype=PRE_SLICE_DTYPE)
    placements = []
    taps: list[np.ndarray] = []
    offset = ntaps = 0
    for i, (h, w) in enumerate(shapes):
        h, w = int(h), int(w)
        if h < 1 or w < 1:
            raise UsageError(f"empty slice of shape {(h, w)}")
        p = place((h, w), spec)
        placements.append(p)
        use32 = opencv_coord32(h, w) if coord32 is None else coord32
        taps += [bilinear_taps(w, p.width, use32), bilinear_taps(h, p.height, use32)]
        slices[i] = (
            offset,
            h,
            w,
            p.top,
            p.left,
            p.height,
            p.width,
            np.float32(slopes[i]),
            np.float32(intercepts[i]),
            ntaps,
            ntaps + p.width,
        )
        offset += h * w
        ntaps += p.width + p.height
    suffix = RAW_DTYPES[dt]
    out = "f16" if spec.dtype == "float16" else "f32"
    max_pixels = max(int(h) * int(w) for h, w in shapes)
    zblocks = min(_ZSTATS_MAX_BLOCKS, -(-max_pixels // _ZSTATS_BLOCK[0]))
    return PreprocessLaunch(
        kernel=f"em_preprocess_{suffix}_{out}",
        zstats_kernel=f"em_zstats_{suffix}" if spec.scale == "zscore" else None,
        spec=rec,
        slices=slices,
        taps=_join_taps(taps),
        placements=placements,
        raw_elements=offset,
        geometry=Geometry(
            (-(-spec.width // _BLOCK_2D[0]), -(-spec.height // _BLOCK_2D[1]), n), _BLOCK_2D
        ),
        zstats_geometry=Geometry((zblocks, 1, n), _ZSTATS_BLOCK),
        zscale_geometry=Geometry((1, 1, n), (1, 1, 1)),
    )


def pack_segment(
    post: SegmentationSpec,
    logits_shape: Sequence[int],
    placements: Sequence[Placement],
    logits_dtype: np.dtype | type = np.float32,
    coord32: bool | None = None,
) -> SegmentLaunch:
    """Parameters for turning ``(N, C, H, W)`` logits into per-slice masks.

    ``coord32=None`` follows this machine's OpenCV for a ``C``-channel resize of each
    placement box (as :func:`edgemed.postprocess.segment` runs it).
    """
    n, c, h_model, w_model = (int(v) for v in logits_shape)
    if n != len(placements):
        raise UsageError(f"{n} logit maps but {len(placements)} placements")
    if not 1 <= c <= 255:
        raise UsageError(f"a uint8 mask holds at most 255 classes, got {c}")
    dt = np.dtype(logits_dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise UsageError(f"logits of type {dt} have no CUDA kernel", code="USAGE_GPU_UNSUPPORTED")
    rec = np.zeros(1, dtype=POST_SPEC_DTYPE)
    rec["channels"], rec["height"], rec["width"] = c, h_model, w_model
    rec["activation"] = _ACTIVATIONS[post.activation]
    rec["decision"] = _DECISIONS[post.decision]
    rec["threshold"] = np.float32(post.threshold)
    slices = np.zeros(len(placements), dtype=POST_SLICE_DTYPE)
    offsets, shapes = [], []
    taps: list[np.ndarray] = []
    offset = ntaps = 0
    for i, p in enumerate(placements):
        if p.top < 0 or p.left < 0 or p.top + p.height > h_model or p.left + p.width > w_model:
            raise UsageError(f"placement {p} does not fit a {h_model} x {w_model} output")
        h, w = int(p.source[0]), int(p.source[1])
        use32 = opencv_coord32(p.height, p.width, c) if coord32 is None else coord32
        taps += [bilinear_taps(p.width, w, use32), bilinear_taps(p.height, h, use32)]
        slices[i] = (offset, h, w, p.top, p.left, p.height, p.width, ntaps, ntaps + w)
        offsets.append(offset)
        shapes.append((h, w))
        offset += h * w
        ntaps += w + h
    max_h = max(s[0] for s in shapes)
    max_w = max(s[1] for s in shapes)
    return SegmentLaunch(
        kernel="em_segment_f16" if dt == np.float16 else "em_segment_f32",
        spec=rec,
        slices=slices,
        taps=_join_taps(taps),
        shapes=shapes,
        offsets=offsets,
        mask_bytes=offset,
        geometry=Geometry(
            (-(-max_w // _BLOCK_2D[0]), -(-max_h // _BLOCK_2D[1]), len(placements)), _BLOCK_2D
        ),
    )


def pack_raw(raw_slices: Sequence[np.ndarray]) -> tuple[np.dtype, list[tuple[int, int]]]:
    """The one raw pixel type and the per-slice ``(h, w)`` of ``raw_slices`` (``(Y, X)``
    arrays), refused with :class:`UsageError` when a launch cannot take them."""
    if len(raw_slices) == 0:
        raise UsageError("preprocess needs at least one slice")
    dtypes = {np.asarray(s).dtype for s in raw_slices}
    if len(dtypes) != 1:
        raise UsageError(f"one launch takes one raw pixel type, got {sorted(map(str, dtypes))}")
    shapes = []
    for s in raw_slices:
        if np.ndim(s) != 2:
            raise UsageError(f"the CUDA path takes (Y, X) slices, got shape {np.shape(s)}")
        shapes.append((int(s.shape[0]), int(s.shape[1])))
    return dtypes.pop(), shapes


def split_masks(flat: np.ndarray, launch: SegmentLaunch) -> list[np.ndarray]:
    """The per-slice ``(h, w)`` masks (copies) of a launch's flat mask buffer."""
    return [
        flat[o : o + h * w].reshape(h, w).copy()
        for o, (h, w) in zip(launch.offsets, launch.shapes, strict=True)
    ]


def largest_components(
    masks: list[np.ndarray], post: SegmentationSpec, labels: Sequence[str]
) -> list[np.ndarray]:
    """Keep, in place, the largest connected component of each label the spec names in
    ``largest_component`` (as :func:`edgemed.postprocess.segment`); returns ``masks``."""
    # Connected components need the whole mask: they stay on the CPU (as segment does).
    keep = [labels.index(name) for name in post.largest_component if name in labels]
    for mask in masks:
        for label in keep:
            keep_largest_component(mask, label)
    return masks
