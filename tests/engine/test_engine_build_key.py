"""What an engine is built with and for, through the stand-in ``tensorrt``/``pycuda``
(``standin_trt.py``: TensorRT's default TF32 on, as in 10.3 and 11.x; the plan header
records the flags the builder really had).

- float32 math: ``BuilderFlag.TF32`` cleared unless ``--tf32``; the mode in the key, the
  sidecar and the provenance;
- the key tells Orin modules (one name, one compute capability) and platforms apart, and
  a plan from another platform is never loaded whatever its compatibility level;
- version-compatible plans are refused, and hardware compatibility on an integrated GPU.
"""

from __future__ import annotations

import json
import platform

import pytest

from edgemed.backends.tensorrt.backend import TensorRTBackend
from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, UsageError
from edgemed.pipeline import Pipeline
from tests.engine.standin_trt import PLAN_MAGIC


def build(bundle: Bundle, **kw):
    return build_engine(bundle, BuildOptions(**kw), progress=lambda line: None)


def plan_header(path) -> dict:
    """The flags and target the stand-in builder wrote into the plan."""
    data = path.read_bytes()
    start = len(PLAN_MAGIC) + 4
    size = int.from_bytes(data[len(PLAN_MAGIC) : start], "little")
    return json.loads(data[start : start + size])


def orin(sim, sms: int = 16, gib: int = 64) -> None:
    """The stand-in GPU as an Orin module (AGX Orin 64GB: 16 SMs)."""
    sim.gpu_name, sim.cc, sim.integrated = "Orin", (8, 7), True
    sim.multiprocessors, sim.total_memory = sms, (gib << 30) - (2 << 30) // 3


# -- float32 math ----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_are_built_without_tf32_unless_asked(standin_gpu, demo, precision):
    result = build(demo, precision=precision)
    assert plan_header(result.plan_path)["tf32"] is False  # TensorRT's default, cleared
    assert result.key.tf32 is False and result.sidecar["tf32"] is False
    asked = build(demo, precision=precision, tf32=True)
    assert plan_header(asked.plan_path)["tf32"] is True
    assert asked.key.tf32 is True and asked.plan_path != result.plan_path


def test_the_math_mode_is_in_every_results_provenance(standin_gpu, demo_copy, ct_small_path):
    bundle = Bundle.load(demo_copy)
    build(bundle, tf32=True)
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cpu") as pipe:
        assert pipe(ct_small_path).provenance["tf32"] is True  # the only engine: used, said
    build(bundle)
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cpu") as pipe:
        result = pipe(ct_small_path)
    assert result.provenance["tf32"] is False  # float32 math preferred when both exist
    assert result.to_dict()["provenance"]["tf32"] is False


# -- the key: Orin modules, platforms ----------------------------------------------------------


def test_an_engine_from_one_orin_module_is_not_used_on_another(standin_gpu, demo):
    sim = standin_gpu
    orin(sim, sms=16, gib=64)  # AGX Orin 64GB
    result = build(demo)
    side = result.sidecar
    assert (side["multiprocessors"], side["memory_gib"]) == (16, 63)
    assert side["platform"] == f"{platform.system()}-{platform.machine()}-igpu"
    orin(sim, sms=8, gib=16)  # Orin NX 16GB: "Orin", cc 8.7 as well
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32")
    assert e.value.code == "ENGINE_INCOMPATIBLE" and "16 SMs, 63 GiB" in e.value.message
    assert sim.n("deserialize") == 0
    with TensorRTBackend.from_bundle(demo, "fp32", build=True) as be:  # its own engine
        assert be.engine_key is not None and be.engine_key.multiprocessors == 8
    assert len(list((demo.root / "engines").glob("*.plan"))) == 2


@pytest.mark.parametrize("compat", ["none", "ampere_plus", "same_compute_capability"])
def test_a_plan_from_another_platform_is_never_loaded(standin_gpu, demo, monkeypatch, compat):
    """The same GPU model on another CPU architecture: whatever the compatibility level,
    the plan is not selected (TensorRT plans are not portable across platforms)."""
    sim = standin_gpu
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    build(demo, hardware_compat=compat)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # an SBSA server, say
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32")
    assert e.value.code == "ENGINE_INCOMPATIBLE" and "x86_64" in e.value.message
    assert sim.n("deserialize") == 0


# -- refused options ---------------------------------------------------------------------------


def test_version_compatible_plans_are_refused(standin_gpu, demo):
    with pytest.raises(UsageError) as e:
        build(demo, version_compat=True)
    assert e.value.code == "USAGE" and "lean runtime" in e.value.message
    assert standin_gpu.n("build") == 0 and not (demo.root / "engines").exists()


@pytest.mark.parametrize("compat", ["ampere_plus", "same_compute_capability"])
def test_hardware_compatibility_is_refused_on_jetson(standin_gpu, demo, compat):
    orin(standin_gpu)
    with pytest.raises(UsageError) as e:
        build(demo, hardware_compat=compat)
    assert "integrated GPU" in e.value.message and "JetPack" in e.value.message
    assert standin_gpu.n("build") == 0
    build(demo)  # without it: fine
