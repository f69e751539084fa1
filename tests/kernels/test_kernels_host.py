"""The kernel bodies (g++ host build) against the CPU reference on real and synthetic data.

Preprocessing: raw stored pixels + rescale through the fused kernel vs
``edgemed.preprocess.cpu.preprocess`` on ``raw * slope + intercept`` (float32).
Postprocessing: the segmentation kernel vs ``edgemed.postprocess.segment`` on real logits
of the demo model. Tolerances: see kernel_cases.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgemed.cuda.build import KERNEL_DIR
from edgemed.cuda.packing import (
    MAX_CHANNELS,
    POST_SLICE_DTYPE,
    POST_SPEC_DTYPE,
    PRE_SLICE_DTYPE,
    PRE_SPEC_DTYPE,
    RAW_DTYPES,
    TAP_DTYPE,
    pack_preprocess,
)
from edgemed.errors import UsageError
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.postprocess import segment
from edgemed.preprocess import PreprocessSpec, Window, preprocess
from tests.kernels.kernel_cases import (
    check_masks,
    check_preprocess,
    demo_logits,
    preprocess_cases,
    segment_specs,
)

pytestmark = pytest.mark.kernels

CASES = preprocess_cases()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_preprocess_kernel_matches_cpu(host_kernels, name, dtype):
    case = CASES[name].with_dtype(dtype)
    got, placements = host_kernels.preprocess(case.raw, case.spec, case.slopes, case.intercepts)
    ref, ref_placements = preprocess(case.physical(), case.spec)
    assert placements == ref_placements
    err = check_preprocess(got, ref, dtype)
    if dtype == "float16":  # the half path rounds the very float32 values (nearest even)
        got32, _ = host_kernels.preprocess(
            case.raw, case.with_dtype("float32").spec, case.slopes, case.intercepts
        )
        np.testing.assert_array_equal(got.view(np.uint16), got32.astype(np.float16).view(np.uint16))
    print(f"{name} {dtype}: {'rel' if dtype == 'float32' else 'ulps'} {err:.3g}")


def test_preprocess_kernel_detects_a_wrong_rescale(host_kernels):
    """The comparison can fail: a slope off by one part in 1e4 is caught."""
    case = CASES["ct-demo-128to256"]
    got, _ = host_kernels.preprocess(case.raw, case.spec, [1.0001], case.intercepts)
    ref, _ = preprocess(case.physical(), case.spec)
    with pytest.raises(AssertionError):
        check_preprocess(got, ref, "float32")


def test_float64_and_float32_coordinates_differ_within_the_documented_bound(host_kernels):
    """Forcing the other coordinate rule moves values by at most 2**-24 * size of a step."""
    case = CASES["u16-512to256"]
    a, _ = host_kernels.preprocess(case.raw, case.spec, case.slopes, case.intercepts, coord32=True)
    b, _ = host_kernels.preprocess(case.raw, case.spec, case.slopes, case.intercepts, coord32=False)
    assert np.abs(a - b).max() <= 2.0**-24 * 512 + 1e-6


@pytest.fixture(scope="module")
def logits_and_placements():
    return demo_logits()


@pytest.mark.parametrize("logits_dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(segment_specs()))
def test_segment_kernel_matches_cpu(host_kernels, logits_and_placements, name, logits_dtype):
    logits, placements = logits_and_placements
    logits = logits.astype(logits_dtype)
    post = segment_specs()[name]
    labels = ["background", "lung", "fat", "soft_tissue", "bone"]
    got = host_kernels.segment(logits, placements, post, labels)
    ref = segment(logits, placements, post, labels)
    agreement, gap = check_masks(got, ref, logits, placements, post)
    # The masks are not trivial: the demo model finds several tissues on real CT.
    assert len(np.unique(ref[0])) >= 3
    print(f"{name} {logits_dtype}: agreement {agreement:.6f}, largest gap {gap:.3g}")


def test_segment_kernel_largest_component_runs_on_the_host(host_kernels, logits_and_placements):
    logits, placements = logits_and_placements
    labels = ["background", "lung", "fat", "soft_tissue", "bone"]
    post = SegmentationSpec(largest_component=("bone", "lung"))
    got = host_kernels.segment(logits, placements, post, labels)
    ref = segment(logits, placements, post, labels)
    check_masks(got, ref, logits, placements, SegmentationSpec())


def test_segment_kernel_detects_a_wrong_placement(host_kernels, logits_and_placements):
    """The comparison can fail: a box shifted by one pixel changes many labels."""
    logits, placements = logits_and_placements
    p = placements[1]
    moved = [*placements[:1], type(p)(p.source, p.top, p.left + 1, p.height, p.width - 1)]
    got = host_kernels.segment(logits[:2], moved, SegmentationSpec())
    ref = segment(logits[:2], placements[:2], SegmentationSpec(), [])
    with pytest.raises(AssertionError):
        check_masks(got, ref, logits[:2], placements[:2], SegmentationSpec())


# --- what the kernel path refuses --------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(size=(64, 64), clip=(0.0, 255.0), color="rgb"),
        PreprocessSpec(size=(64, 64), windows=(Window(40.0, 400.0),), edges=True),
        PreprocessSpec(size=(64, 64), windows=tuple(Window(float(i), 10.0) for i in range(17))),
    ],
    ids=["rgb", "edges", "17-windows"],
)
def test_unsupported_specs_are_refused(spec):
    with pytest.raises(UsageError) as exc:
        pack_preprocess(spec, [(8, 8)], np.int16)
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"


def test_unsupported_raw_types_and_mixed_batches_are_refused(host_kernels):
    spec = PreprocessSpec(size=(8, 8), clip=(0.0, 1.0))
    with pytest.raises(UsageError) as exc:
        host_kernels.preprocess([np.zeros((4, 4), np.int32)], spec)
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"
    with pytest.raises(UsageError):
        host_kernels.preprocess([np.zeros((4, 4), np.int16), np.zeros((4, 4), np.uint16)], spec)
    with pytest.raises(UsageError):
        host_kernels.preprocess([np.zeros((4, 4, 3), np.uint8)], spec)


def test_parameter_layouts_match_the_c_structs():
    """The NumPy mirrors have the sizes the header's static_asserts pin."""
    header = (KERNEL_DIR / "edgemed_kernels.h").read_text()
    sizes = dict(re.findall(r"static_assert\(sizeof\((\w+)\) == (\d+)", header))
    assert int(sizes["EmPreSpec"]) == PRE_SPEC_DTYPE.itemsize
    assert int(sizes["EmPreSlice"]) == PRE_SLICE_DTYPE.itemsize
    assert int(sizes["EmPostSpec"]) == POST_SPEC_DTYPE.itemsize
    assert int(sizes["EmPostSlice"]) == POST_SLICE_DTYPE.itemsize
    assert int(sizes["EmTap"]) == TAP_DTYPE.itemsize
    assert f"#define EM_MAX_CHANNELS {MAX_CHANNELS}" in header


def test_every_entry_point_the_launchers_name_exists(host_kernels):
    lib = host_kernels._lib
    for suffix in RAW_DTYPES.values():
        for out in ("f32", "f16"):
            assert hasattr(lib, f"em_preprocess_{suffix}_{out}")
        assert hasattr(lib, f"em_zstats_{suffix}")
    assert hasattr(lib, "em_segment_f32") and hasattr(lib, "em_segment_f16")


def test_the_requested_build_is_the_one_loaded(host_kernels):
    """Under the ASan rerun (SANITIZE_ENV=1) these comparisons really use the ASan build."""
    import os

    from tests.kernels.kernel_cases import SANITIZE_ENV

    sanitized = "_asan_" in host_kernels.path.name
    assert sanitized == (os.environ.get(SANITIZE_ENV) == "1")
