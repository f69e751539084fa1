"""INT8 with the first and last compute layers kept in FP32 (``int8_fp32_ends``,
export/precision.py): which layers those are, and that ModelOpt leaves exactly them
unquantized."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.precision import end_layers, make_int8

RNG = np.random.default_rng(3)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.3, size=shape).astype(np.float32), name)


def _model() -> onnx.ModelProto:
    """x -> Relu -> stem Conv -> Relu -> mid Conv -> Relu -> cell Conv -> ReduceMax -> logits,
    and mid's Relu -> GlobalAveragePool -> Flatten -> Gemm -> features (a second output)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["x1"], name="pre"),
        helper.make_node("Conv", ["x1", "w1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="mid", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="cells"),
        helper.make_node("ReduceMax", ["c3", "axes"], ["logits"], name="max", keepdims=0),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w4"], ["features"], name="proj", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ends",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 32, 32])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 4]),
        ],
        [
            _w("w1", 32, 2, 3, 3),
            _w("w2", 32, 32, 3, 3),
            _w("w3", 3, 32, 1, 1),
            _w("w4", 4, 32),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_end_layers_are_the_first_and_last_compute_layers():
    # Through the non-compute ops on both sides; the middle one is neither.
    assert end_layers(_model()) == ["stem", "cells", "proj"]


def test_int8_keeps_exactly_the_ends_in_fp32(tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    src = tmp_path / "model.onnx"
    onnx.save(_model(), str(src))
    calib = RNG.random((8, 2, 32, 32), dtype=np.float32)

    def quantized_inputs(path):
        g = onnx.load(str(path)).graph
        dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        compute = ("Conv", "Gemm")
        return {n.name for n in g.node if n.op_type in compute and n.input[0] in dq}

    plain = make_int8(src, tmp_path / "plain.onnx", calib, "x")
    ends = make_int8(src, tmp_path / "ends.onnx", calib, "x", fp32_ends=True)
    assert {"stem", "mid", "cells"} <= quantized_inputs(tmp_path / "plain.onnx")
    assert quantized_inputs(tmp_path / "ends.onnx") == {"mid"}
    assert plain["fp32_ends"] == [] and ends["fp32_ends"] == ["stem", "cells", "proj"]
