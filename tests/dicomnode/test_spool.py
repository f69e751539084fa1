"""The spool, series processing and forwarding as library parts (real pipeline, real
storescp / pynetdicom peers), and the ``spool``/``listen`` commands' usage errors."""

from __future__ import annotations

import socket
import stat
import threading

import pydicom
import pytest

import edgemed
from edgemed.dicomnode.deliver import Forwarder, parse_destination
from edgemed.dicomnode.series import Processor
from edgemed.dicomnode.spool import SeriesState, Spool
from edgemed.errors import UsageError
from tests.cli_run import cli
from tests.dicomnode.harness import ct_series, free_port, wait_until
from tests.support import error_code, one_error_line


@pytest.fixture(scope="module")
def pipe():
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), threads=1) as p:
        yield p


def _store(spool: Spool, files) -> str:
    sid = ""
    for f in files:
        ds = pydicom.dcmread(f)
        sid, _ = spool.store(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, f.read_bytes()
        )
    return sid


def test_store_is_durable_idempotent_and_names_no_uid(tmp_path):
    spool = Spool(tmp_path / "spool")
    files = ct_series(tmp_path / "ct", 3)
    ds = pydicom.dcmread(files[0])
    sid, new = spool.store(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, files[0].read_bytes()
    )
    assert new
    again = spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, b"other")
    assert again == (sid, False)  # the same SOP Instance UID: acknowledged, not rewritten
    assert [p.read_bytes() for p in spool.instances(sid)] == [files[0].read_bytes()]
    _store(spool, files[1:])
    assert len(spool.instances(sid)) == 3
    names = " ".join(str(p.relative_to(spool.root)) for p in spool.root.rglob("*"))
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid not in names
    # The salt is private and kept: a restarted node names the same series the same way.
    assert stat.S_IMODE((spool.root / "salt").stat().st_mode) == 0o600
    assert Spool(spool.root).hash(ds.StudyInstanceUID, ds.SeriesInstanceUID) == sid
    assert spool.read_series(sid).state == "waiting"


def test_recover_requeues_interrupted_work(tmp_path):
    spool = Spool(tmp_path / "spool")
    sid = _store(spool, ct_series(tmp_path / "ct", 2))
    spool.write_series(SeriesState(sid, "processing"))
    stray = spool.series_dir(sid) / "i" / ".tmp-0123-x.dcm"  # a write cut short
    stray.write_bytes(b"half")
    (spool.root / "outbox" / ".tmp-abc").mkdir()
    Spool(spool.root).recover()
    assert spool.read_series(sid).state == "waiting"
    assert not stray.exists() and not (spool.root / "outbox" / ".tmp-abc").exists()
    assert len(spool.instances(sid)) == 2


def test_processing_once_per_instance_set(tmp_path, pipe):
    spool = Spool(tmp_path / "spool")
    files = ct_series(tmp_path / "ct", 4)
    sid = _store(spool, files[:3])
    proc = Processor(spool, [pipe], stable_seconds=0)
    assert proc.process(pipe, sid) == "done"
    [first] = list(spool.deliveries())
    seg = pydicom.dcmread(spool.outbox(first.rid) / "seg.dcm")
    # A crash after the results were published but before "done" was noted: processed
    # again, it finds them and makes no second set.
    spool.write_series(SeriesState(sid, "waiting"))
    assert proc.process(pipe, sid) == "done"
    assert [d.rid for d in spool.deliveries()] == [first.rid]
    # A new instance for a finished series: it waits again and gets a new result whose
    # objects have their own UIDs.
    _store(spool, files[3:])
    assert spool.read_series(sid).state == "waiting"
    assert proc.process(pipe, sid) == "done"
    second = spool.read_series(sid).result
    assert second != first.rid and len(list(spool.deliveries())) == 2
    seg4 = pydicom.dcmread(spool.outbox(second) / "seg.dcm")
    assert seg4.SOPInstanceUID != seg.SOPInstanceUID
    assert len(seg4.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4


def test_instance_arriving_during_processing_requeues(tmp_path, pipe, monkeypatch):
    from edgemed.dicomnode import series as series_module

    spool = Spool(tmp_path / "spool")
    files = ct_series(tmp_path / "ct", 4)
    sid = _store(spool, files[:3])
    real = series_module.make_results

    def late_arrival(*args):
        _store(spool, files[3:])  # arrives while the first three are processed
        return real(*args)

    monkeypatch.setattr(series_module, "make_results", late_arrival)
    proc = Processor(spool, [pipe], stable_seconds=0)
    assert proc.process(pipe, sid) == "waiting"
    monkeypatch.setattr(series_module, "make_results", real)
    assert proc.process(pipe, sid) == "done"
    # The results of the three were never published; those of the four are.
    [delivery] = list(spool.deliveries())
    seg = pydicom.dcmread(spool.outbox(delivery.rid) / "seg.dcm")
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4


def test_retry(tmp_path):
    spool = Spool(tmp_path / "spool")
    sid = _store(spool, ct_series(tmp_path / "ct", 1))
    assert error_code(spool.retry, sid[:8], kind=UsageError) == "USAGE"  # waiting, not failed
    spool.write_series(SeriesState(sid, "failed", code="BACKEND_FAILED"))
    assert spool.retry(sid[:8]) == "series"
    assert spool.read_series(sid).state == "waiting"
    assert error_code(spool.retry, "zz", kind=UsageError) == "USAGE"


def test_forwarder_retries_until_the_destination_answers(tmp_path, pipe, storescp):
    spool = Spool(tmp_path / "spool")
    sid = _store(spool, ct_series(tmp_path / "ct", 2))
    Processor(spool, [pipe], stable_seconds=0).process(pipe, sid)
    down = parse_destination(f"NOBODY@127.0.0.1:{free_port()}")
    fwd = Forwarder(spool, down, base_seconds=0.01, max_seconds=0.05)
    assert fwd.run_once() == 0
    [d] = list(spool.deliveries())
    assert (d.state, d.attempts, d.code) == ("pending", 1, "DELIVERY_UNREACHABLE")
    fwd.run_once()
    wait_until(lambda: fwd.run_once() == 0 and next(spool.deliveries()).attempts >= 3, "retries")
    up = Forwarder(spool, parse_destination(storescp.forward), base_seconds=0.01)
    wait_until(lambda: up.run_once() == 1, "delivery")
    [d] = list(spool.deliveries())
    assert d.state == "delivered" and set(d.files.values()) == {"delivered"}
    assert up.run_once() == 0  # nothing is sent again
    assert sorted(ds.Modality for ds in storescp.received()) == ["SEG", "SR"]


def test_rejected_delivery_fails_after_max_attempts_and_can_be_retried(tmp_path, pipe):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    spool = Spool(tmp_path / "spool")
    sid = _store(spool, ct_series(tmp_path / "ct", 1))
    Processor(spool, [pipe], stable_seconds=0).process(pipe, sid)
    ae = AE(ae_title="FULL")
    ae.add_supported_context(SegmentationStorage)
    ae.add_supported_context(Comprehensive3DSRStorage)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0xA700)]
    )
    try:
        port = server.server_address[1]
        fwd = Forwarder(
            spool, parse_destination(f"FULL@127.0.0.1:{port}"), base_seconds=0.0, max_attempts=2
        )
        fwd.run_once()
        fwd.run_once()
        [d] = list(spool.deliveries())
        assert (d.state, d.attempts, d.code) == ("failed", 2, "DELIVERY_REJECTED_0xA700")
        assert fwd.run_once() == 0 and next(spool.deliveries()).attempts == 2  # left alone
        listing = cli("spool", str(spool.root))
        assert listing.returncode == 0 and "failed  2 attempt(s) DELIVERY_REJECTED_0xA700" in (
            listing.stdout
        )
        retried = cli("spool", str(spool.root), "--retry", d.rid[:10])
        assert retried.returncode == 0 and "re-queued delivery" in retried.stdout
        assert next(spool.deliveries()).state == "pending"
    finally:
        server.shutdown()


