"""The 3D path's kernels (volume.cu) against the CPU reference.

Through the g++ host build (the very kernel bodies, one simulated thread after another):

* blending: the slab ring's normalised outputs equal ``edgemed.sliding_window``'s blended
  outputs bit for bit (same float32 additions in the same order), for volumes smaller
  than the ROI, not multiples of it, anisotropic, overlaps 0 / 0.25 / 0.5, both modes,
  K = 1..5, float32 and float16 model outputs, every padding mode;
* activation: within 1e-6 relative of ``edgemed.postprocess.activate``;
* masks: ``segment_volume_cuda`` equals ``edgemed.volume.segment_volume`` exactly, on the
  model grid and resampled back to other source grids, for softmax/argmax,
  sigmoid/threshold and none, with a real ONNX Runtime 3D convolution as the model;
* resampling: within 1e-5 of ``edgemed.volume.resample`` and of torch's trilinear
  interpolation (``align_corners=False``) and of a float64 NumPy reference;
* the pycuda launcher (:class:`CudaVolumeKernels`) through a stand-in pycuda whose
  kernel calls run the host build: arguments as pycuda passes them (pointers as
  ``np.uintp``, the spec struct by value as an ``np.void`` record).

A GPU-marked test runs the real pycuda path against the CPU reference (skipped here).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgemed import postprocess as ops
from edgemed.cuda.build import KERNEL_DIR
from edgemed.cuda.packing import Geometry
from edgemed.cuda.volume import (
    HostVolumeKernels,
    SlabBlender,
    VolumeWindows,
    segment_volume_cuda,
    segment_volume_device,
)
from edgemed.cuda.volume_plan import (
    VOL_SPEC_DTYPE,
    VOL_WINDOW_DTYPE,
    DeviceArray,
    pad_volume,
    plan_volume,
)
from edgemed.errors import BundleError, UsageError
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.sliding_window import SlidingWindow, sliding_window

volume_mod = pytest.importorskip("edgemed.volume", reason="edgemed.volume (3D core) is absent")

pytestmark = pytest.mark.kernels


def _window(roi, overlap, mode="gaussian", bs=2, padding="constant", cval=0.0) -> SlidingWindow:
    return SlidingWindow(
        roi_size=tuple(roi),
        overlap=(overlap,) * 3,
        mode=mode,
        sigma_scale=(0.125,) * 3,
        sw_batch_size=bs,
        padding_mode=padding,
        cval=cval,
    )


def phantom(shape, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A smooth CT-like volume (HU-ish blobs plus noise), ``(C, Z, Y, X)`` float32, scaled
    to about [-1, 2] as a unit-scaled model input."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.zeros((channels, *shape))
    for c in range(channels):
        for _ in range(5):
            centre = rng.uniform(-0.6, 0.6, 3)
            radii = rng.uniform(0.2, 0.7, 3)
            r2 = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            vol[c] += rng.uniform(0.5, 1.5) * (r2 + ((x - centre[2]) / radii[2]) ** 2 < 1)
    vol += rng.normal(0, 0.1, vol.shape)
    return vol.astype(np.float32)


class Conv3dModel:
    """A real model: one 3x3x3 convolution (``channels`` -> ``k``, zero-padded) with
    seeded weights, run by ONNX Runtime; the predictor of the sliding window."""

    def __init__(
        self, k: int, channels: int = 1, seed: int = 0, half: bool = False, tie: bool = False
    ) -> None:
        onnx = pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(seed)
        w = rng.normal(0, 0.5, (k, channels, 3, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.5, k).astype(np.float32)
        if tie:  # the last channel repeats the one before: exact ties everywhere they lead
            w[-1], b[-1] = w[-2], b[-2]
        nodes = [
            helper.make_node("Conv", ["x", "w", "b"], ["y32"], pads=[1] * 6, kernel_shape=[3] * 3)
        ]
        out_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
        nodes.append(helper.make_node("Cast", ["y32"], ["y"], to=out_type))
        dims = ["n", channels, "d", "h", "w"]
        graph = helper.make_graph(
            nodes,
            "conv3d",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("y", out_type, ["n", k, "d", "h", "w"])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        del onnx

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": windows})[0]


class BufferEngine:
    """A :class:`edgemed.cuda.volume.DeviceEngine` as an engine with device I/O is one: an
    input and an output buffer in the kernels' memory; :meth:`run` reads the windows
    from the input buffer, runs ``model`` and leaves the outputs in the output buffer."""

    def __init__(self, kernels, model, k, roi, batch, in_dtype=np.float32, out_bytes=4):
        self.kernels, self.model, self.in_dtype = kernels, model, np.dtype(in_dtype)
        voxels = batch * int(np.prod(roi))
        self.inp = kernels.alloc(voxels * self.in_dtype.itemsize)
        self.out = kernels.alloc(k * voxels * out_bytes)
        self.calls: list[int] = []

    def input(self, shape):
        self.shape = shape
        return self.kernels.address(self.inp), self.in_dtype

    def run(self):
        windows = np.empty(self.shape, self.in_dtype)
        self.kernels.download(self.inp, windows)
        out = self.model(windows.astype(np.float32))
        self.kernels.upload(self.out, out)
        self.calls.append(self.shape[0])
        return DeviceArray(self.kernels.address(self.out), out.shape, out.dtype)

    def close(self):
        self.kernels.free(self.inp)
        self.kernels.free(self.out)


def _windows_ref(padded, plan, first, stop):
    """Windows ``[first, stop)`` cut from the padded volume on the host."""
    d, h, w = plan.roi
    return np.stack(
        [
            padded[:, s["z"] : s["z"] + d, s["y"] : s["y"] + h, s["x"] : s["x"] + w]
            for s in plan.windows[first:stop]
        ]
    )


def _blend(kernels, vol, model, window, activation="none"):
    """The kernels' normalised (and activated) outputs on the model grid."""
    plan = plan_volume(vol.shape[1:], window)
    padded = pad_volume(vol, plan, window)
    spec = SegmentationSpec(activation=activation)
    with SlabBlender(kernels, plan, spec, probabilities=True) as blender:
        for first, stop in plan.batches:
            blender.add(model(_windows_ref(padded, plan, first, stop)))
        return blender.probabilities(), plan


