"""A bundle's ``modalities``: DICOM inputs of another modality are refused (INPUT_MODALITY).

The demo model windows CT Hounsfield units; run on MR signal it still "finds" bone and
fat. The demo bundle declares ``["CT"]``, so the pipeline, the CLI and the export
stage's calibration refuse other DICOM modalities unless told otherwise. Formats that
declare no modality (NIfTI, PNG, arrays) cannot be checked and pass.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from edgemed import Pipeline
from edgemed.bundle import Bundle
from edgemed.errors import BundleError, InputError, UsageError
from edgemed.export.calibration import collect
from edgemed.export.config import ExportConfig
from edgemed.fsutil import write_json
from edgemed.io import read_image, read_series
from tests.cli_run import cli
from tests.support import error_code

MR = get_testdata_file("MR_small.dcm")


@pytest.fixture(scope="module")
def demo_pipe():
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=1) as pipe:
        yield pipe


def test_the_demo_bundle_declares_ct():
    assert Bundle.load(edgemed.demo_bundle()).modalities == ("CT",)


def test_mr_dicom_is_refused_by_a_ct_model(demo_pipe, ct_small_path):
    with pytest.raises(InputError) as e:
        demo_pipe(MR)
    assert e.value.code == "INPUT_MODALITY" and e.value.exit_code == 3
    assert "MR" in e.value.message and "CT" in e.value.message and e.value.path == MR
    # One refused item fails the batch it is in, before any inference: nothing half-done.
    with pytest.raises(InputError):
        demo_pipe.run_batch([ct_small_path, MR])
    assert demo_pipe(ct_small_path).mask.shape == (128, 128)  # CT runs as before


def test_every_dicom_form_is_checked_series_folders_and_instances_too(demo_pipe, tmp_path):
    # A folder holding MR_small.dcm used to run through the CT model (the series
    # reader's format tag was not the one checked): every DICOM-derived image is checked.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    shutil.copy(MR, one / "im0001")
    instances = []
    for z in (0.0, 3.0):  # MR_small as a two-slice series
        ds = pydicom.dcmread(MR)
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        instances.append(buffer.getvalue())
        (two / f"s{len(instances)}").write_bytes(instances[-1])
    data = Path(MR).read_bytes()
    for item in (
        str(one),  # a directory with one file
        str(two),  # a directory with a series
        data,  # bytes
        io.BytesIO(data),  # a file object
        read_series(instances),  # in-memory instances
        read_image(two),  # a MedicalImage read from a folder
    ):
        assert error_code(demo_pipe, item, kind=InputError) == "INPUT_MODALITY"


def test_cli_refuses_a_series_folder_of_another_modality(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(MR, folder / "MR_small.dcm")
    proc = cli("run", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemed: error INPUT_MODALITY:")
    assert not (tmp_path / "out" / "result.json").exists()


def test_check_modality_false_runs_it_anyway():
    with Pipeline.from_bundle(
        edgemed.demo_bundle(), "onnxruntime", threads=1, check_modality=False
    ) as pipe:
        result = pipe(MR)
    assert result.image.modality == "MR" and result.mask.shape == (64, 64)


def test_formats_without_a_modality_are_not_checked(demo_pipe, ct_small_hu, tmp_path):
    assert demo_pipe(ct_small_hu).mask.shape == ct_small_hu.shape  # an array in HU
    path = tmp_path / "ct.npy"
    np.save(path, ct_small_hu)
    assert demo_pipe(str(path)).image.metadata["format"] == "npy"


def test_a_bundle_without_modalities_takes_any(tiny_bundle):
    root = tiny_bundle("segmentation")
    assert Bundle.load(root).modalities == ()
    assert "modalities" not in Bundle.load(root).to_dict()  # absent stays absent
    with Pipeline.from_bundle(root, "onnxruntime", threads=1) as pipe:
        assert pipe(MR).image.modality == "MR"


@pytest.mark.parametrize("value", [["ct"], "CT", [5], ["C T"], ["X" * 17], [""]])
def test_malformed_modalities_are_bundle_invalid(tiny_bundle, tmp_path, value):
    root = tiny_bundle("segmentation")
    manifest = json.loads((root / "bundle.json").read_text())
    manifest["modalities"] = value
    write_json(root / "bundle.json", manifest)
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert e.value.code == "BUNDLE_INVALID" and "modalities" in e.value.message


def test_declared_modalities_round_trip(tiny_bundle):
    root = tiny_bundle("segmentation")
    manifest = json.loads((root / "bundle.json").read_text())
    manifest["modalities"] = ["CT", "PT"]
    write_json(root / "bundle.json", manifest)
    b = Bundle.load(root)
    assert b.modalities == ("CT", "PT") and b.to_dict()["modalities"] == ["CT", "PT"]


def test_cli_refuses_with_exit_3_and_any_modality_overrides(tmp_path, ct_small_path):
    proc = cli("run", MR, ct_small_path, "--out", str(tmp_path / "a"))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemed: error INPUT_MODALITY:")
    # The other input still ran (one refused input does not stop the rest).
    assert (tmp_path / "a" / "input-0002" / "result.json").is_file()
    assert not (tmp_path / "a" / "input-0001" / "result.json").exists()
    proc = cli("run", MR, "--any-modality", "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "result.json").read_text())["input"]["modality"] == "MR"
    info = cli("info")
    assert "modalities   CT (DICOM inputs)" in info.stdout


def test_export_config_takes_codes_and_refuses_others(tmp_path):
    base = dict(model="m:f", input_shape=(1, 1, 8, 8), task="segmentation",
                calibration=tmp_path, out=tmp_path / "out")  # fmt: skip
    assert ExportConfig(**base, modalities="ct, mr").modalities == ("CT", "MR")
    assert ExportConfig(**base).modalities == ()
    with pytest.raises(UsageError):
        ExportConfig(**base, modalities="C-T")


def test_calibration_refuses_another_modality(tmp_path, ct_small_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    shutil.copy(ct_small_path, folder / "a.dcm")
    shutil.copy(MR, folder / "b.dcm")
    spec = Bundle.load(edgemed.demo_bundle()).preprocess
    with pytest.raises(InputError) as e:
        collect(folder, None, spec, max_slices=8, modalities=("CT",))
    assert e.value.code == "INPUT_MODALITY" and Path(e.value.path).name == "b.dcm"
    calib, val, _ = collect(folder, None, spec, max_slices=8)  # no declaration: both read
    assert len(calib.inputs) + len(val.inputs) == 2
