"""A backend and a head are each one class plus one registration: registered from this
test module, they are seen by ``auto``, ``edgemed doctor``, ``edgemed bench``,
``Pipeline.from_bundle`` and the export gate without any edit to edgemed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgemed import heads
from edgemed.backends import Backend, choose_backend, register, unregister
from edgemed.backends.ort import OnnxRuntimeBackend
from edgemed.bench.inputs import synthetic
from edgemed.bench.runner import BenchOptions, run_bench
from edgemed.bundle import Bundle
from edgemed.cli import main
from edgemed.doctor import gather
from edgemed.heads.base import Head, HeadSpec
from edgemed.pipeline import Pipeline, demo_bundle
from edgemed.preprocess import preprocess
from edgemed.settings import Options
from tests.bundles import make_bundle

# -- a toy backend: ONNX Runtime under another name, so its answers can be checked ------


class ToyBackend(Backend):
    name = "toy"

    def __init__(self, model: bytes, precision: str) -> None:
        super().__init__(precision=precision, device="cpu (toy)", version="0.0.1")
        self._ort = OnnxRuntimeBackend(model, precision=precision, threads=1)
        self._inputs, self._outputs = self._ort.inputs, self._ort.outputs
        self.calls = 0

    def _infer(self, feeds):
        self.calls += 1
        return self._ort.infer(feeds)


def _toy_factory(bundle: Bundle, options: Options) -> Backend:
    model = bundle.read_artifact(bundle.artifact("onnx", options.precision))
    return ToyBackend(model, options.precision)


@pytest.fixture
def toy_backend():
    # Between tensorrt (100) and openvino (50): auto's first choice on a CPU machine.
    register("toy", lambda bundle, options: "", _toy_factory, priority=75)
    yield
    unregister("toy")


def test_a_registered_backend_is_seen_by_auto_doctor_bench_and_the_pipeline(
    toy_backend, ct_small_path, tmp_path, capsys, monkeypatch
):
    demo = Bundle.load(demo_bundle())
    monkeypatch.delenv("EDGEMED_BACKEND", raising=False)
    choice = choose_backend(demo, Options.resolve())
    assert choice.name == "toy"  # above openvino and onnxruntime, tensorrt skipped here
    assert [n for n, _ in choice.skipped] == ["tensorrt"]

    facts = gather(demo)["backends"]
    assert facts["backends"]["toy"] == "" and facts["auto"] == "toy"

    with Pipeline.from_bundle(demo_bundle()) as auto_pipe:
        assert auto_pipe.backend.name == "toy"
    with Pipeline.from_bundle(demo_bundle(), backend="toy") as pipe:
        got = pipe(ct_small_path)
        assert pipe.backend.calls == 1
    with Pipeline.from_bundle(demo_bundle(), backend="onnxruntime") as ref:
        want = ref(ct_small_path)
    assert got.provenance["backend"] == "toy"
    assert np.array_equal(got.mask, want.mask)

    out = tmp_path / "bench"
    assert main(["bench", "--backend", "toy", "--precision", "fp32", "--synthetic", "64x64",
                 "--iterations", "2", "--warmup", "0", "--time-cap", "2", "--no-plots",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads((out / "bench.json").read_text())
    assert {c["backend"] for c in doc["configs"]} == {"toy"}
    assert "toy" in capsys.readouterr().out


def test_an_unknown_backend_names_the_registered_ones(toy_backend):
    with pytest.raises(Exception) as exc:
        Pipeline.from_bundle(demo_bundle(), backend="nope")
    assert exc.value.code == "USAGE_INVALID" or "toy" in str(exc.value)
    assert "toy" in str(exc.value)


# -- a toy head: "which channel is largest on average", compared by agreement -----------


@dataclass(frozen=True)
class ArgmaxSpec(HeadSpec):
    min_margin: float = 0.0


@dataclass
class ArgmaxOutput:
    winners: list[int]


class ArgmaxHead(Head):
    task = "toy_argmax"
    Spec = ArgmaxSpec
    thresholds = {"min_agreement": 1.0}

    def decode(self, raw: Mapping[str, np.ndarray], placements: Sequence[Any]) -> list[int]:
        x = np.asarray(raw[self.output]).reshape(len(placements), -1)
        return [int(v) for v in x.argmax(axis=1)]

    def assemble(self, image, values, how):
        return ArgmaxOutput(list(values))

    def values(self, output):
        return list(output.winners)

    def to_json(self, output):
        return {"winners": output.winners}

    def metric(self, reference, other):
        agree = float(np.mean(np.equal(reference, other))) if reference else 1.0
        return {"metric": "agreement", "agreement": round(agree, 6)}

    def gate(self, metrics, thresholds):
        limit = self.limit("min_agreement", thresholds)
        return (
            [] if metrics["agreement"] >= limit else [f"agreement {metrics['agreement']} < {limit}"]
        )


@pytest.fixture
def toy_head():
    heads.register(ArgmaxHead)
    yield
    heads._HEADS.pop("toy_argmax", None)


def _toy_bundle(tmp_path, seed=0):
    root = make_bundle(tmp_path / f"b{seed}", "classification", classes=4, seed=seed)
    data = json.loads((root / "bundle.json").read_text())
    data["task"] = "toy_argmax"
    data["postprocess"] = {"min_margin": 0.5}
    from edgemed.bundle import write_manifest

    write_manifest(root, data)
    return root


def test_a_registered_head_runs_through_pipeline_bench_and_export_gate(toy_head, tmp_path):
    root = _toy_bundle(tmp_path)
    bundle = Bundle.load(root)
    assert isinstance(bundle.postprocess, ArgmaxSpec) and bundle.postprocess.min_margin == 0.5
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(3, 24, 24)).astype(np.float32)
    with Pipeline.from_bundle(root, backend="onnxruntime", batch_size=2) as pipe:
        result = pipe(volume)
        spec = pipe.spec
    x, _ = preprocess(list(volume), spec)  # the reference: the same spec, straight into ORT
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"image": x[:3]})[0].argmax(axis=1).tolist()
    assert result.winners == want
    assert result.to_dict()["outputs"] == {"winners": want}

    doc = run_bench(root, [synthetic((24, 24))], BenchOptions(
        backend="onnxruntime", iterations=2, warmup=0, time_cap_s=2))  # fmt: skip
    (config,) = doc["configs"]
    assert config["accuracy"]["metric"] == "agreement"
    assert config["accuracy"]["agreement"] == 1.0  # fp32 against itself

    from edgemed.export.calibration import ImageSet
    from edgemed.export.config import Thresholds
    from edgemed.export.gates import compare, format_table

    inputs, placements = preprocess(list(volume), bundle.preprocess)
    data = ImageSet(inputs=inputs, placements=placements)
    other = _toy_bundle(tmp_path, seed=9) / "model.onnx"  # other weights: must disagree
    report = compare(
        root / "model.onnx", {"fp16": root / "model.onnx", "int8": other}, data,
        "toy_argmax", bundle.postprocess, bundle.labels, Thresholds(),
    )  # fmt: skip
    assert report["thresholds"] == {"min_agreement": 1.0}
    assert report["variants"]["fp16"]["passed"] is True
    assert report["variants"]["int8"]["agreement"] < 1.0
    assert report["variants"]["int8"]["failures"] and not report["passed"]
    assert "int8: FAIL" in format_table("toy_argmax", report)


def test_an_unregistered_task_is_a_bundle_error(tmp_path):
    root = make_bundle(tmp_path / "b", "classification")
    data = json.loads((root / "bundle.json").read_text())
    data["task"] = "toy_argmax"
    (root / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(Exception) as exc:
        Bundle.load(root)
    assert exc.value.code == "BUNDLE_INVALID"
