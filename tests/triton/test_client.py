"""The client helper's errors without a server: nothing listening, bad arguments, and
Triton error messages mapped back to edgemed's codes."""

from __future__ import annotations

import pytest

from edgemed.errors import BackendError, BundleError, InputError, UsageError

pytest.importorskip("tritonclient.http", reason="the triton extra is not installed")
pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed")

from edgemed.triton import TritonClient, infer  # noqa: E402
from edgemed.triton.client import _error  # noqa: E402
from tools.tritonserver_setup import free_port  # noqa: E402


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nothing_listening_is_backend_unavailable(protocol, ct_small_path):
    url = f"127.0.0.1:{free_port()}"
    client = TritonClient(url, "m", protocol=protocol, timeout=10)
    with pytest.raises(BackendError) as err:
        client.infer(ct_small_path)
    client.close()
    assert err.value.code == "BACKEND_UNAVAILABLE"


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError):
        TritonClient([], "m")
    with pytest.raises(UsageError):
        TritonClient("127.0.0.1:1", "m", protocol="smtp")
    with pytest.raises(InputError) as err:
        infer("127.0.0.1:1", "m", tmp_path / "missing.dcm")
    assert err.value.code == "INPUT_NOT_FOUND"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        infer("127.0.0.1:1", "m", tmp_path / "empty")
    assert err.value.code == "INPUT_EMPTY_SERIES"


@pytest.mark.parametrize(
    ("message", "cls", "code"),
    [
        ("INPUT_CORRUPT: the bytes do not parse", InputError, "INPUT_CORRUPT"),
        (
            "[400] INPUT_UNSUPPORTED_FORMAT: not a DICOM file",
            InputError,
            "INPUT_UNSUPPORTED_FORMAT",
        ),
        (
            "load failed: RuntimeError: edgemed: BUNDLE_INTEGRITY: artifact model.onnx ...",
            BundleError,
            "BUNDLE_INTEGRITY",
        ),
        ("GPU_OOM: out of memory", BackendError, "GPU_OOM"),
        ("something else went wrong", BackendError, "BACKEND_FAILED"),
    ],
)
def test_error_messages_map_to_codes(message, cls, code):
    err = _error(message)
    assert type(err) is cls and err.code == code
