"""The OpenVINO backend against ONNX Runtime FP32 on the demo bundle, its explicit
precision, its compiled-model cache's permission checks, and ``auto``'s order."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import edgemed
from edgemed import MedicalImage, Pipeline
from edgemed.backends import backend_names, choose_backend, create_backend
from edgemed.bundle import Bundle
from edgemed.errors import BackendError
from edgemed.settings import Options

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from edgemed.backends import openvino as ovb  # noqa: E402  (needs openvino)


def _bf16_cpu() -> bool:
    return "BF16" in ovb.ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def demo() -> Bundle:
    return Bundle.load(edgemed.demo_bundle())


@pytest.fixture(scope="module")
def images(ct_small_hu) -> dict[str, MedicalImage]:
    from benchmarks._common import phantom

    hu, spacing, _ = phantom(512)
    return {
        "CT_small": MedicalImage(ct_small_hu, spacing=(0.66, 0.66), modality="CT"),
        "phantom512": MedicalImage(hu, spacing=spacing, modality="CT"),
    }


def _pipe(backend: str, precision: str, cache) -> Pipeline:
    return Pipeline.from_bundle(
        edgemed.demo_bundle(), backend, precision=precision, engine_cache=cache, threads=2
    )


def test_fp32_matches_onnxruntime_fp32(demo, images, tmp_path):
    """Logits within 1e-4 of ONNX Runtime's, masks identical, on real and phantom CT."""
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 256, 256), dtype=np.float32)
    with create_backend("onnxruntime", demo, "fp32") as ort_be:
        ref = ort_be.infer({"image": x})["logits"].copy()
    with create_backend("openvino", demo, "fp32", engine_cache=tmp_path) as ov_be:
        got = ov_be.infer({"image": x})["logits"]
        assert got.shape == ref.shape and got.dtype == np.float32
        assert float(np.abs(got - ref).max()) < 1e-4
        assert ov_be.info()["inference_precision"] == "f32"
        assert ov_be.inputs[0].shape == ("batch", 3, 256, 256)  # named as the bundle does
    with _pipe("onnxruntime", "fp32", None) as a, _pipe("openvino", "fp32", tmp_path) as b:
        for image in images.values():
            ra, rb = a(image), b(image)
            assert np.array_equal(ra.mask, rb.mask)
            assert rb.provenance["backend"] == "openvino"
            assert rb.provenance["precision"] == "fp32"
            assert rb.provenance["inference_precision"] == "f32"


@pytest.mark.xfail(
    strict=False,
    reason="measured on AMD EPYC (AVX-512 VNNI, BF16), OpenVINO 2026.4: the bundle's "
    "TensorRT-style INT8 (int8 symmetric activations, Q/DQ on conv inputs only) drops mean "
    "Dice by ~0.02-0.035 against FP32 (ONNX Runtime's exact Q/DQ arithmetic: 0.003); with "
    "the weights' Q/DQ folded into float weights OpenVINO agrees with ONNX Runtime, so the "
    "loss is in its integer convolutions. edgemed check refuses it (tests/test_check.py); "
    "README 'CPU backends and INT8 on the CPU'",
)
def test_int8_within_the_bundles_gate(demo, images, tmp_path):
    """The bundle's INT8 Q/DQ model on OpenVINO against ONNX Runtime FP32: Dice within
    the thresholds the export recorded (the head's own gate)."""
    thresholds = demo.provenance["accuracy"]["thresholds"]
    with _pipe("onnxruntime", "fp32", None) as ref, _pipe("openvino", "int8", tmp_path) as q:
        refs = [ref(im).mask for im in images.values()]
        outs = [q(im).mask for im in images.values()]
        assert q.backend.info()["precision"] == "int8"
        assert q.backend.info()["inference_precision"] == "f32"  # outside the Q/DQ pairs
        metric = q.head.metric(refs, outs)
        assert q.head.gate(metric, thresholds) == [], metric
        assert metric["pixel_agreement"] < 1.0  # really the quantized model
        # ... and a gate far tighter than the export's refuses it (the gate can fail).
        assert q.head.gate(metric, {"max_dice_drop": 0.0, "max_class_dice_drop": 0.0})