@pytest.fixture(scope="module")
def vk(host_kernels):
    return HostVolumeKernels(host_kernels)


# -- blending ----------------------------------------------------------------------------

BLEND_CASES = [
    # shape (Z, Y, X), roi, overlap, mode, K, sw_batch_size
    ((20, 23, 17), (8, 8, 8), 0.25, "gaussian", 3, 3),
    ((5, 30, 9), (8, 8, 8), 0.5, "constant", 2, 4),  # smaller than the ROI along Z
    ((16, 16, 16), (8, 8, 8), 0.0, "gaussian", 1, 1),
    ((13, 7, 29), (6, 10, 8), 0.5, "gaussian", 5, 5),  # anisotropic ROI, Y padded
    ((3, 4, 5), (8, 8, 8), 0.25, "gaussian", 4, 2),  # one window, padded everywhere
    ((25, 12, 12), (7, 12, 5), 0.25, "constant", 4, 7),
]


@pytest.mark.parametrize("case", BLEND_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[3]}")
def test_blend_equals_sliding_window_bit_for_bit(vk, case):
    shape, roi, overlap, mode, k, bs = case
    vol = phantom(shape, seed=len(shape) + k)
    model = Conv3dModel(k, seed=k)
    window = _window(roi, overlap, mode, bs)
    got, plan = _blend(vk, vol, model, window)
    ref = sliding_window(vol, model, window)
    assert got.shape == ref.shape == (k, *shape)
    np.testing.assert_array_equal(got, ref)
    # The ring holds at least one window's depth and never more than the padded volume.
    assert min(roi[0], plan.size[0]) <= plan.acc_slots <= plan.size[0]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_blend_overlaps_and_modes_float16_outputs(vk, overlap, mode):
    """An FP16 engine's outputs: blended after an exact float16 -> float32 conversion, as
    sliding_window's ``astype(float32)``."""
    vol = phantom((14, 19, 11), seed=3)
    model = Conv3dModel(3, seed=5, half=True)
    window = _window((6, 8, 8), overlap, mode, bs=3)
    got, _ = _blend(vk, vol, model, window)
    assert model(vol[None, :, :6, :8, :8]).dtype == np.float16
    np.testing.assert_array_equal(got, sliding_window(vol, model, window))