def test_spool_and_listen_usage_errors(tmp_path):
    assert error_code(parse_destination, "ORTHANC@host", kind=UsageError) == "USAGE"
    assert parse_destination("PACS@10.0.0.1:104").port == 104
    one_error_line(cli("spool", str(tmp_path)), "USAGE")
    spool = tmp_path / "spool"
    Spool(spool)
    one_error_line(cli("spool", str(spool), "--retry", "nope"), "USAGE")
    bad = cli("listen", "--spool", str(spool), "--forward", "nowhere")
    assert bad.returncode == 2
    one_error_line(bad, "USAGE")
    half_tls = cli("listen", "--spool", str(spool), "--tls-cert", "x.pem")
    assert half_tls.returncode == 2
    with socket.socket() as taken:  # a port that is in use: refused in one line
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("listen", "--spool", str(spool), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2
    one_error_line(busy, "USAGE")


def test_writers_reject_what_does_not_fit(tmp_path):
    import numpy as np

    from edgemed.io.dicom_seg import Algorithm, derived_uid, label_codes, segmentation

    src = pydicom.dcmread(ct_series(tmp_path / "ct", 1)[0])
    alg = Algorithm("b", "1", "0" * 64)
    uids = {"series_instance_uid": derived_uid("a"), "sop_instance_uid": derived_uid("b")}
    labels = ["background", "lung"]
    assert (
        error_code(segmentation, np.zeros((2, 128, 128), np.uint8), labels, [src], alg, **uids)
        == "USAGE"
    )
    assert (
        error_code(segmentation, np.full((128, 128), 2, np.uint8), labels, [src], alg, **uids)
        == "USAGE"
    )
    # Nothing found anywhere: still a valid SEG (its empty frame kept).
    empty = segmentation(np.zeros((128, 128), np.uint8), labels, [src], alg, **uids)
    assert empty.NumberOfFrames == 1
    uid = derived_uid("x", "y")
    assert uid == derived_uid("x", "y") != derived_uid("x", "z")
    assert uid.startswith("2.25.") and len(uid) <= 64
    category, kind = label_codes("tumour core")
    assert (kind.scheme_designator, category.value) == ("99EDGEMED", "91723000")


def test_many_threads_store_one_series(tmp_path):
    """Associations store in parallel; every instance lands, the series once."""
    spool = Spool(tmp_path / "spool")
    files = ct_series(tmp_path / "ct", 12)
    chunks = [files[k::4] for k in range(4)]
    threads = [threading.Thread(target=_store, args=(spool, c)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s.instances for s in spool.series()] == [12]


def test_a_series_left_processing_is_picked_up_again(tmp_path, pipe):
    """A series whose end could not be recorded (disk full when writing its state) is
    'processing' on disk with no worker on it: the next scan takes it up, as a restart
    would."""
    spool = Spool(tmp_path / "spool")
    sid = _store(spool, ct_series(tmp_path / "ct", 2))
    spool.write_series(SeriesState(sid, "processing"))
    proc = Processor(spool, [pipe], stable_seconds=0)
    proc.start()
    try:
        wait_until(lambda: spool.read_series(sid).state == "done", "the series to be done")
    finally:
        proc.stop()
    assert len(list(spool.deliveries())) == 1
