"""The pycuda launchers (CudaPreprocessor, CudaSegmentPostprocessor) driven through a
stand-in ``pycuda`` whose "device memory" is host memory and whose kernel calls run the
host build of the same kernels.

No GPU here, so this is how the launchers' own logic is tested: the staging-buffer
layout (parameter blocks, raw pixels at their offsets), the argument order and pointer
offsets of every launch, the z-score statistics passes, the masks' copy back and split.
A wrong offset or argument order gives wrong values (or a sanitizer report) here.
What it cannot test (real pycuda API behaviour, asynchrony) is left to tests/cuda.
"""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from edgemed.errors import MissingDependencyError, UsageError
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.postprocess import segment
from edgemed.preprocess import PreprocessSpec, Window, preprocess
from tests.kernels.kernel_cases import check_masks, check_preprocess, demo_logits, preprocess_cases

pytestmark = pytest.mark.kernels

LABELS = ["background", "lung", "fat", "soft_tissue", "bone"]


COMPILES: list[dict] = []  # the keyword arguments of every SourceModule call
LIVE: dict[int, str] = {}  # serial -> "device" / "pinned": allocations not freed yet
_SERIAL = iter(range(1 << 62))


class _Alloc:
    """Host memory standing in for a device allocation (``int()`` is its address)."""

    def __init__(self, nbytes: int) -> None:
        self.buf = np.full(nbytes + 256, 0xAB, np.uint8)  # poisoned: unwritten reads show
        self.addr = (self.buf.ctypes.data + 255) // 256 * 256  # 256-aligned like cudaMalloc
        self.serial = next(_SERIAL)
        LIVE[self.serial] = "device"

    def __int__(self) -> int:
        return self.addr

    def free(self) -> None:
        LIVE.pop(self.serial, None)


class _HostAllocation(bytearray):
    """pycuda's HostAllocation: the ``.base`` of a pagelocked array, with ``free()``."""

    def free(self) -> None:
        LIVE.pop(self.serial, None)


def _pagelocked_empty(shape, dtype, mem_flags=0):
    dtype = np.dtype(dtype)
    alloc = _HostAllocation(int(np.prod(shape)) * dtype.itemsize)
    alloc.serial = next(_SERIAL)
    LIVE[alloc.serial] = "pinned"
    return np.ndarray(shape, dtype, buffer=alloc)


def _fake_pycuda(host, launches: list):
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    drv.Error = Error
    drv.MemoryError = type("MemoryError", (Error,), {})
    drv.CompileError = type("CompileError", (Error,), {})
    drv.init = lambda: None
    drv.mem_alloc = _Alloc
    drv.pagelocked_empty = _pagelocked_empty

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    drv.Event = Event

    class _Device:
        def compute_capability(self):
            return (8, 7)

    class Context:
        @staticmethod
        def get_device():
            return _Device()

        @staticmethod
        def synchronize():
            pass

    drv.Context = Context

    def htod(dst, src, stream=None):
        src = np.ascontiguousarray(src)
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def dtoh(dst, src, stream=None):
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    drv.memcpy_htod_async = htod
    drv.memcpy_dtoh_async = dtoh
    drv.memset_d8_async = lambda dst, value, n, stream=None: ctypes.memset(int(dst), value, n)

    class Function:
        def __init__(self, name):
            self.name = name

        def __call__(self, *args, grid, block, stream=None):
            launches.append((self.name, grid, block))
            ptrs = [int(a) for a in args]
            if self.name.startswith("em_segment"):
                rc = host._seg(self.name.encode(), *grid, *block, *ptrs)
            else:
                rc = host._pre(self.name.encode(), *grid, *block, *ptrs)
            assert rc == 0, self.name

    class Module:
        def get_function(self, name):
            return Function(name)

    compiler = types.ModuleType("pycuda.compiler")

    def source_module(source, **kw):
        COMPILES.append(kw)
        return Module()

    compiler.SourceModule = source_module
    drv.module_from_file = lambda path: Module()
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.compiler = drv, compiler
    return {"pycuda": pkg, "pycuda.driver": drv, "pycuda.compiler": compiler}


@pytest.fixture
def fake_gpu(host_kernels, monkeypatch):
    launches: list = []
    for name, mod in _fake_pycuda(host_kernels, launches).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return launches


CASES = preprocess_cases()


