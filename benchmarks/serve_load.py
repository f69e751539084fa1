"""``edgemed serve`` under load against the in-process pipeline (issue #13).

Usage (the ``serve`` extra and Debian's ``hey`` load generator)::

    python benchmarks/serve_load.py --out benchmarks/results [--requests 200] [--rss-requests 5000]

Same machine, same run, same model and threads: the demo bundle served by ``edgemed
serve`` (one worker) and the same bundle called in-process (``pipeline(file bytes)``,
reading included, as the service reads the upload), for pydicom's ``CT_small.dcm``
(128x128 DICOM) and a seeded 512x512 CT-like slice (``.npy``). At concurrency 1, 4 and
16: for HTTP, ``hey`` sends ``--requests`` POSTs with that many workers and every
request's latency comes from its CSV output; in-process, that many Python threads call
the one pipeline (it serialises calls, as the service's single worker does). The two
run in alternating blocks, so that the load of other processes falls on both alike.
At concurrency 1 the added latency is also measured in pairs (one in-process call, then
one HTTP request on a keep-alive connection, ``--requests`` times; the median of the
differences), which the machine's drift between blocks cannot move; the goal is judged
on it. Throughput is requests over wall time; errors are answers other than 200. The
goal's throughput ratio at concurrency 4 is the median of the rounds' own ratios (each
HTTP block over the in-process block just before it: drift between rounds cancels as
in the pairs); the ratio over all requests is kept beside it.
The peer: the same pairs against the plainest hand-written FastAPI endpoint around the
same pipeline (``benchmarks/serve_peer.py``: ``await request.body()``, the call in a
thread pool), under the same uvicorn, so the table says what ``edgemed serve``'s HTTP
costs against what a user would otherwise write.
RSS: the server's resident memory after a warm-up that fills the result store, and
again after ``--rss-requests`` more requests (goal: growth under 5 %). Goals: HTTP
adds at most 2 ms p50 at concurrency 1, and its throughput at concurrency 4 is at least
the in-process one.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

import edgemed
from benchmarks._common import environment, paired_added, stats, write_results
from benchmarks.readme_tables import serve_table
from tools.tritonserver_setup import free_port

__all__ = ["main"]

CONCURRENCY = (1, 4, 16)
#: Each configuration runs in this many alternating in-process / HTTP blocks.
ROUNDS = 4
#: Concurrency 4 (the throughput goal) gets more, shorter-lived drift between them
#: being what moved its ratio most (0.93x-1.09x from run to run with 4 rounds).
ROUNDS_C4 = 8
GOAL_ADDED_P50_MS = 2.0
GOAL_RSS_GROWTH_PERCENT = 5.0


def _inputs() -> dict[str, tuple[bytes, str]]:
    """Name -> (file bytes, content type)."""
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) ** 2 / 200**2 + (xx - 256) ** 2 / 170**2) < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 30, (512, 512))
    buf = io.BytesIO()
    np.save(buf, hu.astype(np.float32))
    return {
        "CT_small.dcm 128x128": (ct, "application/dicom"),
        "slice 512x512 (.npy)": (buf.getvalue(), "application/octet-stream"),
    }


class _Server:
    """A service in a subprocess on a free loopback port, ready (``/readyz`` 200):
    ``edgemed serve`` (:meth:`edgemed_serve`) or the peer app (:meth:`peer`)."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        import httpx

        self.proc, self.url = proc, url
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the server never became ready")

    @classmethod
    def edgemed_serve(cls, args: list[str]) -> _Server:
        """``edgemed serve --port 0 ARGS`` (its first line says the port it got)."""
        cmd = [sys.executable, "-m", "edgemed.cli", "serve", "--port", "0", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.kill()
            raise SystemExit(f"the server did not start: {line!r}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        return cls(proc, line.strip().rsplit(" ", 1)[-1])

    @classmethod
    def peer(cls, backend: str, threads: int) -> _Server:
        """``benchmarks/serve_peer.py`` under uvicorn."""
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.serve_peer:app", "--port"]
        cmd += [str(port), "--no-access-log", "--log-level", "warning"]
        env = {**os.environ, "EDGEMED_PEER_BACKEND": backend, "EDGEMED_PEER_THREADS": str(threads)}
        proc = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return cls(proc, f"http://127.0.0.1:{port}")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


def _hey(url: str, body: Path, ctype: str, n: int, c: int) -> tuple[list[float], int, float]:
    """``hey`` POSTing ``body``: per-request ms of the 200s, error count, wall seconds."""
    cmd = ["hey", "-n", str(n), "-c", str(c), "-m", "POST", "-T", ctype, "-D", str(body)]
    cmd += ["-t", "120", "-o", "csv", url + "/v1/infer"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(io.StringIO(out)))
    ok = [float(r["response-time"]) * 1e3 for r in rows if r["status-code"] == "200"]
    errors = len(rows) - len(ok)
    # hey's own wall clock (offset of the last request + its time) excludes process start.
    if rows:
        wall = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    return ok, errors, wall


def _in_process(pipe: Any, data: bytes, n: int, c: int) -> tuple[list[float], int, float]:
    """``c`` threads calling ``pipe(data)`` ``n`` times in all."""
    samples: list[float] = []
    lock = threading.Lock()

    def call(_: int) -> None:
        t0 = time.perf_counter()
        pipe(data)
        ms = (time.perf_counter() - t0) * 1e3
        with lock:
            samples.append(ms)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(c) as ex:
        list(ex.map(call, range(n)))
    return samples, 0, time.perf_counter() - t0


def _paired(pipe: Any, url: str, data: bytes, ctype: str, n: int) -> dict[str, Any]:
    """:func:`paired_added` of an HTTP request (Python's http.client on a keep-alive
    connection: its own cost counts against HTTP) over the in-process call."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)

    def post() -> bool:
        conn.request("POST", "/v1/infer", body=data, headers={"Content-Type": ctype})
        answer = conn.getresponse()
        answer.read()
        return answer.status == 200

    try:
        return paired_added(lambda: pipe(data), post, n)
    finally:
        conn.close()


def _summary(samples: list[float], errors: int, wall: float, n: int) -> dict[str, Any]:
    s = stats(samples) if samples else {}
    return {
        "requests": n,
        "errors": errors,
        "p50_ms": s.get("p50_ms"),
        "p99_ms": s.get("p99_ms"),
        "mean_ms": s.get("mean_ms"),
        "throughput_per_s": round((n - errors) / wall, 3) if wall > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--requests", type=int, default=200, help="per input and concurrency")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rss-requests", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime/OpenVINO threads")
    ap.add_argument("--backend", default="onnxruntime")
    args = ap.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("hey is needed (apt-get install hey)")
    threads = args.threads or min(8, len(__import__("os").sched_getaffinity(0)))
    inputs = _inputs()
    store = 64
    server = _Server.edgemed_serve(
        [
            "--threads",
            str(threads),
            "--backend",
            args.backend,
            "--queue",
            "64",
            "--store-results",
            str(store),
            "--workers",
            "1",
        ]
    )
    results: dict[str, Any] = {}
    try:
        with (
            edgemed.Pipeline.from_bundle(
                edgemed.demo_bundle(), args.backend, threads=threads
            ) as pipe,
            tempfile.TemporaryDirectory() as tmp,
        ):
            backend = f"{pipe.backend.name} {pipe.backend.info().get('backend_version', '')}"
            for name, (data, ctype) in inputs.items():
                body = Path(tmp) / "body"
                body.write_bytes(data)
                _in_process(pipe, data, args.warmup, 1)
                _hey(server.url, body, ctype, args.warmup, 1)
                row: dict[str, Any] = {"in_process": {}, "http": {}}
                for c in CONCURRENCY:
                    # hey gives each of its c workers n // c requests: n is a multiple of c.
                    n = max(c, args.requests // (c * ROUNDS) * c)
                    rounds = ROUNDS_C4 if c == 4 else ROUNDS
                    runs: dict[str, list[Any]] = {"in_process": [], "http": []}
                    for _ in range(rounds):  # alternating blocks share the machine's noise
                        runs["in_process"].append(_in_process(pipe, data, n, c))
                        runs["http"].append(_hey(server.url, body, ctype, n, c))
                    for kind, parts in runs.items():
                        samples = [ms for part in parts for ms in part[0]]
                        errors = sum(part[1] for part in parts)
                        wall = sum(part[2] for part in parts)
                        row[kind][str(c)] = _summary(samples, errors, wall, n * rounds)
                    if c == 4:  # the goal's ratio, round by round (see the module doc):
                        # both blocks ran n requests, so throughputs compare as walls do
                        row["throughput_ratio_c4_rounds"] = [
                            round(i[2] / h[2], 3)
                            for i, h in zip(runs["in_process"], runs["http"], strict=True)
                        ]
                    print(name, c, row["in_process"][str(c)], row["http"][str(c)], flush=True)
                http1, local1 = row["http"]["1"], row["in_process"]["1"]
                row["http_added_p50_ms"] = (
                    round(http1["p50_ms"] - local1["p50_ms"], 3)
                    if http1["p50_ms"] is not None and local1["p50_ms"] is not None
                    else None
                )
                row["paired_c1"] = _paired(pipe, server.url, data, ctype, args.requests)
                print(name, "paired", row["paired_c1"], flush=True)
                t_http, t_local = row["http"]["4"], row["in_process"]["4"]
                row["throughput_ratio_c4_all"] = round(
                    t_http["throughput_per_s"] / t_local["throughput_per_s"], 3
                )
                row["throughput_ratio_c4"] = round(
                    float(np.median(row["throughput_ratio_c4_rounds"])), 3
                )
                results[name] = row
            # RSS: warm up past the store's capacity, then many more requests.
            name = "CT_small.dcm 128x128"
            data, ctype = inputs[name]
            body = Path(tmp) / "body"
            body.write_bytes(data)
            _hey(server.url, body, ctype, max(4 * store, 200), 4)
            before = server.rss()
            _, errors, wall = _hey(server.url, body, ctype, args.rss_requests, 4)
            after = server.rss()
            code = server.stop()
            peer = _Server.peer(args.backend, threads)
            try:
                for name, (data, ctype) in inputs.items():
                    for _ in range(5):
                        _paired(pipe, peer.url, data, ctype, 1)
                    results[name]["peer_paired_c1"] = _paired(
                        pipe, peer.url, data, ctype, args.requests
                    )
                    print(name, "peer paired", results[name]["peer_paired_c1"], flush=True)
            finally:
                peer.stop()
    finally:
        if server.proc.poll() is None:
            code = server.stop()
    rss = {
        "input": name,
        "requests": args.rss_requests,
        "errors": errors,
        "after_warmup_mb": round(before / 2**20, 1),
        "after_mb": round(after / 2**20, 1),
        "growth_percent": round(100.0 * (after - before) / before, 2),
        "goal_percent": GOAL_RSS_GROWTH_PERCENT,
        "seconds": round(wall, 1),
    }
    data_out = {
        "benchmark": "serve_load",
        "environment": environment("serve_load.py", ("fastapi", "uvicorn", "openvino")),
        "backend": backend,
        "threads": threads,
        "workers": 1,
        "load_generator": "hey",
        "server_exit_code": code,
        "goals": {
            "http_added_p50_ms_at_c1": GOAL_ADDED_P50_MS,
            "throughput_ratio_at_c4": 1.0,
            "rss_growth_percent": GOAL_RSS_GROWTH_PERCENT,
        },
        "inputs": results,
        "rss": rss,
    }
    path = write_results(args.out, "serve_load", data_out, markdown(data_out))
    print(markdown(data_out))
    print(f"wrote {path}")
    return 0


def markdown(data: dict[str, Any]) -> str:
    """The results as README's table shows them (one renderer: readme_tables')."""
    return "\n".join(serve_table(data))


if __name__ == "__main__":
    raise SystemExit(main())