@pytest.mark.parametrize("padding", ["constant", "reflect", "replicate", "circular"])
def test_blend_with_every_padding_mode(vk, padding):
    vol = phantom((4, 9, 6), seed=7, channels=2)
    model = Conv3dModel(2, channels=2, seed=2)
    window = _window((6, 12, 8), 0.25, "gaussian", 2, padding, -1.0 if padding == "constant" else 0)
    got, plan = _blend(vk, vol, model, window)
    assert plan.pads == ((1, 1), (1, 2), (1, 1))
    np.testing.assert_array_equal(got, sliding_window(vol, model, window))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_activation_matches_postprocess_activate(vk, activation, k):
    vol = phantom((12, 15, 13), seed=k)
    model = Conv3dModel(k, seed=10 + k)
    window = _window((8, 8, 8), 0.25, "gaussian", 4)
    got, _ = _blend(vk, vol, model, window, activation)
    ref = ops.activate(sliding_window(vol, model, window), activation, axis=0)
    scale = max(float(np.abs(ref).max()), 1e-30)
    assert float(np.abs(got - ref).max()) <= 1e-6 * scale
    if activation == "softmax" and k > 1:
        np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)


# -- masks ------------------------------------------------------------------------------

HEADS = {
    "softmax-argmax": SegmentationSpec(activation="softmax", decision="argmax"),
    "sigmoid-threshold": SegmentationSpec(activation="sigmoid", decision="threshold"),
    "none-argmax": SegmentationSpec(activation="none", decision="argmax"),
    "sigmoid-threshold-0.7": SegmentationSpec(
        activation="sigmoid", decision="threshold", threshold=0.7
    ),
}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize(
    "shapes",
    [
        ((18, 21, 16), (18, 21, 16)),  # the model grid is the source grid
        ((18, 21, 16), (35, 30, 11)),  # back to a finer Z, larger Y, smaller X
        ((9, 20, 20), (4, 20, 20)),  # coarser Z only
        ((6, 17, 23), (6, 40, 9)),  # in-plane only, Z smaller than the ROI
    ],
    ids=lambda s: f"{'x'.join(map(str, s[0]))}-to-{'x'.join(map(str, s[1]))}",
)
def test_segment_volume_cuda_equals_cpu_path(vk, head, shapes):
    model_shape, out_shape = shapes
    k = 1 if head.startswith("sigmoid-threshold-") else 4
    vol = phantom(model_shape, seed=sum(model_shape))
    model = Conv3dModel(k, seed=k)
    vs = volume_mod.VolumeSpec(spacing=None, window=_window((8, 8, 8), 0.25, "gaussian", 3))
    spec = HEADS[head]
    seen: list[tuple[int, int]] = []
    got = segment_volume_cuda(
        vol, model, vs, spec, out_shape, progress=lambda d, t: seen.append((d, t)), kernels=vk
    )
    ref = volume_mod.segment_volume(vol, model, vs, spec, out_shape)
    assert got.shape == ref.shape == out_shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(ref)) > 1  # the case decides something
    total = volume_mod.count_windows(model_shape, vs.window)
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted({d for d, _ in seen})


@pytest.mark.parametrize("head", ["softmax-argmax", "sigmoid-threshold"])
def test_ties_go_to_the_lowest_label(vk, head):
    """Two identical output channels: where they lead, both paths pick the lower one."""
    vol = phantom((10, 14, 12), seed=11)
    model = Conv3dModel(3, seed=6, tie=True)
    vs = volume_mod.VolumeSpec(spacing=None, window=_window((8, 8, 8), 0.25, "gaussian", 2))
    for out_shape in [(10, 14, 12), (15, 9, 20)]:
        got = segment_volume_cuda(vol, model, vs, HEADS[head], out_shape, kernels=vk)
        ref = volume_mod.segment_volume(vol, model, vs, HEADS[head], out_shape)
        np.testing.assert_array_equal(got, ref)
        tied = 1 if head == "softmax-argmax" else 2
        assert (ref == tied).any() and not (ref == tied + 1).any()


