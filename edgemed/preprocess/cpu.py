"""CPU preprocessing with NumPy and OpenCV: the reference the CUDA kernels must match.

Exact arithmetic, per slice ``s`` (float32, physical units) and per intensity channel
``c`` with range ``(lo, hi)`` from the spec (window ``center -/+ width/2`` or ``clip``,
taken in float64 from the spec's values):

1. Colour: RGB input with ``color="gray"`` becomes luma
   ``0.299*R + 0.587*G + 0.114*B`` (float32 weights and result). With ``color="rgb"``
   channel ``c`` reads sample ``c`` (a grayscale slice gives the same plane to all three).
2. Intensity, at the *source* resolution, in float32:
   ``v = min(max(s, float32(lo)), float32(hi))`` (no clipping for a ``None`` range).
3. Scale, still at the source resolution, in float32:
   * ``unit``:   ``v = (v - float32(lo)) * inv`` with ``inv = float32(1 / (hi - lo))``
     (``hi - lo`` in float64);
   * ``zscore``: ``v = (v - float32(mean)) * float32(1 / max(std, 1e-6))`` where the
     mean and the population std of the step-2 values are taken in float64 (the
     reciprocal too, from the unrounded std);
   * ``none``:   ``v`` unchanged.
4. Resize to the target box with bilinear interpolation, OpenCV ``INTER_LINEAR``
   semantics: *half-pixel centres* -- destination pixel ``x`` samples source coordinate
   ``sx = (x + 0.5) * (w_src / w_dst) - 0.5``; ``x0 = floor(sx)``, ``a = sx - x0``; where
   ``x0 < 0`` the sample is pixel 0 (``a = 0``), where ``x0 >= w_src - 1`` it is pixel
   ``w_src - 1`` (``a = 0``); the value is ``(1-a)*p[x0] + a*p[x0+1]`` with float32
   weights, separably in y and x. No anti-aliasing on downscale (as OpenCV); an exact
   2x downscale has ``a = 0.5`` (OpenCV's own code runs its area routine there: the
   same weights). Equal sizes copy unchanged.
   OpenCV takes ``sx`` in float64 when its IPP code handles the call (OpenCV built with
   IPP and ``cv2.ipp.useIPP()`` true, as in the x86-64 wheels, and a source of at least
   2 x 2 pixels). Otherwise (no IPP, as in ARM/Jetson builds; a source 1 pixel high or
   wide) it rounds ``sx`` to float32 before the floor, which moves ``a`` by up to half
   a float32 ulp of ``sx`` (at most ``2**-24 * |sx|``): 2**-16 (1.5e-5) of the step
   between two pixels for a 512-pixel source, 2**-12 (2.4e-4) for a 5000-pixel one.
   Measured with OpenCV 4.10 and 5.0 (tests/preprocess/test_cpu.py).
   * ``stretch``: the target box is the whole ``H x W``.
   * ``letterbox``: ``k = min(H / h, W / w)``, box ``nh = max(1, round(h*k))`` by
     ``nw = max(1, round(w*k))`` (Python ``round``: halves to even; capped at ``H``,
     ``W`` against float error) placed at ``top = (H - nh) // 2``,
     ``left = (W - nw) // 2``; everything outside the box is ``pad_value``.
5. Edge channel (``edges=True``), computed on the *resized* channel 0 in float32 over
   the whole ``H x W`` canvas (padding included, as ``float32(pad_value)``) before the
   step-6 cast: OpenCV 3x3 Sobel ``gx``, ``gy`` with replicated borders (float32 sums,
   which OpenCV orders differently in its vectorised body and in the columns left over
   at the right edge: a float32 ulp or so), then
   ``e = sqrt(gx*gx + gy*gy) * float32(1 / (4*sqrt(2)))``, every operation rounded to
   float32 (no fused multiply-add). A unit step gives at most 1.
6. Output ``out[n, c, :, :]`` in NCHW, cast to the spec dtype (float16 rounds to
   nearest even), so a float16 output is exactly the float32 output cast.

The steps run on source pixels before interpolation (window, then resize), which is
what the fused CUDA kernel does per tap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgemed._scratch import scratch
from edgemed.errors import InputError, UsageError
from edgemed.io.image import MedicalImage
from edgemed.preprocess.spec import PreprocessSpec

__all__ = ["Placement", "preprocess", "preprocess_image", "allocate", "place", "scale_intensity"]

_EDGE_NORM = np.float32(1.0 / (4.0 * math.sqrt(2.0)))
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Placement:
    """Where a source slice of shape ``source`` landed inside the model input.

    ``top``/``left``/``height``/``width`` are the box in model pixels; postprocessing
    uses it to map outputs back to the original geometry.
    """

    source: tuple[int, int]
    top: int
    left: int
    height: int
    width: int


def place(source: tuple[int, int], spec: PreprocessSpec) -> Placement:
    """The target box for a ``source=(h, w)`` slice under ``spec`` (step 4)."""
    h, w = int(source[0]), int(source[1])
    H, W = spec.height, spec.width
    if spec.resize == "stretch":
        return Placement((h, w), 0, 0, H, W)
    k = min(H / h, W / w)
    nh = min(H, max(1, round(h * k)))
    nw = min(W, max(1, round(w * k)))
    return Placement((h, w), (H - nh) // 2, (W - nw) // 2, nh, nw)


def allocate(spec: PreprocessSpec, batch: int) -> np.ndarray:
    """A buffer of the right shape and dtype for ``batch`` slices, for reuse."""
    return np.empty((batch, spec.num_channels, spec.height, spec.width), dtype=spec.dtype)


def _intensity(
    src: np.ndarray, spec: PreprocessSpec, c: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Steps 1-3 for channel ``c`` of one slice, into ``out`` (float32, the slice's
    ``(Y, X)``) when given, else into a new array; returns it.

    ``src`` may also be the slice's luma plane already computed (``(Y, X)``).
    """
    if src.ndim == 3:  # colour (Y, X, 3)  # noqa: SIM108 (two cases read better apart)
        plane = src[..., c] if spec.color == "rgb" else src @ _LUMA
    else:
        plane = src
    return scale_intensity(plane, spec.ranges[c], spec.scale, out=out)


