"""Real and synthetic inputs for the kernel tests, and the tolerance checks.

Shared by tests/kernels (host build) and tests/cuda (GPU): ``tests.kernels.kernel_cases``.

Tolerances (the CPU reference is edgemed.preprocess.cpu / edgemed.postprocess):
* float32 output: ``max |kernel - cpu| <= 1e-5 * (max(cpu) - min(cpu))`` per case;
* float16 output: within one float16 ulp of the reference, plus the float32 bound (values
  near zero from cancellation), and exactly the float16 cast of the kernel's float32 output;
* masks: agreement >= 99.99 % and every differing pixel a near-tie of the reference's
  probabilities (top-2 gap, or distance to the threshold, below 1e-5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from edgemed.heads.segmentation import SegmentationSpec
from edgemed.postprocess import _to_source, activate
from edgemed.preprocess import PreprocessSpec, Window

#: Set to "1" to build the host library with ASan/UBSan (tests/conftest.py, ``host_kernels``).
SANITIZE_ENV = "EDGEMED_KERNELS_SANITIZE"
#: A folder to build the host library in (default: a fresh temporary one).
BUILD_DIR_ENV = "EDGEMED_KERNELS_BUILD_DIR"
F32_REL_TOL = 1e-5
NEAR_TIE = 1e-5
MIN_AGREEMENT = 0.9999


def dicom_raw(name: str) -> tuple[np.ndarray, float, float]:
    """A pydicom test file's stored pixels and its rescale slope/intercept."""
    ds = pydicom.dcmread(get_testdata_file(name))
    return (
        ds.pixel_array,
        float(ds.get("RescaleSlope", 1.0)),
        float(ds.get("RescaleIntercept", 0.0)),
    )


def physical(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """What the CPU path receives: ``raw * slope + intercept`` in float32 (two roundings)."""
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def phantom(h: int, w: int, dtype: type, seed: int, lo: float, hi: float) -> np.ndarray:
    """A synthetic slice: smooth ellipses (edges to interpolate across) plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 10, h / 2), rng.uniform(w / 10, w / 2)
        img[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] += rng.uniform(0.2, 1)
    img = img / max(img.max(), 1e-9) + rng.normal(0, 0.05, size=(h, w))
    return np.clip(lo + img * (hi - lo), lo, hi).astype(dtype)


@dataclass
class PreCase:
    """Raw slices of one type + rescale per slice + a spec; ``dtype`` set per test."""

    raw: list[np.ndarray]
    slopes: list[float]
    intercepts: list[float]
    spec: PreprocessSpec

    def physical(self) -> list[np.ndarray]:
        return [
            physical(r, s, i)
            for r, s, i in zip(self.raw, self.slopes, self.intercepts, strict=True)
        ]

    def with_dtype(self, dtype: str) -> PreCase:
        d = self.spec.to_dict()
        d["dtype"] = dtype
        return PreCase(self.raw, self.slopes, self.intercepts, PreprocessSpec.from_dict(d))


def demo_spec() -> PreprocessSpec:
    text = resources.files("edgemed").joinpath("data/demo/bundle.json").read_text()
    return PreprocessSpec.from_dict(json.loads(text)["preprocess"])


def preprocess_cases() -> dict[str, PreCase]:
    ct, ct_s, ct_i = dicom_raw("CT_small.dcm")  # int16 128 x 128, slope 1, intercept -1024
    mr, mr_s, mr_i = dicom_raw("MR_small.dcm")  # int16 64 x 64, no rescale
    ct_crop = np.ascontiguousarray(ct[:, 10:110])  # 128 x 100: a real non-square slice
    w2 = (Window(40.0, 400.0), Window(-600.0, 1500.0))
    ph512 = phantom(512, 512, np.int16, 1, -1024, 2000)
    return {
        # Real CT, the demo bundle's own spec: 3 windows, unit, letterbox 128 -> 256.
        "ct-demo-128to256": PreCase([ct], [ct_s], [ct_i], demo_spec()),
        # Real MR upscaled 4x, z-score without clipping.
        "mr-zscore-64to256": PreCase(
            [mr], [mr_s], [mr_i], PreprocessSpec(size=(256, 256), scale="zscore")
        ),
        # Downscale 512 -> 256 (uint16 raw with a fractional slope), one window.
        "u16-512to256": PreCase(
            [phantom(512, 512, np.uint16, 2, 0, 4000)],
            [0.25],
            [-100.0],
            PreprocessSpec(size=(256, 256), windows=(Window(300.0, 600.0),)),
        ),
        # 300 x 217 letterboxed (pad -1), clip, no scaling: physical units out.
        "i16-300x217-letterbox": PreCase(
            [phantom(300, 217, np.int16, 3, -1024, 3000)],
            [0.5],
            [-20.0],
            PreprocessSpec(
                size=(256, 256),
                clip=(-500.0, 1500.0),
                scale="none",
                resize="letterbox",
                pad_value=-1.0,
            ),
        ),
        # Exact 2x downscale of uint8 (OpenCV's area path: weights 0.5).
        "u8-exact-2x": PreCase(
            [phantom(256, 256, np.uint8, 4, 0, 255)],
            [1.0],
            [0.0],
            PreprocessSpec(size=(128, 128), clip=(0.0, 255.0)),
        ),
        # Batch of three real/synthetic int16 slices of different sizes and rescales, one
        # launch: z-score per slice and window, letterbox into a non-square input.
        "batch3-zscore-letterbox": PreCase(
            [ct, mr, phantom(384, 512, np.int16, 5, -1024, 2000)],
            [ct_s, mr_s, 2.0],
            [ct_i, mr_i, -1024.0],
            PreprocessSpec(size=(192, 160), windows=w2, scale="zscore", resize="letterbox"),
        ),
        # float32 raw (already physical) batch: real CT crop + stretch to a non-square box.
        "f32-batch-stretch": PreCase(
            [physical(ct_crop, ct_s, ct_i), physical(ph512, 1.0, 0.0)[:300, :217].copy()],
            [1.0, 1.0],
            [0.0, 0.0],
            PreprocessSpec(size=(96, 200), windows=w2),
        ),
        # Equal size: an exact copy of the windowed values.
        "ct-equal-size": PreCase([ct], [ct_s], [ct_i], PreprocessSpec(size=(128, 128), windows=w2)),
        # A constant slice under z-score: std 0 is clamped to 1e-6 (output all zeros).
        "constant-zscore": PreCase(
            [np.full((37, 53), 7, np.uint16)],
            [0.3],
            [0.0],
            PreprocessSpec(size=(64, 64), scale="zscore"),
        ),
        # A 1-pixel-high and a 1-pixel-wide source (OpenCV's float32-coordinate case).
        "thin-sources": PreCase(
            [phantom(1, 300, np.int16, 6, -1000, 1000), phantom(7, 1, np.int16, 7, -1000, 1000)],
            [1.0, 1.0],
            [0.0, 0.0],
            PreprocessSpec(size=(16, 64), clip=(-1000.0, 1000.0), resize="letterbox"),
        ),
    }


def f32_error(got: np.ndarray, ref: np.ndarray) -> float:
    """``max |got - ref|`` relative to the reference's value range."""
    span = float(ref.max() - ref.min()) or 1.0
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max() / span)