@pytest.mark.parametrize("name", ["batch3-zscore-letterbox", "ct-demo-128to256", "u8-exact-2x"])
def test_cuda_preprocessor_launches_compute_the_reference(fake_gpu, name):
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaPreprocessor

    for dtype in ("float32", "float16"):
        case = CASES[name].with_dtype(dtype)
        spec, n = case.spec, len(case.raw)
        # Room for more slices and bigger ones than this batch: offsets must not assume
        # a full buffer.
        pre = CudaPreprocessor(spec, n + 2, 2 * max(r.size for r in case.raw))
        out = np.empty((n, len(spec.ranges), spec.height, spec.width), spec.dtype)
        dst = DeviceBuffer(out.nbytes)
        placements = pre.run(case.raw, case.slopes, case.intercepts, dst.ptr, None)
        dst.download(out, None)
        ref, ref_placements = preprocess(case.physical(), spec)
        assert placements == ref_placements
        check_preprocess(out, ref, dtype)
    kernels = [k for k, _, _ in fake_gpu]
    if "zscore" in name:  # two statistics passes and the scale pass before each main launch
        assert kernels[:4] == ["em_zstats_i16"] * 3 + ["em_preprocess_i16_f32"]
        # pass 2 (offset and scale per slice and channel): one thread per slice
        assert fake_gpu[2][1:] == ((1, 1, n), (1, 1, 1))
    else:
        assert len(kernels) == 2 and kernels[0].startswith("em_preprocess_")


def test_cuda_preprocessor_reuses_its_buffers(fake_gpu):
    """A second, smaller batch through the same staging buffers gives its own result."""
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaPreprocessor

    case = CASES["batch3-zscore-letterbox"]
    spec = case.spec
    pre = CudaPreprocessor(spec, 3, max(r.size for r in case.raw))
    dst = DeviceBuffer(3 * len(spec.ranges) * spec.height * spec.width * 4)
    pre.run(case.raw, case.slopes, case.intercepts, dst.ptr, None)
    pre.run(case.raw[::-1][:2], case.slopes[::-1][:2], case.intercepts[::-1][:2], dst.ptr, None)
    out = np.empty((2, len(spec.ranges), spec.height, spec.width), np.float32)
    dst.download(out, None)
    phys = case.physical()[::-1][:2]
    check_preprocess(out, preprocess(phys, spec)[0], "float32")


def test_cuda_preprocessor_limits_and_refusals(fake_gpu):
    from edgemed.cuda.launchers import CudaPreprocessor

    spec = PreprocessSpec(size=(32, 32), windows=(Window(40.0, 400.0),))
    pre = CudaPreprocessor(spec, 2, 64 * 64)
    raw = np.zeros((64, 64), np.int16)
    with pytest.raises(UsageError):
        pre.run([raw] * 3, None, None, 0, None)  # over max_batch
    with pytest.raises(UsageError):
        pre.run([np.zeros((65, 64), np.int16)], None, None, 0, None)  # over max_source_pixels
    with pytest.raises(UsageError) as exc:
        CudaPreprocessor(PreprocessSpec(size=(8, 8), clip=(0.0, 1.0), color="rgb"), 1, 64)
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"


@pytest.mark.parametrize("logits_dtype", ["float32", "float16"])
def test_cuda_segment_postprocessor_matches_segment(fake_gpu, logits_dtype):
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaSegmentPostprocessor

    logits, placements = demo_logits()
    logits = np.ascontiguousarray(logits.astype(logits_dtype))
    src = DeviceBuffer(logits.nbytes)
    src.upload(logits, None)
    for post in (SegmentationSpec(), SegmentationSpec(largest_component=("bone",))):
        seg = CudaSegmentPostprocessor(post, LABELS, 8, 400 * 400)
        got = seg.run(src.ptr, logits.shape, placements, None, logits.dtype)
        ref = segment(logits, placements, post, LABELS)
        check_masks(got, ref, logits, placements, SegmentationSpec())
    assert fake_gpu[-1][0] == f"em_segment_{'f16' if logits_dtype == 'float16' else 'f32'}"