def test_segment_volume_cuda_largest_component_in_3d(vk):
    vol = phantom((16, 24, 24), seed=4)
    model = Conv3dModel(3, seed=8)
    vs = volume_mod.VolumeSpec(spacing=None, window=_window((8, 8, 8), 0.5, "constant", 4))
    labels = ["background", "a", "b"]
    spec = SegmentationSpec(largest_component=("a", "b"))
    got = segment_volume_cuda(vol, model, vs, spec, (20, 24, 30), labels, kernels=vk)
    ref = volume_mod.segment_volume(vol, model, vs, spec, (20, 24, 30), labels)
    np.testing.assert_array_equal(got, ref)
    plain = segment_volume_cuda(vol, model, vs, SegmentationSpec(), (20, 24, 30), kernels=vk)
    assert (plain != got).any()  # the filter removed something: the comparison has teeth


def test_memory_is_bounded_by_a_slab(vk):
    """A deep volume: the accumulator ring is about one ROI depth of planes and the
    probability ring about one more, not the volume's depth."""
    window = _window((16, 16, 16), 0.25, "gaussian", 4)
    plan = plan_volume((200, 64, 64), window, (300, 80, 80))
    assert plan.acc_slots <= 2 * 16 and plan.prob_slots <= 16 + 2
    # A batch spans as many window rows as it holds windows: the ring grows with it
    # (as sliding_window's slab buffer does), still bounded by the batch, not the volume.
    thin = plan_volume((200, 16, 16), window, (300, 20, 20))
    assert thin.acc_slots == 3 * 12 + 16 and thin.prob_slots <= 4 * 12 + 2
    assert sum(b - a for a, b in plan.source_ready) == 300  # every source plane decided once
    assert plan.source_ready[-1][1] == 300


# -- windows cut in the kernels' memory -----------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 9, 6), (1, 20, 2)])
@pytest.mark.parametrize("padding", ["constant", "reflect", "replicate", "circular"])
def test_gather_cuts_the_padded_windows(vk, padding, shape):
    """em_vol_gather applies numpy.pad's modes on the fly, also where the padding is wider
    than the axis (reflect and wrap repeat) or the axis is one voxel."""
    vol = phantom(shape, seed=12, channels=2)
    cval = -3.5 if padding == "constant" else 0.0
    window = _window((8, 12, 8), 0.25, "gaussian", 3, padding, cval)
    plan = plan_volume(vol.shape[1:], window)
    padded = pad_volume(vol, plan, window)
    assert max(hi for _, hi in plan.pads) >= shape[0]  # wider than the thinnest axis
    with VolumeWindows(vk, vol, plan, window) as cutter:
        for first, stop in plan.batches:
            ref = _windows_ref(padded, plan, first, stop)
            assert cutter.batch_shape(first, stop) == ref.shape
            for dtype in (np.float32, np.float16):
                buf = vk.alloc(ref.size * np.dtype(dtype).itemsize)
                cutter.cut(first, stop, vk.address(buf), dtype)
                got = buf.view(dtype).reshape(ref.shape)
                np.testing.assert_array_equal(got, ref.astype(dtype))
        with pytest.raises(UsageError):
            cutter.cut(0, 1, vk.address(buf), np.int8)


