"""One place for each ``auto`` choice: after ``edgemed build`` into
``EDGEMED_ENGINE_CACHE``, ``edgemed doctor``, ``edgemed run`` and
``Pipeline.from_bundle`` pick the same backend and preprocessing device (stand-in
TensorRT; before the options object, doctor and the API ignored the variable and said
onnxruntime while run picked tensorrt)."""

from __future__ import annotations

import json

import pytest

from edgemed.cli import main
from edgemed.pipeline import Pipeline
from tests.engine.support import without_nvcc


@pytest.mark.parametrize("nvcc", [True, False], ids=["nvcc", "no-nvcc"])
def test_doctor_run_and_the_api_agree_on_an_env_engine_cache(
    standin_gpu_with_kernels, demo_copy, tmp_path, monkeypatch, capsys, ct_small_path, nvcc
):
    cache = tmp_path / "elsewhere"
    monkeypatch.setenv("EDGEMED_ENGINE_CACHE", str(cache))
    if not nvcc:
        without_nvcc(monkeypatch)
    assert main(["build", str(demo_copy)]) == 0
    assert any(cache.glob("*.plan")) and not (demo_copy / "engines").exists()
    capsys.readouterr()

    assert main(["doctor", "--bundle", str(demo_copy), "--json"]) == 0
    doctor = json.loads(capsys.readouterr().out)["backends"]

    out = tmp_path / "run"
    assert main(["run", ct_small_path, "--bundle", str(demo_copy), "--out", str(out)]) == 0
    run = json.loads((out / "result.json").read_text())["provenance"]

    with Pipeline.from_bundle(demo_copy) as pipe:
        api = (pipe.backend.name, pipe.preprocess_device)

    assert doctor["auto"] == run["backend"] == api[0] == "tensorrt"
    assert doctor["preprocess"] == run["preprocess_device"] == api[1]
    # without nvcc no kernels can load (build stored none): all three say cpu, and why
    assert api[1] == ("cuda" if nvcc else "cpu")
    if not nvcc:
        assert "no CUDA kernel cubins" in doctor["preprocess_reason"]
