"""The CPU preprocessing reference against an independent NumPy reading of its docstring.

``edgemed.preprocess.cpu`` documents its arithmetic exactly because CUDA kernels will be
tested against it. The functions ``ref_*`` below re-implement that documentation
(bilinear resize with half-pixel centres and the documented clamps, window/clip,
unit/zscore/none, stretch/letterbox, Sobel edge magnitude, float16 cast) in plain
float64 NumPy, without OpenCV, and the tests compare them with ``preprocess`` on real
DICOM slices shipped with pydicom.

OpenCV evaluates the bilinear source coordinate in float64 when its IPP code takes the
call and in float32 otherwise (documented in step 4); :func:`opencv_coord32` states that
rule and :func:`test_inter_linear_coordinate_precision_follows_the_documented_rule` pins
it, so the pipeline tests can compare tightly on any OpenCV build.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edgemed.errors import BundleError, InputError, UsageError
from edgemed.io.image import MedicalImage
from edgemed.preprocess import (
    PreprocessSpec,
    Window,
    allocate,
    place,
    preprocess,
    preprocess_image,
)

# --- real data ---------------------------------------------------------------------------


def _dicom(name: str) -> np.ndarray:
    """A pydicom test file in physical units (float32), decoded by pydicom alone."""
    ds = pydicom.dcmread(get_testdata_file(name))
    a = ds.pixel_array.astype(np.float64)
    a = a * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    return a.astype(np.float32)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """CT_small.dcm in HU (128 x 128)."""
    return _dicom("CT_small.dcm")


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    """MR_small.dcm (64 x 64), no rescale in the file."""
    return _dicom("MR_small.dcm")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """examples_rgb_color.dcm: a real uncompressed RGB image (240 x 320 x 3)."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    assert ds.PhotometricInterpretation == "RGB"
    return ds.pixel_array.astype(np.float32)


# --- the documented arithmetic, re-implemented ----------------------------------------------


def opencv_coord32(h: int, w: int) -> bool:
    """Whether OpenCV rounds the bilinear source coordinate to float32 (step 4)."""
    return not (cv2.ipp.useIPP() and h >= 2 and w >= 2)


