"""What the kernels compute in float64, and whether nvcc rounds what the host build rounds.

sm_87 (Orin) runs FP64 at 1/64 of FP32: the per-pixel kernels must carry no float64
division or square root. The bilinear taps come from the host (``bilinear_taps``, checked
here against an independent implementation of the documented rule) and the z-score
offset and scale from one thread per slice and channel. And nvcc must not contract
``a * b + c`` into one fused multiply-add where the host build (``-ffp-contract=off``)
rounds twice, or the GPU computes something other than what the host tests check: the
PTX of the very cubin build is read for both.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from edgemed.cuda import build
from edgemed.cuda.packing import TAP_DTYPE, bilinear_taps, pack_preprocess, pack_segment
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.preprocess import PreprocessSpec, Window, place
from tests.preprocess.test_cpu import ref_taps

pytestmark = pytest.mark.kernels

ARCHS = ["sm_87", "sm_90"]


def _ptx(tmp_path, arch: str, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """PTX of every kernel source, compiled as ``edgemed build`` compiles its cubins
    (``drop``: options taken out of that command line)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    out = {}
    for src in build.kernel_sources():
        dst = tmp_path / f"{src.stem}.{arch}.ptx"
        cmd = [a for a in build.nvcc_command(src, dst, arch, ptx=True) if a not in drop]
        subprocess.run(cmd, check=True, capture_output=True)
        out[src.stem] = dst.read_text()
    return out


def _entries(ptx: str) -> dict[str, str]:
    """Entry point name -> its PTX body."""
    parts = re.split(r"\n(?=\.visible \.entry )", ptx)
    return {re.match(r"\.visible \.entry (\w+)", p).group(1): p for p in parts[1:]}


@pytest.mark.parametrize("arch", ARCHS)
def test_per_pixel_kernels_run_no_float64(tmp_path, arch):
    ptx = _ptx(tmp_path, arch)
    assert ".func" not in "".join(ptx.values())  # all inlined: the entries hold everything
    per_pixel = {
        name: body
        for text in ptx.values()
        for name, body in _entries(text).items()
        if name.startswith(("em_preprocess_", "em_segment_"))
    }
    assert len(per_pixel) == 10  # 4 raw types x 2 outputs, and 2 logit types
    for name, body in per_pixel.items():
        f64 = [line.strip() for line in body.splitlines() if ".f64" in line]
        assert f64 == [], f"{name} computes in float64 per pixel: {f64[:4]}"
    # float64 stays where the z-score statistics need it: sums over the source slice,
    # and one division and square root per slice and channel (pass 2).
    zstats = _entries(ptx["preprocess"])["em_zstats_i16"]
    assert "add.rn.f64" in zstats and "sqrt.rn.f64" in zstats


@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_contracts_no_double_multiply_add(tmp_path, arch):
    """The cubin build's PTX has no fma.rn.f64: neither with the build's own options nor
    without -fmad=false (the sources use the __d*_rn intrinsics for every float64 step
    whose rounding the host build fixes)."""
    assert "-fmad=false" in build.NVCC_OPTIONS and "-ffp-contract=off" in build.HOST_CXXFLAGS
    for drop in ((), ("-fmad=false",)):
        for stem, text in _ptx(tmp_path, arch, drop).items():
            assert "fma.rn.f64" not in text, (stem, drop)


def test_fmad_false_is_what_stops_plain_expressions_being_fused(tmp_path):
    """The check above can fail: a plain ``a * b + c`` in double is fused by default and
    not under the build's options."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    src = tmp_path / "fused.cu"
    src.write_text('extern "C" __global__ void f(double* p) { p[0] = p[1] * p[2] + p[3]; }\n')
    fused = build.nvcc_command(src, tmp_path / "a.ptx", "sm_87", ptx=True)
    subprocess.run([a for a in fused if a != "-fmad=false"], check=True, capture_output=True)
    assert "fma.rn.f64" in (tmp_path / "a.ptx").read_text()
    subprocess.run(fused, check=True, capture_output=True)
    assert "fma.rn.f64" not in (tmp_path / "a.ptx").read_text()


@pytest.mark.parametrize("coord32", [False, True])
@pytest.mark.parametrize(
    ("n_src", "n_dst"), [(512, 256), (128, 256), (300, 217), (1, 64), (7, 1), (97, 97), (5000, 3)]
)
def test_bilinear_taps_follow_the_documented_rule(n_src, n_dst, coord32):
    taps = bilinear_taps(n_src, n_dst, coord32)
    x0, x1, a = ref_taps(n_src, n_dst, coord32)
    assert taps.dtype == TAP_DTYPE and taps.dtype.itemsize == 16 and len(taps) == n_dst
    np.testing.assert_array_equal(taps["i0"], x0)
    # where a == 0 the second tap is never weighted: the kernel may read either
    np.testing.assert_array_equal(taps["i1"][a > 0], x1[a > 0])
    np.testing.assert_array_equal(taps["a"], a.astype(np.float32))
    assert not taps.flags.writeable  # cached and shared


def test_launch_taps_are_16_byte_records_at_the_slice_offsets():
    """Each slice record points at its own taps, and the joined array keeps the C
    struct's 16-byte records (a packed 12-byte copy would shift every tap)."""
    spec = PreprocessSpec(size=(96, 200), windows=(Window(40.0, 400.0),), resize="letterbox")
    shapes = [(128, 100), (300, 217)]
    launch = pack_preprocess(spec, shapes, np.int16, coord32=False)
    assert launch.taps.dtype == TAP_DTYPE and launch.taps.dtype.itemsize == 16
    for s, (h, w) in zip(launch.slices, shapes, strict=True):
        p = place((h, w), spec)
        tx = launch.taps[s["tap_x"] : s["tap_x"] + p.width]
        ty = launch.taps[s["tap_y"] : s["tap_y"] + p.height]
        np.testing.assert_array_equal(tx, bilinear_taps(w, p.width, False))
        np.testing.assert_array_equal(ty, bilinear_taps(h, p.height, False))
    seg = pack_segment(SegmentationSpec(), (2, 5, 96, 200), launch.placements, coord32=True)
    assert seg.taps.dtype.itemsize == 16
    for s, p in zip(seg.slices, launch.placements, strict=True):
        h, w = p.source
        np.testing.assert_array_equal(
            seg.taps[s["tap_x"] : s["tap_x"] + w], bilinear_taps(p.width, w, True)
        )
        np.testing.assert_array_equal(
            seg.taps[s["tap_y"] : s["tap_y"] + h], bilinear_taps(p.height, h, True)
        )
