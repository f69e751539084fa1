"""The 3D path's CUDA kernels (``kernels/volume.cu``): sliding-window blending into a slab
ring, the slab decision, and trilinear resampling, on the GPU or through the host build.

What runs where, for one volume (:func:`segment_volume_cuda`, the CUDA twin of
:func:`edgemed.volume.segment_volume`):

1. :func:`edgemed.cuda.volume_plan.plan_volume` (pure NumPy, shared by both
   implementations) fixes everything the kernels need before the first window: window
   positions, batches, when planes are final, the ring sizes, the taps back to the
   source grid.
2. Per batch: the predictor's outputs ``(N, K, D, H, W)`` (float32, or float16 from an
   FP16 engine; on the GPU they may stay where the engine wrote them) are blended into
   the accumulator ring by ``em_vol_blend_*``: one thread per voxel, windows in order.
3. The planes no later window touches are finished: normalised, activated and decided
   straight into the uint8 mask (``em_vol_finish_labels``) when the model grid is the
   source grid; otherwise their probabilities go to a small ring
   (``em_vol_finish_probs``) and every source plane whose two model planes are in is
   resampled and decided (``em_vol_resample_decide``). The finished planes are zeroed
   for reuse. Only the mask comes back; the largest 3D component is then kept on the
   CPU, as the CPU path does.

Memory on the device: the accumulator ring ``K x ring x Y x X`` float32 (about one ROI depth
of planes per class, padded in-plane), a probability ring of about one ROI depth, the
window table, the importance map, the taps and the mask. The whole-volume blended output
never exists.

Two implementations of the same primitives (:class:`VolumeKernels`): :class:`HostVolumeKernels`
runs the very kernel bodies through the g++ host build (:class:`edgemed.cuda.host.HostKernels`,
NumPy memory), which is how the tests check the arithmetic against the CPU reference
without a GPU; :class:`CudaVolumeKernels` launches them with pycuda on the caller's
context and stream. Every kernel parameter block is one ``EmVolSpec`` record passed by
value (pycuda passes a NumPy ``np.void`` record as the struct's bytes), so no launch
uploads parameters.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgemed.cuda.packing import Geometry
from edgemed.cuda.volume_plan import (
    ACTIVATIONS,
    DECISIONS,
    PAD_MODES,
    RESAMPLE_DTYPES,
    DeviceArray,
    VolumePlan,
    geometry,
    pad_volume,
    plan_volume,
    resample_taps,
    vol_spec,
)
from edgemed.errors import BackendError, BundleError, UsageError
from edgemed.sliding_window import Predictor, SlidingWindow

if TYPE_CHECKING:
    from edgemed.cuda.host import HostKernels

__all__ = [
    "VolumeKernels",
    "HostVolumeKernels",
    "CudaVolumeKernels",
    "DeviceEngine",
    "BackendEngine",
    "SlabBlender",
    "VolumeWindows",
    "check_engine_io",
    "segment_volume_cuda",
    "segment_volume_device",
]


class VolumeKernels:
    """Where the volume kernels run: memory and launches. The algorithms
    (:class:`SlabBlender`, :meth:`resample`) are written once over these primitives;
    :class:`HostVolumeKernels` and :class:`CudaVolumeKernels` implement them."""

    def alloc(self, nbytes: int) -> Any:
        """A buffer of ``nbytes`` in the kernels' memory."""
        raise NotImplementedError

    def address(self, buf: Any) -> int:
        """The address kernels receive for ``buf``."""
        raise NotImplementedError

    def upload(self, buf: Any, array: np.ndarray) -> None:
        """Copy ``array`` (C order) to the start of ``buf`` (the host array may be reused
        on return)."""
        raise NotImplementedError

    def download(self, buf: Any, out: np.ndarray) -> None:
        """Copy the start of ``buf`` into ``out`` and wait: ``out`` is ready on return."""
        raise NotImplementedError

    def zero(self, buf: Any, nbytes: int) -> None:
        """Set the first ``nbytes`` of ``buf`` to zero (queued in order with launches)."""
        raise NotImplementedError

    def free(self, buf: Any) -> None:
        """Release ``buf`` now."""
        raise NotImplementedError

    def launch(self, kernel: str, geo: Geometry, spec: np.ndarray, **ptrs: int) -> None:
        """Queue ``kernel`` over ``geo`` with its ``EmVolSpec`` record and the addresses
        ``src``, ``weights``, ``windows``, ``taps``, ``acc``, ``count``, ``dst`` (0 where
        not given)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until everything queued so far has run."""
        raise NotImplementedError

    def _args(self, ptrs: dict[str, int]) -> list[int]:
        names = ("src", "weights", "windows", "taps", "acc", "count", "dst")
        unknown = set(ptrs) - set(names)
        if unknown:
            raise UsageError(f"unknown kernel arguments {sorted(unknown)}")
        return [int(ptrs.get(n, 0)) for n in names]

    # -- algorithms over the primitives ------------------------------------------------

    def resample(
        self, volume: np.ndarray | DeviceArray, shape: Sequence[int], dst: int | None = None
    ) -> np.ndarray | DeviceArray:
        """Trilinear resampling of ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) to the spatial
        ``shape``, float32 out, as :func:`edgemed.volume.resample` (half-pixel centres,
        edge-clamped; float32, int16, uint16 or uint8 in).

        ``volume`` is a host array (uploaded) or a :class:`DeviceArray` in the kernels'
        memory. Returns the result as a host array, or, with ``dst`` (an address with room
        for ``(C, *shape)`` float32), writes it there and returns its :class:`DeviceArray`
        (e.g. for :class:`VolumeWindows`): nothing comes back to the host.
        """
        shape_in = tuple(int(n) for n in volume.shape)
        dtype = np.dtype(volume.dtype)
        if len(shape_in) not in (3, 4):
            raise UsageError(f"resample takes (C, Z, Y, X) or (Z, Y, X), got {shape_in}")
        if dtype not in RESAMPLE_DTYPES:
            raise UsageError(f"no resampling kernel for {dtype}", code="USAGE_GPU_UNSUPPORTED")
        c, zi, yi, xi = (1, *shape_in) if len(shape_in) == 3 else shape_in
        out_shape = tuple(int(n) for n in shape)
        if len(out_shape) != 3 or min(out_shape) < 1 or min(zi, yi, xi) < 1:
            raise UsageError(f"cannot resample {shape_in} to {out_shape}")
        taps, (tx, ty, tz) = resample_taps((zi, yi, xi), out_shape)
        result_shape = (c, *out_shape) if len(shape_in) == 4 else out_shape
        bufs = {"taps": self.alloc(taps.nbytes)}
        try:
            self.upload(bufs["taps"], taps)
            if isinstance(volume, DeviceArray):
                src = int(volume.ptr)
            else:
                host = np.ascontiguousarray(volume)
                bufs["src"] = self.alloc(host.nbytes)
                self.upload(bufs["src"], host)
                src = self.address(bufs["src"])
            if dst is None:
                bufs["dst"] = self.alloc(4 * c * int(np.prod(out_shape)))
            spec = vol_spec(
                channels=c, src_base=0, src_slots=zi, src_h=yi, src_w=xi, dst_base=0,
                dst_slots=out_shape[0], dst_h=out_shape[1], dst_w=out_shape[2],
                plane0=0, tap_x=tx, tap_y=ty, tap_z=tz,
            )  # fmt: skip
            self.launch(
                f"em_vol_resample_{RESAMPLE_DTYPES[dtype]}",
                geometry(out_shape[2], out_shape[1], out_shape[0]),
                spec,
                src=src,
                taps=self.address(bufs["taps"]),
                dst=self.address(bufs["dst"]) if dst is None else int(dst),
            )
            if dst is not None:
                self.synchronize()  # before the taps (and source) are freed
                return DeviceArray(int(dst), result_shape, np.dtype(np.float32))
            result = np.empty(result_shape, dtype=np.float32)
            self.download(bufs["dst"], result)
            return result
        finally:
            _free_all(self, bufs)


