"""The C-STORE handler in process: an instance in each transfer syntax it may arrive in is
spooled as the same DICOM file (meta + the bytes as received), under its UIDs' names; a
dataset without its UIDs is refused with 0xA900 and nothing is kept."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from edgemed.dicomnode.scp import DATASET_MISMATCH, StorageSCP
from edgemed.dicomnode.spool import Spool


@pytest.fixture()
def scp(tmp_path):
    node = StorageSCP(Spool(tmp_path / "spool", fsync=False), modalities=["CT"])
    node.port = node.start("127.0.0.1", 0)
    yield node
    node.stop()


def _send(port: int, ds: pydicom.Dataset, syntax: str) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEMED")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_each_transfer_syntax_is_spooled_as_received(scp, syntax):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    assert _send(scp.port, ds, syntax) == 0x0000
    sid = scp.spool.hash(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    [path] = scp.spool.instances(sid)
    assert path.name == f"{scp.spool.hash(ds.SOPInstanceUID)}.dcm"
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (back.SOPInstanceUID, back.SeriesInstanceUID) == (
        ds.SOPInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert (back.pixel_array == ds.pixel_array).all()


def test_a_dataset_without_its_series_uid_is_refused(scp):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    del ds.SeriesInstanceUID
    assert _send(scp.port, ds, ExplicitVRLittleEndian) == DATASET_MISMATCH
    assert list(scp.spool.root.rglob("*.dcm")) == []