def scale_intensity(
    plane: np.ndarray,
    rng: tuple[float, float] | None,
    scale: str,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Steps 1-3 on any array (a slice's channel, or a whole volume's: ``zscore`` then
    uses all its values): clip to ``rng`` (None: pass through), then ``unit`` scaling to
    [0, 1] over ``rng``, ``zscore``, or ``none``; float32 into ``out`` when given."""
    v = np.empty(plane.shape, dtype=np.float32) if out is None else out
    if rng is not None and plane.dtype == np.float32:
        # Copy and clip in one pass (min/max are exact: the same bits as copy-then-clip).
        np.clip(plane, np.float32(rng[0]), np.float32(rng[1]), out=v)
    else:
        v[...] = plane  # the float32 cast np.array(plane, dtype=float32) makes
        if rng is not None:
            np.clip(v, np.float32(rng[0]), np.float32(rng[1]), out=v)
    if scale == "unit":
        assert rng is not None  # PreprocessSpec guarantees a range for 'unit'
        v -= np.float32(rng[0])
        v *= np.float32(1.0 / (rng[1] - rng[0]))
    elif scale == "zscore":
        mean = np.float32(v.mean(dtype=np.float64))
        std = float(v.std(dtype=np.float64))
        v -= mean
        v *= np.float32(1.0 / max(std, 1e-6))
    return v


def _canvas(v: np.ndarray, p: Placement, spec: PreprocessSpec) -> np.ndarray:
    """Resized channel 0 on the float32 ``H x W`` canvas (step 5's input).

    Built apart from ``out``: a float16 ``out`` holds rounded values, and differentiating
    those would put up to a few float16 ulps of error into the edge channel.
    """
    if (p.height, p.width) == (spec.height, spec.width):
        return np.ascontiguousarray(v, dtype=np.float32)
    canvas = np.full((spec.height, spec.width), np.float32(spec.pad_value), dtype=np.float32)
    canvas[p.top : p.top + p.height, p.left : p.left + p.width] = v
    return canvas


def _check_slice(src: np.ndarray) -> None:
    if src.ndim not in (2, 3) or (src.ndim == 3 and src.shape[2] != 3):
        raise InputError(f"expected a (Y, X) or (Y, X, 3) slice, got shape {src.shape}")
    if src.shape[0] < 1 or src.shape[1] < 1:
        raise InputError(f"empty slice of shape {src.shape}")


def preprocess(
    slices: Sequence[np.ndarray] | np.ndarray,
    spec: PreprocessSpec,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Placement]]:
    """Turn a batch of 2D slices into one NCHW model input.

    Args:
        slices: a sequence of ``(Y, X)`` or ``(Y, X, 3)`` arrays (sizes may differ), or an
            ``(N, Y, X)`` / ``(N, Y, X, 3)`` array.
        spec: the bundle's preprocessing spec.
        out: optional preallocated ``(>=N, C, H, W)`` buffer of the spec dtype; written in
            place (see :func:`allocate`).

    Returns:
        ``(batch, placements)``: the ``(N, C, H, W)`` input (a view of ``out`` when
        given) and, per slice, where it landed.
    """
    n = len(slices)
    if n == 0:
        raise UsageError("preprocess needs at least one slice")
    shape = (n, spec.num_channels, spec.height, spec.width)
    if out is None:
        out = np.empty(shape, dtype=spec.dtype)
    elif out.dtype != np.dtype(spec.dtype) or out.shape[0] < n or out.shape[1:] != shape[1:]:
        raise UsageError(f"output buffer {out.shape} {out.dtype} does not fit {shape} {spec.dtype}")
    else:
        out = out[:n]
    placements = []
    n_int = len(spec.ranges)
    # Direct writes need a float32 plane; a float16 one gets the float32 result cast.
    direct_ok = out.dtype == np.float32
    for i in range(n):
        src = np.asarray(slices[i])
        _check_slice(src)
        p = place(src.shape[:2], spec)
        placements.append(p)
        whole = (p.top, p.left, p.height, p.width) == (0, 0, spec.height, spec.width)
        if spec.resize == "letterbox" and not whole:
            # Through float32, like every other value, so float16 output == float32 cast.
            out[i].fill(np.float32(spec.pad_value))
        if src.ndim == 3 and spec.color == "gray":
            src = src @ _LUMA  # once per slice, not once per window (the same values)
        resized = (p.height, p.width) != src.shape[:2]
        base = None
        # Same size as the model input: steps 1-3 go straight into the output plane
        # (contiguous, so even zscore's sums run in the same order).
        direct = whole and not resized and direct_ok
        for c in range(n_int):
            if direct:
                v = _intensity(src, spec, c, out[i, c])
            else:
                # Work arrays are reused (edgemed._scratch): fresh ones cost page faults.
                v = _intensity(src, spec, c, scratch.get("pre.v", src.shape[:2], np.float32))
                target = out[i, c, p.top : p.top + p.height, p.left : p.left + p.width]
                if resized:
                    # Straight into the output plane when the box is all of it (the copy
                    # from a work array cost ~0.1 ms per 512x512 slice); else via one.
                    dst = target if whole and direct_ok else None
                    if dst is None:
                        dst = scratch.get("pre.resized", (p.height, p.width), np.float32)
                    v = cv2.resize(v, (p.width, p.height), dst=dst, interpolation=cv2.INTER_LINEAR)
                if not np.shares_memory(v, target):
                    target[...] = v
            if c == 0 and spec.edges:
                base = _canvas(v, p, spec)
                if base is v and not (direct or np.shares_memory(v, target)):
                    base = v.copy()  # v is scratch: the next channel overwrites it
        if base is not None:
            gx = cv2.Sobel(base, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.Sobel(base, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
            # Not cv2.magnitude: with IPP its last bit depends on the output buffer's
            # alignment (two calls on the same input can differ); NumPy rounds each
            # operation once, as the docstring states.
            out[i, n_int] = np.sqrt(gx * gx + gy * gy) * _EDGE_NORM
    return out, placements


def preprocess_image(
    image: MedicalImage, spec: PreprocessSpec, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[Placement]]:
    """Preprocess every slice of ``image`` (one for 2D, Z for a volume) as one batch."""
    if image.is_color and spec.color == "gray" and image.array.shape[-1] != 3:
        raise InputError(f"unsupported colour layout {image.array.shape}")
    return preprocess(image.slices(), spec, out)
