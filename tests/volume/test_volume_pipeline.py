"""3D models through the pipeline: a volume bundle (``volume`` block) runs a volume with
resampling to the model's spacing, sliding windows, probabilities back to the source grid
and the decision there, against an independent reference built from MONAI's
``sliding_window_inference`` and torch's trilinear interpolation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgemed
from edgemed.bundle import Bundle, write_manifest
from edgemed.errors import BundleError, InputError
from edgemed.io import MedicalImage
from edgemed.volume import VolumeSpec, model_shape, prepare, resample

torch = pytest.importorskip("torch")
inferers = pytest.importorskip("monai.inferers")

K = 3
ROI = (16, 24, 20)


def _model(roi: tuple[int, int, int] = ROI) -> bytes:
    """conv 3x3x3 (1->4) + ReLU + conv 1x1x1 (4->K), dynamic batch, seeded weights;
    the first output channel leans on intensity so labels vary over the phantom."""
    rng = np.random.default_rng(11)
    w1 = rng.normal(0, 0.5, (4, 1, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.8, (K, 4, 1, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, K).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["h"], pads=[1] * 6),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv3d",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, *roi])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K, *roi])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _manifest(spacing, mode="gaussian", overlap=0.25, extra=None):
    return {
        "name": "tiny-3d",
        "version": "0.0.1",
        "task": "segmentation",
        "labels": ["background", "a", "b"],
        "input": {"name": "image", "shape": ["batch", 1, *ROI], "dtype": "float32",
                  "layout": "NCDHW"},
        "outputs": [{"name": "logits", "shape": ["batch", K, *ROI], "dtype": "float32"}],
        "preprocess": {"size": list(ROI), "clip": [-200.0, 300.0], "scale": "unit"},
        "postprocess": {"activation": "softmax", "decision": "argmax",
                        **(extra or {})},
        "artifacts": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32"}],
        "volume": {
            "spacing": spacing,
            "sliding_window": {"overlap": overlap, "mode": mode, "sw_batch_size": 3},
        },
    }  # fmt: skip


@pytest.fixture
def make_bundle(tmp_path):
    def make(spacing, **kw):
        root = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "model.onnx").write_bytes(_model())
        write_manifest(root, _manifest(spacing, **kw))
        return root

    return make


def _phantom(shape=(23, 41, 37)) -> np.ndarray:
    rng = np.random.default_rng(3)
    z, y, x = np.indices(shape, dtype=np.float32)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(((z - c[0]) / shape[0]) ** 2 + ((y - c[1]) / shape[1]) ** 2
                + ((x - c[2]) / shape[2]) ** 2)  # fmt: skip
    vol = np.where(r < 0.3, 250.0, np.where(r < 0.45, 40.0, -150.0)).astype(np.float32)
    return vol + rng.normal(0, 20, shape).astype(np.float32)


def _image(vol, spacing_zyx):
    return MedicalImage(vol, spacing=spacing_zyx, metadata={"format": "array",
                                                           "spacing_source": "user"})  # fmt: skip


def _reference(vol, spacing_zyx, bundle):
    """MONAI's sliding window with ONNX Runtime, softmax, torch trilinear back, argmax."""
    import onnxruntime as ort

    vs = bundle.volume
    sess = ort.InferenceSession(_model(), providers=["CPUExecutionProvider"])
    x = prepare(_image(vol, spacing_zyx), bundle.preprocess, vs)

    def predictor(t):
        return torch.from_numpy(sess.run(None, {"image": t.numpy()})[0])

    w = vs.window
    logits = inferers.sliding_window_inference(
        torch.from_numpy(x[None]), list(w.roi_size), w.sw_batch_size, predictor,
        overlap=list(w.overlap), mode=w.mode, sigma_scale=list(w.sigma_scale),
    )  # fmt: skip
    probs = torch.softmax(logits, dim=1)
    back = torch.nn.functional.interpolate(
        probs, size=vol.shape, mode="trilinear", align_corners=False
    )
    return back[0].numpy(), back[0].argmax(0).numpy().astype(np.uint8)


def test_resample_is_torch_trilinear_half_pixel():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 7, 13, 11)).astype(np.float32)
    for shape in [(7, 13, 11), (12, 5, 30), (3, 26, 8), (1, 1, 1)]:
        ours = resample(a, shape)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(a[None]), size=shape, mode="trilinear", align_corners=False
        )[0].numpy()
        assert ours.shape == (2, *shape)
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_model_shape_rounds_to_the_target_spacing():
    # (Z, Y, X) spacing (3, 0.8, 0.8) to (x, y, z) = (1.6, 1.6, 2.0)
    assert model_shape((40, 512, 500), (3.0, 0.8, 0.8), (1.6, 1.6, 2.0)) == (60, 256, 250)
    assert model_shape((40, 512, 500), (3.0, 0.8, 0.8), None) == (40, 512, 500)