def test_every_precision_sets_the_hint():
    """Never the plugin's default (bf16 on a BF16 CPU): every precision and device edgemed
    runs has a hint, and compile_config always sets it."""
    for precision in ("fp32", "fp16", "int8"):
        for device in ("CPU", "GPU", "NPU"):
            config = ovb.compile_config(precision, device, 2, None)
            assert config["INFERENCE_PRECISION_HINT"] == ovb.HINTS[(precision, device)]
    assert ovb.compile_config("fp32", "CPU", 2, None)["INFERENCE_PRECISION_HINT"] == "f32"
    assert ovb.compile_config("bf16", "CPU", 2, None)["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(BackendError) as e:
        ovb.compile_config("bf16", "GPU", 2, None)
    assert e.value.code == "BACKEND_UNAVAILABLE"


@pytest.mark.skipif(
    not _bf16_cpu(),
    reason="this CPU has no BF16: OpenVINO's default hint is f32 here",
)
def test_hint_left_to_the_default_is_refused(demo, monkeypatch):
    """On a BF16 CPU the plugin's default computes in bf16: a compile without the hint
    is caught by the read-back and refused, never run and labelled fp32."""
    real = ovb.compile_config

    def without_hint(*a, **kw):
        config = real(*a, **kw)
        del config["INFERENCE_PRECISION_HINT"]
        return config

    monkeypatch.setattr(ovb, "compile_config", without_hint)
    with pytest.raises(BackendError) as e:
        create_backend("openvino", demo, "fp32")
    assert e.value.code == "BACKEND_PRECISION"


@pytest.mark.skipif(
    not _bf16_cpu(),
    reason="this CPU has no BF16",
)
def test_bf16_only_by_name_and_recorded(demo, images, tmp_path):
    with _pipe("openvino", "bf16", tmp_path) as pipe:
        r = pipe(images["CT_small"])
        assert r.provenance["precision"] == "bf16"
        assert r.provenance["inference_precision"] == "bf16"
        assert r.provenance["artifact"]["path"] == "model.onnx"  # computed from FP32
    for backend in ("onnxruntime", "tensorrt"):  # they would run it as FP32: refused
        with pytest.raises(BackendError) as e:
            create_backend(backend, demo, "bf16")
        assert e.value.code == "BACKEND_UNAVAILABLE" and "bf16" in e.value.message
    choice = choose_backend(demo, Options(precision="bf16"))
    assert choice.name == "openvino"


def test_auto_order_and_reason(demo, monkeypatch, caplog):
    names = backend_names()
    assert names.index("tensorrt") < names.index("openvino") < names.index("onnxruntime")
    choice = choose_backend(demo, Options())
    assert choice.name == "openvino" and "tensorrt not used" in choice.reason
    from edgemed.backends import registry

    # Without the openvino package, auto goes on to ONNX Runtime and says why.
    monkeypatch.setattr(registry, "available", lambda m: m != "openvino" and m != "tensorrt")
    choice = choose_backend(demo, Options())
    assert choice.name == "onnxruntime"
    assert 'openvino not used: openvino is not installed (pip install "edgemed[openvino]")' in (
        choice.reason
    )
    from edgemed.doctor import backend_facts

    facts = backend_facts(demo, Options())
    assert facts["auto"] == "onnxruntime" and "openvino" in facts["auto_reason"]


def test_cache_is_private_and_reused(demo, tmp_path):
    cache = tmp_path / "engines"
    x = {"image": np.random.default_rng(5).random((1, 3, 256, 256), dtype=np.float32)}
    with create_backend("openvino", demo, "int8", engine_cache=cache) as be:
        folder = be.cache_dir
        compiled = be.infer(x)["logits"].copy()
    assert folder == cache / "openvino" / "cpu-int8"
    for d in (cache, cache / "openvino", folder):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    blobs = list(folder.iterdir())
    assert blobs, "OpenVINO wrote no compiled model into the cache"
    with create_backend("openvino", demo, "int8", engine_cache=cache) as be:
        assert be.cache_dir == folder
        # The cached model is the same model in the same precision.
        assert be.info()["inference_precision"] == "f32"
        assert np.array_equal(be.infer(x)["logits"], compiled)
    assert sorted(folder.iterdir()) == sorted(blobs)  # loaded, not compiled again


@pytest.mark.parametrize("where", ["folder", "root", "file"])
def test_cache_writable_by_others_is_refused(demo, tmp_path, where):
    cache = tmp_path / "engines"
    with create_backend("openvino", demo, "fp32", engine_cache=cache) as be:
        folder = be.cache_dir
    target = {"folder": folder, "root": cache, "file": next(folder.iterdir())}[where]
    os.chmod(target, stat.S_IMODE(target.stat().st_mode) | stat.S_IWGRP | stat.S_IWOTH)
    with pytest.raises(BackendError) as e:
        create_backend("openvino", demo, "fp32", engine_cache=cache)
    assert e.value.code == "ENGINE_INTEGRITY"


def test_default_cache_not_made_inside_a_bundle(tiny_bundle):
    root = tiny_bundle("segmentation", channels=1, classes=3, size=8)
    bundle = Bundle.load(root)
    with create_backend("openvino", bundle, "fp32") as be:
        assert be.cache_dir is None
        out = be.infer({"image": np.ones((1, 1, 8, 8), np.float32)})["logits"]
        assert out.shape == (1, 3, 8, 8)
    assert not (root / "engines").exists()
    (root / "engines").mkdir(mode=0o700)  # made by the user (or edgemed build): used
    with create_backend("openvino", bundle, "fp32") as be:
        assert be.cache_dir == root / "engines" / "openvino" / "cpu-fp32"


def test_unknown_device_is_unavailable(demo):
    with pytest.raises(BackendError) as e:
        create_backend("openvino", demo, options=Options(precision="fp32", device="TPU"))
    assert e.value.code == "BACKEND_UNAVAILABLE"
    if "GPU" not in ovb.ov_core().available_devices:
        with pytest.raises(BackendError) as e:
            create_backend("openvino", demo, options=Options(precision="fp32", device="GPU"))
        assert e.value.code == "BACKEND_UNAVAILABLE" and "no OpenVINO GPU" in e.value.message


def test_a_device_onnxruntime_cannot_use_is_refused(demo):
    with pytest.raises(BackendError) as e:
        create_backend("onnxruntime", demo, options=Options(precision="fp32", device="GPU"))
    assert e.value.code == "BACKEND_UNAVAILABLE" and "CPU" in e.value.message


def test_doctor_shows_openvino_and_what_int8_on_the_cpu_means():
    from edgemed.doctor import CPU_INT8, format_report, gather, openvino_facts

    facts = openvino_facts()
    assert facts["installed"] and "CPU" in facts["devices"]
    assert "FP32" in facts["devices"]["CPU"]
    report = format_report(gather())
    assert f"  int8 on cpu  {CPU_INT8}" in report
    line = next(x for x in report.splitlines() if x.startswith("  openvino "))
    assert ov.get_version().split("-")[0] in line and "CPU:" in line
    from edgemed._lazy import available

    if not available("tensorrt"):  # else TensorRT may come first
        assert "auto picks   openvino (tensorrt not used" in report
