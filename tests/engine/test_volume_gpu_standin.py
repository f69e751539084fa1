"""3D (volume) bundles through the pipeline with TensorRT on the stand-in GPU: windows cut
into the engine's input, outputs blended and decided by the CUDA volume kernels (their
host build, run by the stand-in pycuda in stream order), equal to ONNX Runtime's CPU
pipeline mask for mask.

The stand-in engine runs the bundle's ONNX in ONNX Runtime; the stand-in pycuda checks
every pointer a kernel or copy touches against live device allocations, so a window cut
or a blend outside its buffer fails here as an illegal address would on a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import edgemed
from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle, write_manifest
from edgemed.errors import BackendError, UsageError
from tests.volume.test_volume_pipeline import _image, _manifest, _model, _phantom

MAX_BATCH = 4  # the engine's profile: 1:2:4 windows per call (the manifest says 3)
NOTHING = {"device_bytes": 0, "pinned_bytes": 0, "streams": 0, "events": 0, "graphs": 0}


@pytest.fixture
def volume_bundle(tmp_path):
    """``make(spacing, mode=..., overlap=...)``: a tiny 3D bundle (tests/volume's) with a
    stand-in TensorRT engine of batch 1..4 built into it."""

    def make(spacing, **kw):
        root = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "model.onnx").write_bytes(_model())
        write_manifest(root, _manifest(spacing, **kw))
        build_engine(Bundle.load(root), BuildOptions(ranges={"batch": f"1:2:{MAX_BATCH}"}))
        return root

    return make


def _cpu_mask(root, image) -> tuple[np.ndarray, dict]:
    with edgemed.Pipeline.from_bundle(root, "onnxruntime", threads=1) as pipe:
        assert pipe.preprocess_device == "cpu"
        result = pipe(image)
    return result.mask, result.to_dict()["outputs"]["volume"]


@pytest.mark.parametrize(
    ("shape", "spacing", "src_spacing", "mode", "overlap"),
    [
        ((10, 15, 12), None, (2.0, 1.0, 1.0), "gaussian", 0.25),  # smaller than the ROI
        ((23, 41, 37), None, (2.0, 1.0, 1.0), "constant", 0.5),  # not a multiple of it
        ((23, 41, 37), [1.5, 1.5, 1.0], (2.0, 1.0, 1.0), "gaussian", 0.5),  # resampled
        ((14, 30, 26), [0.8, 1.2, 3.0], (2.5, 0.9, 1.1), "constant", 0.25),  # anisotropic
    ],
)
def test_volume_on_the_gpu_equals_the_cpu_pipeline(
    standin_gpu_with_kernels, volume_bundle, shape, spacing, src_spacing, mode, overlap
):
    sim = standin_gpu_with_kernels
    root = volume_bundle(spacing, mode=mode, overlap=overlap)
    image = _image(_phantom(shape), src_spacing)
    ref, ref_facts = _cpu_mask(root, image)
    seen: list[tuple[int, int]] = []
    with edgemed.Pipeline.from_bundle(root, "tensorrt") as pipe:
        assert pipe.preprocess_choice.device == "cuda", pipe.preprocess_choice.reason
        batches: list[int] = []
        device_input = pipe.backend.device_input

        def spy(name, batch_shape):  # the batch shapes the engine is given
            batches.append(batch_shape[0])
            return device_input(name, batch_shape)

        pipe.backend.device_input = spy
        before = sim.n("execute")
        result = pipe.run_batch([image], progress=lambda d, n: seen.append((d, n)))[0]
        executes = sim.n("execute") - before
        kernels = sim.n("kernel")
    assert result.provenance["backend"] == "tensorrt"
    assert result.provenance["preprocess_device"] == "cuda"
    assert result.mask.shape == shape and result.mask.dtype == np.uint8
    np.testing.assert_array_equal(result.mask, ref)
    assert len(np.unique(ref)) >= 2  # a mask that labels something
    facts = result.to_dict()["outputs"]["volume"]
    windows = facts["windows"]
    assert windows == ref_facts["windows"] and facts["model_shape"] == ref_facts["model_shape"]
    # The engine's max batch per call, a smaller last batch only.
    assert facts["windows_per_call"] == MAX_BATCH
    assert executes == math.ceil(windows / MAX_BATCH) == len(batches)
    assert batches == [MAX_BATCH] * (windows // MAX_BATCH) + (
        [windows % MAX_BATCH] if windows % MAX_BATCH else []
    )
    assert kernels > executes  # windows cut and outputs blended by the kernels
    assert seen[-1] == (windows, windows)
    assert sim.live() == NOTHING  # every device buffer freed inside the context


def test_several_volumes_and_the_cpu_choice(standin_gpu_with_kernels, volume_bundle):
    """Two volumes in one call (buffers per volume, the kernel module loaded once), the
    same again; ``--preprocess cpu`` beside TensorRT runs the CPU windows through the
    engine with the same mask."""
    sim = standin_gpu_with_kernels
    root = volume_bundle([1.5, 1.5, 1.0], mode="gaussian", overlap=0.25)
    images = [_image(_phantom(s), (2.0, 1.0, 1.0)) for s in [(23, 41, 37), (9, 20, 30)]]
    refs = [_cpu_mask(root, im)[0] for im in images]
    with edgemed.Pipeline.from_bundle(root, "tensorrt") as pipe:
        first = pipe.run_batch(images)
        loads = sim.n("module_from_file") + sim.n("compile")
        again = pipe.run_batch(images)
        assert sim.n("module_from_file") + sim.n("compile") == loads
    for a, b, ref in zip(first, again, refs, strict=True):
        np.testing.assert_array_equal(a.mask, ref)
        np.testing.assert_array_equal(b.mask, ref)
    with edgemed.Pipeline.from_bundle(root, "tensorrt", preprocess="cpu") as pipe:
        assert pipe.preprocess_device == "cpu"
        kernels = sim.n("kernel")
        result = pipe(images[0])
        assert sim.n("kernel") == kernels  # no volume kernel ran
    assert result.provenance["preprocess_device"] == "cpu"
    np.testing.assert_array_equal(result.mask, refs[0])


def test_cuda_without_device_io_is_refused(volume_bundle, standin_gpu_with_kernels):
    root = volume_bundle(None)
    with pytest.raises(UsageError) as e:
        edgemed.Pipeline.from_bundle(root, "onnxruntime", preprocess="cuda")
    assert e.value.code == "USAGE_GPU_UNSUPPORTED" and "device I/O" in e.value.message
    with edgemed.Pipeline.from_bundle(root, "onnxruntime", preprocess="auto") as pipe:
        assert pipe.preprocess_device == "cpu"
        assert "no device I/O" in pipe.preprocess_choice.reason


def test_a_gpu_fault_during_a_volume_stops_the_pipeline(standin_gpu_with_kernels, volume_bundle):
    sim = standin_gpu_with_kernels
    root = volume_bundle([1.5, 1.5, 1.0])
    image = _image(_phantom(), (2.0, 1.0, 1.0))
    pipe = edgemed.Pipeline.from_bundle(root, "tensorrt")
    try:
        assert pipe.preprocess_device == "cuda"
        good = pipe(image).mask
        sim.fault_next_execute = "the engine wrote out of bounds"
        with pytest.raises(BackendError) as e:
            pipe(image)
        assert e.value.code == "GPU_FATAL"
        with pytest.raises(BackendError) as e:
            pipe(image)  # refused: the context is lost
        assert e.value.code == "GPU_FATAL" and "refuses work" in e.value.message
    finally:
        pipe.close()
    assert sim.live() == NOTHING and sim.contexts == []
    np.testing.assert_array_equal(good, _cpu_mask(root, image)[0])


def test_a_fixed_batch_engine_runs_whole_batches(standin_gpu_with_kernels, tmp_path):
    """An engine built for exactly 4 windows: the last, smaller batch runs a whole one
    and only its windows' outputs are blended."""
    import onnx

    sim = standin_gpu_with_kernels
    model = onnx.load_from_string(_model())
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = MAX_BATCH
    manifest = _manifest(None, mode="gaussian", overlap=0.5)  # 18 windows
    for io in (manifest["input"], *manifest["outputs"]):
        io["shape"] = [MAX_BATCH, *io["shape"][1:]]
    root = tmp_path / "fixed"
    root.mkdir()
    (root / "model.onnx").write_bytes(model.SerializeToString())
    write_manifest(root, manifest)
    build_engine(Bundle.load(root), BuildOptions())
    image = _image(_phantom(), (2.0, 1.0, 1.0))
    ref, ref_facts = _cpu_mask(root, image)
    with edgemed.Pipeline.from_bundle(root, "tensorrt") as pipe:
        assert pipe.preprocess_device == "cuda"
        before = sim.n("execute")
        result = pipe(image)
        executes = sim.n("execute") - before
    windows = ref_facts["windows"]
    assert windows % MAX_BATCH  # the case: a partial last batch
    assert executes == math.ceil(windows / MAX_BATCH)
    np.testing.assert_array_equal(result.mask, ref)