def ref_taps(n_src: int, n_dst: int, coord32: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per destination index: ``x0``, ``x1`` and weight ``a`` of ``x1`` (step 4)."""
    x = np.arange(n_dst, dtype=np.float64)
    sx = (x + 0.5) * (n_src / n_dst) - 0.5
    if coord32:
        sx = sx.astype(np.float32).astype(np.float64)
    x0 = np.floor(sx).astype(np.intp)
    a = sx - x0
    below = x0 < 0
    x0[below], a[below] = 0, 0.0
    above = x0 >= n_src - 1
    x0[above], a[above] = n_src - 1, 0.0
    x1 = np.minimum(x0 + 1, n_src - 1)  # only ever read with a == 0 when clamped
    return x0, x1, a


def ref_resize(p: np.ndarray, h: int, w: int, coord32: bool = False) -> np.ndarray:
    """Separable bilinear resize of ``p`` to ``(h, w)`` in float64, per the docstring."""
    p = np.asarray(p, dtype=np.float64)
    x0, x1, a = ref_taps(p.shape[1], w, coord32)
    y0, y1, b = ref_taps(p.shape[0], h, coord32)
    rows = (1 - a) * p[:, x0] + a * p[:, x1]
    return (1 - b)[:, None] * rows[y0] + b[:, None] * rows[y1]


def ref_box(h: int, w: int, H: int, W: int) -> tuple[int, int, int, int]:
    """Letterbox ``(top, left, nh, nw)`` as documented."""
    k = min(H / h, W / w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    return (H - nh) // 2, (W - nw) // 2, nh, nw


def ref_sobel_magnitude(c: np.ndarray) -> np.ndarray:
    """3x3 Sobel magnitude with replicated borders, over ``4*sqrt(2)``."""
    q = np.pad(np.asarray(c, dtype=np.float64), 1, mode="edge")
    gx = (q[:-2, 2:] + 2 * q[1:-1, 2:] + q[2:, 2:]) - (q[:-2, :-2] + 2 * q[1:-1, :-2] + q[2:, :-2])
    gy = (q[2:, :-2] + 2 * q[2:, 1:-1] + q[2:, 2:]) - (q[:-2, :-2] + 2 * q[:-2, 1:-1] + q[:-2, 2:])
    return np.sqrt(gx**2 + gy**2) / (4 * math.sqrt(2))


def ref_preprocess(src: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One slice -> ``(C, H, W)`` float64, every step of the docstring, no OpenCV."""
    s = np.asarray(src, dtype=np.float64)
    H, W = spec.height, spec.width
    if spec.windows:
        ranges = [(w.center - w.width / 2, w.center + w.width / 2) for w in spec.windows]
    else:
        ranges = [spec.clip] * (3 if spec.color == "rgb" else 1)
    h, w = s.shape[:2]
    if spec.resize == "stretch":
        top, left, nh, nw = 0, 0, H, W
    else:
        top, left, nh, nw = ref_box(h, w, H, W)
    coord32 = opencv_coord32(h, w)
    chans = []
    for c, rng in enumerate(ranges):
        if s.ndim == 3:
            plane = (
                s[..., c]
                if spec.color == "rgb"
                else 0.299 * s[..., 0] + 0.587 * s[..., 1] + 0.114 * s[..., 2]
            )
        else:
            plane = s
        v = plane if rng is None else np.clip(plane, rng[0], rng[1])
        if spec.scale == "unit":
            v = (v - rng[0]) / (rng[1] - rng[0])
        elif spec.scale == "zscore":
            v = (v - v.mean()) / max(v.std(), 1e-6)
        canvas = np.full((H, W), spec.pad_value, dtype=np.float64)
        canvas[top : top + nh, left : left + nw] = (
            v if (nh, nw) == (h, w) else ref_resize(v, nh, nw, coord32)
        )
        chans.append(canvas)
    if spec.edges:
        chans.append(ref_sobel_magnitude(chans[0]))
    return np.stack(chans)


def assert_matches_reference(got: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    """float32: within 1e-5 of the reference, relative to its magnitude (at least 1).

    float16: within one float16 ulp of the exact (float64) reference value. Near zero,
    where float16 ulps shrink to 6e-8, the float32 arithmetic before the cast (e.g. the
    cancellation inside Sobel) is allowed its own 1e-6 of the magnitude on top.
    """
    assert got.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    err = np.abs(got.astype(np.float64) - ref)
    if dtype == "float32":
        assert got.dtype == np.float32
        assert err.max() <= 1e-5 * scale, f"max error {err.max():.3g} (scale {scale:.3g})"
    else:
        assert got.dtype == np.float16
        ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
        worst = float(((err - 1e-6 * scale) / ulp).max())
        assert worst <= 1.0, f"{worst:.3g} float16 ulps off"


# --- bilinear resize: OpenCV vs the documented arithmetic -------------------------------


@pytest.fixture
def ipp_setting():
    """Lets a test switch OpenCV's IPP use, restoring the process-wide setting after."""
    before = cv2.ipp.useIPP()
    yield
    cv2.ipp.setUseIPP(before)


_RESIZE_CASES = [
    # (h_src, w_src, h_dst, w_dst): upscale, downscale, exact 2x (OpenCV's area path),
    # exact integer up/down factors, non-square, 1-pixel sources and destinations.
    (128, 128, 256, 256),
    (128, 128, 64, 64),
    (128, 128, 32, 96),
    (128, 128, 100, 37),
    (64, 64, 300, 200),
    (64, 64, 3, 5),
    (7, 5, 13, 11),
    (2, 2, 9, 4),
    (500, 300, 64, 256),
    (1, 128, 16, 16),
    (1, 512, 1, 100),
    (512, 1, 100, 7),
    (1, 1, 4, 3),
    (3, 7, 1, 1),
    (128, 128, 1, 128),
    (100, 100, 100, 100),
]


@pytest.mark.parametrize("case", _RESIZE_CASES, ids=lambda c: "{}x{}->{}x{}".format(*c))
def test_inter_linear_coordinate_precision_follows_the_documented_rule(case, ipp_setting):
    """cv2.resize INTER_LINEAR equals the documented arithmetic, with the source
    coordinate in float64 exactly when IPP takes the call and in float32 otherwise."""
    hs, ws, hd, wd = case
    img = np.random.default_rng(hs * 1000 + ws).uniform(-1, 1, (hs, ws)).astype(np.float32)
    for use_ipp in (True, False) if cv2.ipp.useIPP() else (False,):
        cv2.ipp.setUseIPP(use_ipp)
        got = cv2.resize(img, (wd, hd), interpolation=cv2.INTER_LINEAR).reshape(hd, wd)
        want = ref_resize(img, hd, wd, coord32=opencv_coord32(hs, ws))
        other = ref_resize(img, hd, wd, coord32=not opencv_coord32(hs, ws))
        # float32 weights and sums: a few float32 ulps of the value range (2).
        assert np.abs(got - want).max() <= 3e-7, (use_ipp, np.abs(got - want).max())
        # Where the two readings differ measurably, OpenCV must not match the other one.
        if np.abs(want - other).max() > 1e-5:
            assert np.abs(got - other).max() > 1e-6


def test_float32_coordinate_error_is_within_the_documented_bound():
    """Step 4: rounding sx to float32 moves a by at most 2**-24 * |sx|."""
    for n_src, n_dst in [(512, 100), (5000, 7), (128, 300), (3, 1)]:
        _, _, a64 = ref_taps(n_src, n_dst, coord32=False)
        x0, _, a32 = ref_taps(n_src, n_dst, coord32=True)
        sx = (np.arange(n_dst) + 0.5) * (n_src / n_dst) - 0.5
        # Compare weights where both readings chose the same x0 (otherwise a jumps by 1
        # while the interpolated value stays continuous).
        x0_64, _, _ = ref_taps(n_src, n_dst, coord32=False)
        same = x0 == x0_64
        assert np.all(np.abs(a32 - a64)[same] <= 2.0**-24 * np.maximum(np.abs(sx[same]), 1))


# --- the whole pipeline on real slices -------------------------------------------------

_DEMO = {
    "windows": [
        {"center": -600, "width": 1500},
        {"center": 40, "width": 400},
        {"center": 400, "width": 1800},
    ],
    "scale": "unit",
}

_CT_SPECS = {
    "demo-256-upscale-2x": {"size": [256, 256], **_DEMO},
    "demo-64-downscale-2x-edges": {"size": [64, 64], **_DEMO, "edges": True},
    "window-100x37-edges": {
        "size": [100, 37],
        "windows": [{"center": 40, "width": 400}],
        "edges": True,
    },
    "clip-letterbox-300x200-edges": {
        "size": [300, 200],
        "clip": [-1000, 1000],
        "resize": "letterbox",
        "pad_value": -0.25,
        "edges": True,
    },
    "zscore-letterbox-48x160": {
        "size": [48, 160],
        "clip": [-200, 300],
        "scale": "zscore",
        "resize": "letterbox",
        "pad_value": 0.0,
    },
    "none-passthrough-77x129": {"size": [77, 129], "scale": "none"},
    "none-same-size": {"size": [128, 128], "scale": "none", "edges": True},
    "zscore-3x5-tiny": {"size": [3, 5], "scale": "zscore", "edges": True},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", list(_CT_SPECS))
def test_ct_slice_matches_reference(ct, name, dtype):
    spec = PreprocessSpec.from_dict({**_CT_SPECS[name], "dtype": dtype})
    got, placements = preprocess([ct], spec)
    assert got.shape == (1, spec.num_channels, spec.height, spec.width)
    assert placements == [place(ct.shape, spec)]
    assert_matches_reference(got[0], ref_preprocess(ct, spec), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    "extra",
    [
        {"size": [64, 64]},
        {"size": [256, 96], "resize": "letterbox", "edges": True},
        {"size": [31, 200], "edges": True},
    ],
    ids=["same-size", "letterbox-256x96", "stretch-31x200"],
)
def test_mr_slice_matches_reference(mr, extra, dtype):
    # MR_small.dcm's own window (centre 600, width 1600).
    spec = PreprocessSpec.from_dict(
        {"windows": [{"center": 600, "width": 1600}], "dtype": dtype, **extra}
    )
    got, _ = preprocess([mr], spec)
    assert_matches_reference(got[0], ref_preprocess(mr, spec), dtype)


@pytest.mark.parametrize(
    "crop",
    [
        (slice(60, 61), slice(None)),  # 1 x 128
        (slice(None), slice(60, 61)),  # 128 x 1
        (slice(60, 61), slice(60, 61)),  # 1 x 1
        (slice(60, 62), slice(10, 90)),  # 2 x 80
    ],
    ids=["1x128", "128x1", "1x1", "2x80"],
)
@pytest.mark.parametrize(
    "extra",
    [
        {"size": [16, 16]},
        {"size": [1, 64]},
        {"size": [64, 1], "edges": True},
        {"size": [32, 32], "resize": "letterbox", "pad_value": 0.5, "edges": True},
    ],
    ids=["16x16", "1x64", "64x1-edges", "letterbox-32"],
)
def test_one_pixel_wide_sources(ct, crop, extra):
    src = np.ascontiguousarray(ct[crop])
    for dtype in ("float32", "float16"):
        spec = PreprocessSpec.from_dict({**_DEMO, **extra, "dtype": dtype})
        got, _ = preprocess([src], spec)
        assert_matches_reference(got[0], ref_preprocess(src, spec), dtype)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_of_slices_of_different_sizes(ct, mr, resize, dtype):
    slices = [ct, mr, ct[10:50, 20:120], ct[60:61, :], mr[:, 5:6], ct[::-1, ::2]]
    spec = PreprocessSpec.from_dict(
        {"size": [96, 80], **_DEMO, "edges": True, "resize": resize, "dtype": dtype}
    )
    got, placements = preprocess(slices, spec)
    assert got.shape == (len(slices), 4, 96, 80)
    for i, s in enumerate(slices):
        assert placements[i] == place(s.shape, spec)
        assert placements[i].source == s.shape
        assert_matches_reference(got[i], ref_preprocess(s, spec), dtype)
    # A stacked (N, Y, X) array is the same as a list of its slices, bit for bit (this
    # caught cv2.magnitude, whose last bit followed the output buffer's alignment).
    stacked, _ = preprocess(np.stack([ct, ct[::-1]]), spec)
    listed, _ = preprocess([ct, ct[::-1].copy()], spec)
    np.testing.assert_array_equal(stacked, listed)


# 1 + 2**-11 + 2**-30 rounds up to float16 directly, but to float32 first it becomes the
# float16 tie 1 + 2**-11, which rounds to even (1.0): padding must go through float32 too.
_DOUBLE_ROUNDING_PAD = 1 + 2**-11 + 2**-30


@pytest.mark.parametrize("pad", [0.1, _DOUBLE_ROUNDING_PAD])
@pytest.mark.parametrize("extra", [{"clip": [-1000, 1000]}, _DEMO], ids=["clip", "windows"])
def test_float16_output_is_the_float32_output_cast(ct, extra, pad):
    """Step 6: the cast is the last step, the edge channel and padding included."""
    base = {"size": [200, 150], "edges": True, "resize": "letterbox", "pad_value": pad, **extra}
    out32, _ = preprocess([ct, ct[:40]], PreprocessSpec.from_dict({**base, "dtype": "float32"}))
    out16, _ = preprocess([ct, ct[:40]], PreprocessSpec.from_dict({**base, "dtype": "float16"}))
    np.testing.assert_array_equal(out16, out32.astype(np.float16))


def test_edge_channel_is_deterministic_and_rounded_as_documented(ct):
    """Step 5: ``sqrt(gx*gx + gy*gy) * float32(1/(4*sqrt(2)))``, each operation rounded
    to float32, on OpenCV's Sobel of the float32 canvas; the same input always gives the
    same bits (cv2.magnitude did not: with IPP its last bit follows buffer alignment)."""
    spec = PreprocessSpec.from_dict(
        {"size": [96, 80], **_DEMO, "edges": True, "resize": "letterbox", "pad_value": 0.25}
    )
    runs = [preprocess([ct], spec)[0] for _ in range(6)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    canvas = runs[0][0, 0]
    gx = cv2.Sobel(canvas, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(canvas, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    want = np.sqrt(gx * gx + gy * gy) * np.float32(1 / (4 * math.sqrt(2)))
    np.testing.assert_array_equal(runs[0][0, 3], want)


# --- window, scale, stacking ---------------------------------------------------------


@pytest.mark.parametrize(
    "center, width", [(-600, 1500), (40, 400), (400, 1800), (50, 350), (1000, 4000), (0.5, 1)]
)
def test_window_endpoints_map_to_0_and_1(center, width):
    lo, hi = center - width / 2, center + width / 2
    values = [lo, hi, lo - 1000, hi + 1000, (lo + hi) / 2, -3.0e38, 3.0e38]
    src = np.array([values], dtype=np.float32)
    spec = PreprocessSpec(size=src.shape, windows=(Window(center, width),))
    got = preprocess([src], spec)[0][0, 0, 0]
    np.testing.assert_array_equal(got, np.float32([0, 1, 0, 1, 0.5, 0, 1]))


def test_window_endpoints_of_arbitrary_windows_are_within_float32_rounding():
    """Outside round-valued windows, lo and hi themselves round to float32 (step 2),
    so hi lands within that rounding of 1; below lo is still exactly 0."""
    rng = np.random.default_rng(7)
    for center, width in rng.uniform([-1000, 1], [3000, 5000], (200, 2)):
        lo, hi = center - width / 2, center + width / 2
        src = np.array([[lo, hi, lo - 1, hi + 1]], dtype=np.float32)
        spec = PreprocessSpec(size=src.shape, windows=(Window(center, width),))
        got = preprocess([src], spec)[0][0, 0, 0].astype(np.float64)
        bound = (np.spacing(np.float32(abs(lo))) + np.spacing(np.float32(abs(hi)))) / width
        assert got[0] == 0 and got[2] == 0
        assert abs(got[1] - 1) <= bound + 2**-23 and got[3] == got[1]


def test_multi_window_stacking_gives_one_channel_per_window_in_order(ct):
    windows = [(-600, 1500), (40, 400), (400, 1800), (-1000, 10)]
    spec = PreprocessSpec(size=(90, 70), windows=tuple(Window(c, w) for c, w in windows))
    got, _ = preprocess([ct], spec)
    assert got.shape == (1, len(windows), 90, 70)
    for i, (c, w) in enumerate(windows):
        one, _ = preprocess([ct], PreprocessSpec(size=(90, 70), windows=(Window(c, w),)))
        np.testing.assert_array_equal(got[0, i], one[0, 0])
    # Different windows really give different channels on this slice.
    assert not np.array_equal(got[0, 0], got[0, 1])


@pytest.mark.parametrize("clip", [None, (-1000.0, 1000.0)])
def test_zscore_normalises_the_unresized_slice(ct, mr, clip):
    for src in (ct, mr):
        spec = PreprocessSpec(size=src.shape, clip=clip, scale="zscore")
        v = preprocess([src], spec)[0][0, 0].astype(np.float64)
        assert abs(v.mean()) < 1e-5
        assert abs(v.std() - 1) < 1e-5


def test_zscore_std_floor_is_1e_minus_6():
    src = np.zeros((4, 4), np.float32)
    src[::2, ::2] = src[1::2, 1::2] = 2e-7  # mean 1e-7, population std 1e-7
    v = preprocess([src], PreprocessSpec(size=(4, 4), scale="zscore"))[0][0, 0]
    np.testing.assert_allclose(np.abs(v), 0.1, rtol=1e-5)


def test_zscore_of_a_constant_slice_is_zero_not_nan():
    spec = PreprocessSpec(size=(8, 8), scale="zscore", edges=True)
    got, _ = preprocess([np.full((8, 8), 42.0, np.float32)], spec)
    np.testing.assert_array_equal(got, 0)


def test_none_scale_without_range_passes_values_through(ct):
    got, _ = preprocess([ct], PreprocessSpec(size=ct.shape, scale="none"))
    np.testing.assert_array_equal(got[0, 0], ct)


def test_edge_channel_of_unit_data_is_at_most_1():
    rng = np.random.default_rng(3)
    src = (rng.uniform(size=(40, 40)) > 0.5).astype(np.float32)  # hardest case: 0/1 noise
    spec = PreprocessSpec(size=(40, 40), clip=(0.0, 1.0), edges=True)
    e = preprocess([src], spec)[0][0, 1]
    assert e.max() <= 1.0
    # A unit vertical step: |gx| = 4 on both sides of it, 4 / (4*sqrt(2)).
    step = np.zeros((5, 6), np.float32)
    step[:, 3:] = 1
    e = preprocess([step], PreprocessSpec(size=(5, 6), clip=(0.0, 1.0), edges=True))[0][0, 1]
    np.testing.assert_allclose(e[:, 2:4], 1 / math.sqrt(2), rtol=1e-6)
    np.testing.assert_array_equal(e[:, [0, 1, 4, 5]], 0)


# --- letterbox geometry ----------------------------------------------------------------


@pytest.mark.parametrize(
    "src_shape, size",
    [
        ((128, 128), (256, 256)),
        ((128, 128), (200, 100)),
        ((240, 320), (256, 256)),
        ((1, 128), (64, 64)),
        ((128, 1), (64, 64)),
        ((3, 7), (256, 256)),
        ((2, 4), (5, 5)),  # h*k == 2.5: Python's round goes to even (2)
        ((100, 37), (37, 100)),
        ((512, 512), (7, 300)),
        ((64, 64), (64, 64)),
    ],
)
def test_letterbox_geometry(src_shape, size):
    h, w = src_shape
    H, W = size
    spec = PreprocessSpec(size=size, clip=(0.0, 1.0), resize="letterbox", pad_value=-7.0)
    p = place(src_shape, spec)
    assert (p.top, p.left, p.height, p.width) == ref_box(h, w, H, W)
    assert p.source == (h, w)
    # Fits, touches two opposite sides, centred (odd slack goes to the bottom/right).
    assert 1 <= p.height <= H and 1 <= p.width <= W
    assert p.height == H or p.width == W
    assert p.top == (H - p.height) // 2 and p.left == (W - p.width) // 2
    # Aspect ratio kept to within rounding: each side within half a pixel of h*k, w*k.
    k = min(H / h, W / w)
    assert abs(p.height - h * k) <= 0.5 or p.height == 1
    assert abs(p.width - w * k) <= 0.5 or p.width == 1

    src = np.full(src_shape, 0.5, np.float32)
    got, placements = preprocess([src], spec)
    assert placements == [p]
    box = np.zeros((H, W), bool)
    box[p.top : p.top + p.height, p.left : p.left + p.width] = True
    assert np.all(got[0, 0][~box] == -7.0)
    assert np.all(got[0, 0][box] == 0.5)


def test_place_stretch_is_the_whole_canvas():
    spec = PreprocessSpec(size=(30, 40), clip=(0.0, 1.0))
    p = place((7, 300), spec)
    assert (p.top, p.left, p.height, p.width) == (0, 0, 30, 40)


# --- buffers, colour, errors -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_preallocated_output_is_written_in_place(ct, dtype):
    spec = PreprocessSpec.from_dict({"size": [64, 48], **_DEMO, "edges": True, "dtype": dtype})
    buf = allocate(spec, 4)
    assert buf.shape == (4, 4, 64, 48) and buf.dtype == np.dtype(dtype)
    buf.fill(np.nan)
    got, _ = preprocess([ct, ct[::2]], spec, out=buf)
    assert got.shape == (2, 4, 64, 48)
    assert np.shares_memory(got, buf) and got.base is buf
    fresh, _ = preprocess([ct, ct[::2]], spec)
    np.testing.assert_array_equal(buf[:2], fresh)
    assert np.isnan(buf[2:]).all()  # rows beyond the batch are untouched


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((1, 4, 64, 48), "float32"),  # batch too small for 2 slices
        ((2, 3, 64, 48), "float32"),  # channels
        ((2, 4, 48, 64), "float32"),  # H and W swapped
        ((2, 4, 64, 48), "float16"),  # dtype
        ((2, 4, 64, 48), "float64"),
        ((4, 64, 48), "float32"),  # rank
    ],
)
def test_wrong_output_buffer_raises_usage_error(ct, shape, dtype):
    spec = PreprocessSpec.from_dict({"size": [64, 48], **_DEMO, "edges": True})
    with pytest.raises(UsageError) as exc:
        preprocess([ct, ct], spec, out=np.zeros(shape, dtype))
    assert exc.value.code == "USAGE"


def test_colour_to_gray_is_luma(rgb):
    spec = PreprocessSpec(size=(120, 160), clip=(0.0, 255.0), edges=True)
    got, _ = preprocess([rgb], spec)
    assert got.shape == (1, 2, 120, 160)
    assert_matches_reference(got[0], ref_preprocess(rgb, spec), "float32")
    # Unresized, the luma channel is the documented weighted sum.
    same, _ = preprocess([rgb], PreprocessSpec(size=rgb.shape[:2], scale="none"))
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(same[0, 0], luma, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_colour_rgb_keeps_three_channels(rgb, dtype):
    spec = PreprocessSpec(
        size=(100, 100), clip=(0.0, 255.0), color="rgb", resize="letterbox", dtype=dtype
    )
    assert spec.num_channels == 3
    got, _ = preprocess([rgb], spec)
    assert got.shape == (1, 3, 100, 100)
    assert_matches_reference(got[0], ref_preprocess(rgb, spec), dtype)
    # Channel c is sample c: unresized, it is exactly the clipped, scaled plane.
    same, _ = preprocess([rgb], PreprocessSpec(size=rgb.shape[:2], clip=(0.0, 255.0), color="rgb"))
    for c in range(3):
        np.testing.assert_allclose(same[0, c], rgb[..., c] / 255.0, rtol=0, atol=1e-7)
    assert not np.array_equal(same[0, 0], same[0, 2])


def test_preprocess_image_takes_every_slice_of_a_volume(ct):
    vol = np.stack([ct, ct[::-1], ct[:, ::-1]])
    image = MedicalImage(vol, spacing=(2.0, 0.5, 0.5), modality="CT")
    spec = PreprocessSpec.from_dict({"size": [64, 64], **_DEMO})
    got, placements = preprocess_image(image, spec)
    assert got.shape == (3, 3, 64, 64) and len(placements) == 3
    np.testing.assert_array_equal(got, preprocess(list(vol), spec)[0])


@pytest.mark.parametrize(
    "slices",
    [[np.zeros((4, 4, 2), np.float32)], [np.zeros(5, np.float32)], [np.zeros((0, 4), np.float32)]],
    ids=["2-samples", "1d", "empty"],
)
def test_bad_slices_raise_input_error(slices):
    with pytest.raises(InputError):
        preprocess(slices, PreprocessSpec(size=(4, 4), scale="none"))


def test_empty_batch_raises_usage_error():
    with pytest.raises(UsageError):
        preprocess([], PreprocessSpec(size=(4, 4), scale="none"))


# --- the spec ----------------------------------------------------------------------------

_GOOD = {"size": [32, 32], "clip": [0, 1]}


@pytest.mark.parametrize(
    "data",
    [
        {**_GOOD, "sise": [32, 32]},  # unknown key (a typo)
        {**_GOOD, "size": [32, 0]},  # width <= 0
        {**_GOOD, "size": [-1, 32]},
        {**_GOOD, "size": [32]},
        {**_GOOD, "size": "big"},
        {"clip": [0, 1]},  # no size
        {"size": [32, 32], "clip": [0, 1], "windows": [{"center": 0, "width": 1}]},
        {"size": [32, 32], "scale": "unit"},  # unit scale without a range
        {"size": [32, 32], "windows": [{"center": 0, "width": 0}]},
        {"size": [32, 32], "windows": [{"center": 0}]},
        {**_GOOD, "clip": [1, 0]},
        {**_GOOD, "clip": [1]},
        {**_GOOD, "dtype": "float64"},  # bad dtype
        {**_GOOD, "dtype": "int8"},
        {**_GOOD, "scale": "minmax"},
        {**_GOOD, "resize": "crop"},
        {**_GOOD, "color": "bgr"},
        {**_GOOD, "pad_value": "zero"},
        {"size": [32, 32], "windows": [{"center": 0, "width": 1}], "color": "rgb"},
    ],
)
def test_bad_specs_raise_bundle_invalid(data):
    with pytest.raises(BundleError) as exc:
        PreprocessSpec.from_dict(data)
    assert exc.value.code == "BUNDLE_INVALID"


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(size=(256, 256), windows=(Window(-600, 1500), Window(40, 400))),
        PreprocessSpec(
            size=(48, 160),
            clip=(-200.0, 300.0),
            scale="zscore",
            edges=True,
            resize="letterbox",
            pad_value=-1.5,
            dtype="float16",
        ),
        PreprocessSpec(size=(8, 8), scale="none", color="rgb"),
    ],
)
def test_spec_round_trips_through_its_dict(spec):
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
