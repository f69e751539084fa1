"""Classification and embedding bundles through the service (the head's JSON, no mask
links), and the service's parts in-process: the result store, the status table, the
golden readiness check."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgemed
from edgemed.errors import (
    BackendError,
    BundleError,
    DecoderMissingError,
    EdgemedError,
    InputError,
    MissingDependencyError,
    OutputError,
    UsageError,
)
from edgemed.serve import errors as se
from edgemed.serve.store import ResultStore
from tests.serve.conftest import good
from tests.serve.server import start


@pytest.mark.parametrize(
    ("task", "key"), [("classification", "classification"), ("embedding", "embedding")]
)
def test_other_heads_are_served_with_their_own_json(tmp_path, tiny_bundle, ct_bytes, task, key):
    bundle = tiny_bundle(task)
    server = start(["--bundle", str(bundle), "--threads", "1"], tmp_path, task)
    try:
        with server.client() as c:
            ready = c.get("/readyz").json()
            # No expected values ship for a user's model: checked against a second run.
            assert ready["golden"]["expected"] == "self" and ready["golden"]["ok"]
            answer = good(c, ct_bytes)
            rid = answer["id"]
            assert answer["task"] == task
            assert answer["links"] == {"result.json": f"/v1/results/{rid}/result.json"}
            r = c.get(f"/v1/results/{rid}/mask.nii.gz")
            assert r.status_code == 404 and r.json()["error"]["code"] == "RESULT_FILE_NOT_FOUND"
            assert c.get(answer["links"]["result.json"]).json() == answer
            assert c.get("/v1/model").json()["task"] == task
    finally:
        assert server.stop() == 0
    with edgemed.Pipeline.from_bundle(bundle, threads=1) as pipe:
        expected = pipe(ct_bytes).to_dict()["outputs"]
    assert list(answer["outputs"]) == [key] == list(expected)
    np.testing.assert_allclose(
        np.array(
            json.loads(json.dumps(answer["outputs"][key]), parse_float=float)[0]["probabilities"]
            if task == "classification"
            else answer["outputs"][key]
        ),
        np.array(expected[key][0]["probabilities"] if task == "classification" else expected[key]),
        rtol=0,
        atol=0,
    )


class _Result:
    """Stands for a Result in the store (it only looks at the arrays' sizes)."""

    def __init__(self, nbytes: int) -> None:
        self.image = type("I", (), {"array": np.zeros(nbytes, np.uint8)})()
        self.output = type("O", (), {})()
        self.output.mask = np.zeros(nbytes, np.uint8)


def test_store_caps_count_and_bytes_oldest_first():
    store = ResultStore(max_count=3, max_bytes=9_000)
    ids = [store.new_id() for _ in range(5)]
    assert len(set(ids)) == 5
    for rid in ids[:4]:
        assert store.put(rid, b"{}", _Result(100))
    assert store.get(ids[0]) is None and len(store) == 3  # count cap
    assert store.get(ids[1]).body == b"{}"
    assert store.put(ids[4], b"x" * 10, _Result(4400))  # 8810 bytes: pushes out the rest
    assert [rid for rid in ids if store.get(rid)] == [ids[4]]
    assert store.nbytes == 8810
    assert not store.put(store.new_id(), b"", _Result(5000))  # alone over the cap: not kept
    assert store.get(ids[4]) is not None
    for bad in ("../../etc/passwd", "", "A" * 32, ids[4] + "0", ids[4].upper()):
        assert store.get(bad) is None


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InputError("x", code="INPUT_TRUNCATED"), 400),
        (DecoderMissingError("x"), 400),
        (UsageError("x"), 400),
        (se.RequestError("x"), 400),
        (se.TooLarge("x"), 413),
        (se.UnsupportedMediaType("x"), 415),
        (se.RequestTimeout("x"), 408),
        (se.Unauthorized("x"), 401),
        (se.NotFound("x"), 404),
        (se.Busy("x", retry_after=2), 429),
        (se.NotReady("x"), 503),
        (MissingDependencyError("m", "serve"), 503),
        (BundleError("x"), 503),
        (BackendError("x", code="GPU_FATAL"), 503),
        (BackendError("x"), 500),
        (OutputError("x"), 500),
        (EdgemedError("x"), 500),
    ],
)
def test_one_status_table(exc, status):
    assert se.status_of(exc) == status


def test_golden_mismatch_keeps_the_service_not_ready(tmp_path, monkeypatch):
    from edgemed.serve import golden
    from edgemed.serve.app import Service
    from edgemed.serve.config import ServeConfig
    from edgemed.settings import Options

    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), threads=1) as pipe:
        assert golden.check(pipe)["ok"]
        name = golden.expected_path(pipe).name
        record = json.loads(golden.expected_path(pipe).read_text())
    # The stored mask, shifted: what a broken engine or a wrong model would give.
    for entry in record["backends"].values():
        mask = golden._decode(entry["values"][0])
        entry["values"] = [golden._encode(np.roll(mask, 9, axis=1))]
    (tmp_path / name).write_text(json.dumps(record))
    monkeypatch.setattr(golden, "GOLDEN_DIR", tmp_path)
    service = Service(ServeConfig(options=Options(threads=1)))
    service._warm_up()
    why = service.not_ready()
    assert why is not None and why.code == "SERVICE_GOLDEN_MISMATCH"
    assert service.golden["ok"] is False and service.golden["failures"]
    assert service.state == "failed" and service.pool is None
