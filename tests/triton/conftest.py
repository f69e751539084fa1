"""Fixtures of the Triton tests: the real ``tritonserver`` (set up once by
``tools/tritonserver_setup.py`` into ``.cache/tritonserver/``; skipped with the reason when
that cannot be done here, e.g. no network for pip), the demo bundle's repository and
the inputs."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from tests.triton import inputs

#: One salt for the server and for `edgemed run`: equal inputs then get equal input ids.
SALT = "5a" * 16
MODEL = "edgemed-demo-ct-tissue"


@pytest.fixture(scope="session")
def triton():
    """The set-up server (binary, model environment, perf_analyzer)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the tritonserver of the nvidia-pytriton wheel is Linux x86_64 only")
    pytest.importorskip("tritonclient.http", reason="the triton extra is not installed")
    from tools.tritonserver_setup import SetupError, ensure

    try:
        return ensure(quiet=True)
    except SetupError as exc:
        pytest.skip(f"tritonserver cannot be set up here: {exc}")


@pytest.fixture(scope="session")
def triton_inputs(tmp_path_factory) -> dict[str, Path]:
    """CT_small.dcm, a 512x512 CT DICOM slice and the 5-slice CT5N series folder."""
    folder = tmp_path_factory.mktemp("triton-inputs")
    return {
        "ct_small": inputs.ct_small(),
        "slice512": inputs.slice512_dicom(folder / "slice512.dcm"),
        "ct5n": inputs.ct5n_series(),
    }


def same_result(remote: dict, local: dict) -> None:
    """A result from Triton and one from `edgemed run` for the same input agree on
    everything but timings, timestamp and start-up costs."""
    assert remote["task"] == local["task"]
    assert remote["outputs"] == local["outputs"]  # labels, pixels, areas/volumes
    assert remote["input"] == local["input"]
    for key in ("edgemed_version", "bundle", "artifact", "backend", "precision", "input_id"):
        assert remote["provenance"][key] == local["provenance"][key], key
