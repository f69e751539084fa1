"""``edgemed export`` on models nobody here wrote: MONAI's BasicUNet, SegResNet, DenseNet121.

Random (seeded) weights, 1x1x64x64 inputs, calibration on CT_small.dcm and images made
from it. Random weights make the accuracy gates meaningless (a random net's INT8 labels
may disagree with its FP32 labels), so these parity-focused tests pass explicit, lenient
thresholds; the gates' own behaviour is tested in test_export_unet.py and the plumbing tests.
torchvision's ResNet-18 is in test_export_torchvision.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")
pytest.importorskip("modelopt.onnx.quantization")
pytest.importorskip("monai")

import edgemed  # noqa: E402
from tests.export.support import (  # noqa: E402
    SIZE,
    api_export,
    cli,
    write_real_images,
)

PRECISIONS = ("fp32", "fp16", "int8")
SEG_LABELS = ("background", "foreground")
CLS_LABELS = ("a", "b", "c")
PREPROCESS = {
    "size": [SIZE, SIZE],
    "windows": [{"center": 40, "width": 400}],  # one soft-tissue window: one channel
    "scale": "unit",
    "resize": "letterbox",
    "pad_value": 0.0,
    "dtype": "float32",
}
LENIENT_CLI = ("--max-dice-drop", "1", "--max-class-dice-drop", "1",
               "--min-top1-agreement", "0", "--max-prob-diff", "1")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, ct_small_path, ct_small_hu):
    root = tmp_path_factory.mktemp("monai-data")
    write_real_images(root / "calib", ct_small_path, ct_small_hu, flip=False)
    write_real_images(root / "val", ct_small_path, ct_small_hu, flip=True)
    (root / "spec.json").write_text(json.dumps({"preprocess": PREPROCESS}))
    return root


@pytest.fixture(scope="module")
def basic_unet(data):
    """Through the real CLI (``--model-kwargs`` JSON), all three precisions."""
    out = data / "basicunet"
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
              "features": [8, 8, 16, 32, 64, 8]}  # fmt: skip
    proc = cli(
        "export",
        "--model", "monai.networks.nets:BasicUNet",
        "--model-kwargs", json.dumps(kwargs),
        "--input-shape", f"1x1x{SIZE}x{SIZE}",
        "--task", "segmentation",
        "--labels", ",".join(SEG_LABELS),
        "--preprocess", str(data / "spec.json"),
        "--calibration", str(data / "calib"),
        "--validation", str(data / "val"),
        "--precision", ",".join(PRECISIONS),
        *LENIENT_CLI,
        "--out", str(out),
        cwd=data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def seg_resnet(data):
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_filters": 8}
    model = "monai.networks.nets:SegResNet"
    # Parity holds at the default 1e-4. It did not (1.03e-4) when the PNG slice was
    # window-saturated (see write_real_images): SegResNet's first GroupNorm then sees
    # channels with |mean|/std ~ 10, and ONNX Runtime's float32 mean (InstanceNormalization)
    # is ~2e-6 off where PyTorch's is ~1e-7; divided by the std, the network carries that
    # to 2.4e-4 at the output. Both are within float32 summation error: --parity-tolerance
    # is the escape for such inputs.
    return api_export(data, data / "segresnet", model, kwargs, "segmentation", SEG_LABELS)


@pytest.fixture(scope="module")
def densenet(data):
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3}
    model = "monai.networks.nets:DenseNet121"
    return api_export(data, data / "densenet", model, kwargs, "classification", CLS_LABELS)


MODELS = ["basic_unet", "seg_resnet", "densenet"]


@pytest.mark.parametrize("name", MODELS)
def test_monai_model_exports_with_parity(name, request):
    out = request.getfixturevalue(name)
    b = edgemed.Bundle.load(out)  # verifies every sha256
    assert b.precisions == list(PRECISIONS)
    prov = b.provenance
    assert prov["export"]["source"]["kind"] == "factory"
    assert prov["export"]["source"]["model"].startswith("monai.networks.nets:")
    parity = prov["parity"]
    assert parity["tolerance"] == 1e-4  # the default, for every model
    assert "real (calibration images)" in parity["cases"]
    for case in parity["cases"].values():
        assert 0 <= case["max_rel"] <= parity["tolerance"]
    acc = prov["accuracy"]
    assert acc["passed"] and set(acc["variants"]) == {"fp16", "int8"}
    worst = max(c["max_rel"] for c in parity["cases"].values())
    summary = {p: {k: v[k] for k in v if k in ("mean_dice_drop", "top1_agreement",
                                                 "max_prob_diff")}
               for p, v in acc["variants"].items()}  # fmt: skip
    print(f"\n{name}: parity max rel {worst:.3g}; gates (lenient) {summary}")


@pytest.mark.parametrize("name", MODELS)
def test_int8_has_qdq_and_runs_in_onnxruntime(name, request):
    out = request.getfixturevalue(name)
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    x = np.random.default_rng(0).random((2, 1, SIZE, SIZE), dtype=np.float32)
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape[0] == 2 and np.isfinite(y).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", MODELS)
def test_pipeline_runs_each_precision_on_a_real_image(name, precision, request, ct_small_path):
    out = request.getfixturevalue(name)
    with edgemed.Pipeline.from_bundle(out, "onnxruntime", precision=precision) as pipe:
        r = pipe(ct_small_path)
    assert r.provenance["precision"] == precision
    if name == "densenet":
        assert r.classes
    else:
        assert r.mask.shape == (128, 128)  # CT_small is 128x128: mask back at input size
