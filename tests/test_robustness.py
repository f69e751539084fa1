"""Faults and repetition: failing backends, fatal GPU errors, determinism, threads."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest

import edgemed
from edgemed import Pipeline
from edgemed.backends import Backend, create_backend
from edgemed.bundle import Bundle
from edgemed.errors import BackendError
from edgemed.pipeline import input_id


class FlakyBackend(Backend):
    """Wraps a real ONNX Runtime backend; raises the queued errors first."""

    name = "flaky"

    def __init__(self, inner: Backend, errors: list[BackendError]):
        super().__init__(precision=inner.precision, device=inner.device, version=inner.version)
        self.inner, self.errors, self.calls = inner, errors, 0

    @property
    def inputs(self):
        return self.inner.inputs

    @property
    def outputs(self):
        return self.inner.outputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.inner.infer(feeds)


@pytest.fixture
def flaky(tiny_bundle):
    bundle = Bundle.load(tiny_bundle("segmentation"))

    def make(*errors):
        backend = FlakyBackend(create_backend("onnxruntime", bundle), list(errors))
        return Pipeline(bundle, backend), backend

    return make


def _img(seed=0):
    return np.random.default_rng(seed).normal(0, 300, (20, 20)).astype(np.float32)


def test_failed_backend_call_leaves_pipeline_usable(flaky):
    pipe, backend = flaky(BackendError("boom", code="BACKEND_INFERENCE_FAILED"))
    with pytest.raises(BackendError) as e:
        pipe(_img())
    assert e.value.code == "BACKEND_INFERENCE_FAILED"
    good = pipe(_img())
    assert good.mask.shape == (20, 20) and backend.calls == 2


def test_fatal_gpu_error_stops_the_pipeline(flaky):
    pipe, backend = flaky(BackendError("illegal address", code="GPU_FATAL"))
    with pytest.raises(BackendError) as e:
        pipe(_img())
    assert e.value.code == "GPU_FATAL"
    for _ in range(2):  # refused, and the backend is never touched again
        with pytest.raises(BackendError) as e:
            pipe(_img())
        assert e.value.code == "GPU_FATAL"
    assert backend.calls == 1


def test_demo_is_bit_identical_over_100_runs(ct_small_path):
    image = edgemed.read_image(ct_small_path)
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime") as pipe:
        first = pipe(image)
        x, _ = edgemed.preprocess.preprocess(image.slices(), pipe.spec)
        logits = pipe.backend.infer({"image": x})["logits"].copy()
        for _ in range(100):
            again = pipe(image)
            assert again.mask.tobytes() == first.mask.tobytes()
            assert again.stats == first.stats
        assert pipe.backend.infer({"image": x})["logits"].tobytes() == logits.tobytes()


def test_shared_pipeline_across_8_threads_matches_serial(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle("segmentation", classes=4), "onnxruntime")
    images = [_img(seed) for seed in range(16)]
    serial = [pipe(im).mask for im in images]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(t: int) -> None:
        try:
            for k in range(t, len(images), 8):
                for _ in range(5):
                    mask = pipe(images[k]).mask
                    assert k not in results or results[k].tobytes() == mask.tobytes()
                    results[k] = mask
        except Exception as exc:  # surfaced below; a thread's assert is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results[k].tobytes() == serial[k].tobytes() for k in range(16))


def test_input_id_is_salted():
    image = edgemed.MedicalImage(_img(), spacing=(1.0, 1.0))
    a, b = input_id(image, b"s" * 16), input_id(image, b"t" * 16)
    assert a != b and a == input_id(image, b"s" * 16) and len(a) == 32


def test_configured_salt_makes_ids_stable(tiny_bundle, monkeypatch):
    path = tiny_bundle("segmentation")
    monkeypatch.setenv("EDGEMED_ID_SALT", "ab" * 16)
    ids = {Pipeline.from_bundle(path)(_img()).provenance["input_id"] for _ in range(2)}
    monkeypatch.delenv("EDGEMED_ID_SALT")
    ids |= {Pipeline.from_bundle(path)(_img()).provenance["input_id"]}
    assert len(ids) == 2  # same salt -> same id; random salt -> another
