"""Fixtures of the service tests: the real server in a subprocess (one shared per module
where the tests leave it as they found it) and the inputs they send."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="httpx (the test extra) is not installed")

from tests.serve.server import Server, start  # noqa: E402

#: The shared server's settings: small caps so that the fault tests stay quick.
SHARED_ARGS = [
    "--threads",
    "2",
    "--max-upload-mb",
    "16",
    "--body-timeout-s",
    "4",
    "--max-parts",
    "150",
    "--batch-window-ms",
    "20",
    "--store-results",
    "16",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """The demo bundle served with :data:`SHARED_ARGS` (one per test module)."""
    s = start(SHARED_ARGS, tmp_path_factory.mktemp("serve"), "shared")
    yield s
    assert s.stop() == 0, s.read_log()
    assert "Traceback" not in s.read_log()


@pytest.fixture(scope="session")
def ct_bytes(ct_small_path) -> bytes:
    return Path(ct_small_path).read_bytes()


@pytest.fixture(scope="session")
def slice512() -> bytes:
    """A seeded 512x512 CT-like slice (HU) as an .npy upload."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 170**2) < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 30, (512, 512))
    lungs = ((yy - 250) ** 2 / 90**2 + (np.abs(xx - 256) - 80) ** 2 / 50**2) < 1
    hu[lungs] = -800
    buf = io.BytesIO()
    np.save(buf, hu.astype(np.float32))
    return buf.getvalue()


def good(client, data: bytes, **params) -> dict:
    """POST ``data`` and return the 200 answer's JSON."""
    r = client.post(
        "/v1/infer", content=data, params=params, headers={"content-type": "application/dicom"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def same_result(a: dict, b: dict) -> None:
    """Two answers for one input agree on everything but timings, ids and time."""
    assert a["outputs"] == b["outputs"]
    assert a["input"] == b["input"]
    for key in ("bundle", "artifact", "backend", "precision", "input_id"):
        assert a["provenance"][key] == b["provenance"][key], key


def still_good(server: Server, ct_bytes: bytes, baseline: dict) -> None:
    """After a fault: /readyz is 200 and a good request gives the same result."""
    server.wait_ready(timeout=60)
    with server.client() as c:
        same_result(good(c, ct_bytes), baseline)