def test_segment_postprocessor_grows_its_parameters_for_thin_masks(fake_gpu):
    """Taps are one per mask column and row: a batch of long thin masks needs more than
    the square-ish room made up front, and gets it (the old block is freed)."""
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaSegmentPostprocessor
    from edgemed.preprocess import Placement

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 5, 16, 64)).astype(np.float32)
    placements = [Placement((2, 3000), 7, 0, 2, 64), Placement((3000, 2), 0, 0, 16, 1)]
    src = DeviceBuffer(logits.nbytes)
    src.upload(logits, None)
    seg = CudaSegmentPostprocessor(SegmentationSpec(), LABELS, 2, 6000)
    small = seg._params.nbytes
    before = len(LIVE)
    got = seg.run(src.ptr, logits.shape, placements, None)
    assert seg._params.nbytes > small and len(LIVE) == before  # replaced, not added
    ref = segment(logits, placements, SegmentationSpec(), LABELS)
    check_masks(got, ref, logits, placements, SegmentationSpec())
    again = seg.run(src.ptr, logits.shape, placements, None)  # fits now: no regrowth
    assert all(np.array_equal(a, b) for a, b in zip(got, again, strict=True))


def test_pycuda_compiles_with_the_cubin_builds_options(fake_gpu):
    """At first use pycuda compiles the kernels as `edgemed build` does: -fmad=false,
    so a kernel compiled on the device rounds as the tested cubins and host build do."""
    import shutil

    from edgemed.cuda.build import NVCC_OPTIONS
    from edgemed.cuda.launchers import CudaPreprocessor

    if shutil.which("nvcc") is None:
        pytest.skip("without nvcc the launchers refuse to compile (GPU_TOOLCHAIN)")
    COMPILES.clear()
    CudaPreprocessor(CASES["ct-demo-128to256"].spec, 1, 128 * 128)
    assert [kw["options"] for kw in COMPILES] == [list(NVCC_OPTIONS)]
    assert "-fmad=false" in COMPILES[0]["options"]


def test_close_frees_every_launcher_buffer(fake_gpu):
    """close() frees the staging, statistics and mask buffers at once (inside the
    caller's context: after a context is detached pycuda skips frees), and is final."""
    from edgemed.cuda.launchers import CudaPreprocessor, CudaSegmentPostprocessor
    from edgemed.errors import BackendError

    before = dict(LIVE)
    pre = CudaPreprocessor(CASES["mr-zscore-64to256"].spec, 2, 64 * 64)
    post = CudaSegmentPostprocessor(SegmentationSpec(), LABELS, 2, 64 * 64)
    kinds = sorted(k for i, k in LIVE.items() if i not in before)
    assert kinds == ["device"] * 4 + ["pinned"] * 3  # staging x2, stats, masks x2
    pre.close()
    post.close()
    post.close()  # idempotent
    assert before == LIVE
    with pytest.raises(BackendError) as e:
        pre.run([np.zeros((8, 8), np.int16)], None, None, 0, None)
    assert e.value.code == "BACKEND_CLOSED"


def test_without_pycuda_the_launchers_name_the_extra(monkeypatch):
    from edgemed.cuda.launchers import CudaPreprocessor

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError) as exc:
        CudaPreprocessor(PreprocessSpec(size=(8, 8), clip=(0.0, 1.0)), 1, 64)
    assert exc.value.extra == "gpu"


def test_stored_cubins_load_only_when_no_one_else_can_write_them(fake_gpu, tmp_path, monkeypatch):
    """A cubin is GPU code from a file: trusted, like the engines, by who can write it."""
    import pycuda.driver as drv

    from edgemed.cuda.launchers import CudaPreprocessor
    from edgemed.errors import BackendError

    major, minor = drv.Context.get_device().compute_capability()
    kernels = tmp_path / "kernels"
    kernels.mkdir(mode=0o700)
    cubin = kernels / f"preprocess.sm_{major}{minor}.cubin"
    cubin.write_bytes(b"cubin")
    loaded: list[str] = []
    module = drv.module_from_file
    monkeypatch.setattr(drv, "module_from_file", lambda p: loaded.append(p) or module(p))
    spec = CASES["ct-demo-128to256"].spec
    for mode, target in ((0o620, cubin), (0o770, kernels)):  # group-writable file, then folder
        cubin.chmod(0o600)
        kernels.chmod(0o700)
        target.chmod(mode)
        with pytest.raises(BackendError) as e:
            CudaPreprocessor(spec, 1, 128 * 128, cubin_dir=kernels)
        assert e.value.code == "ENGINE_INTEGRITY" and e.value.path == str(target)
    assert loaded == []  # never handed to the driver
    kernels.chmod(0o700)
    cubin.chmod(0o600)
    CudaPreprocessor(spec, 1, 128 * 128, cubin_dir=kernels)
    assert loaded == [str(cubin)]
