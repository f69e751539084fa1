"""``edgemed listen`` end to end with real parts: DCMTK's storescu sends a CT series, the
node processes it, Orthanc receives the DICOM SEG and SR, and both are checked through
Orthanc's REST API, with dciodvfy and with dcmqi's independent SEG reader."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from tests.dicomnode.harness import TIMEOUT, ct_series, echo, need, storescu, wait_until


@pytest.fixture(scope="module")
def pipe():
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), threads=1) as p:
        yield p


def _sr_numbers(ds: pydicom.Dataset) -> dict[str, tuple[float, str]]:
    """Per tracking identifier (the label), the NUM item's value and unit in a TID 1500
    report."""
    found: dict[str, tuple[float, str]] = {}

    def walk(items, label=None):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "TEXT" and name == "Tracking Identifier":
                label = item.TextValue
            if item.ValueType == "NUM" and label is not None:
                mv = item.MeasuredValueSequence[0]
                found[label] = (
                    float(mv.NumericValue),
                    mv.MeasurementUnitsCodeSequence[0].CodeValue,
                )
            if "ContentSequence" in item:
                walk(item.ContentSequence, label)

    walk(ds.ContentSequence)
    return found


def _validate(path: Path) -> list[str]:
    out = subprocess.run(
        [need("dciodvfy"), str(path)], capture_output=True, text=True, timeout=TIMEOUT
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_series_round_trip_through_orthanc(tmp_path, listen, orthanc, pipe):
    files = ct_series(tmp_path / "ct", 5, step_mm=2.5)
    node = listen(
        "--stable-seconds", "1", "--forward", orthanc.forward, "--allow-ae", "STORESCU,ECHOSCU"
    )
    assert echo(node.port)
    # Slices sent out of order: the node sorts them as `edgemed run DIR` does.
    sent = storescu(node.port, [files[k] for k in (3, 0, 4, 1, 2)])
    assert sent.returncode == 0, sent.stderr

    def arrived():
        found = orthanc.instances()
        return found if len(found) == 2 else None

    stored = wait_until(arrived, "the SEG and SR in Orthanc")
    by_modality = {i["Modality"]: i for i in stored}
    assert set(by_modality) == {"SEG", "SR"}

    expected = pipe(str(tmp_path / "ct"))  # what `edgemed run DIR` computes
    sources = [pydicom.dcmread(f) for f in files]
    source = sources[0]

    # SEG: BINARY, one segment per label with codes, references, algorithm, decodes back.
    seg_ds = orthanc.dataset(by_modality["SEG"]["id"])
    seg_path = tmp_path / "seg.dcm"
    seg_ds.save_as(seg_path)
    assert seg_ds.SegmentationType == "BINARY"
    labels = expected.labels
    segments = seg_ds.SegmentSequence
    assert [s.SegmentLabel for s in segments] == labels[1:]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # lung
    assert {
        s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator for s in segments
    } == {"SCT"}
    alg = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    bundle = pipe.bundle
    assert (alg.AlgorithmName, alg.AlgorithmVersion) == (bundle.name, bundle.version)
    assert bundle.manifest_sha256 in alg.AlgorithmParameters
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg_ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (
        seg_ds.PatientID == source.PatientID and seg_ds.StudyInstanceUID == source.StudyInstanceUID
    )
    # Empty frames are omitted: one frame per (slice, label) that holds the label.
    nonempty = sum(
        int(np.any(expected.mask[z] == k)) for z in range(len(files)) for k in range(1, len(labels))
    )
    assert seg_ds.NumberOfFrames == nonempty

    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    decoded = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(decoded, expected.mask)

    # SR: TID 1500 with each label's volume, evidence = the source series and the SEG.
    sr = orthanc.dataset(by_modality["SR"]["id"])
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    numbers = _sr_numbers(sr)
    for label in labels[1:]:
        value, unit = numbers[label]
        assert unit == "mm3"
        assert value == pytest.approx(expected.stats[label]["volume_mm3"], rel=1e-6)
    evidence = {
        s.SeriesInstanceUID
        for e in sr.CurrentRequestedProcedureEvidenceSequence
        for s in e.ReferencedSeriesSequence
    }
    assert evidence == {source.SeriesInstanceUID, seg_ds.SeriesInstanceUID}

    # Validators: dicom3tools reports no errors on either object.
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path)
    assert _validate(seg_path) == []
    assert _validate(sr_path) == []

    # The spool says what happened; the log names no patient field and no UID.
    listing = node.listing()
    assert [(s["instances"], s["state"]) for s in listing["series"]] == [(5, "done")]
    assert [(d["state"], d["attempts"]) for d in listing["deliveries"]] == [("delivered", 1)]
    log = node.log.read_text()
    assert re.search(r"series [0-9a-f]{32}: 5 instances -> result", log)
    for value in (
        source.SeriesInstanceUID,
        source.StudyInstanceUID,
        str(source.PatientName),
        source.PatientID,
        source.SOPInstanceUID,
    ):
        assert value not in log
    assert node.stop() == 0


def test_dcmqi_reads_the_seg(tmp_path, listen, pipe):
    """dcmqi's segimage2itkimage (an independent reader) turns the SEG from the outbox
    into one volume per segment holding the same voxels."""
    tool = shutil.which("segimage2itkimage") or str(
        Path(sys.executable).parent / "segimage2itkimage"
    )
    if not Path(tool).exists():
        pytest.skip("dcmqi is not installed (pip install dcmqi)")
    nib = pytest.importorskip("nibabel")
    files = ct_series(tmp_path / "ct", 3, step_mm=5.0)
    node = listen("--stable-seconds", "0.5")
    assert storescu(node.port, files).returncode == 0
    series = node.wait_settled(1)[0]
    assert series["state"] == "done"
    seg_path = node.spool / "outbox" / series["result"] / "seg.dcm"
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run(
        [tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(out), "-t", "nifti"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    expected = pipe(str(tmp_path / "ct"))
    meta = json.loads((out / "meta.json").read_text())
    names = [s[0]["SegmentLabel"] for s in meta["segmentAttributes"]]
    volumes = sorted(out.glob("*.nii*"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    assert len(volumes) == len(names)
    for name, path in zip(names, volumes, strict=True):
        voxels = int(np.count_nonzero(np.asarray(nib.load(path).dataobj)))
        assert voxels == expected.stats[name]["pixels"], name


def test_real_series_from_pydicom(tmp_path, listen, pipe):
    """pydicom's real 5-slice CT series (dicomdirtests/98892001/CT5N) as sent by a scanner
    gives the mask `edgemed run` gives for its folder."""
    first = get_testdata_file("dicomdirtests/98892001/CT5N/2062")
    if first is None:
        pytest.skip("pydicom's dicomdirtests are not installed")
    folder = Path(first).parent
    node = listen("--stable-seconds", "0.5")
    assert storescu(node.port, sorted(folder.iterdir())).returncode == 0
    series = node.wait_settled(1)[0]
    assert (series["instances"], series["state"]) == (5, "done")
    seg_path = node.spool / "outbox" / series["result"] / "seg.dcm"
    import highdicom as hd

    expected = pipe(str(folder))
    sources = sorted(
        (pydicom.dcmread(p) for p in folder.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    decoded = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(decoded, expected.mask)
