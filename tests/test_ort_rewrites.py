"""The exact graph rewrites the ONNX Runtime backend applies (edgemed/backends/ort_rewrites.py):
what is rewritten, what is left alone, and outputs bit-identical through ORT."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemed.backends.ort import OnnxRuntimeBackend
from edgemed.backends.ort_rewrites import rewrite

RNG = np.random.default_rng(5)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _conv_prelu_model(slope_dtype=np.float32) -> bytes:
    """x (N, 2, 6, 6, 6) -> Conv -> PRelu(initializer slope) -> Conv -> PRelu(slope through
    an Identity, as torch exports nn.PReLU) -> PRelu(Constant slope) -> PRelu(per-channel)."""
    w1 = RNG.normal(size=(4, 2, 3, 3, 3)).astype(np.float32)
    w2 = RNG.normal(size=(4, 4, 3, 3, 3)).astype(np.float32)
    slope = np.array([0.25], slope_dtype).reshape(1, 1, 1, 1)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 6),
        helper.make_node("PRelu", ["c1", "s1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1] * 6),
        helper.make_node("Identity", ["s2_src"], ["s2"]),
        helper.make_node("PRelu", ["c2", "s2"], ["a2"]),
        helper.make_node("Constant", [], ["s3"], value=_init("s3v", np.array([0.3], slope_dtype))),
        helper.make_node("PRelu", ["a2", "s3"], ["a3"]),
        helper.make_node("PRelu", ["a3", "s4"], ["y"]),
    ]
    inits = [
        _init("w1", w1),
        _init("w2", w2),
        _init("s1", slope),
        _init("s2_src", (slope * 3).astype(slope_dtype)),
        _init("s4", RNG.uniform(0.1, 0.5, size=(4, 1, 1, 1)).astype(slope_dtype)),
    ]
    if slope_dtype != np.float32:  # an fp16 graph: cast in and out
        nodes = [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            *[_renamed(n, "x", "x16") for n in nodes[:-1]],
            helper.make_node("PRelu", ["a3", "s4"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        ]
        inits[0] = _init("w1", w1.astype(slope_dtype))
        inits[1] = _init("w2", w2.astype(slope_dtype))
    graph = helper.make_graph(
        nodes,
        "prelus",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 6, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _renamed(node: onnx.NodeProto, old: str, new: str) -> onnx.NodeProto:
    node.input[:] = [new if i == old else i for i in node.input]
    return node


def _ops(data: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_from_string(data).graph.node)


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_scalar_float32_slopes_become_leaky_relu_with_bit_identical_outputs():
    original = _conv_prelu_model()
    rewritten = rewrite(original)
    ops = _ops(rewritten)
    # Initializer, Identity and Constant slopes are rewritten; the per-channel one stays.
    assert ops["LeakyRelu"] == 3 and ops["PRelu"] == 1
    assert ops["Identity"] == 0 and ops["Constant"] == 0  # their slopes are gone too
    alphas = sorted(
        a.f
        for n in onnx.load_from_string(rewritten).graph.node
        for a in n.attribute
        if n.op_type == "LeakyRelu"
    )
    assert alphas == pytest.approx([0.25, 0.3, 0.75])
    x = RNG.normal(size=(3, 2, 6, 6, 6)).astype(np.float32)
    a, b = _run(original, x), _run(rewritten, x)
    assert (a < 0).any() and (a > 0).any()  # both branches of the activation were taken
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_the_backend_runs_the_rewritten_model_with_the_same_outputs():
    original = _conv_prelu_model()
    x = RNG.normal(size=(2, 2, 6, 6, 6)).astype(np.float32)
    with OnnxRuntimeBackend(original, threads=1) as backend:
        got = backend.infer({"x": x})["y"]
    assert np.array_equal(got.view(np.uint32), _run(original, x).view(np.uint32))


def test_fp16_slopes_are_left_alone():
    original = _conv_prelu_model(np.float16)
    assert rewrite(original) == original


def test_quantized_models_are_left_alone():
    model = onnx.load_from_string(_conv_prelu_model())
    g = model.graph
    g.initializer.extend(
        [_init("qs", np.array(0.05, np.float32)), _init("qz", np.array(0, np.int8))]
    )
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"]))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"]))
    g.node[2].input[0] = "xd"
    data = model.SerializeToString()
    assert rewrite(data) == data


def test_models_without_prelu_and_unreadable_bytes_pass_unchanged():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    plain = helper.make_model(graph).SerializeToString()
    assert rewrite(plain) is plain
    garbage = b"\x08\x07 not a model, but it says PRelu"
    assert rewrite(garbage) is garbage


def test_torch_prelu_export_is_rewritten_exactly():
    """What MONAI's UNet exports: Conv3d -> InstanceNorm3d -> PReLU (one slope, reached
    through an Identity)."""
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1),
        torch.nn.InstanceNorm3d(4, affine=True),
        torch.nn.PReLU(),
        torch.nn.Conv3d(4, 3, 3, padding=1),
        torch.nn.InstanceNorm3d(3, affine=True),
        torch.nn.PReLU(),
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 8, 8, 8),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    original = buf.getvalue()
    rewritten = rewrite(original)
    assert _ops(original)["PRelu"] == 2
    assert _ops(rewritten)["PRelu"] == 0 and _ops(rewritten)["LeakyRelu"] == 2
    x = RNG.normal(size=(2, 1, 8, 8, 8)).astype(np.float32)
    a, b = _run(original, x), _run(rewritten, x)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
