"""Launchers for the CUDA preprocessing and segmentation kernels.

The kernels live in ``edgemed/preprocess/kernels/*.cu`` (their header comments state the
arithmetic; it is :mod:`edgemed.preprocess.cpu`'s, step by step). This module:

* packs the per-launch and per-slice parameter blocks (NumPy structured arrays laid out
  as the C structs in ``edgemed_kernels.h``) and chooses the launch geometry: pure NumPy,
  shared by the GPU launchers and the host build, so tests exercise the very packing the
  GPU uses;
* :class:`CudaPreprocessor` / :class:`CudaSegmentPostprocessor`: the pycuda launchers
  (a reused pinned staging buffer, one H2D copy, one launch per batch; the caller makes a
  CUDA context current, this module never uses ``pycuda.autoinit``);
* :func:`build_cubin` (nvcc, for ``edgemed build``) and :func:`build_host_library` /
  :class:`HostKernels`: the same ``.cu`` files compiled by g++ through ``host_shim.h``
  and driven through ctypes, so the kernel bodies run, and are tested, without a GPU.

pycuda is imported lazily (:func:`edgemed._lazy.require`): ``import edgemed`` works
without it.

Coordinates: OpenCV computes the bilinear source coordinate in float64 when its IPP code
takes a resize and in float32 otherwise (see :mod:`edgemed.preprocess.cpu`, step 4). The
kernels do either per slice (``coord32``); by default the launchers follow what this
machine's OpenCV does for the same resize (:func:`opencv_coord32`), so the GPU output
matches this machine's CPU reference to float32 rounding. The two rules differ by at
most ``2**-24 * max(h, w)`` of a pixel step.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgemed._lazy import require
from edgemed.cuda.device import DeviceBuffer, PinnedBuffer, cuda_errors
from edgemed.errors import BackendError, UsageError
from edgemed.postprocess import PostprocessSpec, keep_largest_component
from edgemed.preprocess.cpu import Placement, place
from edgemed.preprocess.spec import PreprocessSpec

__all__ = [
    "KERNEL_DIR",
    "MAX_CHANNELS",
    "RAW_DTYPES",
    "PRE_SPEC_DTYPE",
    "PRE_SLICE_DTYPE",
    "POST_SPEC_DTYPE",
    "POST_SLICE_DTYPE",
    "Geometry",
    "PreprocessLaunch",
    "SegmentLaunch",
    "kernel_sources",
    "check_preprocess_spec",
    "opencv_coord32",
    "pack_preprocess",
    "pack_segment",
    "build_cubin",
    "default_kernel_cache",
    "build_host_library",
    "HostKernels",
    "CudaPreprocessor",
    "CudaSegmentPostprocessor",
]

#: Folder holding the ``.cu`` sources and their headers (package data).
KERNEL_DIR = Path(__file__).resolve().parent.parent / "preprocess" / "kernels"
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
        + ["slope", "intercept", "coord32"],
        "formats": ["<i8"] + ["<i4"] * 6 + ["<f4", "<f4", "<i4"],
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32, 36, 40],
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
        "names": ["out_offset", "src_h", "src_w", "top", "left", "box_h", "box_w", "coord32"],
        "formats": ["<i8"] + ["<i4"] * 7,
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32],
        "itemsize": 40,
    }
)

_BLOCK_2D = (32, 8, 1)
_ZSTATS_BLOCK = (256, 1, 1)
_ZSTATS_MAX_BLOCKS = 64  # per slice: enough to fill a GPU, few float64 atomics each
_ALIGN = 256  # offsets inside the staging buffer: device allocations are 256-aligned


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def kernel_sources() -> list[Path]:
    """The ``.cu`` files (each one translation unit, for nvcc and for g++)."""
    return sorted(KERNEL_DIR.glob("*.cu"))


# --- parameters and geometry (NumPy only) ---------------------------------------------


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
        placements: where each slice lands (as :func:`edgemed.preprocess.cpu.place`).
        raw_elements: total raw pixels of the batch (packed one slice after another).
        geometry: the main launch; ``zstats_geometry`` the statistics launches.
    """

    kernel: str
    zstats_kernel: str | None
    spec: np.ndarray
    slices: np.ndarray
    placements: list[Placement]
    raw_elements: int
    geometry: Geometry
    zstats_geometry: Geometry

    @property
    def stats_count(self) -> int:
        """float64 values of the zscore statistics buffer (zeroed before each launch)."""
        return int(len(self.slices) * int(self.spec["channels"][0]) * 2)


