"""Sliding-window inference equals MONAI's ``sliding_window_inference`` with the same ONNX
model (ONNX Runtime) as predictor: window positions, Gaussian map, padding, batching,
normalisation; probabilities within 1e-5 and masks exactly, while edgemed never holds a
full-volume accumulator."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemed.errors import BundleError
from edgemed.sliding_window import (
    SlidingWindow,
    importance_map,
    scan_interval,
    sliding_window,
    window_starts,
)

torch = pytest.importorskip("torch")
inferers = pytest.importorskip("monai.inferers")
monai_utils = pytest.importorskip("monai.data.utils")

K = 3  # output channels


def _conv3d_model() -> bytes:
    """A real 3D network in ONNX: conv 3x3x3 (1->4) + ReLU + conv 1x1x1 (4->K), dynamic
    batch, random but seeded weights (the blending, not the model, is under test)."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (K, 4, 1, 1, 1)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, K).astype(np.float32), "b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1] * 6),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"]),
    ]
    dims = ["n", 1, "d", "h", "w"]
    graph = helper.make_graph(
        nodes,
        "conv3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", K, "d", "h", "w"])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same kernels for both callers, call by call
    return ort.InferenceSession(_conv3d_model(), options, providers=["CPUExecutionProvider"])


def _predict(session):
    def run(windows: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": np.ascontiguousarray(windows, dtype=np.float32)})[0]

    return run


def _monai(session, volume, spec: SlidingWindow) -> np.ndarray:
    predict = _predict(session)
    out = inferers.sliding_window_inference(
        torch.from_numpy(volume[None]),
        roi_size=spec.roi_size,
        sw_batch_size=spec.sw_batch_size,
        predictor=lambda t: torch.from_numpy(predict(t.numpy())),
        overlap=spec.overlap,
        mode=spec.mode,
        sigma_scale=spec.sigma_scale,
        padding_mode=spec.padding_mode,
        cval=spec.cval,
    )
    return out[0].numpy()


CASES = [
    # (volume shape, roi): smaller than the ROI, not a multiple of it, anisotropic.
    ((10, 20, 12), (16, 16, 16)),
    ((37, 41, 29), (16, 16, 16)),
    ((23, 30, 30), (8, 16, 12)),
    ((16, 16, 16), (16, 16, 16)),
]


@pytest.mark.parametrize("shape,roi", CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_equals_monai(session, shape, roi, overlap, mode):
    rng = np.random.default_rng(sum(shape) + int(overlap * 100))
    volume = rng.normal(0, 1, (1, *shape)).astype(np.float32)
    spec = SlidingWindow.from_dict(
        {"roi_size": list(roi), "overlap": overlap, "mode": mode, "sw_batch_size": 3}
    )
    ours = sliding_window(volume, _predict(session), spec)
    theirs = _monai(session, volume, spec)
    assert ours is not None and ours.shape == theirs.shape == (K, *shape)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.array_equal(ours.argmax(0), theirs.argmax(0))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_deep_volume_through_the_plane_ring_equals_monai(session, batch):
    """Many rows of windows along z: the accumulator ring (a few ROI depths of planes,
    reused as planes are handed over) wraps again and again, with batches of windows
    that span two rows."""
    volume = np.random.default_rng(batch).normal(0, 1, (1, 75, 18, 20)).astype(np.float32)
    block = {"roi_size": [12, 16, 16], "overlap": 0.5, "mode": "gaussian"}
    spec = SlidingWindow.from_dict({**block, "sw_batch_size": batch})
    ours = sliding_window(volume, _predict(session), spec)
    np.testing.assert_allclose(ours, _monai(session, volume, spec), rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["constant", "reflect", "replicate", "circular"])
def test_padding_modes_equal_monai(session, padding_mode):
    volume = np.random.default_rng(3).normal(0, 1, (1, 9, 13, 20)).astype(np.float32)
    cval = -1.5 if padding_mode == "constant" else 0.0  # torch takes a value only there
    block = {"roi_size": [12, 16, 16], "overlap": 0.25, "mode": "gaussian"}
    spec = SlidingWindow.from_dict({**block, "padding_mode": padding_mode, "cval": cval})
    ours = sliding_window(volume, _predict(session), spec)
    np.testing.assert_allclose(ours, _monai(session, volume, spec), rtol=0, atol=1e-5)


@pytest.mark.parametrize("roi", [(16, 16, 16), (8, 12, 20), (7, 9, 5)])
@pytest.mark.parametrize("sigma", [0.125, 0.25])
def test_importance_map_equals_monai(roi, sigma):
    ours = importance_map(roi, "gaussian", (sigma,) * 3)
    theirs = monai_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=sigma).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
    assert ours.max() == pytest.approx(1.0, abs=1e-6) or min(roi) % 2 == 0


@pytest.mark.parametrize("size,roi,overlap", [(37, 16, 0.25), (96, 96, 0.5), (10, 16, 0.0),
                                              (200, 96, 0.25), (5, 4, 0.9)])  # fmt: skip
def test_window_positions_equal_monai(size, roi, overlap):
    padded = max(size, roi)
    step = scan_interval((padded,), (roi,), (overlap,))
    ours = window_starts((padded,), (roi,), step)[0]
    slices = monai_utils.dense_patch_slices((padded,), (roi,), step)
    assert ours == [s[0].start for s in slices]


def test_slabs_cover_the_volume_in_order_with_bounded_memory(session):
    shape, roi = (70, 24, 24), (16, 16, 16)
    volume = np.random.default_rng(1).normal(0, 1, (1, *shape)).astype(np.float32)
    spec = SlidingWindow.from_dict({"roi_size": list(roi), "overlap": 0.25, "mode": "gaussian"})
    whole = sliding_window(volume, _predict(session), spec)
    seen: list[tuple[int, int]] = []
    progress: list[tuple[int, int]] = []

    def sink(first: int, slab: np.ndarray) -> None:
        assert slab.shape[1] <= roi[0]  # never more than one ROI depth at once
        np.testing.assert_array_equal(slab, whole[:, first : first + slab.shape[1]])
        seen.append((first, slab.shape[1]))

    assert sliding_window(volume, _predict(session), spec, on_slab=sink,
                          progress=lambda d, t: progress.append((d, t))) is None  # fmt: skip
    starts = [f for f, _ in seen]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(n for _, n in seen) == shape[0]
    assert progress[-1][0] == progress[-1][1] and len(progress) == progress[-1][1]


def test_bad_blocks_are_bundle_errors():
    for block in (
        {"roi_size": [16, 16]},  # fine by itself; wrong for a 3D volume below
        {"roi_size": [0, 16, 16]},
        {"roi_size": [16, 16, 16], "overlap": 1.0},
        {"roi_size": [16, 16, 16], "mode": "median"},
        {"roi_size": [16, 16, 16], "padding_mode": "zeros"},
        {"roi_size": [16, 16, 16], "rule": "nnunet"},
        {"roi_size": [16, 16, 16], "stride": 4},
        {"roi_size": [16, 16, 16], "padding_mode": "reflect", "cval": 1.0},
    ):
        with pytest.raises(BundleError):
            spec = SlidingWindow.from_dict(block)
            sliding_window(np.zeros((1, 8, 8, 8), np.float32), lambda w: w, spec)
