"""Bad uploads and faults against a real server: each is answered with a JSON error of
the right status and code (never a traceback, never a 5xx), and afterwards /readyz is
200 and a good request gives the same result as before."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serve.conftest import good, still_good
from tests.serve.server import peak_rss, raw_request, start

MB = 1 << 20


@pytest.fixture(scope="module")
def baseline(server, ct_bytes) -> dict:
    with server.client() as c:
        return good(c, ct_bytes)


@pytest.fixture(scope="module")
def big_json() -> bytes:
    """About 10 MB of JSON (an image's pixels as a list: the wrong kind of upload)."""
    rng = np.random.default_rng(4)
    data = json.dumps({"pixels": rng.integers(0, 4096, 2_000_000).tolist()}).encode()
    assert 10 * MB <= len(data) < 12 * MB
    return data


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in r.text


def _post(c: httpx.Client, data: bytes, ctype: str = "application/octet-stream", **kw):
    return c.post("/v1/infer", content=data, headers={"content-type": ctype}, **kw)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("random bytes", 400, "INPUT_UNSUPPORTED_FORMAT"),
        ("truncated DICOM", 400, "INPUT_TRUNCATED"),
        ("empty body", 400, "INPUT_TRUNCATED"),
        ("wrong content type", 415, "REQUEST_CONTENT_TYPE"),
        ("10 MB JSON", 415, "REQUEST_CONTENT_TYPE"),
        ("10 MB JSON as a file", 400, "INPUT_UNSUPPORTED_FORMAT"),
        ("200 parts", 400, "REQUEST_TOO_MANY_PARTS"),
        ("100 junk parts", 400, "INPUT_EMPTY_SERIES"),
        ("a field not named file", 400, "REQUEST_MULTIPART"),
        ("multipart cut short", 400, "REQUEST_MULTIPART"),
    ],
)
def test_bad_input(server, ct_bytes, baseline, big_json, name, status, code):
    rng = np.random.default_rng(3)
    with server.client() as c:
        if name == "random bytes":
            r = _post(c, rng.bytes(50_000))
        elif name == "truncated DICOM":
            r = _post(c, ct_bytes[: len(ct_bytes) // 2], "application/dicom")
        elif name == "empty body":
            r = _post(c, b"")
        elif name == "wrong content type":
            r = _post(c, ct_bytes, "text/plain")
        elif name == "10 MB JSON":
            r = _post(c, big_json, "application/json")
        elif name == "10 MB JSON as a file":
            r = _post(c, big_json)
        elif name in ("200 parts", "100 junk parts"):
            n = 200 if name == "200 parts" else 100
            parts = [
                ("file", (f"p{i}", rng.bytes(64), "application/octet-stream")) for i in range(n)
            ]
            r = c.post("/v1/infer", files=parts)
        elif name == "a field not named file":
            r = c.post("/v1/infer", files={"image": ("x.dcm", ct_bytes)})
        else:
            head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            r = _post(c, head + ct_bytes[:1000], "multipart/form-data; boundary=xyz")
    _error(r, status, code)
    still_good(server, ct_bytes, baseline)


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/results/../../etc/passwd",
        b"/v1/results/..%2F..%2Fetc%2Fpasswd/result.json",
        b"/v1/results/%2e%2e/%2e%2e/etc/passwd",
        b"/v1/results/../../../../etc/passwd/result.json",
    ],
)
def test_path_traversal_id_is_404(server, ct_bytes, baseline, path):
    answer = raw_request(
        server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), answer[:200]
    assert json.loads(body)["error"]["code"] in ("NOT_FOUND", "RESULT_NOT_FOUND")
    assert b"root:" not in answer
    still_good(server, ct_bytes, baseline)


def test_over_cap_upload_is_refused_while_reading(server, ct_bytes, baseline):
    before = peak_rss(server.pid)
    sent = 0

    def body():  # 200 MB, chunked (no Content-Length): only counting can stop it
        nonlocal sent
        chunk = bytes(MB)
        for _ in range(200):
            sent += len(chunk)
            yield chunk

    with server.client() as c:
        r = c.post("/v1/infer", content=body(), headers={"content-type": "application/dicom"})
        _error(r, 413, "REQUEST_TOO_LARGE")
        # A declared Content-Length over the cap is refused before any of it is read.
        r = _post(c, bytes(17 * MB), "application/dicom")
        _error(r, 413, "REQUEST_TOO_LARGE")
    grown = peak_rss(server.pid) - before
    assert grown < 40 * MB, f"peak RSS grew by {grown / MB:.0f} MB for a {sent / MB:.0f} MB upload"
    still_good(server, ct_bytes, baseline)