def test_segment_volume_device_equals_cpu_path(vk):
    """The device-resident flow: windows cut into the "engine's" input buffer, the engine
    reads them there and leaves its (float16) outputs in its own buffer, which is blended
    in place; same mask as the CPU path."""
    vol = phantom((14, 20, 17), seed=13)
    model = Conv3dModel(4, seed=9, half=True)
    window = _window((8, 8, 8), 0.25, "gaussian", 3)
    vs = volume_mod.VolumeSpec(spacing=None, window=window)
    engine = BufferEngine(vk, model, 4, window.roi_size, window.sw_batch_size, out_bytes=2)
    for out_shape in [(14, 20, 17), (20, 15, 30)]:
        spec = SegmentationSpec()
        got = segment_volume_device(vol, engine, vs, spec, out_shape, kernels=vk)
        np.testing.assert_array_equal(
            got, volume_mod.segment_volume(vol, model, vs, spec, out_shape)
        )
    assert sum(engine.calls) == 2 * volume_mod.count_windows(vol.shape[1:], window)
    engine.close()


# -- resampling ---------------------------------------------------------------------------


def _trilinear64(vol: np.ndarray, shape) -> np.ndarray:
    """float64 reference: separable linear interpolation, half-pixel centres, clamped."""
    out = vol.astype(np.float64)
    for axis, n_out in zip((-3, -2, -1), shape, strict=True):
        n_in = out.shape[axis]
        c = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        t = (c - i0).reshape([-1] + [1] * (-axis - 1))
        out = np.take(out, i0, axis=axis) * (1 - t) + np.take(out, i1, axis=axis) * t
    return out


RESAMPLE_CASES = [
    ((10, 20, 30), (17, 13, 45)),
    ((5, 64, 64), (12, 40, 40)),
    ((1, 8, 8), (3, 8, 8)),
    ((7, 9, 11), (7, 9, 11)),
    ((12, 33, 21), (4, 33, 21)),
    ((6, 1, 7), (3, 5, 2)),
]


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16", "uint8"])
@pytest.mark.parametrize("case", RESAMPLE_CASES, ids=lambda c: f"{c[0]}->{c[1]}")
def test_resample_matches_cpu_and_float64(vk, case, dtype):
    src, dst = case
    rng = np.random.default_rng(len(src) + src[0])
    if dtype == "float32":
        vol = (rng.normal(size=(2, *src)) * 100).astype(np.float32)
    else:
        info = np.iinfo(dtype)
        vol = rng.integers(max(info.min, -1024), min(info.max, 3000), (2, *src)).astype(dtype)
    got = vk.resample(vol, dst)
    assert got.shape == (2, *dst) and got.dtype == np.float32
    span = float(vol.max()) - float(vol.min())
    ref = volume_mod.resample(vol.astype(np.float32), dst)
    assert float(np.abs(got - ref).max()) <= 1e-5 * span
    assert float(np.abs(got - _trilinear64(vol, dst)).max()) <= 1e-5 * span
    if src == dst:
        np.testing.assert_array_equal(got, vol.astype(np.float32))
    np.testing.assert_array_equal(vk.resample(vol[0], dst), got[0])  # (Z, Y, X) in, out
    # Into the kernels' memory, and from there again (the device-resident input path).
    out = vk.alloc(got.nbytes)
    placed = vk.resample(vol, dst, dst=vk.address(out))
    assert isinstance(placed, DeviceArray) and placed.shape == got.shape
    np.testing.assert_array_equal(out.view(np.float32).reshape(got.shape), got)
    np.testing.assert_array_equal(vk.resample(placed, dst), got.astype(np.float32))


def test_resample_matches_torch_trilinear(vk):
    torch = pytest.importorskip("torch")
    vol = (np.random.default_rng(9).normal(size=(3, 11, 24, 17)) * 50).astype(np.float32)
    for dst in [(20, 16, 33), (5, 24, 17), (11, 48, 9)]:
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(vol)[None].double(), size=dst, mode="trilinear", align_corners=False
        )[0].numpy()
        got = vk.resample(vol, dst)
        assert float(np.abs(got - ref).max()) <= 1e-5 * float(vol.max() - vol.min())


# -- parameters and refusals ----------------------------------------------------------------


