"""`edgemed listen` under load: ingest rate against DCMTK's storescp, result latency into
Orthanc, and DICOM SEG/SR encoding cost.

Usage::

    python benchmarks/listen_load.py [--out benchmarks/results] [--repeats 3]
        [--ingest-slices 300] [--latency-slices 100] [--seg-slices 300]

1. Ingest: ``storescu`` sends the same 512x512 CT slices (pydicom's CT_small.dcm scaled
   up, one series) to DCMTK's ``storescp`` (the anchor: it writes each file, without
   fsync) and to ``edgemed listen`` with and without its fsync-before-Success; images/s,
   median over ``--repeats`` runs, a fresh spool each time, the disk synced before each
   receiver's run. Goal: >= 0.5x storescp. Beside them, a pynetdicom SCP whose C-STORE
   handler does nothing: the ceiling of any pynetdicom receiver (its per-message threads
   poll with ~1 ms sleeps); the JSON gives the node's rates against it too.
2. Latency: from the last instance of a ``--latency-slices`` series acknowledged to its
   SEG and SR stored in Orthanc (``--forward``), p50 over the repeats; the node's
   ``--stable-seconds`` wait is part of it by design and reported beside it, with the
   series' inference time inside the node (from its log line).
3. SEG and SR: encode time and size for the pipeline's mask of a ``--seg-slices`` x 512 x
   512 series (5 labels: background + 4 segments) against that series' inference time.
   Goal: SEG + SR under 10 % of it.

Needs the ``listen`` extra, DCMTK and Orthanc (``tools/system_deps.sh``). Processes are
driven by the same harness as the tests (``tests/dicomnode/harness.py``).
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import arguments, environment, write_results  # noqa: E402
from tests.dicomnode.harness import (  # noqa: E402
    ROOT,
    Listener,
    Orthanc,
    StoreSCP,
    dcmtk_env,
    storescu,
    wait_until,
)

NAME = "listen_load"


def make_series(folder: Path, count: int, size: int = 512) -> list[Path]:
    """``count`` slices of ``size`` x ``size`` (CT_small.dcm scaled up) as one new series."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    scale = size // int(base.Rows)
    pixels = np.kron(base.pixel_array, np.ones((scale, scale), base.pixel_array.dtype))
    base.PixelData = pixels.tobytes()
    base.Rows, base.Columns = pixels.shape
    base.PixelSpacing = [float(v) / scale for v in base.PixelSpacing]
    base.StudyInstanceUID, base.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(count):
        base.SOPInstanceUID = generate_uid()
        base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
        base.InstanceNumber = k + 1
        base.ImagePositionPatient = [0.0, 0.0, float(k)]
        path = folder / f"s{k:04d}.dcm"
        base.save_as(path)
        files.append(path)
    return files


#: The ceiling for any pynetdicom SCP: the node's AE settings (no PDU size cap), a C-STORE
#: handler that does nothing. Prints its port, then serves until killed.
_NOOP_SCP = """
import time
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from edgemed.dicomnode.scp import quiet_pynetdicom, storage_classes
quiet_pynetdicom()
ae = AE("EDGEMED")
ae.maximum_pdu_size = 0
for uid in storage_classes(["CT"]):
    ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
server = ae.start_server(
    ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0)]
)
print(server.server_address[1], flush=True)
while True:
    time.sleep(60)
"""


def _send_rate(port: int, files: list[Path], called: str) -> float:
    # Each receiver starts with the disk quiet: what the previous one wrote without fsync
    # (storescp, --no-fsync) must not be written back during the next one's fsyncs.
    os.sync()
    t0 = time.perf_counter()
    sent = storescu(port, files, called=called)
    elapsed = time.perf_counter() - t0
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
    return len(files) / elapsed


