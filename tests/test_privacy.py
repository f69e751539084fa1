"""No patient-identifying DICOM value reaches logs, errors, results or file names.

Sentinel strings go into every PN, LO, SH, DA, TM and UI element (sequences included)
and into private elements of real files from pydicom's corpus; the CLI and the API then
run at DEBUG on good and broken copies, and every byte they emit is searched.
"""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from edgemed import Pipeline
from tests.support import dicom_series

TEXT_VRS = {"PN": "ZQXPN^SENTINEL", "LO": "ZQXLOSENTINEL", "SH": "ZQXSHSENTINEL"}
DA, TM = "18880808", "111111.654321"
UI_ROOT = "1.2.826.0.1.999777."
SOURCES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"]


def _plant(ds: pydicom.Dataset, counter: list[int]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _plant(item, counter)
        elif elem.VR in TEXT_VRS or elem.tag.is_private and elem.VR in ("LO", "SH", "LT", "ST"):
            elem.value = TEXT_VRS.get(elem.VR, "ZQXPRIVATESENTINEL")
        elif elem.VR == "DA":
            elem.value = DA
        elif elem.VR == "TM":
            elem.value = TM
        elif elem.VR == "UI":
            counter[0] += 1
            elem.value = f"{UI_ROOT}{counter[0]}"


def _sentinel_file(src: str, dst: Path, counter: list[int]) -> Path:
    ds = pydicom.dcmread(get_testdata_file(src))
    for keyword in (
        "PatientName",
        "PatientID",
        "InstitutionName",
        "StudyDescription",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
    ):
        if keyword not in ds:  # make sure the classic identifiers exist at all
            setattr(ds, keyword, "")
    _plant(ds, counter)
    block = ds.private_block(0x0011, "ZQX PRIVATE CREATOR", create=True)
    block.add_new(0x01, "LO", "ZQXPRIVATESENTINEL")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("phi")
    counter = [0]
    good = [_sentinel_file(s, d / f"good{i}.dcm", counter) for i, s in enumerate(SOURCES)]
    data = good[0].read_bytes()
    bad = d / "truncated.dcm"
    bad.write_bytes(data[: len(data) - 3000])
    geometry = pydicom.dcmread(good[0])
    geometry.Rows = 60000
    geometry.save_as(d / "badrows.dcm")

    def numbered(ds: pydicom.Dataset, k: int) -> None:  # UIDs under the sentinel root
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"{UI_ROOT}{900 + k}"

    series = dicom_series(good[0], d / "series", 2, step_mm=3.0, edit=numbered)
    inputs = [*good, bad, d / "badrows.dcm", series]
    text = good[0].read_bytes()
    assert b"ZQXPN^SENTINEL" in text and UI_ROOT.encode() in text  # planted for real
    return inputs


def _needles() -> list[bytes]:
    return [
        *(v.encode() for v in TEXT_VRS.values()),
        b"ZQXPRIVATESENTINEL",
        b"ZQX",
        DA.encode(),
        TM.encode(),
        UI_ROOT.encode(),
    ]


def _hits(blob: bytes) -> list[bytes]:
    return [n for n in _needles() if n in blob]


def _scan_outputs(out: Path) -> list[str]:
    found = []
    for p in out.rglob("*"):
        found += [f"name {p.name}: {n!r}" for n in _hits(str(p.relative_to(out)).encode())]
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith(".gz"):
                data = gzip.decompress(data)
            found += [f"{p.name}: {n!r}" for n in _hits(data)]
    return found


def test_cli_at_debug_emits_no_patient_values(planted, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgemed.cli",
            "--debug",
            "run",
            "--any-modality",  # MR, NM and SC sources too: their outputs are scanned
            *map(str, planted),
            "--out",
            str(out),
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 3  # the broken files are refused, the others run
    assert b"INPUT_TRUNCATED" in proc.stderr and b"Traceback" in proc.stderr
    assert len(list(out.glob("input-*/result.json"))) == len(SOURCES) + 1  # + the series
    assert _hits(proc.stdout) == [] and _hits(proc.stderr) == []
    assert _scan_outputs(out) == []


def test_api_at_debug_emits_no_patient_values(planted, caplog):
    caplog.set_level(logging.DEBUG)
    texts = []
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", check_modality=False) as pipe:
        for path in planted:
            try:
                result = pipe(path)
                texts.append(repr(result.to_dict()) + repr(result.image.metadata))
            except edgemed.EdgemedError as exc:
                texts.append(f"{exc} {exc!r} {exc.message} {exc.code}")
    assert len(texts) == len(planted)
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("input ") for m in logged)  # the pipeline's debug line did run
    texts += logged
    assert _hits("\n".join(texts).encode()) == []