def test_struct_mirrors_and_argument_layout():
    """The records mirror volume.cu's static_asserts, and pycuda's argument buffer (seven
    pointers, then the struct's bytes: struct format "PPPPPPP144s") puts the struct at a
    4-aligned offset, as the kernel's parameter layout does (see the nvcc PTX test)."""
    source = (KERNEL_DIR / "volume.cu").read_text()
    sizes = dict(re.findall(r"static_assert\(sizeof\((\w+)\) == (\d+)", source))
    assert int(sizes["EmVolSpec"]) == VOL_SPEC_DTYPE.itemsize == 144
    assert int(sizes["EmVolWindow"]) == VOL_WINDOW_DTYPE.itemsize == 16
    # The members in the struct's order (each 4 bytes), as the mirror names them.
    body = re.search(r"struct EmVolSpec \{(.*?)\};", source, re.S).group(1)
    members = []
    for decl in re.findall(r"^\s*(?:int32_t|float) ([^;\[]+);", body, re.M):
        members += [m.strip() for m in decl.split(",")]
    assert members == list(VOL_SPEC_DTYPE.names)
    assert VOL_SPEC_DTYPE.fields["tap_z"][1] == 128
    assert struct.calcsize("P" * 7) == 56 and struct.calcsize("P" * 7 + "144s") == 200


_PYCUDA_CALL = """
import json, sys
import numpy as np
import pycuda.driver as drv

dtype = np.dtype([tuple(d) for d in json.loads(sys.argv[1])])
spec = np.frombuffer(bytes.fromhex(sys.argv[2]), dtype=dtype)[0]


class Launch:  # what Function.__call__ hands the driver
    def _set_block_shape(self, *block):
        pass

    def _launch_kernel(self, grid, block, buf, shared, stream):
        print(bytes(buf).hex())


ptrs = [np.uintp(0x1000 * (i + 1)) for i in range(7)]
drv.Function.__call__(Launch(), *ptrs, spec, grid=(1, 2, 3), block=(32, 8, 1))
"""


