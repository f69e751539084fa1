"""The demo bundle served by a real ``tritonserver`` (Triton 2.51, Python backend) from
the repository ``edgemed triton-repo`` writes, against ``edgemed run``.

One server per module (explicit model control: the load tests add models beside the
demo's and leave it serving); a second server for the two-node test.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import edgemed
from edgemed.errors import InputError
from edgemed.triton import TritonClient, infer, wire
from edgemed.triton.repo import RepoOptions, write_repository
from tests.cli_run import cli
from tests.triton.conftest import MODEL, SALT, same_result

NAMES = ("ct_small", "slice512", "ct5n")
# Long enough that 8 concurrent requests meet in the queue on a slow shared machine;
# requests that arrive alone wait this long (tests send few of them).
QUEUE_DELAY_US = 150_000


@pytest.fixture(scope="module")
def repository(triton, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    write_repository(
        edgemed.demo_bundle(),
        out,
        RepoOptions(
            max_batch=8,
            max_queue_delay_us=QUEUE_DELAY_US,
            threads=1,
            python_env=str(triton.venv),
        ),
    )
    return out


@pytest.fixture(scope="module")
def server(triton, repository):
    from tools.tritonserver_setup import TritonServer

    s = TritonServer(
        triton,
        repository,
        [MODEL],
        log=repository.parent / "server-1.log",
        env={"EDGEMED_ID_SALT": SALT},
    )
    s.start()
    yield s
    s.stop()
    assert "Traceback" not in s.log_text()


@pytest.fixture(scope="module")
def local(triton_inputs, tmp_path_factory) -> dict[str, tuple[dict, np.ndarray]]:
    """`edgemed run` on the three inputs (a subprocess, as a user runs it): each one's
    result.json and its mask from mask.nii.gz as (Z, Y, X)."""
    out = tmp_path_factory.mktemp("run") / "out"
    paths = [str(triton_inputs[n]) for n in NAMES]
    proc = cli(
        "run",
        *paths,
        "--out",
        str(out),
        "--backend",
        "onnxruntime",
        "--quiet",
        env={"EDGEMED_ID_SALT": SALT},
    )
    assert proc.returncode == 0, proc.stderr
    found = {}
    for k, name in enumerate(NAMES):
        folder = out / f"input-{k + 1:04d}"
        result = json.loads((folder / "result.json").read_text())
        xyz = np.asarray(nib.load(folder / "mask.nii.gz").dataobj)  # type: ignore[attr-defined]
        found[name] = (result, np.ascontiguousarray(xyz.transpose(2, 1, 0)).astype(np.uint8))
    return found


def _stats(url: str) -> dict:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(url) as c:
        return c.get_inference_statistics(MODEL)["model_stats"][0]


@pytest.mark.parametrize("name", NAMES)
def test_same_as_edgemed_run(server, triton_inputs, local, name):
    remote = infer(server.url, MODEL, triton_inputs[name])
    result, mask = local[name]
    same_result(remote.result, result)
    assert remote.mask is not None
    assert remote.mask.dtype == np.uint8
    assert wire.mask_zyx(remote.mask).tobytes() == mask.tobytes()  # byte-equal
    assert remote.stats == result["outputs"]["labels"]
    assert remote.result["provenance"]["backend"] == "onnxruntime"
    if name == "ct5n":
        assert remote.mask.shape == (5, 16, 16)
        assert remote.result["input"]["format"] == local[name][0]["input"]["format"]
    if name == "slice512":
        assert remote.mask.shape == (512, 512)
        assert remote.stats["lung"]["area_mm2"] > 0


def test_grpc_and_bytes_same(server, triton_inputs, local):
    data = Path(triton_inputs["ct_small"]).read_bytes()
    remote = infer(server.grpc_url, MODEL, data, protocol="grpc")
    same_result(remote.result, local["ct_small"][0])
    assert wire.mask_zyx(remote.mask).tobytes() == local["ct_small"][1].tobytes()


def test_several_images_in_one_request(server, triton_inputs, local):
    """Rows of different lengths (LENGTH given) in one request: one result per image."""
    files = [Path(triton_inputs[n]).read_bytes() for n in ("slice512", "ct_small")]
    with TritonClient(server.url, MODEL) as client:
        got = client.infer_batch(files)
    assert [g.mask.shape for g in got] == [(512, 512), (128, 128)]
    for g, name in zip(got, ("slice512", "ct_small"), strict=True):
        same_result(g.result, local[name][0])
        assert wire.mask_zyx(g.mask).tobytes() == local[name][1].tobytes()


def test_concurrent_requests_are_batched(server, triton_inputs, local):
    before = _stats(server.url)
    results: list = [None] * 8
    errors: list = []
    barrier = threading.Barrier(8)

    def one(k: int) -> None:
        try:
            with TritonClient(server.url, MODEL) as client:
                barrier.wait(timeout=30)
                results[k] = client.infer(triton_inputs["ct_small" if k % 2 else "slice512"])
        except Exception as exc:  # reported below with its type
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    after = _stats(server.url)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 8
    assert executions < 8, (inferences, executions)  # shared executions: batched
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert max(sizes) > 1, after["batch_stats"]
    for k, got in enumerate(results):  # results unchanged by batching
        name = "ct_small" if k % 2 else "slice512"
        same_result(got.result, local[name][0])
        assert wire.mask_zyx(got.mask).tobytes() == local[name][1].tobytes()


def test_bad_input_is_an_error_and_model_keeps_serving(server, triton_inputs, local):
    rng = np.random.default_rng(11)
    for data in (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), b"\x89PNG\r\n\x1a\nxx"):
        with pytest.raises(InputError) as err:
            infer(server.url, MODEL, data)
        assert err.value.code.startswith("INPUT_")
    # A raw request shows the error as Triton reports it: 400 with edgemed's code.
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    rows, _ = wire.pack([b"not an image at all"])
    with httpclient.InferenceServerClient(server.url) as c:
        inp = httpclient.InferInput(wire.INPUT, list(rows.shape), "UINT8")
        inp.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException) as raw:
            c.infer(MODEL, [inp])
        assert raw.value.status() == "400"
        assert "INPUT_" in raw.value.message()
        assert c.is_model_ready(MODEL)
    # One bad image among good ones in one request fails that request only.
    with TritonClient(server.url, MODEL) as client:
        with pytest.raises(InputError):
            client.infer_batch([Path(triton_inputs["ct_small"]).read_bytes(), b"junk"])
        again = client.infer(triton_inputs["ct_small"])
    same_result(again.result, local["ct_small"][0])


def _second_model(repository: Path, name: str, **kw) -> Path:
    return write_repository(edgemed.demo_bundle(), repository, RepoOptions(name=name, **kw))


def _load_error(server, name: str, *, serving: bool = True) -> str:
    """The message of ``load_model(name)``'s failure (``serving``: the demo model, loaded
    before, goes on serving)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with httpclient.InferenceServerClient(server.url) as c:
        with pytest.raises(InferenceServerException) as err:
            c.load_model(name)
        assert not c.is_model_ready(name)
        if serving:
            assert c.is_model_ready(MODEL)
    return err.value.message()