@dataclass(frozen=True)
class SegmentLaunch:
    """Everything one segmentation-postprocessing launch needs besides the memory.

    Attributes:
        kernel: entry point, ``em_segment_f32`` or ``em_segment_f16``.
        spec: one ``POST_SPEC_DTYPE`` record; slices: one ``POST_SLICE_DTYPE`` per slice.
        shapes: each mask's ``(h, w)``; offsets: its first byte in the mask buffer.
        mask_bytes: size of the mask buffer.
    """

    kernel: str
    spec: np.ndarray
    slices: np.ndarray
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
    offset = 0
    for i, (h, w) in enumerate(shapes):
        h, w = int(h), int(w)
        if h < 1 or w < 1:
            raise UsageError(f"empty slice of shape {(h, w)}")
        p = place((h, w), spec)
        placements.append(p)
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
            int(opencv_coord32(h, w) if coord32 is None else coord32),
        )
        offset += h * w
    suffix = RAW_DTYPES[dt]
    out = "f16" if spec.dtype == "float16" else "f32"
    max_pixels = max(int(h) * int(w) for h, w in shapes)
    zblocks = min(_ZSTATS_MAX_BLOCKS, -(-max_pixels // _ZSTATS_BLOCK[0]))
    return PreprocessLaunch(
        kernel=f"em_preprocess_{suffix}_{out}",
        zstats_kernel=f"em_zstats_{suffix}" if spec.scale == "zscore" else None,
        spec=rec,
        slices=slices,
        placements=placements,
        raw_elements=offset,
        geometry=Geometry(
            (-(-spec.width // _BLOCK_2D[0]), -(-spec.height // _BLOCK_2D[1]), n), _BLOCK_2D
        ),
        zstats_geometry=Geometry((zblocks, 1, n), _ZSTATS_BLOCK),
    )


def pack_segment(
    post: PostprocessSpec,
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
    offset = 0
    for i, p in enumerate(placements):
        if p.top < 0 or p.left < 0 or p.top + p.height > h_model or p.left + p.width > w_model:
            raise UsageError(f"placement {p} does not fit a {h_model} x {w_model} output")
        h, w = int(p.source[0]), int(p.source[1])
        use32 = opencv_coord32(p.height, p.width, c) if coord32 is None else coord32
        slices[i] = (offset, h, w, p.top, p.left, p.height, p.width, int(use32))
        offsets.append(offset)
        shapes.append((h, w))
        offset += h * w
    max_h = max(s[0] for s in shapes)
    max_w = max(s[1] for s in shapes)
    return SegmentLaunch(
        kernel="em_segment_f16" if dt == np.float16 else "em_segment_f32",
        spec=rec,
        slices=slices,
        shapes=shapes,
        offsets=offsets,
        mask_bytes=offset,
        geometry=Geometry(
            (-(-max_w // _BLOCK_2D[0]), -(-max_h // _BLOCK_2D[1]), len(placements)), _BLOCK_2D
        ),
    )


def _pack_raw(raw_slices: Sequence[np.ndarray]) -> tuple[np.dtype, list[tuple[int, int]]]:
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


def _split_masks(flat: np.ndarray, launch: SegmentLaunch) -> list[np.ndarray]:
    return [
        flat[o : o + h * w].reshape(h, w).copy()
        for o, (h, w) in zip(launch.offsets, launch.shapes, strict=True)
    ]


def _largest_components(
    masks: list[np.ndarray], post: PostprocessSpec, labels: Sequence[str]
) -> list[np.ndarray]:
    # Connected components need the whole mask: they stay on the CPU (as segment does).
    keep = [labels.index(name) for name in post.largest_component if name in labels]
    for mask in masks:
        for label in keep:
            keep_largest_component(mask, label)
    return masks


# --- building ---------------------------------------------------------------------------


def _run_compiler(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BackendError(f"{cmd[0]} not found: needed to {what}", code="GPU_TOOLCHAIN") from exc
    if proc.returncode != 0:
        raise BackendError(
            f"{what} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}", code="GPU_KERNEL_BUILD"
        )


def build_cubin(
    out_dir: str | os.PathLike[str], arch: str, nvcc: str = "nvcc", werror: bool = False
) -> list[Path]:
    """Compile every kernel source with nvcc into ``out_dir/<name>.<arch>.cubin``.

    Args:
        out_dir: where the cubins go (created).
        arch: the GPU architecture, e.g. ``sm_87`` (Orin) or ``sm_90``.
        nvcc: the compiler to run.
        werror: treat every nvcc and host-compiler warning as an error (the tests do).

    Returns:
        The cubin paths. :class:`CudaPreprocessor` loads them with ``cubin_dir=out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flags = ["-cubin", f"-arch={arch}", "-O3", "-I", str(KERNEL_DIR)]
    if werror:
        flags += ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]
    jobs = []
    for src in kernel_sources():
        dst = out / f"{src.stem}.{arch}.cubin"
        cmd = [nvcc, *flags, "-o", str(dst), str(src)]
        try:  # the sources compile independently: run them side by side
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError as exc:
            raise BackendError(
                f"{nvcc} not found: needed to build cubins", code="GPU_TOOLCHAIN"
            ) from exc
        jobs.append((src, dst, cmd, proc))
    failures = []
    for src, _dst, cmd, proc in jobs:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{src.name} for {arch} ({' '.join(cmd)}):\n{err.strip()}")
    if failures:
        raise BackendError("nvcc failed: " + "\n".join(failures), code="GPU_KERNEL_BUILD")
    return [dst for _src, dst, _cmd, _proc in jobs]


def build_host_library(
    out_dir: str | os.PathLike[str], sanitize: bool = False, cxx: str = "g++"
) -> Path:
    """Compile every kernel source as C++ (``host_shim.h``) into one shared library.

    For tests and ``kernel_bench.py --host``: the kernel bodies run on the CPU, one
    simulated thread after another, so the numbers say nothing about GPU speed.
    ``sanitize`` builds with AddressSanitizer and UBSan (errors abort); load such a
    library only in a process started with ``LD_PRELOAD`` of ``libasan.so``.
    The file name carries a hash of the sources and flags: a changed kernel rebuilds.
    """
    flags = ["-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
    if sanitize:
        flags += ["-O1", "-g", "-fno-omit-frame-pointer"]
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    else:
        flags += ["-O2"]
    sources = kernel_sources()
    digest = hashlib.sha256(" ".join([cxx, *flags]).encode())
    for p in [*sources, *sorted(KERNEL_DIR.glob("*.h"))]:
        digest.update(p.name.encode() + p.read_bytes())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / f"libedgemed_kernels_{'asan_' if sanitize else ''}{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        _run_compiler([cxx, *flags, "-x", "c++", *map(str, sources), "-o", str(tmp)], "host build")
        os.replace(tmp, lib)
    return lib


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


class HostKernels:
    """The kernels of a :func:`build_host_library` library, run on the CPU via ctypes.

    Same packing and geometry as the GPU launchers; memory is plain NumPy arrays.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        u = ctypes.c_uint
        vp = ctypes.c_void_p
        self._pre = self._lib.em_host_launch_preprocess
        self._pre.argtypes = [ctypes.c_char_p, u, u, u, u, u, u, vp, vp, vp, vp, vp, ctypes.c_int]
        self._pre.restype = ctypes.c_int
        self._seg = self._lib.em_host_launch_segment
        self._seg.argtypes = [ctypes.c_char_p, u, u, u, u, u, u, vp, vp, vp, vp]
        self._seg.restype = ctypes.c_int

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
        dtype, shapes = _pack_raw(raw_slices)
        launch = pack_preprocess(spec, shapes, dtype, slopes, intercepts, coord32)
        raw = np.concatenate([np.ascontiguousarray(s).ravel() for s in raw_slices])
        out = np.empty(
            (len(shapes), len(spec.ranges), spec.height, spec.width), dtype=np.dtype(spec.dtype)
        )
        stats = np.zeros(max(1, launch.stats_count), dtype=np.float64)
        args = (raw, launch.slices, launch.spec, stats, out)
        if launch.zstats_kernel is not None:
            for stage in (0, 1):
                self._launch_pre(launch.zstats_kernel, launch.zstats_geometry, *args, stage=stage)
        self._launch_pre(launch.kernel, launch.geometry, *args)
        return out, launch.placements

    def segment(
        self,
        logits: np.ndarray,
        placements: Sequence[Placement],
        post: PostprocessSpec,
        labels: Sequence[str] = (),
        coord32: bool | None = None,
    ) -> list[np.ndarray]:
        """``(N, C, H, W)`` logits -> one uint8 mask per slice (``segment``'s result)."""
        logits = np.ascontiguousarray(logits)
        launch = pack_segment(post, logits.shape, placements, logits.dtype, coord32)
        masks = np.zeros(max(1, launch.mask_bytes), dtype=np.uint8)
        geo = launch.geometry
        args = (logits, launch.slices, launch.spec, masks)
        rc = self._seg(launch.kernel.encode(), *geo.grid, *geo.block, *map(_ptr, args))
        if rc != 0:
            raise UsageError(f"no kernel named {launch.kernel} in {self.path.name}")
        return _largest_components(_split_masks(masks, launch), post, labels)


# --- pycuda launchers -------------------------------------------------------------------


def _driver() -> Any:
    return require("pycuda.driver", "gpu", purpose="the CUDA preprocessing kernels")


def default_kernel_cache() -> Path:
    """Where SourceModule keeps compiled kernels: ``~/.cache/edgemed/kernels``.

    (No environment variable is read here: edgemed reads them in :mod:`edgemed.settings`
    only; callers that want another place pass ``kernel_cache``.)
    """
    return Path.home() / ".cache" / "edgemed" / "kernels"


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
            return cuda.module_from_file(str(cubin))
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
            options=["-O3"],
        )
    except cuda.CompileError as exc:  # a broken toolchain, not a broken GPU context
        raise BackendError(f"compiling {stem}.cu: {exc}", code="GPU_KERNEL_BUILD") from exc


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


class CudaPreprocessor:
    """Raw stored pixels on the host -> the engine's input buffer on the GPU.

    Args:
        spec: the bundle's spec; refused with ``USAGE_GPU_UNSUPPORTED`` when the kernel
            cannot honour it (RGB, edge channel).
        max_batch: most slices one :meth:`run` takes.
        max_source_pixels: most raw pixels of one slice (``h * w``).
        cubin_dir: a folder from :func:`build_cubin`; used when it holds cubins for
            this GPU's architecture, else the sources are compiled with SourceModule.
        coord32: see :func:`pack_preprocess`.
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
        if max_batch < 1 or max_source_pixels < 1:
            raise UsageError("max_batch and max_source_pixels must be positive")
        self.spec = spec
        self.max_batch = int(max_batch)
        self.max_source_pixels = int(max_source_pixels)
        self.coord32 = coord32
        self._params_bytes = _align(PRE_SPEC_DTYPE.itemsize + PRE_SLICE_DTYPE.itemsize * max_batch)
        raw_bytes = 4 * self.max_batch * self.max_source_pixels  # widest raw type: 4 bytes
        _driver()  # MissingDependencyError (naming the extra) before any allocation
        with cuda_errors("allocating preprocessing buffers"):
            self._module = _load_module("preprocess", cubin_dir, kernel_cache)
            self._staging = _Staging(self._params_bytes + raw_bytes)
            self._stats = DeviceBuffer(8 * self.max_batch * len(spec.ranges) * 2)
        self._functions: dict[str, Any] = {}

    def _function(self, name: str) -> Any:
        if name not in self._functions:
            with cuda_errors(f"loading kernel {name}"):
                self._functions[name] = self._module.get_function(name)
        return self._functions[name]

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
        dtype, shapes = _pack_raw(raw_slices)
        if len(shapes) > self.max_batch:
            raise UsageError(f"{len(shapes)} slices exceed max_batch={self.max_batch}")
        if max(h * w for h, w in shapes) > self.max_source_pixels:
            raise UsageError(f"a slice exceeds max_source_pixels={self.max_source_pixels}")
        launch = pack_preprocess(self.spec, shapes, dtype, slopes, intercepts, self.coord32)
        cuda = _driver()
        st = self._staging
        slices_off = PRE_SPEC_DTYPE.itemsize
        raw_off = self._params_bytes
        raw_bytes = launch.raw_elements * dtype.itemsize
        with cuda_errors("uploading slices to the GPU"):
            st.ready.synchronize()  # the previous copy may still read the pinned buffer
            host = st.host
            host[:slices_off] = launch.spec.view(np.uint8)
            host[slices_off : slices_off + launch.slices.nbytes] = launch.slices.view(np.uint8)
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
        st = self._staging
        args = (
            np.uintp(st.ptr + self._params_bytes),  # raw pixels
            np.uintp(st.ptr + PRE_SPEC_DTYPE.itemsize),  # slice parameters
            np.uintp(st.ptr),  # launch parameters
            np.uintp(self._stats.ptr),
            np.uintp(int(dst_ptr)),
        )
        with cuda_errors("preprocessing on the GPU"):
            if launch.zstats_kernel is not None:
                # Statistics first (two passes), then the main kernel reads them: the
                # launches are ordered on one stream, so no host synchronisation.
                cuda.memset_d8_async(self._stats.ptr, 0, 8 * launch.stats_count, stream)
                zfn = self._function(launch.zstats_kernel)
                geo = launch.zstats_geometry
                for stage in (0, 1):
                    zfn(*args, np.int32(stage), grid=geo.grid, block=geo.block, stream=stream)
            geo = launch.geometry
            self._function(launch.kernel)(
                *args, np.int32(0), grid=geo.grid, block=geo.block, stream=stream
            )


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
        post: PostprocessSpec,
        labels: Sequence[str],
        max_batch: int,
        max_mask_pixels: int,
        cubin_dir: str | os.PathLike[str] | None = None,
        coord32: bool | None = None,
        kernel_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_batch < 1 or max_mask_pixels < 1:
            raise UsageError("max_batch and max_mask_pixels must be positive")
        self.post = post
        self.labels = list(labels)
        self.max_batch = int(max_batch)
        self.max_mask_pixels = int(max_mask_pixels)
        self.coord32 = coord32
        self._params_bytes = _align(
            POST_SPEC_DTYPE.itemsize + POST_SLICE_DTYPE.itemsize * max_batch
        )
        _driver()  # MissingDependencyError (naming the extra) before any allocation
        with cuda_errors("allocating postprocessing buffers"):
            self._module = _load_module("postprocess", cubin_dir, kernel_cache)
            self._params = _Staging(self._params_bytes)
            nbytes = self.max_batch * self.max_mask_pixels
            self._masks_host = PinnedBuffer((nbytes,), np.uint8)
            self._masks_dev = DeviceBuffer(nbytes)
        self._functions: dict[str, Any] = {}

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
        if len(placements) > self.max_batch:
            raise UsageError(f"{len(placements)} slices exceed max_batch={self.max_batch}")
        if max(h * w for h, w in launch.shapes) > self.max_mask_pixels:
            raise UsageError(f"a mask exceeds max_mask_pixels={self.max_mask_pixels}")
        cuda = _driver()
        st = self._params
        slices_off = POST_SPEC_DTYPE.itemsize
        with cuda_errors("postprocessing on the GPU"):
            st.ready.synchronize()
            st.host[:slices_off] = launch.spec.view(np.uint8)
            st.host[slices_off : slices_off + launch.slices.nbytes] = launch.slices.view(np.uint8)
            cuda.memcpy_htod_async(st.ptr, st.host[: slices_off + launch.slices.nbytes], stream)
            st.ready.record(stream)
            if launch.kernel not in self._functions:
                self._functions[launch.kernel] = self._module.get_function(launch.kernel)
            geo = launch.geometry
            self._functions[launch.kernel](
                np.uintp(int(logits_ptr)),
                np.uintp(st.ptr + slices_off),
                np.uintp(st.ptr),
                np.uintp(self._masks_dev.ptr),
                grid=geo.grid,
                block=geo.block,
                stream=stream,
            )
        return launch

    def fetch(self, launch: SegmentLaunch, stream: Any = None) -> list[np.ndarray]:
        """Copy the masks of :meth:`launch` back, wait, and split them per slice (then
        largest-component filtering on the CPU where the spec asks for it)."""
        cuda = _driver()
        with cuda_errors("copying masks from the GPU"):
            host = self._masks_host.array[: launch.mask_bytes]
            cuda.memcpy_dtoh_async(host, self._masks_dev.ptr, stream)
            if stream is None:
                cuda.Context.synchronize()
            else:
                stream.synchronize()
        return _largest_components(_split_masks(host, launch), self.post, self.labels)
