"""Small real bundles for the tests: a real ONNX graph with seeded weights and a manifest.

Used by tests/conftest.py's ``tiny_bundle`` fixture and imported by tests that build
bundles themselves (``from tests.bundles import make_bundle``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemed.bundle import write_manifest

__all__ = ["make_bundle"]


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def make_bundle(
    root: Path, task: str, *, channels: int = 1, classes: int = 3, size: int = 16, seed: int = 0
) -> Path:
    """A real bundle around a small real ONNX graph with seeded weights.

    segmentation: 1x1 Conv ``channels -> classes`` (logits per pixel);
    classification: GlobalAveragePool + Flatten + Gemm ``channels -> classes``;
    embedding: GlobalAveragePool + Flatten + Gemm ``channels -> 8``.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, size, size])
    if task == "segmentation":
        w = rng.normal(size=(classes, channels, 1, 1)).astype(np.float32)
        b = rng.normal(size=(classes,)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"])]
        out_shape = ["batch", classes, size, size]
        out_name = "logits"
    else:
        k = classes if task == "classification" else 8
        w = rng.normal(size=(channels, k)).astype(np.float32)
        b = rng.normal(size=(k,)).astype(np.float32)
        out_name = "logits" if task == "classification" else "features"
        nodes = [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], [out_name]),
        ]
        out_shape = ["batch", k]
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(
        nodes, "tiny", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    )
    _save(helper.make_model(graph), root / "model.onnx")
    labels = [f"class{i}" for i in range(classes)]
    manifest = {
        "name": f"tiny-{task}",
        "version": "1.0",
        "task": task,
        "labels": labels,
        "input": {
            "name": "image",
            "layout": "NCHW",
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
        },
        "outputs": [{"name": out_name, "shape": out_shape, "dtype": "float32"}],
        "preprocess": {"size": [size, size], "clip": [-1000.0, 1000.0], "scale": "unit"},
        "postprocess": {"activation": "softmax", "top_k": 2}
        if task != "embedding"
        else {"normalize": "l2"},
        "artifacts": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32"}],
        "provenance": {"made_by": "tests/conftest.py"},
    }
    write_manifest(root, manifest)
    return root
