"""The pycuda launchers of the CUDA preprocessing and segmentation kernels.

The kernels live in ``edgemed/cuda/kernels/*.cu``; their parameter blocks and
launch geometry come from :mod:`edgemed.cuda.packing`, their cubins from
:mod:`edgemed.cuda.build`. This module holds :class:`CudaPreprocessor` /
:class:`CudaSegmentPostprocessor`: a reused pinned staging buffer, one H2D copy, one
launch per batch; the caller makes a CUDA context current, this module never uses
``pycuda.autoinit``. The kernels are loaded from a stored cubin for this GPU when there
is one, else compiled at first use by pycuda's SourceModule
(:func:`default_kernel_cache`).

pycuda is imported lazily (:func:`edgemed._lazy.require`): ``import edgemed`` works
without it.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed._lazy import require
from edgemed.cuda.build import KERNEL_DIR, NVCC_OPTIONS, kernel_sources
from edgemed.cuda.device import DeviceBuffer, PinnedBuffer, cuda_errors
from edgemed.cuda.packing import (
    POST_SLICE_DTYPE,
    POST_SPEC_DTYPE,
    PRE_SLICE_DTYPE,
    PRE_SPEC_DTYPE,
    TAP_DTYPE,
    PreprocessLaunch,
    SegmentLaunch,
    check_preprocess_spec,
    largest_components,
    pack_preprocess,
    pack_raw,
    pack_segment,
    split_masks,
)
from edgemed.errors import BackendError, UsageError
from edgemed.fsutil import check_private
from edgemed.preprocess.cpu import Placement
from edgemed.preprocess.spec import PreprocessSpec

if TYPE_CHECKING:
    from edgemed.heads.segmentation import SegmentationSpec

__all__ = [
    "default_kernel_cache",
    "kernels_unavailable",
    "CudaPreprocessor",
    "CudaSegmentPostprocessor",
]

_ALIGN = 256  # offsets inside the staging buffer: device allocations are 256-aligned


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _taps_offset(spec_dtype: np.dtype, slice_dtype: np.dtype, max_batch: int) -> int:
    """Where the taps start in a parameter block: after one spec record and
    ``max_batch`` slice records."""
    return spec_dtype.itemsize + slice_dtype.itemsize * max_batch


def _driver() -> Any:
    return require("pycuda.driver", "gpu", purpose="the CUDA preprocessing kernels")


def _synchronize(stream: Any) -> None:
    """Wait for ``stream``, or for the whole current context when it is ``None``."""
    if stream is None:
        _driver().Context.synchronize()
    else:
        stream.synchronize()


def default_kernel_cache() -> Path:
    """Where SourceModule keeps compiled kernels: ``~/.cache/edgemed/kernels``.

    (No environment variable is read here: edgemed reads them in :mod:`edgemed.settings`
    only; callers that want another place pass ``kernel_cache``.)
    """
    return Path.home() / ".cache" / "edgemed" / "kernels"


def kernels_unavailable(cubin_dir: str | os.PathLike[str] | None, arch: str) -> str:
    """Why the kernels cannot be loaded for ``arch`` (``sm_87``) here; ``""`` if they can.

    They load from cubins that ``edgemed build`` stored for this architecture, or are
    compiled by pycuda, which needs nvcc. A device image often has neither compiler nor
    cubins (engines built elsewhere): say so before any work is queued.
    """
    if cubin_dir is not None and all(
        (Path(cubin_dir) / f"{src.stem}.{arch}.cubin").is_file() for src in kernel_sources()
    ):
        return ""
    if shutil.which("nvcc") is not None:
        return ""
    where = f" in {cubin_dir}" if cubin_dir is not None else ""
    return (
        f"no CUDA kernel cubins for {arch}{where} and no nvcc on PATH to compile them "
        "(run `edgemed build` where nvcc is, or preprocess on the CPU)"
    )


def _load_module(
    stem: str,
    cubin_dir: str | os.PathLike[str] | None,
    kernel_cache: str | os.PathLike[str] | None,
) -> Any:
    """The compiled ``<stem>.cu``: a stored cubin for this GPU when ``cubin_dir`` has
    one, else pycuda's SourceModule (nvcc at first use, cached under ~/.cache)."""
    cuda = _driver()
    major, minor = cuda.Context.get_device().compute_capability()
    arch = f"sm_{major}{minor}"
    if cubin_dir is not None:
        cubin = Path(cubin_dir) / f"{stem}.{arch}.cubin"
        if cubin.exists():
            # GPU code from a file: trusted as the engines beside it are, by who can
            # write it (the engine cache above is checked when its engine loads).
            check_private(cubin.parent, cubin, what="a CUDA cubin")
            return cuda.module_from_file(str(cubin))
    missing = kernels_unavailable(cubin_dir, arch)
    if missing:
        raise BackendError(missing, code="GPU_TOOLCHAIN")
    compiler = require("pycuda.compiler", "gpu", purpose="compiling the CUDA kernels")
    source = (KERNEL_DIR / f"{stem}.cu").read_text()
    cache = Path(kernel_cache) if kernel_cache is not None else default_kernel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    # no_extern_c: the sources declare their entry points extern "C" themselves (they
    # also use templates, which an extern "C" wrapper would reject).
    try:
        return compiler.SourceModule(
            source,
            no_extern_c=True,
            include_dirs=[str(KERNEL_DIR)],
            cache_dir=str(cache),
            options=list(NVCC_OPTIONS),  # as edgemed build's cubins: no FMA contraction
        )
    except cuda.CompileError as exc:  # a broken toolchain, not a broken GPU context
        raise BackendError(f"compiling {stem}.cu: {exc}", code="GPU_KERNEL_BUILD") from exc
    except OSError as exc:  # nvcc could not be run at all (pytools' ExecError)
        raise BackendError(f"compiling {stem}.cu: {exc}", code="GPU_TOOLCHAIN") from exc