class HostVolumeKernels(VolumeKernels):
    """The volume kernels through the host build (:class:`HostKernels`): NumPy memory,
    one simulated thread after another. For tests and ``kernel_bench.py --host``."""

    def __init__(self, host: HostKernels) -> None:
        self.host = host

    def alloc(self, nbytes: int) -> np.ndarray:
        # 256-aligned like cudaMalloc, poisoned so reads of unwritten memory show.
        raw = np.full(int(nbytes) + 256, 0xAB, dtype=np.uint8)
        start = (-raw.ctypes.data) % 256
        return raw[start : start + int(nbytes)]

    def address(self, buf: np.ndarray) -> int:
        return int(buf.ctypes.data)

    def upload(self, buf: np.ndarray, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        if a.nbytes > buf.nbytes:
            raise BackendError("upload larger than its buffer", code="GPU_FATAL")
        ctypes.memmove(buf.ctypes.data, a.ctypes.data, a.nbytes)

    def download(self, buf: np.ndarray, out: np.ndarray) -> None:
        if out.nbytes > buf.nbytes or not out.flags.c_contiguous:
            raise BackendError("download into a larger or strided array", code="GPU_FATAL")
        ctypes.memmove(out.ctypes.data, buf.ctypes.data, out.nbytes)

    def zero(self, buf: np.ndarray, nbytes: int) -> None:
        buf[:nbytes] = 0

    def free(self, buf: np.ndarray) -> None:
        pass  # garbage-collected

    def launch(self, kernel: str, geo: Geometry, spec: np.ndarray, **ptrs: int) -> None:
        self.host.launch_volume(kernel, geo, spec, *self._args(ptrs))

    def synchronize(self) -> None:
        pass  # launches run to the end before they return


class CudaVolumeKernels(VolumeKernels):
    """The volume kernels on the GPU with pycuda, queued on ``stream``.

    A CUDA context must be current whenever a method runs (the caller's, e.g. inside
    ``CudaDevice.active()``; never ``pycuda.autoinit``). The module is loaded from
    ``cubin_dir`` when it holds ``volume.<arch>.cubin``, else compiled by SourceModule
    (as :class:`edgemed.cuda.launchers.CudaPreprocessor`).

    Args:
        stream: the stream to queue on (``None``: the default stream).
        cubin_dir: stored cubins (see above).
        kernel_cache: SourceModule's cache folder.
        device: a :class:`edgemed.cuda.device.CudaDevice` (an engine's) whose stream to
            queue on instead, looked up at each call: these kernels then never keep the
            stream alive past the device's close (an error's traceback holds them).
    """

    def __init__(
        self,
        stream: Any = None,
        cubin_dir: str | os.PathLike[str] | None = None,
        kernel_cache: str | os.PathLike[str] | None = None,
        *,
        device: Any = None,
    ) -> None:
        from edgemed.cuda.device import cuda_errors
        from edgemed.cuda.launchers import _driver, _KernelModule

        self._stream = stream
        self._device = device
        self._drv = _driver()  # MissingDependencyError (naming the extra) first
        with cuda_errors("loading the volume kernels"):
            self._kernels = _KernelModule("volume", cubin_dir, kernel_cache)

    @property
    def stream(self) -> Any:
        """The stream launches and copies are queued on."""
        return self._device.stream if self._device is not None else self._stream

    def alloc(self, nbytes: int) -> Any:
        from edgemed.cuda.device import DeviceBuffer

        return DeviceBuffer(nbytes)

    def address(self, buf: Any) -> int:
        return int(buf.ptr)

    def upload(self, buf: Any, array: np.ndarray) -> None:
        # From pageable memory the copy has left the host array when this returns.
        buf.upload(np.ascontiguousarray(array), self.stream)

    def download(self, buf: Any, out: np.ndarray) -> None:
        buf.download(out, self.stream)
        self.synchronize()

    def synchronize(self) -> None:
        from edgemed.cuda.device import cuda_errors

        with cuda_errors("waiting for the volume kernels"):
            if self.stream is None:
                self._drv.Context.synchronize()
            else:
                self.stream.synchronize()

    def zero(self, buf: Any, nbytes: int) -> None:
        from edgemed.cuda.device import cuda_errors

        with cuda_errors("clearing GPU memory"):
            self._drv.memset_d8_async(buf.ptr, 0, int(nbytes), self.stream)

    def free(self, buf: Any) -> None:
        buf.free()

    def launch(self, kernel: str, geo: Geometry, spec: np.ndarray, **ptrs: int) -> None:
        from edgemed.cuda.device import cuda_errors

        args = [np.uintp(p) for p in self._args(ptrs)]
        with cuda_errors(f"launching {kernel}"):
            # spec[0] is an np.void: pycuda passes its bytes as the by-value struct.
            self._kernels.function(kernel)(
                *args, spec[0], grid=geo.grid, block=geo.block, stream=self.stream
            )


def _free_all(kernels: VolumeKernels, bufs: dict[str, Any]) -> None:
    """Free ``bufs`` once the kernels queued so far are done with them."""
    if not bufs:
        return
    try:
        kernels.synchronize()
    finally:
        for buf in bufs.values():
            kernels.free(buf)


class SlabBlender:
    """One volume's blending and slab decision on a :class:`VolumeKernels`.

    Feed the model's outputs batch after batch (:meth:`add`, in the plan's order); each
    call blends them and finishes the planes the plan says are final. :meth:`mask` returns
    the uint8 mask on the plan's ``out_shape``. Buffers are allocated at the first
    :meth:`add` (when the number of classes is known) and freed by :meth:`close`.

    Args:
        kernels: where to run.
        plan: from :func:`plan_volume`.
        head_spec: the segmentation head's spec (``activation``, ``decision``,
            ``threshold``); the largest component is the caller's (on the CPU).
        probabilities: instead of deciding, keep the activated probabilities on the
            model grid (``(K, Z, Y, X)`` float32, :meth:`probabilities`): for tests and
            for callers that need them. Needs a whole-volume buffer.
    """

    def __init__(
        self,
        kernels: VolumeKernels,
        plan: VolumePlan,
        head_spec: Any,
        probabilities: bool = False,
    ) -> None:
        self.kernels = kernels
        self.plan = plan
        self.activation = ACTIVATIONS[head_spec.activation]
        self.decision = DECISIONS[head_spec.decision]
        self.threshold = np.float32(head_spec.threshold)
        self.keep_probs = probabilities
        self.channels = 0
        self._batch = 0
        self._z0 = 0
        self._bufs: dict[str, Any] = {}
        self._out_cap = 0

    # -- buffers ------------------------------------------------------------------------

    def _allocate(self, k: int) -> None:
        p = self.plan
        if not 1 <= k <= 255:
            raise UsageError(f"a uint8 mask holds at most 255 classes, got {k}")
        self.channels = k
        kern = self.kernels
        _, yp, xp = p.size
        z, y, x = p.shape
        plane = yp * xp
        sizes = {
            "weights": p.weights.nbytes,
            "windows": p.windows.nbytes,
            "acc": 4 * k * p.acc_slots * plane,
            "count": 4 * p.acc_slots * plane,
        }
        if self.keep_probs:
            sizes["probs"] = 4 * k * z * y * x
        else:
            sizes["mask"] = int(np.prod(p.out_shape))
            if not p.identity:
                assert p.taps is not None
                sizes["taps"] = p.taps.nbytes
                sizes["ring"] = 4 * k * p.prob_slots * y * x
        try:
            for name, nbytes in sizes.items():
                self._bufs[name] = kern.alloc(nbytes)
        except BaseException:
            self.close()
            raise
        kern.upload(self._bufs["weights"], p.weights)
        kern.upload(self._bufs["windows"], p.windows)
        if "taps" in self._bufs:
            kern.upload(self._bufs["taps"], p.taps)  # type: ignore[arg-type]
        kern.zero(self._bufs["acc"], sizes["acc"])
        kern.zero(self._bufs["count"], sizes["count"])
        if "mask" in self._bufs:
            kern.zero(self._bufs["mask"], sizes["mask"])

    def _ptr(self, name: str) -> int:
        return self.kernels.address(self._bufs[name])

    def _staging(self, nbytes: int) -> int:
        """A buffer for outputs handed over from the host, grown to ``nbytes``."""
        if nbytes > self._out_cap:
            old = self._bufs.pop("outputs", None)
            if old is not None:
                self.kernels.free(old)
            self._bufs["outputs"] = self.kernels.alloc(nbytes)
            self._out_cap = nbytes
        return self._ptr("outputs")

    # -- the steps ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once every batch of the plan was added."""
        return self._batch >= len(self.plan.batches)

    def add(self, outputs: np.ndarray | DeviceArray) -> None:
        """Blend the next batch's outputs ``(N, K, D, H, W)`` and finish the planes that
        are then final.

        Raises:
            BundleError: the outputs are not one ROI per window of the batch.
            UsageError: every batch was added already, or an unsupported dtype.
        """
        p = self.plan
        if self.done:
            raise UsageError("every batch of the plan was blended already")
        first, stop = p.batches[self._batch]
        shape = tuple(int(n) for n in outputs.shape)
        if len(shape) != 5 or shape[0] != stop - first or shape[2:] != p.roi:
            raise BundleError(
                f"the model returned {shape} for {stop - first} windows of {p.roi}: "
                "sliding-window inference needs one output of the ROI's size per window"
            )
        dtype = np.dtype(outputs.dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise UsageError(
                f"model outputs of type {dtype} have no blending kernel",
                code="USAGE_GPU_UNSUPPORTED",
            )
        if self.channels == 0:
            self._allocate(shape[1])
        elif shape[1] != self.channels:
            raise BundleError(f"the model returned {shape[1]} channels, then {self.channels}")
        if isinstance(outputs, DeviceArray):
            src = int(outputs.ptr)
        else:
            host = np.ascontiguousarray(outputs)
            src = self._staging(host.nbytes)
            self.kernels.upload(self._bufs["outputs"], host)
        self._blend(src, dtype, first, stop)
        self._batch += 1
        self._finish(p.emits[self._batch - 1])

    def _blend(self, src: int, dtype: np.dtype, first: int, stop: int) -> None:
        p = self.plan
        w = p.windows[first:stop]
        lo = [int(w[a].min()) for a in ("z", "y", "x")]
        hi = [int(w[a].max()) + r for a, r in zip(("z", "y", "x"), p.roi, strict=True)]
        spec = vol_spec(
            channels=self.channels, roi_d=p.roi[0], roi_h=p.roi[1], roi_w=p.roi[2],
            first_window=first, n_windows=stop - first,
            plane0=lo[0], row0=lo[1], col0=lo[2],
            planes=hi[0] - lo[0], rows=hi[1] - lo[1], cols=hi[2] - lo[2],
            acc_slots=p.acc_slots, acc_h=p.size[1], acc_w=p.size[2],
        )  # fmt: skip
        self.kernels.launch(
            "em_vol_blend_f16" if dtype == np.float16 else "em_vol_blend_f32",
            geometry(hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]),
            spec,
            src=src,
            weights=self._ptr("weights"),
            windows=self._ptr("windows"),
            acc=self._ptr("acc"),
            count=self._ptr("count"),
        )

    def _finish(self, upto: int) -> None:
        p = self.plan
        if upto <= self._z0:
            return
        z, y, x = p.shape
        cz, cy, cx = p.crop
        common = dict(
            channels=self.channels, activation=self.activation, decision=self.decision,
            threshold=self.threshold, plane0=self._z0, acc_slots=p.acc_slots,
            acc_h=p.size[1], acc_w=p.size[2], crop_z=cz, crop_y=cy, crop_x=cx, out_z=z,
            dst_base=0, dst_h=y, dst_w=x,
        )  # fmt: skip
        geo = geometry(p.size[2], p.size[1], upto - self._z0)
        acc = {"acc": self._ptr("acc"), "count": self._ptr("count")}
        if self.keep_probs:
            spec = vol_spec(**common, dst_slots=z)
            self.kernels.launch("em_vol_finish_probs", geo, spec, dst=self._ptr("probs"), **acc)
        elif p.identity:
            spec = vol_spec(**common, dst_slots=z)
            self.kernels.launch("em_vol_finish_labels", geo, spec, dst=self._ptr("mask"), **acc)
        else:
            spec = vol_spec(**common, dst_slots=p.prob_slots)
            self.kernels.launch("em_vol_finish_probs", geo, spec, dst=self._ptr("ring"), **acc)
            s0, s1 = p.source_ready[self._batch - 1]
            if s1 > s0:
                self._decide_source(s0, s1)
        self._z0 = upto

    def _decide_source(self, s0: int, s1: int) -> None:
        p = self.plan
        _, y, x = p.shape
        zs, ys, xs = p.out_shape
        tx, ty, tz = p.tap_at
        spec = vol_spec(
            channels=self.channels, decision=self.decision, threshold=self.threshold,
            plane0=s0, src_base=0, src_slots=p.prob_slots, src_h=y, src_w=x,
            dst_base=0, dst_slots=zs, dst_h=ys, dst_w=xs, tap_x=tx, tap_y=ty, tap_z=tz,
        )  # fmt: skip
        self.kernels.launch(
            "em_vol_resample_decide",
            geometry(xs, ys, s1 - s0),
            spec,
            src=self._ptr("ring"),
            taps=self._ptr("taps"),
            dst=self._ptr("mask"),
        )

    def mask(self) -> np.ndarray:
        """The uint8 mask on ``out_shape`` (every batch added)."""
        if not self.done or "mask" not in self._bufs:
            raise UsageError("the mask is ready once every batch was blended (and decided)")
        out = np.empty(self.plan.out_shape, dtype=np.uint8)
        self.kernels.download(self._bufs["mask"], out)
        return out

    def probabilities(self) -> np.ndarray:
        """The activated ``(K, Z, Y, X)`` float32 outputs on the model grid (with
        ``probabilities=True``)."""
        if not self.done or "probs" not in self._bufs:
            raise UsageError("probabilities need probabilities=True and every batch blended")
        out = np.empty((self.channels, *self.plan.shape), dtype=np.float32)
        self.kernels.download(self._bufs["probs"], out)
        return out

    def close(self) -> None:
        """Free the buffers now (inside the CUDA context they were made in). Idempotent."""
        bufs, self._bufs = self._bufs, {}
        self._out_cap = 0
        _free_all(self.kernels, bufs)

    def __enter__(self) -> SlabBlender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VolumeWindows:
    """A model-space volume held in the kernels' memory and cut into windows there
    (``em_vol_gather``): uploaded once, each batch written straight into an engine's
    input buffer, padding applied on the fly (no padded copy).

    Args:
        kernels: where to run.
        prepared: the ``(C, Z, Y, X)`` float32 volume (host; uploaded here), or a
            :class:`DeviceArray` already in the kernels' memory (e.g. resampled there).
        plan: from :func:`plan_volume` for this volume.
        window: the sliding-window block (its padding mode and value).
    """

    def __init__(
        self,
        kernels: VolumeKernels,
        prepared: np.ndarray | DeviceArray,
        plan: VolumePlan,
        window: SlidingWindow,
    ) -> None:
        shape = tuple(int(n) for n in prepared.shape)
        if len(shape) != 4 or shape[1:] != plan.shape:
            raise UsageError(f"a (C, {plan.shape}) volume is needed, got {shape}")
        if np.dtype(prepared.dtype) != np.float32:
            raise UsageError(f"windows are cut from float32 volumes, not {prepared.dtype}")
        self.kernels = kernels
        self.plan = plan
        self.channels = shape[0]
        self.pad_mode = PAD_MODES[window.padding_mode]
        self.cval = np.float32(window.cval)
        self._bufs: dict[str, Any] = {}
        try:
            self._bufs["windows"] = kernels.alloc(plan.windows.nbytes)
            kernels.upload(self._bufs["windows"], plan.windows)
            if isinstance(prepared, DeviceArray):
                self._src = int(prepared.ptr)
            else:
                host = np.ascontiguousarray(prepared)
                self._bufs["volume"] = kernels.alloc(host.nbytes)
                kernels.upload(self._bufs["volume"], host)
                self._src = kernels.address(self._bufs["volume"])
        except BaseException:
            self.close()
            raise

    def batch_shape(self, first: int, stop: int) -> tuple[int, ...]:
        """``(N, C, D, H, W)`` of windows ``[first, stop)``."""
        return (stop - first, self.channels, *self.plan.roi)

    def cut(self, first: int, stop: int, dst: int, dtype: Any = np.float32) -> None:
        """Write windows ``[first, stop)`` of the plan at address ``dst`` as
        ``(N, C, D, H, W)`` float32 or float16 (rounded to nearest even)."""
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise UsageError(f"windows of type {dt} have no kernel", code="USAGE_GPU_UNSUPPORTED")
        if not 0 <= first < stop <= len(self.plan.windows):
            raise UsageError(f"no windows [{first}, {stop}) in a plan of {len(self.plan.windows)}")
        p = self.plan
        (cz, cy, cx), (z, y, x) = p.crop, p.shape
        spec = vol_spec(
            channels=self.channels, roi_d=p.roi[0], roi_h=p.roi[1], roi_w=p.roi[2],
            first_window=first, n_windows=stop - first, src_slots=z, src_h=y, src_w=x,
            crop_z=cz, crop_y=cy, crop_x=cx, pad_mode=self.pad_mode, cval=self.cval,
            out_half=int(dt == np.float16),
        )  # fmt: skip
        self.kernels.launch(
            "em_vol_gather",
            geometry(p.roi[2], p.roi[1], (stop - first) * p.roi[0]),
            spec,
            src=self._src,
            windows=self.kernels.address(self._bufs["windows"]),
            dst=int(dst),
        )

    def close(self) -> None:
        """Free the uploaded volume and window table now. Idempotent."""
        bufs, self._bufs = self._bufs, {}
        _free_all(self.kernels, bufs)

    def __enter__(self) -> VolumeWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _largest_components(mask: np.ndarray, head_spec: Any, labels: Sequence[str]) -> np.ndarray:
    # The CPU path's own filter (26-connected, scipy): connected components need the
    # whole mask, so they stay on the CPU after the mask came back.
    if head_spec.largest_component:
        from edgemed.volume import keep_largest_component_3d

        for name in head_spec.largest_component:
            if name in labels:
                keep_largest_component_3d(mask, list(labels).index(name))
    return mask


def _check_volume(prepared: np.ndarray | DeviceArray) -> tuple[int, ...]:
    shape = tuple(int(n) for n in prepared.shape)
    if len(shape) != 4:
        raise BundleError(f"a 3D model takes a (C, Z, Y, X) volume, got {shape}")
    return shape


def segment_volume_cuda(
    prepared: np.ndarray,
    predictor: Predictor,
    vol: Any,
    head_spec: Any,
    out_shape: Sequence[int],
    labels: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    *,
    kernels: VolumeKernels,
) -> np.ndarray:
    """:func:`edgemed.volume.segment_volume` with the blending, activation, resampling
    back and decision in the CUDA kernels (``kernels``: on the GPU, or the host build).

    The windows are cut on the host (as the CPU path) and handed to ``predictor``; its
    outputs go to the kernels batch by batch; only the mask comes back. Same arguments
    and result as the CPU path (``vol`` is an :class:`edgemed.volume.VolumeSpec`).
    """
    window: SlidingWindow = vol.window
    prepared = np.asarray(prepared)
    plan = plan_volume(_check_volume(prepared)[1:], window, out_shape)
    padded = pad_volume(prepared, plan, window)
    total = len(plan.windows)
    with SlabBlender(kernels, plan, head_spec) as blender:
        for first, stop in plan.batches:
            starts = plan.windows[first:stop]
            batch = np.stack(
                [
                    padded[
                        :,
                        int(s["z"]) : int(s["z"]) + plan.roi[0],
                        int(s["y"]) : int(s["y"]) + plan.roi[1],
                        int(s["x"]) : int(s["x"]) + plan.roi[2],
                    ]
                    for s in starts
                ]
            ).astype(np.float32, copy=False)
            blender.add(np.asarray(predictor(batch)))
            if progress is not None:
                progress(stop, total)
        mask = blender.mask()
    return _largest_components(mask, head_spec, labels)


class DeviceEngine(Protocol):
    """A model whose input and output live in the kernels' memory (an engine with
    device I/O): :meth:`input` says where a batch of windows goes, :meth:`run` runs the
    model on what is there and returns its outputs."""

    def input(self, shape: tuple[int, ...]) -> tuple[int, Any]:
        """Set the batch shape ``(N, C, D, H, W)``; the address and dtype (float32 or
        float16) where the windows go."""
        ...

    def run(self) -> DeviceArray | np.ndarray:
        """Run on the input (queued after the cut, same stream); the ``(N, K, D, H, W)``
        outputs where the model left them, or on the host."""
        ...


def check_engine_io(input_dtype: Any, output_dtype: Any) -> None:
    """Raise ``UsageError`` (``USAGE_GPU_UNSUPPORTED``) unless an engine with this input
    and output type can run through :func:`segment_volume_device`: windows are cut as
    float32 or float16, outputs blended from float32 or float16.

    Args:
        input_dtype: the model input's type.
        output_dtype: the decoded output's type (``None``: the model has no such output).
    """
    kinds = (np.dtype(np.float32), np.dtype(np.float16))
    if np.dtype(input_dtype) not in kinds:
        raise UsageError(
            f"the volume kernels cut windows as float32 or float16, not {np.dtype(input_dtype)}",
            code="USAGE_GPU_UNSUPPORTED",
        )
    if output_dtype is None or np.dtype(output_dtype) not in kinds:
        raise UsageError(
            f"the volume kernels blend float32 or float16 outputs, not {output_dtype}",
            code="USAGE_GPU_UNSUPPORTED",
        )


class BackendEngine:
    """:class:`DeviceEngine` over a backend with device I/O (the TensorRT backend's
    ``device_input`` / ``infer_device`` / ``device_output``): the windows are cut into
    the engine's input buffer and its outputs blended where it wrote them, on its stream.

    Args:
        backend: a backend with ``device_io`` (its ``inputs[0]`` is the volume input).
        output: the output the head decodes (default: the backend's first output).
        batch: an engine built for exactly this batch: a smaller last batch runs a whole
            one (the rows after the windows hold whatever the input buffer held; their
            outputs are never read).
    """

    def __init__(self, backend: Any, output: str | None = None, batch: int | None = None) -> None:
        self.backend = backend
        self.input_name = backend.inputs[0].name
        self.output_name = output or backend.outputs[0].name
        self.batch = batch
        self._n = 0

    def input(self, shape: tuple[int, ...]) -> tuple[int, Any]:
        self._n = int(shape[0])
        if self.batch is not None and self._n < self.batch:
            shape = (self.batch, *shape[1:])
        ptr, _, dtype = self.backend.device_input(self.input_name, tuple(shape))
        return int(ptr), np.dtype(dtype)

    def run(self) -> DeviceArray:
        self.backend.infer_device(fetch=())  # the outputs stay on the GPU, nothing waits
        ptr, shape, dtype = self.backend.device_output(self.output_name)
        # The first n rows of a C-order batch start where it starts.
        rows = (min(self._n, int(shape[0])) if self._n else int(shape[0]), *shape[1:])
        return DeviceArray(int(ptr), tuple(int(n) for n in rows), np.dtype(dtype))


def segment_volume_device(
    prepared: np.ndarray | DeviceArray,
    engine: DeviceEngine,
    vol: Any,
    head_spec: Any,
    out_shape: Sequence[int],
    labels: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    *,
    kernels: VolumeKernels,
) -> np.ndarray:
    """:func:`segment_volume_cuda` with the volume in the kernels' memory too: each batch
    of windows is cut by ``em_vol_gather`` straight into ``engine``'s input, the engine
    runs, and its outputs are blended where it left them. Nothing but the mask comes
    back. ``kernels`` must queue on the engine's stream (e.g. ``CudaVolumeKernels(
    device=backend.gpu)`` inside ``backend.gpu.active()``), so each step runs in order
    without waiting on the host.
    """
    window: SlidingWindow = vol.window
    shape = _check_volume(prepared)
    plan = plan_volume(shape[1:], window, out_shape)
    total = len(plan.windows)
    with (
        VolumeWindows(kernels, prepared, plan, window) as cutter,
        SlabBlender(kernels, plan, head_spec) as blender,
    ):
        for first, stop in plan.batches:
            ptr, dtype = engine.input(cutter.batch_shape(first, stop))
            cutter.cut(first, stop, ptr, dtype)
            blender.add(engine.run())
            if progress is not None:
                progress(stop, total)
        mask = blender.mask()
    return _largest_components(mask, head_spec, labels)