def ingest(work: Path, files: list[Path], repeats: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {
        "storescp": [],
        "pynetdicom, no-op handler": [],
        "edgemed (fsync)": [],
        "edgemed (no fsync)": [],
    }
    for r in range(repeats):
        scp = StoreSCP(work / f"storescp-{r}")
        scp.proc = subprocess.Popen(  # plain storescp: files as received (no -uf needed)
            ["storescp", "-aet", "PACS", "-od", str(scp.out), str(scp.port)],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(scp._up, "storescp")
        try:
            rates["storescp"].append(_send_rate(scp.port, files, "PACS"))
        finally:
            scp.stop()
        noop = subprocess.Popen(
            [sys.executable, "-c", _NOOP_SCP], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            assert noop.stdout is not None
            port = int(noop.stdout.readline())
            rates["pynetdicom, no-op handler"].append(_send_rate(port, files, "EDGEMED"))
        finally:
            noop.kill()
            noop.wait()
        for label, extra in (("edgemed (fsync)", []), ("edgemed (no fsync)", ["--no-fsync"])):
            node = Listener(work / f"spool-{r}-{len(extra)}", "--stable-seconds", "3600", *extra)
            node.start()
            try:
                rates[label].append(_send_rate(node.port, files, "EDGEMED"))
            finally:
                node.kill()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images": len(files),
        "slice": "512x512",
        "repeats": repeats,
        "images_per_s": {k: round(v, 1) for k, v in med.items()},
        "samples": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "vs_storescp": {
            k: round(v / med["storescp"], 3) for k, v in med.items() if k != "storescp"
        },
        "vs_pynetdicom_noop": {
            k: round(v / med["pynetdicom, no-op handler"], 3)
            for k, v in med.items()
            if k.startswith("edgemed")
        },
    }


def latency(work: Path, slices: int, repeats: int, stable: float) -> dict[str, Any]:
    orthanc = Orthanc(work / "orthanc").start()
    node = Listener(
        work / "spool-latency",
        "--stable-seconds",
        str(stable),
        "--forward",
        orthanc.forward,
        threads=None,  # as many ONNX Runtime threads as the in-process pipeline below
    )
    node.start()
    samples, processing, infer = [], [], []
    try:
        for r in range(repeats):
            files = make_series(work / f"lat-{r}", slices)
            before = len(orthanc.get("/instances"))
            sent = storescu(node.port, files)
            t_last = time.perf_counter()
            if sent.returncode != 0:
                raise RuntimeError(sent.stderr[-500:])
            wait_until(
                lambda b=before: len(orthanc.get("/instances")) >= b + 2, "SEG+SR", timeout=600
            )
            samples.append(time.perf_counter() - t_last)
            # The node's own line: "(total ms; read a, infer b, encode c)".
            pattern = r"-> result \S+ \((\d+) ms; read (\d+), infer (\d+), encode (\d+)\)"
            total, _read, node_infer, _encode = re.findall(pattern, node.log.read_text())[-1]
            processing.append(float(total))
            infer.append(float(node_infer))
    finally:
        node.kill()
        orthanc.stop()
    p50 = statistics.median(samples)
    return {
        "slices": slices,
        "repeats": repeats,
        "stable_seconds": stable,
        "p50_s": round(p50, 3),
        "samples_s": [round(s, 3) for s in samples],
        "processing_p50_ms": round(statistics.median(processing), 1),
        "infer_p50_ms": round(statistics.median(infer), 1),
        "inference_share_percent": round(statistics.median(infer) / 1e3 / p50 * 100, 1),
        "beyond_stable_p50_s": round(p50 - stable, 3),
    }


def seg_cost(work: Path, files: list[Path], pipe: Any) -> dict[str, Any]:
    import pydicom

    from edgemed.io.dicom_seg import Algorithm, derived_uid, segmentation
    from edgemed.io.dicom_sr import measurement_report
    from edgemed.io.series import read_series_ordered

    image, order = read_series_ordered(files)
    result = pipe(image)
    sources = [pydicom.dcmread(files[i], stop_before_pixels=True) for i in order]
    b = pipe.bundle
    alg = Algorithm(b.name, b.version, b.manifest_sha256)
    # Warm-up: highdicom's import and its one-time tables, which a running node pays
    # once at its first series, not per series.
    for warm in (segmentation, measurement_report):
        args = (result.mask[:1], result.labels, sources[:1], alg)
        if warm is measurement_report:
            args = (result.stats, result.labels, sources[:1], alg)
        warm(*args, series_instance_uid=derived_uid("w1"), sop_instance_uid=derived_uid("w2"))
    t0 = time.perf_counter()
    seg = segmentation(
        result.mask,
        result.labels,
        sources,
        alg,
        series_instance_uid=derived_uid("s1"),
        sop_instance_uid=derived_uid("s2"),
    )
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    t1 = time.perf_counter()
    sr = measurement_report(
        result.stats,
        result.labels,
        sources,
        alg,
        segmentation=seg,
        series_instance_uid=derived_uid("r1"),
        sop_instance_uid=derived_uid("r2"),
    )
    buf2 = io.BytesIO()
    sr.save_as(buf2, enforce_file_format=True)
    t2 = time.perf_counter()
    infer = result.timings["infer"]
    return {
        "shape": list(result.mask.shape),
        "labels": len(result.labels),
        "frames": int(seg.NumberOfFrames),
        "seg_encode_ms": round((t1 - t0) * 1e3, 1),
        "seg_bytes": len(buf.getvalue()),
        "sr_encode_ms": round((t2 - t1) * 1e3, 1),
        "sr_bytes": len(buf2.getvalue()),
        "series_infer_ms": round(infer, 1),
        "series_total_ms": round(result.timings["total"], 1),
        "share_of_infer_percent": round((t2 - t0) * 1e3 / infer * 100, 2),
    }


def markdown(data: dict[str, Any]) -> str:
    from benchmarks.readme_tables import listen_table

    return "\n".join(listen_table(data))


def main() -> int:
    ap = arguments(__doc__, iterations=0, warmup=0, budget_s=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ingest-slices", type=int, default=300)
    ap.add_argument("--latency-slices", type=int, default=100)
    ap.add_argument("--seg-slices", type=int, default=300)
    ap.add_argument("--stable-seconds", type=float, default=1.0)
    args = ap.parse_args()
    import edgemed

    data: dict[str, Any] = {"benchmark": NAME, "environment": environment("listen_load.py")}
    with (
        tempfile.TemporaryDirectory(prefix="listen-load-") as tmp,
        edgemed.Pipeline.from_bundle(edgemed.demo_bundle()) as pipe,
    ):
        work = Path(tmp)
        files = make_series(work / "ingest", max(args.ingest_slices, args.seg_slices))
        data["ingest"] = ingest(work, files[: args.ingest_slices], args.repeats)
        print("ingest", data["ingest"]["images_per_s"], flush=True)
        data["latency"] = latency(work, args.latency_slices, args.repeats, args.stable_seconds)
        print("latency", data["latency"], flush=True)
        data["seg_sr"] = seg_cost(work, files[: args.seg_slices], pipe)
        print("seg/sr", data["seg_sr"], flush=True)
    write_results(args.out, NAME, data, markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
