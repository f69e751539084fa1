"""Sliding-window inference over a volume with MONAI's semantics, decided slab by slab.

A 3D model takes a fixed region of interest (ROI, e.g. 96^3); a volume is covered by
overlapping windows whose outputs are blended with importance weights and normalised by
the summed weights. The window positions, the Gaussian importance map and the padding of
a volume smaller than the ROI follow ``monai.inferers.sliding_window_inference`` exactly
(tests compare against MONAI itself):

- along each axis the step is ``int(roi * (1 - overlap))`` (1 if that is 0; the ROI itself
  when the axis equals the ROI), windows start at ``0, step, 2*step, ...`` until one
  reaches the end, and the last is moved back to end at the image's end;
- windows are visited in row-major order of their start positions (first axis slowest);
- ``gaussian``: a separable map with sigma = ``sigma_scale * roi`` per axis over
  ``-(roi-1)/2 .. (roi-1)/2``, peak 1; both modes clamp the map from below at
  ``max(min(map), 1e-3)``;
- an axis shorter than the ROI is padded (``padding_mode``, ``cval``) by ``diff // 2``
  before and the rest after, and the padding is cropped from the output.

Unlike MONAI, no full-volume accumulator is kept: windows are visited with the first axis
slowest, so once every window starting at or below plane ``z`` has been added, the planes
before the next window's start are final. They are normalised and handed to ``on_slab``
(which decides and stores them) and dropped; peak memory is about one ROI depth of
planes per output channel instead of the whole volume per channel (MONAI's full-size
buffer needs 16.7 GiB for 100 classes at 384^3). Additions happen per voxel in the same
order as MONAI's, so the blended values are the same floats.

nnU-Net's rule (step count from ``ceil((size - roi) / (roi * step)) + 1`` spread evenly,
and its own Gaussian) differs; it is not implemented: a bundle states ``rule: monai``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemed.errors import BundleError

__all__ = [
    "SlidingWindow",
    "importance_map",
    "pad_widths",
    "scan_interval",
    "sliding_window",
    "window_starts",
]

MODES = ("constant", "gaussian")
#: MONAI's padding modes and the numpy.pad mode each one means.
PADDING_MODES = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

#: Planes handed to ``on_slab`` per call (bounds the temporaries of normalising).
_EMIT_PLANES = 8

#: predictor(windows (N, C, *roi) float32) -> outputs (N, K, *roi).
Predictor = Callable[[np.ndarray], np.ndarray]
#: on_slab(first plane along axis 0 in the source volume, blended outputs (K, d, ...)).
SlabSink = Callable[[int, np.ndarray], None]


def _per_axis(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * n
    values = tuple(float(v) for v in value)
    if len(values) != n:
        raise BundleError(f"sliding_window.{name} has {len(values)} values for {n} axes")
    return values


@dataclass(frozen=True)
class SlidingWindow:
    """A bundle's ``sliding_window`` block (MONAI's parameters and defaults).

    Attributes:
        roi_size: the window, one size per spatial axis (the model's input size).
        overlap: fraction of a window shared with its neighbour, per axis, in [0, 1).
        mode: ``constant`` (equal weights) or ``gaussian``.
        sigma_scale: Gaussian sigma as a fraction of the ROI, per axis.
        sw_batch_size: windows per model call.
        padding_mode: ``constant``, ``reflect``, ``replicate`` or ``circular``.
        cval: the value ``constant`` padding uses.
    """

    roi_size: tuple[int, ...]
    overlap: tuple[float, ...]
    mode: str = "constant"
    sigma_scale: tuple[float, ...] = (0.125,)
    sw_batch_size: int = 1
    padding_mode: str = "constant"
    cval: float = 0.0

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> SlidingWindow:
        """Read and check a bundle's ``sliding_window`` block.

        Raises:
            BundleError: ``BUNDLE_INVALID`` for an unknown key or a value out of range.
        """
        known = {"roi_size", "overlap", "mode", "sigma_scale", "sw_batch_size",
                 "padding_mode", "cval", "rule"}  # fmt: skip
        unknown = sorted(set(block) - known)
        if unknown:
            raise BundleError(f"sliding_window has unknown keys {unknown}")
        if block.get("rule", "monai") != "monai":
            raise BundleError("sliding_window.rule: only 'monai' is implemented")
        try:
            roi = tuple(int(v) for v in block["roi_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError("sliding_window.roi_size must list one size per axis") from exc
        spec = cls(
            roi_size=roi,
            overlap=_per_axis(block.get("overlap", 0.25), len(roi), "overlap"),
            mode=str(block.get("mode", "constant")),
            sigma_scale=_per_axis(block.get("sigma_scale", 0.125), len(roi), "sigma_scale"),
            sw_batch_size=int(block.get("sw_batch_size", 1)),
            padding_mode=str(block.get("padding_mode", "constant")),
            cval=float(block.get("cval", 0.0)),
        )
        spec.check()
        return spec

    def check(self) -> None:
        """Raise ``BundleError`` when a value is out of range."""
        if not self.roi_size or any(r < 1 for r in self.roi_size):
            raise BundleError("sliding_window.roi_size must be positive sizes")
        if any(not 0.0 <= o < 1.0 for o in self.overlap):
            raise BundleError("sliding_window.overlap must be in [0, 1)")
        if self.mode not in MODES:
            raise BundleError(f"sliding_window.mode must be one of {list(MODES)}")
        if any(s <= 0 for s in self.sigma_scale):
            raise BundleError("sliding_window.sigma_scale must be positive")
        if self.sw_batch_size < 1:
            raise BundleError("sliding_window.sw_batch_size must be at least 1")
        if self.padding_mode not in PADDING_MODES:
            raise BundleError(f"sliding_window.padding_mode must be one of {list(PADDING_MODES)}")
        if self.cval != 0.0 and self.padding_mode != "constant":
            # MONAI (torch's pad) refuses a value with the other modes: say so, not ignore it.
            raise BundleError("sliding_window.cval applies only to constant padding")

    def as_dict(self) -> dict[str, Any]:
        """The block as a bundle writes it (and provenance records it)."""
        return {
            "rule": "monai",
            "roi_size": list(self.roi_size),
            "overlap": list(self.overlap),
            "mode": self.mode,
            "sigma_scale": list(self.sigma_scale),
            "sw_batch_size": self.sw_batch_size,
            "padding_mode": self.padding_mode,
            "cval": self.cval,
        }


def scan_interval(
    image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]
) -> tuple[int, ...]:
    """The step between window starts along each axis (``image_size`` already padded)."""
    steps = []
    for size, r, o in zip(image_size, roi, overlap, strict=True):
        if r == size:
            steps.append(int(r))
        else:
            steps.append(max(int(r * (1 - o)), 1))
    return tuple(steps)


def window_starts(
    image_size: Sequence[int], roi: Sequence[int], interval: Sequence[int]
) -> list[list[int]]:
    """The start positions along each axis: ``k * step`` until a window reaches the end,
    the last moved back to end at the image's end."""
    starts = []
    for size, r, step in zip(image_size, roi, interval, strict=True):
        r = min(r, size)
        axis, k = [], 0
        while True:
            start = k * step
            axis.append(start - max(start + r - size, 0))
            if start + r >= size:
                break
            k += 1
        starts.append(axis)
    return starts


def importance_map(roi: Sequence[int], mode: str, sigma_scale: Sequence[float]) -> np.ndarray:
    """The per-window weights (float32, shape ``roi``)."""
    if mode == "constant":
        weights = np.ones(tuple(roi), dtype=np.float32)
    elif mode == "gaussian":
        gaussians = []
        for r, s in zip(roi, sigma_scale, strict=True):
            x = np.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1, dtype=np.float32)
            gaussians.append(np.exp(x**2 / np.float32(-2 * (r * s) ** 2)).astype(np.float32))
        weights = gaussians[0]
        for g in gaussians[1:]:  # an outer product, axis by axis (MONAI's float32 order)
            weights = weights[..., None] * g
    else:
        raise BundleError(f"sliding_window.mode must be one of {list(MODES)}")
    floor = np.float32(max(float(weights.min()), 1e-3))
    return np.maximum(weights, floor).astype(np.float32)