class _Staging:
    """A pinned host buffer and a device buffer of the same size, reused across runs.

    ``ready`` is an event recorded after the last H2D copy from the pinned buffer: the
    next run waits on it before overwriting the memory that copy may still be reading.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.pinned = PinnedBuffer((nbytes,), np.uint8)
        self.host = self.pinned.array
        self.device = DeviceBuffer(nbytes)
        self.ready = _driver().Event()
        self.ready.record()

    @property
    def ptr(self) -> int:
        return self.device.ptr

    def put_params(
        self, spec: np.ndarray, slices: np.ndarray, taps: np.ndarray, taps_at: int
    ) -> int:
        """Write a launch's parameter blocks into the pinned buffer: its spec record and
        its slice records at the start, its taps at ``taps_at``. Returns the bytes up to
        the end of the taps (what the H2D copy must carry)."""
        if taps.dtype != TAP_DTYPE:  # a packed copy would shift every record the kernel reads
            raise BackendError(f"taps of layout {taps.dtype}, not {TAP_DTYPE}", code="GPU_FATAL")
        head = spec.nbytes
        if head + slices.nbytes > taps_at or taps_at + taps.nbytes > self.nbytes:
            raise BackendError("kernel parameters exceed their staging buffer", code="GPU_FATAL")
        self.host[:head] = spec.view(np.uint8)
        self.host[head : head + slices.nbytes] = slices.view(np.uint8)
        self.host[taps_at : taps_at + taps.nbytes] = taps.view(np.uint8)
        return taps_at + taps.nbytes

    def free(self) -> None:
        """Free both buffers now (inside the context they were made in)."""
        self.device.free()
        self.pinned.free()


class _Capacity:
    """The most slices one launch takes and the most pixels of one slice.

    ``pixels`` is the constructor argument's name and ``item`` what one slice is, for
    the messages of the :class:`UsageError` raised when a limit is not positive (here)
    or a batch exceeds one (:meth:`check`).
    """

    def __init__(self, max_batch: int, max_pixels: int, pixels: str, item: str) -> None:
        if max_batch < 1 or max_pixels < 1:
            raise UsageError(f"max_batch and {pixels} must be positive")
        self.max_batch = int(max_batch)
        self.max_pixels = int(max_pixels)
        self.pixels = pixels
        self.item = item

    def check(self, count: int, largest: int) -> None:
        """Refuse ``count`` slices whose largest has ``largest`` pixels if they do not fit."""
        if count > self.max_batch:
            raise UsageError(f"{count} slices exceed max_batch={self.max_batch}")
        if largest > self.max_pixels:
            raise UsageError(f"a {self.item} exceeds {self.pixels}={self.max_pixels}")


class _KernelModule:
    """One compiled ``.cu`` file (:func:`_load_module`) and its entry points, each
    looked up once."""

    def __init__(
        self,
        stem: str,
        cubin_dir: str | os.PathLike[str] | None,
        kernel_cache: str | os.PathLike[str] | None,
    ) -> None:
        self._module = _load_module(stem, cubin_dir, kernel_cache)
        self._functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        """The entry point ``name`` (a ``pycuda.driver.Function``)."""
        if name not in self._functions:
            with cuda_errors(f"loading kernel {name}"):
                self._functions[name] = self._module.get_function(name)
        return self._functions[name]


class CudaPreprocessor:
    """Raw stored pixels on the host -> the engine's input buffer on the GPU.

    Args:
        spec: the bundle's spec; refused with ``USAGE_GPU_UNSUPPORTED`` when the kernel
            cannot honour it (RGB, edge channel).
        max_batch: most slices one :meth:`run` takes.
        max_source_pixels: most raw pixels of one slice (``h * w``).
        cubin_dir: a folder from :func:`edgemed.cuda.build.build_cubin`; used when it
            holds cubins for this GPU's architecture, else the sources are compiled with
            SourceModule.
        coord32: see :func:`edgemed.cuda.packing.pack_preprocess`.
        kernel_cache: SourceModule's cache folder (default :func:`default_kernel_cache`).

    A CUDA context must be current (the caller's; never ``pycuda.autoinit``).
    """

    def __init__(
        self,
        spec: PreprocessSpec,
        max_batch: int,
        max_source_pixels: int,
        cubin_dir: str | os.PathLike[str] | None = None,
        coord32: bool | None = None,
        kernel_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        check_preprocess_spec(spec)
        self._capacity = _Capacity(max_batch, max_source_pixels, "max_source_pixels", "slice")
        self.spec = spec
        self.max_batch = self._capacity.max_batch
        self.max_source_pixels = self._capacity.max_pixels
        self.coord32 = coord32
        self._taps_at = _taps_offset(PRE_SPEC_DTYPE, PRE_SLICE_DTYPE, self.max_batch)
        # A slice's box fits the model input: at most W column and H row taps per slice.
        taps_bytes = TAP_DTYPE.itemsize * self.max_batch * (spec.width + spec.height)
        self._params_bytes = _round_up(self._taps_at + taps_bytes)
        raw_bytes = 4 * self.max_batch * self.max_source_pixels  # widest raw type: 4 bytes
        # zscore: float64 sums (2 per slice and channel), then the float32 offset and
        # scale em_zstats pass 2 derives from them.
        pairs = self.max_batch * len(spec.ranges)
        self._scale_at = 8 * 2 * pairs
        _driver()  # MissingDependencyError (naming the extra) before any allocation
        self._staging: _Staging | None = None
        self._stats: DeviceBuffer | None = None
        with cuda_errors("allocating preprocessing buffers"):
            self._kernels = _KernelModule("preprocess", cubin_dir, kernel_cache)
            try:
                self._staging = _Staging(self._params_bytes + raw_bytes)
                self._stats = DeviceBuffer(self._scale_at + 4 * 2 * pairs)
            except BaseException:
                self.close()  # what was allocated before the failure
                raise

    def run(
        self,
        raw_slices: Sequence[np.ndarray],
        slopes: Sequence[float] | None,
        intercepts: Sequence[float] | None,
        dst_ptr: int,
        stream: Any = None,
    ) -> list[Placement]:
        """Upload ``raw_slices`` and write the ``(N, C, H, W)`` input at ``dst_ptr``.

        Asynchronous on ``stream`` (a ``pycuda.driver.Stream``): the output is ready when
        the stream reaches this point. Slices must share one raw type (int16, uint16,
        uint8 or float32); sizes may differ. Same as :meth:`upload` then :meth:`launch`.

        Returns:
            Per slice, where it landed (as the CPU path's placements).
        """
        launch = self.upload(raw_slices, slopes, intercepts, stream)
        self.launch(launch, dst_ptr, stream)
        return launch.placements

    def upload(
        self,
        raw_slices: Sequence[np.ndarray],
        slopes: Sequence[float] | None,
        intercepts: Sequence[float] | None,
        stream: Any = None,
    ) -> PreprocessLaunch:
        """Pack parameters and pixels into the pinned buffer and queue one H2D copy."""
        dtype, shapes = pack_raw(raw_slices)
        self._capacity.check(len(shapes), max(h * w for h, w in shapes))
        launch = pack_preprocess(self.spec, shapes, dtype, slopes, intercepts, self.coord32)
        cuda = _driver()
        st = self._open_staging()
        raw_off = self._params_bytes
        raw_bytes = launch.raw_elements * dtype.itemsize
        with cuda_errors("uploading slices to the GPU"):
            st.ready.synchronize()  # the previous copy may still read the pinned buffer
            st.put_params(launch.spec, launch.slices, launch.taps, self._taps_at)
            host = st.host
            view = host[raw_off : raw_off + raw_bytes].view(dtype)
            pos = 0
            for s in raw_slices:
                view[pos : pos + s.size] = np.asarray(s).ravel()
                pos += s.size
            cuda.memcpy_htod_async(st.ptr, host[: raw_off + raw_bytes], stream)
            st.ready.record(stream)
        return launch

    def launch(self, launch: PreprocessLaunch, dst_ptr: int, stream: Any = None) -> None:
        """Queue the kernels for the batch :meth:`upload` staged last (same stream)."""
        cuda = _driver()
        st = self._open_staging()
        assert self._stats is not None
        args = (
            np.uintp(st.ptr + self._params_bytes),  # raw pixels
            np.uintp(st.ptr + PRE_SPEC_DTYPE.itemsize),  # slice parameters
            np.uintp(st.ptr),  # launch parameters
            np.uintp(st.ptr + self._taps_at),  # bilinear taps
            np.uintp(self._stats.ptr),  # zscore sums (float64)
            np.uintp(self._stats.ptr + self._scale_at),  # zscore offset and scale (float32)
            np.uintp(int(dst_ptr)),
        )
        with cuda_errors("preprocessing on the GPU"):
            if launch.zstats_kernel is not None:
                # Statistics first (two passes, then pass 2 turns them into the offset
                # and scale), then the main kernel reads them: the launches are ordered
                # on one stream, so no host synchronisation.
                cuda.memset_d8_async(self._stats.ptr, 0, 8 * launch.stats_count, stream)
                zfn = self._kernels.function(launch.zstats_kernel)
                for stage, geo in (
                    (0, launch.zstats_geometry),
                    (1, launch.zstats_geometry),
                    (2, launch.zscale_geometry),
                ):
                    zfn(*args, np.int32(stage), grid=geo.grid, block=geo.block, stream=stream)
            geo = launch.geometry
            self._kernels.function(launch.kernel)(
                *args, np.int32(0), grid=geo.grid, block=geo.block, stream=stream
            )

    def _open_staging(self) -> _Staging:
        if self._staging is None:
            raise BackendError("the CUDA preprocessor is closed", code="BACKEND_CLOSED")
        return self._staging

    def close(self) -> None:
        """Free the staging and statistics buffers now; call it inside the CUDA context
        they were allocated in, before that context is released (a free after
        ``detach()`` is silently skipped by pycuda: a leak). Idempotent."""
        staging, stats = self._staging, self._stats
        self._staging = self._stats = None
        with cuda_errors("freeing preprocessing buffers"):
            if staging is not None:
                staging.free()
            if stats is not None:
                stats.free()


class CudaSegmentPostprocessor:
    """The engine's logits on the GPU -> uint8 masks on the host (only masks cross).

    Args:
        post: the bundle's postprocess spec (activation, decision, threshold,
            largest_component: the last runs on the CPU after the copy back).
        labels: the bundle's label names (for largest_component).
        max_batch: most slices one :meth:`run` takes.
        max_mask_pixels: most pixels of one source slice (``h * w``).
        cubin_dir, coord32, kernel_cache: as :class:`CudaPreprocessor`.
    """

    def __init__(
        self,
        post: SegmentationSpec,
        labels: Sequence[str],
        max_batch: int,
        max_mask_pixels: int,
        cubin_dir: str | os.PathLike[str] | None = None,
        coord32: bool | None = None,
        kernel_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        self._capacity = _Capacity(max_batch, max_mask_pixels, "max_mask_pixels", "mask")
        self.post = post
        self.labels = list(labels)
        self.max_batch = self._capacity.max_batch
        self.max_mask_pixels = self._capacity.max_pixels
        self.coord32 = coord32
        self._taps_at = _taps_offset(POST_SPEC_DTYPE, POST_SLICE_DTYPE, self.max_batch)
        # Taps: one per mask column and row. Room for square-ish masks up front; a batch of
        # long thin ones grows the block (launch()).
        side = math.isqrt(self.max_mask_pixels) + 1
        taps_bytes = TAP_DTYPE.itemsize * self.max_batch * 2 * side
        _driver()  # MissingDependencyError (naming the extra) before any allocation
        self._params: _Staging | None = None
        self._masks_host: PinnedBuffer | None = None
        self._masks_dev: DeviceBuffer | None = None
        with cuda_errors("allocating postprocessing buffers"):
            self._kernels = _KernelModule("postprocess", cubin_dir, kernel_cache)
            try:
                self._params = _Staging(_round_up(self._taps_at + taps_bytes))
                nbytes = self.max_batch * self.max_mask_pixels
                self._masks_host = PinnedBuffer((nbytes,), np.uint8)
                self._masks_dev = DeviceBuffer(nbytes)
            except BaseException:
                self.close()  # what was allocated before the failure
                raise

    def run(
        self,
        logits_ptr: int,
        logits_shape: Sequence[int],
        placements: Sequence[Placement],
        stream: Any = None,
        logits_dtype: np.dtype | type = np.float32,
    ) -> list[np.ndarray]:
        """Masks for ``(N, C, H, W)`` logits at ``logits_ptr`` (float32 or float16).

        Synchronises ``stream`` (the masks are needed on the host). Returns one uint8
        ``(h, w)`` mask per placement, as :func:`edgemed.postprocess.segment`. Same as
        :meth:`launch` then :meth:`fetch`.
        """
        launch = self.launch(logits_ptr, logits_shape, placements, stream, logits_dtype)
        return self.fetch(launch, stream)

    def launch(
        self,
        logits_ptr: int,
        logits_shape: Sequence[int],
        placements: Sequence[Placement],
        stream: Any = None,
        logits_dtype: np.dtype | type = np.float32,
    ) -> SegmentLaunch:
        """Queue the parameter upload and the kernel (nothing is waited for)."""
        launch = pack_segment(self.post, logits_shape, placements, logits_dtype, self.coord32)
        self._capacity.check(len(placements), max(h * w for h, w in launch.shapes))
        cuda = _driver()
        st = self._params_for(self._taps_at + launch.taps.nbytes, stream)
        assert self._masks_dev is not None
        with cuda_errors("postprocessing on the GPU"):
            st.ready.synchronize()
            nbytes = st.put_params(launch.spec, launch.slices, launch.taps, self._taps_at)
            cuda.memcpy_htod_async(st.ptr, st.host[:nbytes], stream)
            st.ready.record(stream)
            geo = launch.geometry
            self._kernels.function(launch.kernel)(
                np.uintp(int(logits_ptr)),
                np.uintp(st.ptr + POST_SPEC_DTYPE.itemsize),
                np.uintp(st.ptr),
                np.uintp(st.ptr + self._taps_at),
                np.uintp(self._masks_dev.ptr),
                grid=geo.grid,
                block=geo.block,
                stream=stream,
            )
        return launch

    def _params_for(self, nbytes: int, stream: Any) -> _Staging:
        """The parameter staging, grown (geometrically) when a launch needs ``nbytes``."""
        if self._params is None:
            raise BackendError("the CUDA postprocessor is closed", code="BACKEND_CLOSED")
        if nbytes <= self._params.nbytes:
            return self._params
        with cuda_errors("growing postprocessing buffers"):
            _synchronize(stream)  # kernels queued earlier may still read the old block
            old, self._params = self._params, None
            old.free()
            self._params = _Staging(_round_up(max(nbytes, 2 * old.nbytes)))
        return self._params

    def close(self) -> None:
        """Free every buffer now, inside the CUDA context they were allocated in (see
        :meth:`CudaPreprocessor.close`). Idempotent."""
        params, host, dev = self._params, self._masks_host, self._masks_dev
        self._params = self._masks_host = self._masks_dev = None
        with cuda_errors("freeing postprocessing buffers"):
            if params is not None:
                params.free()
            if host is not None:
                host.free()
            if dev is not None:
                dev.free()

    def fetch(self, launch: SegmentLaunch, stream: Any = None) -> list[np.ndarray]:
        """Copy the masks of :meth:`launch` back, wait, and split them per slice (then
        largest-component filtering on the CPU where the spec asks for it)."""
        cuda = _driver()
        if self._masks_host is None or self._masks_dev is None:
            raise BackendError("the CUDA postprocessor is closed", code="BACKEND_CLOSED")
        with cuda_errors("copying masks from the GPU"):
            host = self._masks_host.array[: launch.mask_bytes]
            cuda.memcpy_dtoh_async(host, self._masks_dev.ptr, stream)
            _synchronize(stream)
        return largest_components(split_masks(host, launch), self.post, self.labels)
