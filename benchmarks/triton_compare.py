"""edgemed in-process vs `edgemed serve` vs Triton Inference Server (1 and 2 instances).

Usage (needs the ``triton`` and ``serve`` extras; sets the server up the first time,
see ``tools/tritonserver_setup.py``)::

    python benchmarks/triton_compare.py --out benchmarks/results [--seconds 3]

Inputs: pydicom's real ``CT_small.dcm`` (128x128) and a 512x512 CT DICOM slice
(``tests/triton/inputs.py``), sent as the file's bytes. Rows:

* **in-process**: ``Pipeline.from_bundle(demo, "onnxruntime")`` on the file's bytes
  (read included): latency of one call (concurrency 1), and the best throughput of
  ``run_batch`` over batch sizes 1, 4, 8 and 16 (the bar Triton's dynamic batching is
  held to at concurrency 16);
* **Triton, 1 and 2 instances**: the repository ``edgemed triton-repo`` writes (CPU
  instances, ``--max-batch 16``, ``--max-queue-delay-us 0``: requests that queue while
  an instance works are batched, a lone request never waits), loaded by the real
  ``tritonserver`` (2.51), driven by ``perf_analyzer`` over HTTP at concurrency 1, 4
  and 16 (throughput and its p50/p99 latency);
* **edgemed serve**: the HTTP service (``POST /v1/infer``), driven by ``hey`` at the same
  concurrencies (skipped, and marked so, where ``hey`` or the serve extra is missing).

Triton's added latency at concurrency 1 (the goal) is measured in pairs: one
in-process call, then the same file through edgemed's ``TritonClient`` on the 1-instance
server, ``2 x --requests`` times; the median of the differences, which the machine's
drift cannot move. The table's c=1 rows come from separate blocks.

**Triton's own floor**, measured the same way right after: the 1-instance server also
serves ``edgemed-floor``, a Python-backend model with the edgemed model's config whose
``execute`` only waits as long as the in-process call took (its median in the pairs
just measured) and answers
with the outputs the real model gives for that input (the same RESULT bytes and MASK
shape). Paired against a local ``time.sleep`` of that length, it is what Triton, its
Python backend and the client add for a request of this size that takes this long,
with no edgemed code in the server at all.

Per input, the in-process runs come right before and right after the Triton points
(both servers are up at once, their points alternate), and the better in-process run is
shown: on a shared machine the load drifts, and rows measured minutes apart would
compare the load, not the code. The CPU threads are the same in total for every row:
ONNX Runtime gets ``--threads`` (default: the cores) in-process, in `edgemed serve` and
in one Triton instance, and half each in two instances. Short measurements on a shared
machine: compare rows of one run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import edgemed
from benchmarks._common import environment, paired_added, stats, write_results
from benchmarks.readme_tables import triton_table
from tests.triton.inputs import ct_small, slice512_dicom
from tools.tritonserver_setup import Triton, TritonServer, ensure, free_port

CONCURRENCY = (1, 4, 16)
BATCHES = (1, 4, 8, 16)
MODEL = "edgemed-demo-ct-tissue"
FLOOR = "edgemed-floor"

#: The floor model (see the module doc): per input length, ``<length>.npz`` beside it
#: holds the wait and the outputs to answer with.
FLOOR_MODEL_PY = '''"""Triton's own cost: the edgemed model's config, no edgemed code."""
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent


class TritonPythonModel:
    def initialize(self, args):
        self.known = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().shape[1]
            if n not in self.known:
                with np.load(HERE / f"{n}.npz") as f:
                    self.known[n] = (float(f["wait_s"]), bytes(f["result"]), f["mask"].copy())
            wait_s, result, mask = self.known[n]
            time.sleep(wait_s)
            tensors = [
                pb_utils.Tensor("RESULT", np.array([[result]], dtype=np.object_)),
                pb_utils.Tensor("MASK", mask),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def in_process(data: bytes, threads: int, seconds: float) -> dict[str, Any]:
    """Latency of single calls and throughput of run_batch at each batch size."""
    with edgemed.Pipeline.from_bundle(
        edgemed.demo_bundle(), backend="onnxruntime", threads=threads, batch_size=16
    ) as pipe:
        for _ in range(3):
            pipe(data)
        samples: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(samples) < 20:
            t0 = time.perf_counter()
            pipe(data)
            samples.append((time.perf_counter() - t0) * 1e3)
        batched = {}
        for b in BATCHES:
            items = [data] * b
            pipe.run_batch(items)
            calls, t0 = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - t0 < seconds / 2:
                pipe.run_batch(items)
                calls += 1
            batched[str(b)] = round(calls * b / (time.perf_counter() - t0), 2)
    return {"latency": stats(samples), "run_batch_images_per_s": batched}


def perf_analyzer(
    triton: Triton, url: str, data: bytes, concurrency: int, requests: int, work: Path
) -> dict[str, Any]:
    """One perf_analyzer measurement: throughput and p50/p99 (ms)."""
    folder = work / "pa-input"
    folder.mkdir(exist_ok=True)
    (folder / "INPUT").write_bytes(data)
    # perf_analyzer sends every input the model declares, optional ones too: LENGTH
    # (the row's length, int64) is then simply the file's size.
    (folder / "LENGTH").write_bytes(len(data).to_bytes(8, "little", signed=True))
    out = work / f"pa-{concurrency}.csv"
    cmd = [
        str(triton.perf_analyzer),
        "-m",
        MODEL,
        "-u",
        url,
        "-i",
        "http",
        "-b",
        "1",
        "--input-data",
        str(folder),
        "--shape",
        f"INPUT:{len(data)}",
        "--shape",
        "LENGTH:1",
        "--concurrency-range",
        str(concurrency),
        # Windows of a request count (a time window can end before a slow request at
        # concurrency 16 does, and then holds no valid request at all).
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(max(requests, 2 * concurrency)),
        "--max-trials",
        "4",
        # A shared machine's load swings more than perf_analyzer's default 10 %: accept
        # any three windows (the rows are compared within one run, not as absolutes).
        "--stability-percentage",
        "1000",
        "-f",
        str(out),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=triton.perf_env(), timeout=600, check=False
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"perf_analyzer failed: {(proc.stdout + proc.stderr)[-800:]}")
    row = next(csv.DictReader(out.open()))
    return {
        "images_per_s": round(float(row["Inferences/Second"]), 2),
        "p50_ms": round(float(row["p50 latency"]) / 1e3, 3),
        "p99_ms": round(float(row["p99 latency"]) / 1e3, 3),
    }


def hey(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One `hey` measurement against POST /v1/infer: throughput and p50/p99 (ms), from
    hey's per-request CSV (its text summary leaves percentiles out on short runs)."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body)]
    cmd += ["-T", "application/dicom", "-o", "csv", f"http://{url}/v1/infer"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"hey failed: {proc.stdout[-300:]}{proc.stderr[-300:]}")
    if any(r["status-code"] != "200" for r in rows):
        raise RuntimeError("edgemed serve answered with errors under load")
    latencies = [float(r["response-time"]) * 1e3 for r in rows]
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    s = stats(latencies)
    return {
        "images_per_s": round(len(rows) / span, 2),
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"] if s["p99_ms"] is not None else round(max(latencies), 3),
    }


def serve_rows(files: dict[str, Path], threads: int, seconds: float, work: Path) -> dict[str, Any]:
    """`edgemed serve` (one worker, the same threads) driven by hey."""
    if shutil.which("hey") is None:
        return {"skipped": "hey is not installed"}
    try:
        import fastapi  # noqa: F401
    except ImportError:
        return {"skipped": 'the serve extra is not installed (pip install "edgemed[serve]")'}
    port = free_port()
    log = (work / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "edgemed.cli", "serve", "--port", str(port)]
    cmd += ["--backend", "onnxruntime", "--threads", str(threads), "--workers", "1"]
    cmd += ["--queue", "64", "--batch-size", "16"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"skipped": "edgemed serve did not become ready"}
            time.sleep(0.3)
        out: dict[str, Any] = {}
        for name, path in files.items():
            hey(url, path, 1, 1.0)  # warm-up
            out[name] = {str(c): hey(url, path, c, seconds) for c in CONCURRENCY}
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _repository(triton: Triton, work: Path, instances: int, threads: int) -> Path:
    from edgemed.triton.repo import RepoOptions, write_repository

    repo = work / f"repo-{instances}"
    write_repository(
        edgemed.demo_bundle(),
        repo,
        RepoOptions(
            max_batch=16,
            instances=instances,
            max_queue_delay_us=0,
            threads=threads,
            python_env=str(triton.venv),
        ),
    )
    return repo


def _best(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Of two in-process runs, the lower latency and each batch size's higher throughput
    (on a loaded machine the quieter moment is the closer one to the truth)."""
    latency = min(a["latency"], b["latency"], key=lambda s: s["p50_ms"])
    batched = {
        k: max(a["run_batch_images_per_s"][k], b["run_batch_images_per_s"][k])
        for k in a["run_batch_images_per_s"]
    }
    return {"latency": latency, "run_batch_images_per_s": batched, "runs": [a, b]}