def test_slow_client_times_out_without_blocking_others(server, ct_bytes, baseline):
    answers: dict[str, bytes] = {}

    def trickle() -> None:  # one byte a second of a 1000-byte body
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
            s.sendall(
                b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            s.settimeout(1.0)
            data = b""
            for _ in range(60):
                try:
                    s.sendall(b"x")
                except OSError:
                    break
                try:
                    got = s.recv(65536)
                except TimeoutError:
                    continue
                if not got:
                    break
                data += got
                if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
                    break
            answers["slow"] = data

    t = threading.Thread(target=trickle)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    with server.client() as c:
        same = good(c, ct_bytes)  # served while the slow one trickles
    assert "slow" not in answers, "the slow client finished before the good request"
    t.join(90)
    head, _, body = answers["slow"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answers["slow"][:300]
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert time.monotonic() - t0 < 30  # --body-timeout-s 4, not the client's 60 bytes
    assert same["outputs"] == baseline["outputs"]
    still_good(server, ct_bytes, baseline)


def _counter(text: str, code: str) -> float:
    m = re.search(
        rf'edgemed_requests_total\{{code="{code}",route="/v1/infer",status="\d+"\}} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


def test_client_disconnecting_mid_upload(server, ct_bytes, baseline):
    with server.client() as c:
        before = _counter(c.get("/metrics").text, "CLIENT_DISCONNECTED")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
            b"Content-Length: 1000000\r\n\r\n" + ct_bytes[:20000]
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    with server.client() as c:
        while _counter(c.get("/metrics").text, "CLIENT_DISCONNECTED") <= before:
            assert time.monotonic() < deadline, "the disconnect was never noticed"
            time.sleep(0.2)
    still_good(server, ct_bytes, baseline)


def test_burst_beyond_the_queue_gets_429_never_5xx(tmp_path, ct_bytes, slice512):
    server = start(["--threads", "2", "--queue", "2", "--batch-window-ms", "0"], tmp_path, "burst")
    try:
        with server.client() as c:
            baseline = good(c, ct_bytes)

        def post(_: int) -> httpx.Response:
            with server.client() as c:
                return _post(c, slice512)

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            answers = list(ex.map(post, range(16)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
        for r in answers:
            if r.status_code == 429:
                _error(r, 429, "QUEUE_FULL")
                assert int(r.headers["retry-after"]) >= 1
        still_good(server, ct_bytes, baseline)
    finally:
        assert server.stop() == 0, server.read_log()
    assert "Traceback" not in server.read_log()


def _gauge(c: httpx.Client, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", c.get("/metrics").text, re.M).group(1))


def test_sigterm_under_load_finishes_in_flight_requests(tmp_path, ct_bytes, slice512):
    server = start(["--threads", "2", "--queue", "8", "--batch-window-ms", "0"], tmp_path, "term")
    release = threading.Event()

    def held_body():  # half an upload, then nothing until SIGTERM has been sent
        yield slice512[: len(slice512) // 2]
        release.wait(120)
        yield slice512[len(slice512) // 2 :]

    def post(held: bool) -> httpx.Response:
        with server.client() as c:
            return _post(c, held_body() if held else slice512)

    try:
        with server.client() as c:
            expected = good(c, slice512)
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            # Every upload held mid-body until SIGTERM is sent: all six are in flight
            # then (a request not yet connected would rightly be refused), and all six
            # reach the bounded queue together once they resume, during the drain.
            futures = [ex.submit(post, True) for _ in range(6)]
            deadline = time.monotonic() + 60
            with server.client() as c:  # until the held uploads are being received
                while _gauge(c, "edgemed_receiving") < 6:
                    assert time.monotonic() < deadline, "the uploads never arrived"
                    time.sleep(0.02)
            server.proc.send_signal(15)
            time.sleep(0.5)  # the service is draining now; the uploads resume
            release.set()
            answers = [f.result(timeout=120) for f in futures]
        assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
        for r in answers:
            assert r.json()["outputs"] == expected["outputs"]
        assert server.proc.wait(60) == 0, server.read_log()
    finally:
        release.set()
        server.stop()
    log = server.read_log()
    assert "Traceback" not in log, log