def pad_widths(shape: Sequence[int], roi: Sequence[int]) -> list[tuple[int, int]]:
    """Padding per spatial axis for an image smaller than the ROI: ``diff // 2`` before."""
    widths = []
    for size, r in zip(shape, roi, strict=True):
        diff = max(r - size, 0)
        widths.append((diff // 2, diff - diff // 2))
    return widths


def sliding_window(
    volume: np.ndarray,
    predictor: Predictor,
    spec: SlidingWindow,
    *,
    on_slab: SlabSink | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | None:
    """Run ``predictor`` over ``volume`` window by window and blend the outputs.

    Args:
        volume: ``(C, *spatial)`` float32, one image (the ROI has one size per spatial axis).
        predictor: maps ``(N, C, *roi)`` windows to ``(N, K, *roi)`` outputs, N up to
            ``spec.sw_batch_size``.
        spec: the window parameters.
        on_slab: receives the blended, normalised outputs plane-range by plane-range along
            the first spatial axis, in order, cropped to the source volume; with it nothing
            is returned and no full-volume buffer exists.
        progress: called with (windows done, windows in all) after each model call.

    Returns:
        ``(K, *spatial)`` float32 blended outputs when ``on_slab`` is None, else None.

    Raises:
        BundleError: the ROI does not match the volume's dimensionality, or the model's
            output is not one ROI per window.
    """
    spatial = tuple(volume.shape[1:])
    nd = len(spatial)
    if len(spec.roi_size) != nd:
        raise BundleError(
            f"sliding_window.roi_size has {len(spec.roi_size)} axes for a {nd}D volume"
        )
    roi = tuple(spec.roi_size)
    pads = pad_widths(spatial, roi)
    if any(lo or hi for lo, hi in pads):
        mode = PADDING_MODES[spec.padding_mode]
        kwargs: dict[str, Any] = {"constant_values": spec.cval} if mode == "constant" else {}
        volume = np.pad(volume, [(0, 0), *pads], mode=mode, **kwargs)  # type: ignore[call-overload]
    size = tuple(volume.shape[1:])
    interval = scan_interval(size, roi, spec.overlap)
    axes = window_starts(size, roi, interval)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, nd)
    weights = importance_map(roi, spec.mode, spec.sigma_scale)
    total = len(grid)

    full: np.ndarray | None = None
    if on_slab is None:

        def collect(first: int, slab: np.ndarray) -> None:
            nonlocal full
            if full is None:
                full = np.empty((slab.shape[0], *spatial), dtype=np.float32)
            full[:, first : first + slab.shape[1]] = slab

        on_slab = collect

    # The unfinished planes live in a ring of `cap` planes (plane z at row z % cap): as
    # many as any batch of windows spans from its first window's start, known from the
    # grid. (Growing a slab buffer by concatenation held the old and the new buffer at
    # once: twice the slab at the peak.)
    step = spec.sw_batch_size
    cap = min(
        size[0],
        max(
            int(grid[min(i + step, total) - 1, 0]) + roi[0] - int(grid[i, 0])
            for i in range(0, total, step)
        ),
    )
    acc: np.ndarray | None = None  # (K, cap, *size[1:]), made at the first output
    count = np.zeros((cap, *size[1:]), dtype=np.float32)
    z0 = 0  # planes before z0 are handed over (their rows are zero again)
    lo0, orig0 = pads[0][0], spatial[0]
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads[1:], spatial[1:], strict=True))

    def emit(upto: int) -> None:
        # Planes [z0, upto) of the padded volume are final: normalise, crop, hand over,
        # a few planes at a time: a whole slab's worth of temporaries (the quotient, the
        # sink's softmax) would cost as much memory as the accumulator itself.
        nonlocal z0
        if upto <= z0 or acc is None:
            return
        a, last = max(z0, lo0), min(upto, lo0 + orig0)
        while a < last:
            b = min(a + _EMIT_PLANES, last, a - a % cap + cap)  # never across the wrap
            rows = slice(a % cap, a % cap + (b - a))
            blended = acc[:, rows] / count[None, rows]
            on_slab(a - lo0, np.ascontiguousarray(blended[(slice(None), slice(None)) + crop]))
            a = b
        for lo in range(z0, upto, cap):  # the rows are reused for later planes
            for ring, _ in _runs(lo, min(upto, lo + cap), cap):
                acc[:, ring] = 0
                count[ring] = 0
        z0 = upto

    done = 0
    while done < total:
        batch = grid[done : done + spec.sw_batch_size]
        windows = np.stack(
            [
                volume[
                    (slice(None),) + tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True))
                ]
                for st in batch
            ]
        ).astype(np.float32, copy=False)
        out = np.asarray(predictor(windows))
        if out.ndim != nd + 2 or out.shape[0] != len(batch) or tuple(out.shape[2:]) != roi:
            raise BundleError(
                f"the model returned {tuple(out.shape)} for windows {tuple(windows.shape)}: "
                "sliding-window inference needs one output of the ROI's size per window"
            )
        if acc is None:
            acc = np.zeros((out.shape[1], cap, *size[1:]), dtype=np.float32)
        out = out.astype(np.float32, copy=False)
        if not out.flags.writeable:
            out = out.copy()
        for st, o in zip(batch, out, strict=True):
            inplane = tuple(slice(s, s + r) for s, r in zip(st[1:], roi[1:], strict=True))
            # In place (the model's output is ours): the same product, no temporary.
            np.multiply(o, weights, out=o)
            for ring, part in _runs(int(st[0]), int(st[0]) + roi[0], cap):
                acc[(slice(None), ring) + inplane] += o[:, part]
                count[(ring,) + inplane] += weights[part]
        done += len(batch)
        if progress is not None:
            progress(done, total)
        # No later window starts before the next one's first plane (row-major order).
        emit(int(grid[done, 0]) if done < total else size[0])
    return full


def _runs(a: int, b: int, cap: int) -> list[tuple[slice, slice]]:
    """Planes [a, b) of a ring of ``cap`` rows (plane z at row z % cap) as (ring rows,
    positions counted from a): one run, or two where the range wraps."""
    runs = []
    at = a
    while at < b:
        i = at % cap
        n = min(b - at, cap - i)
        runs.append((slice(i, i + n), slice(at - a, at - a + n)))
        at += n
    return runs