def paired(
    server: TritonServer, data: bytes, threads: int, requests: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`paired_added` at c=1, request by request: of edgemed's ``TritonClient``
    (HTTP, the result parsed and the mask unpacked, as a user gets them) on one Triton
    instance over the in-process call; then of the floor model, waiting as long as that
    in-process call's median and answering with its outputs, over a local sleep of the
    same length (Triton's own cost)."""
    from edgemed.triton import wire
    from edgemed.triton.client import TritonClient

    def against(model: str, local: Any) -> dict[str, Any]:
        with TritonClient(server.url, model) as client:
            for _ in range(5):
                local()
                client.infer(data)
            return paired_added(local, lambda: client.infer(data).mask is not None, requests)

    with edgemed.Pipeline.from_bundle(
        edgemed.demo_bundle(), backend="onnxruntime", threads=threads
    ) as pipe:
        edgemed_c1 = against(MODEL, lambda: pipe(data))
        result = pipe(data)
    wait_s = edgemed_c1["in_process_p50_ms"] / 1e3
    np.savez(
        server.repository / FLOOR / "1" / f"{len(data)}.npz",
        wait_s=np.float64(wait_s),
        result=np.frombuffer(wire.result_text(result.to_dict()), dtype=np.uint8),
        mask=wire.stack_masks([wire.mask_zyx(result.mask)]),
    )
    floor_c1 = against(FLOOR, lambda: time.sleep(wait_s))
    floor_c1["wait_ms"] = round(wait_s * 1e3, 3)
    return edgemed_c1, floor_c1


def compare_input(
    triton: Triton,
    servers: dict[str, TritonServer],
    data: bytes,
    threads: int,
    seconds: float,
    requests: int,
    work: Path,
) -> dict[str, Any]:
    """One input: in-process, then every Triton point, then in-process again (the rows
    measured close together in time; the better in-process run is reported)."""
    for server in servers.values():
        perf_analyzer(triton, server.url, data, 1, 10, work)  # warm-up
    before = in_process(data, threads, seconds)
    out: dict[str, Any] = {key: {} for key in servers}
    for c in CONCURRENCY:
        for key, server in servers.items():
            out[key][str(c)] = perf_analyzer(triton, server.url, data, c, requests, work)
    out["in_process"] = _best(before, in_process(data, threads, seconds))
    out["paired_c1"], out["floor_c1"] = paired(servers["triton_1"], data, threads, 2 * requests)
    return out


def _add_floor_model(repo: Path) -> None:
    """``edgemed-floor`` beside the edgemed model: the same config, renamed."""
    config = (repo / MODEL / "config.pbtxt").read_text()
    (repo / FLOOR / "1").mkdir(parents=True)
    (repo / FLOOR / "config.pbtxt").write_text(
        config.replace(f'name: "{MODEL}"', f'name: "{FLOOR}"', 1)
    )
    (repo / FLOOR / "1" / "model.py").write_text(FLOOR_MODEL_PY)


def markdown(data: dict[str, Any]) -> str:
    """The table README shows (``benchmarks/readme_tables.py`` renders it)."""
    return "\n".join(triton_table(data))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--seconds", type=float, default=3.0, help="per in-process/hey measurement")
    ap.add_argument("--requests", type=int, default=100, help="per perf_analyzer window")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    triton = ensure()
    if triton.perf_analyzer is None:
        raise SystemExit("perf_analyzer is missing from the Triton setup")
    with tempfile.TemporaryDirectory(prefix="triton-compare-") as tmp:
        work = Path(tmp)
        files = {
            "CT_small.dcm 128x128": ct_small(),
            "CT slice 512x512": slice512_dicom(work / "slice512.dcm"),
        }
        half = max(1, args.threads // 2)
        repos = {
            "triton_1": _repository(triton, work, 1, args.threads),
            "triton_2": _repository(triton, work, 2, half),
        }
        _add_floor_model(repos["triton_1"])
        servers = {
            key: TritonServer(
                triton,
                repo,
                [MODEL, FLOOR] if key == "triton_1" else [MODEL],
                log=work / f"{key}.log",
            )
            for key, repo in repos.items()
        }
        results: dict[str, Any] = {}
        try:
            for server in servers.values():
                server.start()
            for name, path in files.items():
                results[name] = compare_input(
                    triton,
                    servers,
                    path.read_bytes(),
                    args.threads,
                    args.seconds,
                    args.requests,
                    work,
                )
        finally:
            for server in servers.values():
                server.stop()
        served = serve_rows(files, args.threads, args.seconds, work)
        for name in files:
            results[name]["serve"] = served.get(name, served)
    for _name, r in results.items():
        best_batched = max(r["in_process"]["run_batch_images_per_s"].values())
        best = max(("triton_1", "triton_2"), key=lambda k: r[k]["16"]["images_per_s"])
        r["goals"] = {
            "triton_added_p50_ms_c1": r["paired_c1"]["added_p50_ms"],
            "triton_floor_p50_ms_c1": r["floor_c1"]["added_p50_ms"],
            "blocks_added_p50_ms_c1": round(
                r["triton_1"]["1"]["p50_ms"] - r["in_process"]["latency"]["p50_ms"], 3
            ),
            "triton_c16_share_of_batched_percent": round(
                100 * r[best]["16"]["images_per_s"] / best_batched, 1
            ),
            "best_triton": best.replace("_", " ") + " instance(s)",
        }
    data = {
        "environment": environment("triton_compare.py", ["onnxruntime", "tritonclient"]),
        "threads": args.threads,
        "seconds_per_measurement": args.seconds,
        "requests_per_perf_analyzer_window": args.requests,
        "inputs": results,
    }
    path = write_results(args.out, "triton_compare", data, markdown(data))
    print(markdown(data))
    print(f"wrote {path}")
    print(json.dumps({k: v["goals"] for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