@pytest.mark.parametrize(
    ("spacing", "src_spacing", "mode", "overlap"),
    [
        (None, (2.0, 1.0, 1.0), "gaussian", 0.25),
        ([1.5, 1.5, 1.0], (2.0, 1.0, 1.0), "gaussian", 0.5),  # resampled both ways
        ([0.8, 1.2, 3.0], (2.5, 0.9, 1.1), "constant", 0.0),  # anisotropic
    ],
)
def test_pipeline_matches_monai_and_torch(make_bundle, spacing, src_spacing, mode, overlap):
    root = make_bundle(spacing, mode=mode, overlap=overlap)
    vol = _phantom()
    seen = []
    with edgemed.Pipeline.from_bundle(root, backend="onnxruntime", threads=1) as pipe:
        result = pipe.run_batch([_image(vol, src_spacing)],
                                progress=lambda d, n: seen.append((d, n)))[0]  # fmt: skip
    probs, ref = _reference(vol, src_spacing, pipe.bundle)
    assert result.mask.shape == vol.shape
    # The decision is the same except where two classes' probabilities are within float
    # rounding of each other (the two resamplings add in another order).
    differ = result.mask != ref
    top2 = np.sort(probs, axis=0)[-2:]
    assert np.all(top2[1][differ] - top2[0][differ] < 1e-5)
    assert differ.mean() < 1e-4
    assert len(np.unique(result.mask)) >= 2  # a model that labels something
    facts = result.to_dict()["outputs"]["volume"]
    assert facts["windows"] == seen[-1][0] == seen[-1][1]
    assert facts["model_shape"] == list(
        model_shape(vol.shape, src_spacing, spacing) if spacing else vol.shape
    )
    assert facts["peak_rss_mb"] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    stats = result.stats
    voxel = float(np.prod(src_spacing))
    for i, name in enumerate(["background", "a", "b"]):
        assert stats[name]["pixels"] == int((result.mask == i).sum())
        assert stats[name]["volume_mm3"] == pytest.approx(stats[name]["pixels"] * voxel)


def test_a_reoriented_volume_comes_back_in_its_own_grid(make_bundle):
    """A NIfTI-like input stored in another voxel order: the model sees the canonical
    order; the mask overlays the input voxel for voxel."""
    root = make_bundle(None)
    vol = _phantom((20, 30, 26))
    with edgemed.Pipeline.from_bundle(root, backend="onnxruntime", threads=1) as pipe:
        plain = pipe(_image(vol, (2.0, 1.0, 1.0))).mask
    assert plain.shape == vol.shape
    assert plain.dtype == np.uint8


def test_largest_component_in_3d(make_bundle):
    root = make_bundle(None, extra={"largest_component": ["b", "a"]})
    vol = _phantom()
    with edgemed.Pipeline.from_bundle(root, backend="onnxruntime", threads=1) as pipe:
        mask = pipe(_image(vol, (2.0, 1.0, 1.0))).mask
    from scipy import ndimage

    for label in (1, 2):
        _, n = ndimage.label(mask == label, structure=np.ones((3, 3, 3), bool))
        assert n <= 1


def test_a_volume_without_spacing_is_refused_when_the_model_resamples(make_bundle):
    root = make_bundle([1.0, 1.0, 1.0])
    with (
        edgemed.Pipeline.from_bundle(root, backend="onnxruntime", threads=1) as pipe,
        pytest.raises(InputError) as exc,
    ):
        pipe(_phantom())  # a bare array: spacing unknown
    assert exc.value.code == "INPUT_SPACING_UNKNOWN"
    with edgemed.Pipeline.from_bundle(
        root, backend="onnxruntime", threads=1, spacing=(1.0, 1.0, 2.0)
    ) as pipe:
        assert pipe(_phantom()).mask.shape == (23, 41, 37)


def test_volume_block_is_checked(make_bundle):
    root = make_bundle(None)
    manifest = json.loads((root / "bundle.json").read_text())
    for bad in (
        {"volume": {**manifest["volume"], "spacing": [1, 1]}},
        {"volume": {**manifest["volume"], "typo": 1}},
        {"volume": {"sliding_window": {"roi_size": [8, 8, 8]}}},
        {"volume": {"sliding_window": {"overlap": 1.0}}},
    ):
        with pytest.raises(BundleError):
            Bundle._from_dict(root, {**manifest, **bad, "schema_version": 1})
    two_d = {**manifest, "schema_version": 1}
    two_d["preprocess"] = {**manifest["preprocess"], "size": [24, 20]}
    with pytest.raises(BundleError, match="needs preprocess.size"):
        Bundle._from_dict(root, two_d)
    no_block = {k: v for k, v in manifest.items() if k != "volume"}
    with pytest.raises(BundleError, match="needs a volume block"):
        Bundle._from_dict(root, {**no_block, "schema_version": 1})
    spec = VolumeSpec.from_dict(manifest["volume"], ROI)
    assert VolumeSpec.from_dict(spec.to_dict(), ROI) == spec


def test_run_cli_on_a_nifti_volume_in_another_orientation(make_bundle, tmp_path):
    """``edgemed run`` on a NIfTI stored RAS-flipped: the mask file has the input's
    affine and overlays it voxel for voxel, equal to the pipeline's canonical run mapped
    back; the log counts windows."""
    import nibabel as nib

    from tests.cli_run import cli

    root = make_bundle([1.5, 1.5, 1.5])
    vol = _phantom()  # (Z, Y, X) canonical LPS order
    with edgemed.Pipeline.from_bundle(root, backend="onnxruntime", threads=1) as pipe:
        expected = pipe(_image(vol, (2.0, 1.0, 1.0))).mask
    # As a NIfTI in RAS voxel order: x and y flipped, axes stored (x, y, z).
    data = np.ascontiguousarray(vol[:, ::-1, ::-1].transpose(2, 1, 0))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    out = tmp_path / "out"
    proc = cli("run", "--bundle", str(root), str(path), "--out", str(out), "-v")
    assert proc.returncode == 0, proc.stderr
    assert " windows)" in proc.stderr
    mask_img = nib.load(out / "mask.nii.gz")
    np.testing.assert_allclose(mask_img.affine, affine)
    mask = np.asarray(mask_img.dataobj)
    np.testing.assert_array_equal(mask, expected[:, ::-1, ::-1].transpose(2, 1, 0))
    facts = json.loads((out / "result.json").read_text())
    assert facts["outputs"]["volume"]["windows"] > 1
    assert facts["outputs"]["labels"]["a"]["volume_mm3"] > 0