def check_preprocess(got: np.ndarray, ref: np.ndarray, dtype: str) -> float:
    """Assert the tolerance for ``dtype``; return the measured error.

    float32: the relative error (of the reference's value range). float16: the error in
    float16 ulps of the reference value; allowed is one ulp plus the float32 bound,
    because an output near zero produced by cancellation (bilinear weights on values of
    opposite sign) carries the float32 error of the large inputs, which can be several
    float16 ulps of the small result. (The kernel's float16 output is also checked to
    be exactly the float16 cast of its own float32 output.)
    """
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, got.dtype, ref.dtype)
    assert np.isfinite(got).all()
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    span = float(r.max() - r.min()) or 1.0
    if dtype == "float32":
        err = float(np.abs(g - r).max() / span)
        assert err <= F32_REL_TOL, f"max relative error {err:.3g} > {F32_REL_TOL}"
        return err
    ulp = np.spacing(np.abs(ref)).astype(np.float64)  # float16 spacing at each reference value
    excess = np.abs(g - r) - ulp
    assert excess.max() <= F32_REL_TOL * span, f"float16 error {excess.max():.3g} past one ulp"
    return float((np.abs(g - r) / ulp).max())


def segment_specs() -> dict[str, SegmentationSpec]:
    return {
        "softmax-argmax": SegmentationSpec(),
        "softmax-threshold": SegmentationSpec(decision="threshold", threshold=0.6),
        "sigmoid-threshold": SegmentationSpec(activation="sigmoid", decision="threshold"),
        "none-argmax": SegmentationSpec(activation="none"),
    }


def check_masks(got, ref, logits, placements, post: SegmentationSpec) -> tuple[float, float]:
    """Assert masks agree up to near-ties; return (agreement, largest gap where differing)."""
    probs = activate(logits, post.activation, axis=1)
    total = same = 0
    worst = 0.0
    for g, r, prob, p in zip(got, ref, probs, placements, strict=True):
        assert g.shape == r.shape == p.source and g.dtype == np.uint8
        total += r.size
        same += int((g == r).sum())
        diff = g != r
        if not diff.any():
            continue
        hwc = _to_source(prob, p)[diff].astype(np.float64)  # (k, C) at differing pixels
        top2 = np.sort(hwc, axis=1)[:, -2:] if hwc.shape[1] > 1 else np.zeros((len(hwc), 2))
        gap = top2[:, 1] - top2[:, 0]
        if post.decision == "threshold":
            gap = np.minimum(gap, np.abs(hwc.max(axis=1) - np.float32(post.threshold)))
        worst = max(worst, float(gap.max()))
        assert gap.max() < NEAR_TIE, (
            f"labels differ where the reference is no near-tie ({gap.max():.3g})"
        )
    agreement = same / total
    assert agreement >= MIN_AGREEMENT, f"mask agreement {agreement:.6f}"
    return agreement, worst


def demo_logits() -> tuple[np.ndarray, list]:
    """Real model logits: the demo bundle's FP32 ONNX (ONNX Runtime) on real CT slices
    preprocessed by the CPU path (letterbox): CT_small (square), a 128 x 100 crop of it
    (letterboxed: the box is 256 x 200 at left 28), CT_small enlarged to 300 x 300 (the
    masks are then upscaled from the box) and MR_small (64 x 64; real, if off-domain)."""
    import cv2
    import onnxruntime as ort

    from edgemed.preprocess import preprocess

    ct = physical(*dicom_raw("CT_small.dcm"))
    mr = physical(*dicom_raw("MR_small.dcm"))
    big = cv2.resize(ct, (300, 300), interpolation=cv2.INTER_LINEAR)
    slices = [ct, np.ascontiguousarray(ct[:, 10:110]), big, mr]
    batch, placements = preprocess(slices, demo_spec())
    model = resources.files("edgemed").joinpath("data/demo/model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: batch})
    return np.asarray(logits, dtype=np.float32), placements
