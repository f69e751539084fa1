"""``edgemed export`` on torchvision's ResNet-18 (random weights): parity, Q/DQ, runtime.

The model comes from torchvision's own source (see tv_resnet.py for how it is loaded
beside the CPU build of torch). Random weights make the accuracy gates meaningless, so
they are lenient here; parity against PyTorch is held to the default tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")
pytest.importorskip("modelopt.onnx.quantization")

from tests.export import tv_resnet  # noqa: E402

if not tv_resnet.available():
    pytest.skip("torchvision is not installed (export-test extra)", allow_module_level=True)

import edgemed  # noqa: E402
from edgemed.export.config import DEFAULT_PARITY_TOLERANCE  # noqa: E402
from edgemed.export.reference.build_demo import PREPROCESS as DEMO_PREPROCESS  # noqa: E402
from tests.export.support import SIZE, api_export, write_real_images  # noqa: E402

LABELS = ("a", "b", "c", "d")
# The demo's three CT windows (ResNet takes three channels), at SIZE x SIZE.
PREPROCESS = {**DEMO_PREPROCESS, "size": [SIZE, SIZE]}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory, ct_small_path, ct_small_hu):
    root = tmp_path_factory.mktemp("resnet")
    write_real_images(root / "calib", ct_small_path, ct_small_hu, flip=False)
    write_real_images(root / "val", ct_small_path, ct_small_hu, flip=True)
    (root / "spec.json").write_text(json.dumps({"preprocess": PREPROCESS}))
    try:
        return api_export(
            root, root / "bundle", "tests.export.tv_resnet:resnet18", {"num_classes": len(LABELS)},
            "classification", LABELS, channels=3,
        )  # fmt: skip
    finally:
        tv_resnet.unbind()


def test_resnet18_exports_with_parity(resnet):
    b = edgemed.Bundle.load(resnet)
    assert b.precisions == ["fp32", "fp16", "int8"]
    src = b.provenance["export"]["source"]
    assert src["model"] == "tests.export.tv_resnet:resnet18" and src["kind"] == "factory"
    assert src["weights"] == "random initialisation (torch seed 0; no --weights)"
    parity = b.provenance["parity"]
    assert parity["tolerance"] == DEFAULT_PARITY_TOLERANCE
    assert "real (calibration images)" in parity["cases"]
    for case in parity["cases"].values():
        # Measured up to 1.2e-6 (2 CPUs): float32 reordering only.
        assert 0 <= case["max_abs_over_range"] <= parity["tolerance"] / 100
    assert parity["cases"]["real (calibration images)"]["task"]["metric"] == "top1_agreement"
    # ResNet-18 with 4 classes: 11.2M parameters, so the FP32 ONNX is ~45 MB.
    assert (resnet / "model.onnx").stat().st_size > 40e6
    print(
        f"\nresnet18: exporter {b.provenance['export']['onnx']['exporter']}; "
        f"parity max error / range "
        f"{max(c['max_abs_over_range'] for c in parity['cases'].values()):.3g}"
    )


def test_resnet18_int8_has_qdq_and_runs(resnet):
    int8 = onnx.load(str(resnet / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    sess = ort.InferenceSession(str(resnet / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (2, len(LABELS)) and np.isfinite(y).all()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_resnet18_pipeline_each_precision(resnet, precision, ct_small_path):
    with edgemed.Pipeline.from_bundle(resnet, "onnxruntime", precision=precision) as pipe:
        r = pipe(ct_small_path)
    assert r.provenance["precision"] == precision
    probs = r.classes[0]["probabilities"]
    assert len(probs) == len(LABELS) and abs(sum(probs) - 1.0) < 1e-5
