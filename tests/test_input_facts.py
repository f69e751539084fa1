"""What a result says about its input beyond pixels: lossy compression, files of a
folder that were not part of the series, and a single slice being a 2D image wherever
it comes from."""

from __future__ import annotations

import io
import json
import shutil

import cv2
import jsonschema
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from edgemed import Pipeline
from edgemed.io import read_image, read_series
from edgemed.render import summary, write_result
from tests.cli_run import cli
from tests.support import dicom_series
from tests.test_result_schema import SCHEMA

CT = get_testdata_file("CT_small.dcm")
LOSSY_CT = get_testdata_file("693_J2KI.dcm")  # a real CT, lossy JPEG 2000 (ratio 338.7)
JPEG_SC = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")  # baseline JPEG, ratio and method


@pytest.fixture(scope="module")
def demo():
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=1) as pipe:
        yield pipe


def _validate(doc):
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(doc)))


def test_a_lossy_source_is_said_in_the_result_and_the_summary(demo):
    result = demo(LOSSY_CT)
    doc = result.to_dict()
    _validate(doc)
    assert doc["input"]["lossy"] is True
    assert doc["input"]["lossy_ratio"] == pytest.approx([338.687338501292])
    assert "lossy_method" not in doc["input"]  # the file does not record it
    text = summary(result, [], "t")
    assert "  lossy    the source image was lossy-compressed (ratio 339)" in text
    plain = demo(CT)
    assert plain.to_dict()["input"]["lossy"] is False
    assert "lossy" not in summary(plain, [], "t")


def test_lossy_method_and_transfer_syntax():
    md = read_image(JPEG_SC).metadata  # baseline JPEG, recorded ratio and method
    assert md["lossy_compression"] is True
    assert (md["lossy_ratio"], md["lossy_method"]) == ([17.401], ["ISO_10918_1"])
    # The attribute missing: a baseline JPEG transfer syntax is lossy by itself.
    ds = pydicom.dcmread(JPEG_SC)
    del ds.LossyImageCompression
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert read_image(buffer.getvalue()).metadata["lossy_compression"] is True


def test_one_lossy_slice_makes_a_series_lossy(tmp_path):
    def edit(ds, k):
        if k == 2:  # the file says this slice went through lossy compression once
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = [12.5]
            ds.LossyImageCompressionMethod = ["ISO_15444_1"]

    folder = dicom_series(CT, tmp_path / "s", 3, edit=edit)
    instances = [(folder / f"s{k}.dcm").read_bytes() for k in range(3)]
    md = read_series(instances).metadata
    assert md["lossy_compression"] is True
    assert (md["lossy_ratio"], md["lossy_method"]) == ([12.5], ["ISO_15444_1"])
    assert read_series(instances[:2]).metadata["lossy_compression"] is False


def test_a_jpeg_file_is_a_lossy_source(demo, tmp_path):
    cv2.imwrite(str(tmp_path / "x.jpg"), np.full((32, 32), 120, np.uint8))
    doc = demo(str(tmp_path / "x.jpg")).to_dict()
    assert doc["input"]["lossy"] is True and doc["input"]["lossy_method"] == ["ISO_10918_1"]


def test_cli_summary_says_lossy(tmp_path):
    proc = cli("run", LOSSY_CT, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "lossy    the source image was lossy-compressed" in proc.stdout
    assert json.loads((tmp_path / "result.json").read_text())["input"]["lossy"] is True


def test_a_folder_with_one_slice_and_other_files(demo, tmp_path):
    # One DICOM slice plus a PNG, a NIfTI and a text file: the slice is a 2D image, as
    # the file alone is (areas, not volumes), and the three others are counted.
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(CT, folder / "PATIENT_NAME_slice.dcm")
    cv2.imwrite(str(folder / "photo.png"), np.zeros((8, 8), np.uint8))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / "v.nii.gz")
    (folder / "notes.txt").write_text("reading notes")
    result = demo(str(folder))
    alone = demo(CT)
    np.testing.assert_array_equal(result.mask, alone.mask)
    doc = result.to_dict()
    _validate(doc)
    assert doc["input"]["shape"] == [128, 128] and doc["input"]["ignored_files"] == 3
    assert doc["outputs"]["labels"] == alone.to_dict()["outputs"]["labels"]  # area_mm2
    assert "area_mm2" in doc["outputs"]["labels"]["lung"]
    written = write_result(result, tmp_path / "out")
    text = summary(result, written, "t")
    assert "  ignored  3 files in the folder (not part of the series)" in text
    everything = text + (tmp_path / "out" / "result.json").read_text()
    for name in ("PATIENT_NAME", "photo", "notes", "v.nii"):  # counts, never names
        assert name not in everything
    assert "ignored_files" not in alone.to_dict()["input"]  # a file alone has no folder


def test_a_clean_series_reports_zero_ignored_files(demo, tmp_path):
    result = demo(str(dicom_series(CT, tmp_path / "s", 2)))
    assert result.to_dict()["input"]["ignored_files"] == 0
    assert "ignored" not in summary(result, [], "t")
    assert "volume_mm3" in result.stats["lung"]
