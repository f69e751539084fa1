"""``edgemed run --dicom``: a segmentation of DICOM input also comes back as DICOM: a
multi-frame SEG over the source slices and a TID 1500 SR of the label sizes (the same
objects the DICOM listener returns, made by one function)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.cli_run import cli

pytest.importorskip("highdicom", reason="the listen extra (highdicom) is not installed")
data = pytest.importorskip("pydicom.data")


def _ct5n() -> Path:
    # pydicom's real 5-slice CT series (inside its DICOMDIR test tree)
    return Path(data.get_testdata_file("DICOMDIR")).parent / "98892001" / "CT5N"


def _check_seg(seg_path: Path, sources: list[pydicom.Dataset], mask: np.ndarray) -> None:
    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {s.SOPInstanceUID for s in sources}
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    present = [i for i in range(1, int(mask.max()) + 1) if (mask == i).any()]
    assert len(names) >= len(present)
    # Every non-empty (slice, label) frame is there, empty ones omitted.
    expected_frames = sum(int((mask[z] == i).any()) for z in range(mask.shape[0]) for i in present)
    assert int(seg.NumberOfFrames) == expected_frames


def test_run_dicom_on_a_series_folder(tmp_path):
    folder = _ct5n()
    out = tmp_path / "out"
    proc = cli("run", str(folder), "--dicom", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {"seg.dcm", "sr.dcm", "mask.nii.gz", "result.json"} <= {p.name for p in out.iterdir()}
    import nibabel as nib

    from edgemed.io.series import read_series_ordered

    files = sorted(p for p in folder.iterdir() if p.is_file())
    _, order = read_series_ordered(files)
    sources = [pydicom.dcmread(files[i], stop_before_pixels=True) for i in order]
    mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj).transpose(2, 1, 0)
    _check_seg(out / "seg.dcm", sources, mask)
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.PatientID == sources[0].PatientID  # copied as the standard requires


def test_run_dicom_on_one_file_and_refusals(tmp_path):
    ct = Path(data.get_testdata_file("CT_small.dcm"))
    proc = cli("run", str(ct), "--dicom", "--out", str(tmp_path / "one"))
    assert proc.returncode == 0, proc.stderr
    source = pydicom.dcmread(ct, stop_before_pixels=True)
    import nibabel as nib

    mask = np.asarray(nib.load(tmp_path / "one" / "mask.nii.gz").dataobj).transpose(2, 1, 0)
    _check_seg(tmp_path / "one" / "seg.dcm", [source], mask)
    # A NIfTI input has no DICOM to reference: a clear error, nothing left behind.
    nii = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), np.eye(4)), nii)
    proc = cli("run", str(nii), "--dicom", "--out", str(tmp_path / "nifti"))
    assert proc.returncode == 2
    assert "--dicom" in proc.stderr and "Traceback" not in proc.stderr
    assert not any((tmp_path / "nifti").iterdir())
