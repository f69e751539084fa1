"""``edgemed serve``'s API against a real server: answers are ``edgemed run``'s
result.json (+ id, links), files are the CLI's bytes, several DICOM parts are one
series, micro-batched answers are byte-identical to single ones."""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest

import edgemed
from edgemed.io.writers import write_mask_nifti, write_overlay_png
from tests.serve.conftest import good, same_result
from tests.support import dicom_series

SCHEMA = json.loads((Path(edgemed.__file__).parent / "data" / "result.schema.json").read_text())


@pytest.fixture(scope="module")
def pipe():
    """The in-process pipeline the server's answers must agree with (same options)."""
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), threads=2) as p:
        yield p


def test_answer_is_result_json_plus_id_and_links(server, ct_bytes, pipe, tmp_path):
    with server.client() as c:
        answer = good(c, ct_bytes)
        # What `edgemed run` writes as result.json, for the same input.
        run = pipe(ct_bytes).to_dict()
        assert set(answer) == set(run) | {"id", "links", "service"}
        jsonschema.validate({k: answer[k] for k in run}, SCHEMA)
        assert answer["outputs"] == run["outputs"]
        assert answer["input"] == run["input"]
        assert answer["provenance"]["artifact"] == run["provenance"]["artifact"]
        assert answer["outputs"]["labels"]["lung"]["area_mm2"] > 1000  # CT_small's lungs
        rid = answer["id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
        assert answer["links"] == {
            name: f"/v1/results/{rid}/{name}"
            for name in ("result.json", "mask.nii.gz", "overlay.png")
        }
        # The stored result.json is the answer itself.
        stored = c.get(answer["links"]["result.json"])
        assert stored.status_code == 200 and stored.json() == answer
        assert c.get(f"/v1/results/{rid}").json() == answer
        # The files are the bytes the CLI's writers produce for the same result.
        result = pipe(ct_bytes)
        mask = c.get(answer["links"]["mask.nii.gz"])
        assert mask.headers["content-type"] == "application/gzip"
        expected = io.BytesIO()
        write_mask_nifti(expected, result.mask, result.image)
        assert mask.content == expected.getvalue()
        overlay = c.get(answer["links"]["overlay.png"])
        assert overlay.headers["content-type"] == "image/png"
        expected = io.BytesIO()
        write_overlay_png(expected, result.image, result.mask, result.labels, result.stats)
        assert overlay.content == expected.getvalue()


def test_multipart_one_file_is_the_raw_body(server, ct_bytes):
    with server.client() as c:
        raw = good(c, ct_bytes)
        r = c.post("/v1/infer", files={"file": ("x.dcm", ct_bytes, "application/dicom")})
        assert r.status_code == 200, r.text
        same_result(r.json(), raw)


def test_several_dicom_parts_are_one_series(server, ct_small_path, pipe, tmp_path):
    folder = dicom_series(ct_small_path, tmp_path / "series", 3, step_mm=2.5)
    files = sorted(folder.iterdir())
    with server.client() as c:
        # The order of the parts does not matter: slices are sorted by position.
        parts = [
            ("file", (f"p{i}", f.read_bytes(), "application/dicom"))
            for i, f in enumerate(reversed(files))
        ]
        r = c.post("/v1/infer", files=parts)
        assert r.status_code == 200, r.text
        answer = r.json()
    run = pipe(folder).to_dict()  # what `edgemed run FOLDER` gives
    assert answer["input"]["shape"] == [3, 128, 128]
    assert answer["input"]["format"] == "dicom-series"
    assert answer["outputs"] == run["outputs"]
    assert answer["outputs"]["labels"]["lung"]["volume_mm3"] > 0
    # The series record a folder run leaves (the id is salted per process: its form only).
    got, want = dict(answer["input"]["series"]), dict(run["input"]["series"])
    assert len(got.pop("id")) == 32 and len(want.pop("id")) == 32
    assert got == want == {"candidates": 1, "matching": 1, "reason": "only_match", "slices": 3}


def test_query_options(server, ct_bytes, slice512):
    from pydicom.data import get_testdata_file

    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    with server.client() as c:
        # The demo model is for CT: an MR slice is refused unless any_modality says so.
        r = c.post("/v1/infer", content=mr, headers={"content-type": "application/dicom"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INPUT_MODALITY"
        r = c.post(
            "/v1/infer",
            content=mr,
            params={"any_modality": "true"},
            headers={"content-type": "application/dicom"},
        )
        assert r.status_code == 200, r.text
        # An .npy states no spacing: pixels only, unless the request gives one.
        plain = good(c, slice512)
        assert plain["input"]["spacing_source"] == "unknown"
        assert "area_mm2" not in plain["outputs"]["labels"]["lung"]
        given = good(c, slice512, spacing="0.5,0.5")
        assert given["input"]["spacing_source"] == "user"
        lung = given["outputs"]["labels"]["lung"]
        assert lung["area_mm2"] == pytest.approx(lung["pixels"] * 0.25, rel=1e-4)
        # A file's own spacing is never overridden.
        assert good(c, ct_bytes, spacing="9,9")["input"]["spacing_source"] == "dicom"
        for params, code in (
            ({"spacing": "0,1"}, "REQUEST_SPACING"),
            ({"spacing": "a,b"}, "REQUEST_SPACING"),
            ({"precision": "int8"}, "REQUEST_PRECISION"),
            ({"any_modality": "maybe"}, "REQUEST_INVALID"),
        ):
            r = c.post(
                "/v1/infer",
                content=ct_bytes,
                params=params,
                headers={"content-type": "application/dicom"},
            )
            assert (r.status_code, r.json()["error"]["code"]) == (400, code), params
        assert good(c, ct_bytes, precision="fp32")["provenance"]["precision"] == "fp32"


def test_micro_batched_answers_equal_single_ones(server, ct_bytes, slice512):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(ct_bytes))
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()  # mirrored
    buf = io.BytesIO()
    ds.save_as(buf)
    inputs = [ct_bytes, slice512, buf.getvalue(), ct_bytes, slice512, buf.getvalue()]

    def post(c: httpx.Client, data: bytes) -> tuple[dict, bytes]:
        answer = good(c, data)
        return answer, c.get(answer["links"]["mask.nii.gz"]).content

    with server.client() as c:
        single = [post(c, data) for data in inputs]  # one at a time: batches of one
    assert all(a["service"]["batch"] == 1 for a, _ in single)
    for _ in range(5):  # until the arrivals fall within one window (they usually do)
        with concurrent.futures.ThreadPoolExecutor(len(inputs)) as ex:
            clients = [server.client() for _ in inputs]
            together = list(ex.map(post, clients, inputs))
            for cl in clients:
                cl.close()
        if max(a["service"]["batch"] for a, _ in together) > 1:
            break
    assert max(a["service"]["batch"] for a, _ in together) > 1, "never batched"
    for (a, mask_a), (b, mask_b) in zip(single, together, strict=True):
        same_result(a, b)
        assert mask_a == mask_b  # byte-identical files


def test_results_are_kept_in_a_bounded_store(server, ct_bytes):
    with server.client() as c:
        first = good(c, ct_bytes)["id"]
        for _ in range(16):  # --store-results 16: the first one is evicted
            good(c, ct_bytes)
        r = c.get(f"/v1/results/{first}/result.json")
        assert r.status_code == 404 and r.json()["error"]["code"] == "RESULT_NOT_FOUND"
        last = good(c, ct_bytes)["id"]
        assert c.get(f"/v1/results/{last}/overlay.png").status_code == 200
        r = c.get(f"/v1/results/{last}/secrets.txt")
        assert r.status_code == 404 and r.json()["error"]["code"] == "RESULT_FILE_NOT_FOUND"


def test_model_card_and_metrics(server, ct_bytes):
    with server.client() as c:
        good(c, ct_bytes)
        card = c.get("/v1/model").json()
        assert card["name"] == "edgemed-demo-ct-tissue"
        assert card["labels"] == ["background", "lung", "fat", "soft_tissue", "bone"]
        assert card["intended_use"] == "not for clinical use"
        assert card["precision"] == "fp32" and card["backend"]
        c.post("/v1/infer", content=b"junk", headers={"content-type": "application/octet-stream"})
        text = c.get("/metrics").text
    ok = re.search(r'edgemed_requests_total\{code="",route="/v1/infer",status="200"\} (\S+)', text)
    assert ok and float(ok.group(1)) >= 1
    assert re.search(
        r'edgemed_requests_total\{code="INPUT_\w+",route="/v1/infer",status="400"\}', text
    )
    assert re.search(r'edgemed_stage_seconds_count\{stage="infer"\} [1-9]', text)
    assert re.search(r'edgemed_stage_seconds_bucket\{le="0.5",stage="queue"\}', text)
    assert "edgemed_queue_depth 0.0" in text and "edgemed_in_flight" in text
    assert re.search(r'edgemed_model_info\{.*backend="\w+".*name="edgemed-demo-ct-tissue"', text)
    assert "edgemed_ready 1.0" in text


def test_probes_and_unknown_routes(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "alive"}
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["golden"]["ok"] is True
        assert ready["golden"]["expected"].startswith("shipped")
        r = c.get("/nothing/here")
        assert r.status_code == 404 and r.json() == {
            "error": {"code": "NOT_FOUND", "message": "no such route"}
        }
        r = c.get("/v1/infer")
        assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