def test_real_pycuda_puts_the_spec_where_the_kernel_reads_it():
    """The REAL pycuda (tools/pycuda_nogpu.py: built against a stub libcuda) builds the
    argument buffer of a launch as CudaVolumeKernels makes it: seven 8-byte pointers,
    then the 144 bytes of the EmVolSpec record at offset 56 (where the PTX test finds
    the by-value parameter)."""
    from tools import pycuda_nogpu

    try:
        python = pycuda_nogpu.ensure(log=lambda *a: None)
    except pycuda_nogpu.Unavailable as exc:
        pytest.skip(f"the real pycuda cannot be built here: {exc}")
    rec = np.zeros(1, VOL_SPEC_DTYPE)
    rec["channels"], rec["threshold"], rec["tap_z"], rec["cval"] = 5, 0.25, 77, -1.5
    proc = subprocess.run(
        [python, "-c", _PYCUDA_CALL, json.dumps(VOL_SPEC_DTYPE.descr), rec.tobytes().hex()],
        # (not under the ASan re-run's LD_PRELOAD: that venv's python is not ours to check)
        env={k: v for k, v in pycuda_nogpu.env().items() if k != "LD_PRELOAD"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    buf = bytes.fromhex(proc.stdout.strip())
    assert len(buf) == 56 + 144
    assert list(struct.unpack("<7Q", buf[:56])) == [0x1000 * (i + 1) for i in range(7)]
    assert buf[56:] == rec.tobytes()


def test_refusals(vk):
    window = _window((8, 8, 8), 0.25, "gaussian", 2)
    plan = plan_volume((10, 10, 10), window)
    blender = SlabBlender(vk, plan, SegmentationSpec())
    first, stop = plan.batches[0]
    n = stop - first
    with pytest.raises(BundleError):  # not one ROI per window
        blender.add(np.zeros((n, 2, 8, 8, 7), np.float32))
    with pytest.raises(UsageError) as exc:
        blender.add(np.zeros((n, 2, 8, 8, 8), np.int32))
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"
    with pytest.raises(UsageError):  # more labels than a uint8 mask holds
        blender.add(np.zeros((n, 256, 8, 8, 8), np.float32))
    with pytest.raises(UsageError):
        blender.mask()  # not every batch yet
    blender.add(np.zeros((n, 2, 8, 8, 8), np.float32))
    with pytest.raises(BundleError):  # the class count changed mid-volume
        blender.add(np.zeros((stop - first, 3, 8, 8, 8), np.float32))
    blender.close()
    with pytest.raises(UsageError) as exc:
        vk.resample(np.zeros((2, 2, 2), np.float64), (3, 3, 3))
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"
    with pytest.raises(UsageError):
        geo = Geometry((1, 1, 1), (1, 1, 1))
        vk.host.launch_volume("em_vol_nothing", geo, np.zeros(1, VOL_SPEC_DTYPE), *[0] * 7)


# -- the pycuda launcher through a stand-in pycuda ---------------------------------------------


@pytest.fixture
def fake_gpu(host_kernels, monkeypatch, tmp_path):
    """tests/kernels/test_kernels_launcher.py's stand-in pycuda ("device" memory is host
    memory), whose loaded module here runs volume.cu's entry points in the host build,
    receiving the arguments exactly as pycuda's ``Function.__call__`` takes them."""
    from tests.kernels.test_kernels_launcher import _fake_pycuda

    launches: list = []
    mods = _fake_pycuda(host_kernels, launches)

    class Function:
        def __init__(self, name):
            self.name = name

        def __call__(self, *args, grid, block, stream=None):
            *ptrs, spec = args
            assert all(isinstance(p, np.uintp) for p in ptrs) and len(ptrs) == 7
            # pycuda sends an np.void as its raw bytes: the struct by value.
            assert isinstance(spec, np.void) and spec.dtype == VOL_SPEC_DTYPE
            launches.append((self.name, grid, block))
            host_kernels.launch(self.name, grid, block, *args)

    class Module:
        def get_function(self, name):
            return Function(name)

    mods["pycuda.driver"].module_from_file = lambda path: Module()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    # A stored cubin for the stand-in's sm_87: loaded without compiling (no nvcc needed).
    cubins = tmp_path / "cubins"
    cubins.mkdir(mode=0o700)
    (cubins / "volume.sm_87.cubin").write_bytes(b"stand-in")
    (cubins / "volume.sm_87.cubin").chmod(0o600)
    return launches, cubins


def test_cuda_volume_kernels_launch_the_reference(fake_gpu):
    from edgemed.cuda.volume import CudaVolumeKernels

    launches, cubins = fake_gpu
    kern = CudaVolumeKernels(stream=None, cubin_dir=cubins)
    vol = phantom((15, 18, 14), seed=1)
    model = Conv3dModel(3, seed=3)
    vs = volume_mod.VolumeSpec(spacing=None, window=_window((8, 8, 8), 0.25, "gaussian", 3))
    for out_shape in [(15, 18, 14), (29, 20, 10)]:
        got = segment_volume_cuda(vol, model, vs, SegmentationSpec(), out_shape, kernels=kern)
        ref = volume_mod.segment_volume(vol, model, vs, SegmentationSpec(), out_shape)
        np.testing.assert_array_equal(got, ref)
    names = [n for n, _, _ in launches]
    assert {"em_vol_blend_f32", "em_vol_finish_labels", "em_vol_finish_probs"} <= set(names)
    assert "em_vol_resample_decide" in names
    got = kern.resample(vol, (9, 30, 7))
    assert float(np.abs(got - volume_mod.resample(vol, (9, 30, 7))).max()) <= 1e-5 * 3


def test_cuda_blender_takes_outputs_where_the_engine_left_them(fake_gpu):
    """DeviceArray: an engine's output buffer on the device is blended in place."""
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.volume import CudaVolumeKernels

    _, cubins = fake_gpu
    kern = CudaVolumeKernels(stream=None, cubin_dir=cubins)
    vol = phantom((10, 12, 12), seed=2)
    model = Conv3dModel(2, seed=4, half=True)
    window = _window((8, 8, 8), 0.5, "gaussian", 2)
    plan = plan_volume(vol.shape[1:], window)
    padded = pad_volume(vol, plan, window)
    engine_out = DeviceBuffer(2 * 2 * 2 * 8**3)
    with SlabBlender(kern, plan, SegmentationSpec(activation="none"), probabilities=True) as b:
        for first, stop in plan.batches:
            out = model(_windows_ref(padded, plan, first, stop))
            engine_out.upload(out, None)
            b.add(DeviceArray(engine_out.ptr, out.shape, out.dtype))
        got = b.probabilities()
    engine_out.free()
    np.testing.assert_array_equal(got, sliding_window(vol, model, window))


def test_cuda_device_flow_through_the_launcher(fake_gpu):
    """segment_volume_device on CudaVolumeKernels: gather into an "engine" input buffer
    (float16, as an FP16 engine's), outputs blended where the engine left them."""
    from edgemed.cuda.volume import CudaVolumeKernels

    launches, cubins = fake_gpu
    kern = CudaVolumeKernels(stream=None, cubin_dir=cubins)
    vol = phantom((9, 17, 13), seed=14)
    model = Conv3dModel(3, seed=12)
    window = _window((8, 8, 8), 0.5, "gaussian", 2, "reflect")
    vs = volume_mod.VolumeSpec(spacing=None, window=window)
    engine = BufferEngine(kern, model, 3, (8, 8, 8), 2, in_dtype=np.float16)
    got = segment_volume_device(vol, engine, vs, SegmentationSpec(), (12, 17, 20), kernels=kern)
    ref = volume_mod.segment_volume(
        vol, lambda w: model(w.astype(np.float16).astype(np.float32)), vs, SegmentationSpec(),
        (12, 17, 20),
    )  # fmt: skip
    np.testing.assert_array_equal(got, ref)
    assert "em_vol_gather" in [n for n, _, _ in launches]
    engine.close()


# -- on a real GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_volume_kernels_match_the_cpu_path():
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (edgemed[gpu])")
    from edgemed.cuda.device import CudaDevice
    from edgemed.cuda.volume import CudaVolumeKernels
    from edgemed.errors import BackendError

    try:
        dev = CudaDevice.open(0)
    except BackendError as exc:
        pytest.skip(f"no usable CUDA GPU: {exc}")
    try:
        with dev.active():
            kern = CudaVolumeKernels(stream=dev.stream)
            vol = phantom((40, 56, 48), seed=6)
            for half in (False, True):
                model = Conv3dModel(5, seed=1, half=half)
                window = _window((16, 24, 24), 0.25, "gaussian", 4)
                got, _ = _blend(kern, vol, model, window)
                # No FMA contraction (-fmad=false), the same order: the same floats.
                np.testing.assert_array_equal(got, sliding_window(vol, model, window))
                vs = volume_mod.VolumeSpec(spacing=None, window=window)
                for name, spec in HEADS.items():
                    for out_shape in [(40, 56, 48), (61, 70, 33)]:
                        got_m = segment_volume_cuda(vol, model, vs, spec, out_shape, kernels=kern)
                        ref = volume_mod.segment_volume(vol, model, vs, spec, out_shape)
                        # expf/tanhf differ from NumPy's by an ulp: at most near-ties move.
                        agree = float((got_m == ref).mean())
                        assert agree >= 0.9999, (name, out_shape, agree)
            # The device-resident flow: gather into an input buffer, outputs blended there.
            model = Conv3dModel(5, seed=1)
            engine = BufferEngine(kern, model, 5, window.roi_size, window.sw_batch_size)
            spec = HEADS["softmax-argmax"]
            got_d = segment_volume_device(vol, engine, vs, spec, (61, 70, 33), kernels=kern)
            ref = volume_mod.segment_volume(vol, model, vs, spec, (61, 70, 33))
            assert float((got_d == ref).mean()) >= 0.9999
            engine.close()
            src = (np.random.default_rng(0).normal(size=(1, 30, 64, 64)) * 300).astype(np.int16)
            got_r = kern.resample(src, (45, 50, 80))
            ref_r = volume_mod.resample(src.astype(np.float32), (45, 50, 80))
            assert float(np.abs(got_r - ref_r).max()) <= 1e-5 * float(src.max() - src.min())
    finally:
        dev.close()
