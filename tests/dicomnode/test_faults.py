"""Bad input and faults against a running ``edgemed listen``. After each: C-ECHO answers,
a later good series is processed, nothing acknowledged is lost, nothing delivered twice."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.dicomnode.harness import (
    TIMEOUT,
    ct_series,
    echo,
    storescu,
    wait_until,
)

_count = itertools.count()


def _good_series(node, tmp_path: Path, settled: int, count: int = 3) -> dict:
    """C-ECHO answers and a new good series is processed; returns its listing entry
    (``settled``: how many series the spool then holds, all finished). A connection
    dropped before its association request holds a slot until the node's ACSE timeout
    (10 s), so C-ECHO is polled rather than tried once."""
    wait_until(lambda: echo(node.port), "C-ECHO to be answered", timeout=60)
    files = ct_series(tmp_path / f"good-{next(_count)}", count)
    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    series = node.wait_settled(settled)
    done = [s for s in series if s["instances"] == count and s["state"] == "done"]
    assert done, series
    return done[-1]


def _scu(port: int, aet: str = "STORESCU"):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEMED")
    assert assoc.is_established
    return assoc


def test_calling_ae_not_allowed_is_rejected(tmp_path, listen):
    node = listen("--stable-seconds", "0.5", "--allow-ae", "STORESCU,ECHOSCU")
    assert not echo(node.port, aet="INTRUDER")
    refused = storescu(node.port, ct_series(tmp_path / "x", 2), aet="INTRUDER")
    assert refused.returncode != 0
    assert node.listing()["series"] == []  # nothing of it was stored
    _good_series(node, tmp_path, settled=1)
    assert "INTRUDER@127.0.0.1" in node.log.read_text()


def test_garbage_bytes_and_200_dropped_associations(tmp_path, listen):
    node = listen("--stable-seconds", "0.5")
    rng = __import__("random").Random(14)
    for payload in (
        bytes(rng.randrange(256) for _ in range(4096)),
        b"\x01\x00\x7f\xff\xff\xff" + b"\x00" * 64,  # an A-ASSOCIATE-RQ claiming 2 GB
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            s.sendall(payload)
    # 200 associations opened and dropped: half at TCP level, half after the DICOM
    # association was accepted (the socket closed without release or abort).
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30):
            pass
    for k in range(100):
        assoc = _scu(node.port)
        if k % 2:
            assoc.abort()
        else:
            assoc.dul.socket.socket.close()
            assoc.kill()
    _good_series(node, tmp_path, settled=1)


def test_association_abandoned_mid_transfer(tmp_path, listen):
    node = listen("--stable-seconds", "0.5")
    files = ct_series(tmp_path / "partial", 4)
    # Two instances go through, then the peer vanishes halfway through the third.
    assoc = _scu(node.port)
    for f in files[:2]:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    context = assoc.accepted_contexts[0].context_id
    length = 200_000
    pdv = (length - 4).to_bytes(4, "big") + bytes([context, 0x00]) + b"\x00" * 1000
    raw = assoc.dul.socket.socket
    raw.sendall(b"\x04\x00" + length.to_bytes(4, "big") + pdv)
    raw.close()
    assoc.kill()
    series = node.wait_settled(1)
    assert (series[0]["instances"], series[0]["state"]) == (2, "done")  # the two acked
    _good_series(node, tmp_path, settled=2)


def test_malformed_datasets(tmp_path, listen):
    """A truncated file (sent as its raw bytes, which storescu itself refuses to read) is
    answered and kept only if parseable; a wrong-VR file sent by storescu is stored and
    its series skipped with a code; neither disturbs the node."""
    node = listen("--stable-seconds", "0.5", "--any-modality")
    source = Path(get_testdata_file("CT_small.dcm"))
    raw = source.read_bytes()
    own = ct_series(tmp_path / "own", 1)[0]  # a series of its own, then cut short
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(own.read_bytes()[: len(raw) * 2 // 3])
    assert storescu(node.port, [truncated]).returncode != 0  # storescu refuses to read it
    mr_truncated = get_testdata_file("MR_truncated.dcm")
    assert storescu(node.port, [mr_truncated]).returncode != 0
    # Over the wire anyway: pynetdicom sends a file path's bytes as they are.
    assoc = _scu(node.port)
    status = assoc.send_c_store(truncated)
    assoc.release()
    assert status.Status in (0x0000, 0xC210)
    wrong_vr = tmp_path / "wrong_vr.dcm"
    at = raw.find(b"\x28\x00\x30\x00DS")  # PixelSpacing, retyped as US
    assert at > 0
    wrong_vr.write_bytes(raw[: at + 4] + b"US" + raw[at + 6 :])
    sent = storescu(node.port, [wrong_vr])
    assert sent.returncode == 0, sent.stderr
    series = node.wait_settled(2 if status.Status == 0 else 1)
    assert {s["state"] for s in series} == {"skipped"}
    assert all(s["code"].startswith("INPUT_") for s in series)
    _good_series(node, tmp_path, settled=len(series) + 1)


def test_unsupported_sop_class_is_refused(tmp_path, listen):
    node = listen("--stable-seconds", "0.5")  # the demo bundle is CT only
    for name in ("MR_small.dcm", "rtplan.dcm"):
        sent = storescu(node.port, [get_testdata_file(name)])
        assert sent.returncode != 0
    assert node.listing()["series"] == []
    _good_series(node, tmp_path, settled=1)


def test_unevenly_spaced_series_is_skipped(tmp_path, listen):
    node = listen("--stable-seconds", "0.5")
    z = [0.0, 2.5, 7.5, 10.0]

    def uneven(ds, k):
        ds.ImagePositionPatient = [0.0, 0.0, z[k]]

    sent = storescu(node.port, ct_series(tmp_path / "uneven", 4, edit=uneven))
    assert sent.returncode == 0
    series = node.wait_settled(1)
    assert (series[0]["state"], series[0]["code"]) == ("skipped", "INPUT_SLICE_GAP")
    assert "skipped INPUT_SLICE_GAP" in node.log.read_text()
    _good_series(node, tmp_path, settled=2)


def test_series_the_bundle_rules_out_are_skipped_with_the_rule(tmp_path, listen):
    """The bundle's ``series`` block applies to received series as to folders: a
    derived series and one with too few slices are skipped, naming the failed rule;
    a good one is processed."""
    import json
    import shutil

    from edgemed.bundle import write_manifest
    from edgemed.pipeline import demo_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle(), bundle, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["series"] = {"image_type": ["ORIGINAL", "PRIMARY"], "min_slices": 3}
    write_manifest(bundle, manifest)
    node = listen("--stable-seconds", "0.5", "--bundle", str(bundle))

    def derived(ds, k):
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]

    assert storescu(node.port, ct_series(tmp_path / "derived", 3, edit=derived)).returncode == 0
    assert storescu(node.port, ct_series(tmp_path / "short", 2)).returncode == 0
    series = node.wait_settled(2)
    assert sorted((s["state"], s["code"], s["instances"]) for s in series) == [
        ("skipped", "INPUT_NO_SERIES_MATCH", 2),
        ("skipped", "INPUT_NO_SERIES_MATCH", 3),
    ]
    log = node.log.read_text()
    assert log.count("skipped INPUT_NO_SERIES_MATCH") == 2
    assert "fails the model's series rules: image_type" in log
    assert "fails the model's series rules: min_slices" in log
    _good_series(node, tmp_path, settled=3)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root / CAP_SYS_ADMIN); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_answers_out_of_resources(tmp_path, listen, small_disk):
    node = listen("--stable-seconds", "1", spool=small_disk / "spool")
    files = ct_series(tmp_path / "big", 40, step_mm=1.0)  # ~1.6 MB: more than fits
    assoc = _scu(node.port)
    statuses = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files]
    assoc.release()
    acked = [f for f, s in zip(files, statuses, strict=True) if s == 0x0000]
    assert 0 < len(acked) < len(files)
    assert set(statuses) == {0x0000, 0xA700}  # never Success for what was not written
    # Every acknowledged instance is on the disk, whole.
    spooled = list((small_disk / "spool" / "series").glob("*/i/*.dcm"))
    assert len(spooled) == len(acked)
    held = {pydicom.dcmread(p).SOPInstanceUID for p in spooled}
    assert held == {pydicom.dcmread(f).SOPInstanceUID for f in acked}
    # The results do not fit either: failed with the code, nothing half-written.
    series = node.wait_settled(1)
    assert (series[0]["state"], series[0]["code"]) == ("failed", "OUTPUT_WRITE_FAILED")
    assert node.listing()["deliveries"] == []
    # More room, then the operator re-queues it; both it and a new series get done.
    grown = subprocess.run(
        ["mount", "-o", "remount,size=16m", str(small_disk)], capture_output=True, text=True
    )
    assert grown.returncode == 0, grown.stderr
    retry = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "edgemed.cli",
            "spool",
            str(node.spool),
            "--retry",
            series[0]["id"][:12],
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert retry.returncode == 0 and "re-queued series" in retry.stdout, retry.stderr
    good = _good_series(node, tmp_path, settled=2)
    assert good["state"] == "done"
    states = {s["id"]: (s["instances"], s["state"]) for s in node.listing()["series"]}
    assert states[series[0]["id"]] == (len(acked), "done")


def test_destination_down_delays_delivery(tmp_path, listen, orthanc):
    node = listen(
        "--stable-seconds", "0.5", "--forward", orthanc.forward, "--retry-max-seconds", "2"
    )
    orthanc.stop()
    assert storescu(node.port, ct_series(tmp_path / "a", 3)).returncode == 0
    node.wait_settled(1)

    def retried():
        d = node.listing()["deliveries"]
        return d and d[0]["attempts"] >= 2 and d[0]["state"] == "pending"

    wait_until(retried, "delivery attempts while Orthanc is down")
    orthanc.start()
    wait_until(
        lambda: [d["state"] for d in node.listing()["deliveries"]] == ["delivered"],
        "delivery after Orthanc is back",
    )
    _good_series(node, tmp_path, settled=2)
    wait_until(lambda: len(orthanc.instances()) == 4, "both series' results in Orthanc")
    found = orthanc.instances()
    assert sorted(i["Modality"] for i in found) == ["SEG", "SEG", "SR", "SR"]
    assert len({i["SOPInstanceUID"] for i in found}) == 4


def test_kill_9_mid_series_then_restart(tmp_path, listen, listeners, storescp):
    """Acknowledged instances survive ``kill -9``; after the restart the whole series is
    processed once and its results delivered once (storescp keeps every copy it gets)."""
    spool = tmp_path / "spool"
    forward = ("--forward", storescp.forward)
    # A long wait in the first: it is killed before the series could be complete.
    first = listen("--stable-seconds", "600", *forward, spool=spool)
    files = ct_series(tmp_path / "ct", 6)
    assert storescu(first.port, files[:4]).returncode == 0
    first.kill()  # mid-series: not yet complete, nothing processed
    assert len(list(spool.glob("series/*/i/*.dcm"))) == 4
    # The restarted node gives the series a full --stable-seconds window from its start
    # (the sender may resume, as here), so it is not cut at the 4 slices held.
    second = listen("--stable-seconds", "4", *forward, spool=spool)
    assert storescu(second.port, files[2:]).returncode == 0  # 2 again: no second copy
    series = second.wait_settled(1)
    assert (series[0]["instances"], series[0]["state"]) == (6, "done")
    wait_until(
        lambda: [d["state"] for d in second.listing()["deliveries"]] == ["delivered"], "delivery"
    )
    _good_series(second, tmp_path, settled=2)
    wait_until(lambda: len(storescp.received()) == 4, "both series' results at storescp")
    got = storescp.received()
    assert len({ds.SOPInstanceUID for ds in got}) == 4  # no object twice
    seg = next(
        ds
        for ds in got
        if ds.Modality == "SEG"
        and ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(files[0]).SeriesInstanceUID
    )
    refs = {
        r.ReferencedSOPInstanceUID
        for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert refs == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert second.stop() == 0
    assert len(listeners) == 2