def test_tampered_bundle_fails_to_load(triton, server, repository, triton_inputs, local):
    env = str(triton.venv)
    # An artifact changed after the repository was written: sha256 at initialize.
    model = _second_model(repository, "tampered-artifact", python_env=env)
    onnx = model / "1" / "bundle" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    assert "BUNDLE_INTEGRITY" in _load_error(server, "tampered-artifact")
    # bundle.json edited (a label renamed; artifacts untouched): not the manifest the
    # repository was generated from.
    model = _second_model(repository, "tampered-manifest", python_env=env)
    manifest = model / "1" / "bundle" / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"lung"', '"lungs"'))
    assert "BUNDLE_INTEGRITY" in _load_error(server, "tampered-manifest")
    # The server still answers as before.
    again = infer(server.url, MODEL, triton_inputs["ct_small"])
    same_result(again.result, local["ct_small"][0])


def test_signature_checked_at_load(triton, server, repository, tmp_path):
    pytest.importorskip("cryptography", reason="the signing extra is not installed")
    from edgemed.bundle import sign_bundle
    from edgemed.signing import generate_keypair

    _, public = generate_keypair(tmp_path / "keys")
    other_private, _ = generate_keypair(tmp_path / "other")
    signed = tmp_path / "signed"
    shutil.copytree(edgemed.demo_bundle(), signed)
    sign_bundle(signed, tmp_path / "keys" / "private_key.pem")
    opts = RepoOptions(name="signed", python_env=str(triton.venv), trusted_key=str(public))
    write_repository(signed, repository, opts)
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.url) as c:
        c.load_model("signed")
        assert c.is_model_ready("signed")
        c.unload_model("signed")
    # Re-signed by a key the model does not trust: refused at load.
    sign_bundle(repository / "signed" / "1" / "bundle", other_private)
    assert "BUNDLE_SIGNATURE" in _load_error(server, "signed")


def test_two_servers_behind_one_client(triton, server, repository, triton_inputs, local):
    from tools.tritonserver_setup import TritonServer

    second = TritonServer(
        triton,
        repository,
        [MODEL],
        log=repository.parent / "server-2.log",
        env={"EDGEMED_ID_SALT": SALT},
    )
    with second:
        assert second.http_port != server.http_port
        counts = [_stats(u)["inference_count"] for u in (server.url, second.url)]
        with TritonClient([server.url, second.url], MODEL) as client:
            for name in ("ct_small", "slice512", "ct5n", "ct_small"):
                got = client.infer(triton_inputs[name])
                same_result(got.result, local[name][0])
                assert wire.mask_zyx(got.mask).tobytes() == local[name][1].tobytes()
        after = [_stats(u)["inference_count"] for u in (server.url, second.url)]
        assert after[0] - counts[0] >= 1 and after[1] - counts[1] >= 1  # both served
        assert sum(after) - sum(counts) == 3 + 5  # rows: the series is 5


def test_trusted_key_from_the_server_environment(triton, repository, tmp_path):
    """EDGEMED_TRUSTED_KEY in tritonserver's environment reaches the model (through the
    execution environment's activation): an unsigned bundle is refused at load."""
    pytest.importorskip("cryptography", reason="the signing extra is not installed")
    from edgemed.signing import generate_keypair
    from tools.tritonserver_setup import TritonServer

    _, public = generate_keypair(tmp_path / "keys")
    keyed = TritonServer(
        triton,
        repository,
        [],
        log=repository.parent / "server-keyed.log",
        env={"EDGEMED_TRUSTED_KEY": str(public)},
    )
    with keyed:
        assert "BUNDLE_UNSIGNED" in _load_error(keyed, MODEL, serving=False)
