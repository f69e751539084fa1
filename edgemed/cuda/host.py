"""The kernels run on the CPU: a :func:`edgemed.cuda.build.build_host_library` library
driven through ctypes.

:class:`HostKernels` launches the very ``.cu`` kernel bodies, compiled by g++ through
``host_shim.h``, with the same parameter packing and launch geometry as the GPU
launchers (:mod:`edgemed.cuda.packing`); memory is plain NumPy arrays. It is for tests
and ``kernel_bench.py --host``: the bodies run one simulated thread after another, so
its timings say nothing about GPU speed. No pycuda is needed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed.cuda.packing import (
    Geometry,
    largest_components,
    pack_preprocess,
    pack_raw,
    pack_segment,
    split_masks,
)
from edgemed.errors import UsageError
from edgemed.preprocess.cpu import Placement
from edgemed.preprocess.spec import PreprocessSpec

if TYPE_CHECKING:
    from edgemed.heads.segmentation import SegmentationSpec

__all__ = ["HostKernels"]


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


class HostKernels:
    """The kernels of a :func:`edgemed.cuda.build.build_host_library` library, run on
    the CPU via ctypes.

    Same packing and geometry as the GPU launchers; memory is plain NumPy arrays.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        u = ctypes.c_uint
        vp = ctypes.c_void_p
        self._pre = self._lib.em_host_launch_preprocess
        # (name, grid, block, src, slices, spec, taps, stats, scale, dst, pass)
        self._pre.argtypes = [ctypes.c_char_p, u, u, u, u, u, u, *[vp] * 7, ctypes.c_int]
        self._pre.restype = ctypes.c_int
        self._seg = self._lib.em_host_launch_segment
        # (name, grid, block, logits, slices, spec, taps, masks)
        self._seg.argtypes = [ctypes.c_char_p, u, u, u, u, u, u, vp, vp, vp, vp, vp]
        self._seg.restype = ctypes.c_int
        self._vol = self._lib.em_host_launch_volume
        # (name, grid, block, src, weights, windows, taps, acc, count, dst, spec record)
        self._vol.argtypes = [ctypes.c_char_p, u, u, u, u, u, u, *[vp] * 8]
        self._vol.restype = ctypes.c_int

    def launch_volume(self, name: str, geo: Geometry, spec: np.ndarray, *ptrs: int) -> None:
        """Run a ``volume.cu`` entry point: ``ptrs`` are the addresses of (src, weights,
        windows, taps, acc, count, dst), 0 where unused; ``spec`` is its one
        ``EmVolSpec`` record (passed by value, as the GPU receives it)."""
        rec = np.ascontiguousarray(spec)
        rc = self._vol(name.encode(), *geo.grid, *geo.block, *ptrs, _ptr(rec))
        if rc != 0:
            raise UsageError(f"no kernel named {name} in {self.path.name}")

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], *args: Any) -> None:
        """Run entry point ``name`` with its arguments as pycuda's ``Function.__call__``
        takes them (``np.uintp`` pointers, ``np.int32`` scalars, the ``np.void`` record
        of a struct passed by value): what a stand-in pycuda's kernel call does."""
        geo = Geometry(tuple(grid), tuple(block))  # type: ignore[arg-type]
        if name.startswith("em_vol_"):
            *ptrs, spec = args
            rec = np.frombuffer(bytes(memoryview(spec)), dtype=np.uint8)
            self.launch_volume(name, geo, rec, *map(int, ptrs))
            return
        fn = self._seg if name.startswith("em_segment") else self._pre
        if fn(name.encode(), *geo.grid, *geo.block, *map(int, args)) != 0:
            raise UsageError(f"no kernel named {name} in {self.path.name}")

    def _launch_pre(self, name: str, geo: Geometry, *arrays: np.ndarray, stage: int = 0) -> None:
        rc = self._pre(name.encode(), *geo.grid, *geo.block, *map(_ptr, arrays), stage)
        if rc != 0:
            raise UsageError(f"no kernel named {name} in {self.path.name}")

    def preprocess(
        self,
        raw_slices: Sequence[np.ndarray],
        spec: PreprocessSpec,
        slopes: Sequence[float] | None = None,
        intercepts: Sequence[float] | None = None,
        coord32: bool | None = None,
    ) -> tuple[np.ndarray, list[Placement]]:
        """Raw ``(Y, X)`` slices -> ``(N, C, H, W)`` model input, as the GPU computes it."""
        dtype, shapes = pack_raw(raw_slices)
        launch = pack_preprocess(spec, shapes, dtype, slopes, intercepts, coord32)
        raw = np.concatenate([np.ascontiguousarray(s).ravel() for s in raw_slices])
        out = np.empty(
            (len(shapes), len(spec.ranges), spec.height, spec.width), dtype=np.dtype(spec.dtype)
        )
        stats = np.zeros(max(1, launch.stats_count), dtype=np.float64)
        scale = np.zeros(max(1, launch.stats_count), dtype=np.float32)
        args = (raw, launch.slices, launch.spec, launch.taps, stats, scale, out)
        if launch.zstats_kernel is not None:
            for stage in (0, 1):
                self._launch_pre(launch.zstats_kernel, launch.zstats_geometry, *args, stage=stage)
            self._launch_pre(launch.zstats_kernel, launch.zscale_geometry, *args, stage=2)
        self._launch_pre(launch.kernel, launch.geometry, *args)
        return out, launch.placements

    def segment(
        self,
        logits: np.ndarray,
        placements: Sequence[Placement],
        post: SegmentationSpec,
        labels: Sequence[str] = (),
        coord32: bool | None = None,
    ) -> list[np.ndarray]:
        """``(N, C, H, W)`` logits -> one uint8 mask per slice (``segment``'s result)."""
        logits = np.ascontiguousarray(logits)
        launch = pack_segment(post, logits.shape, placements, logits.dtype, coord32)
        masks = np.zeros(max(1, launch.mask_bytes), dtype=np.uint8)
        geo = launch.geometry
        args = (logits, launch.slices, launch.spec, launch.taps, masks)
        rc = self._seg(launch.kernel.encode(), *geo.grid, *geo.block, *map(_ptr, args))
        if rc != 0:
            raise UsageError(f"no kernel named {launch.kernel} in {self.path.name}")
        return largest_components(split_masks(masks, launch), post, labels)
