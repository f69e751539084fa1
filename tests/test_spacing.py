"""Millimetres only where they are known: ``input.spacing_source`` and ``--spacing``.

PNG, JPEG, TIFF, NPY, arrays, NIfTI with pixdim 0 and DICOM without PixelSpacing (or
with ``0\\0``) state no spacing: their results give pixel counts, never ``area_mm2`` or
``volume_mm3`` computed from a placeholder 1 mm, unless the user gives a spacing.
"""

from __future__ import annotations

import json

import cv2
import jsonschema
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from edgemed import MedicalImage, Options, Pipeline
from edgemed.errors import InputError, UsageError
from edgemed.io import read_image
from edgemed.render import summary
from tests.cli_run import cli
from tests.support import error_code
from tests.test_result_schema import SCHEMA

CT = get_testdata_file("CT_small.dcm")
MM_KEYS = {"area_mm2", "volume_mm3"}


@pytest.fixture(scope="module")
def demo():
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=1) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    ds = pydicom.dcmread(CT)
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def _dicom(tmp_path, name, edit):
    ds = pydicom.dcmread(CT)
    edit(ds)
    path = tmp_path / name
    ds.save_as(path)
    return path


def _no_mm(doc: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert doc["input"]["spacing_source"] == "unknown" and doc["input"]["spacing_mm"] is None
    labels = doc["outputs"]["labels"]
    assert all(set(v) == {"pixels"} for v in labels.values()), labels
    assert sum(v["pixels"] for v in labels.values()) == int(np.prod(doc["input"]["shape"]))


def test_inputs_without_spacing_give_pixel_counts_only(demo, hu, tmp_path):
    cv2.imwrite(str(tmp_path / "ct.png"), np.clip(hu + 1024, 0, 65535).astype(np.uint16))
    np.save(tmp_path / "ct.npy", hu)
    no_spacing = _dicom(tmp_path, "nospacing.dcm", lambda ds: delattr(ds, "PixelSpacing"))
    zero = _dicom(tmp_path, "zero.dcm", lambda ds: setattr(ds, "PixelSpacing", [0, 0]))
    nii = nib.Nifti1Image(hu.T[:, :, None].copy(), np.eye(4))
    nii.header["pixdim"][1:4] = 0  # the file does not say
    nib.save(nii, tmp_path / "nopixdim.nii")
    sources = [tmp_path / "ct.png", tmp_path / "ct.npy", no_spacing, zero,
               tmp_path / "nopixdim.nii"]  # fmt: skip
    for source in sources:
        result = demo(str(source))
        _no_mm(json.loads(json.dumps(result.to_dict())))
        text = summary(result, [], "t")
        assert "spacing unknown" in text and " mm2" not in text and " px" in text
    _no_mm(demo(hu).to_dict())  # an array
    _no_mm(demo(np.stack([hu, hu])).to_dict())  # an array volume: voxels, no mm3


def test_pixel_spacing_zero_is_unknown_not_invalid(tmp_path):
    image = read_image(_dicom(tmp_path, "z.dcm", lambda ds: setattr(ds, "PixelSpacing", [0, 0])))
    assert image.spacing == (1.0, 1.0) and image.metadata["spacing_source"] == "unknown"
    negative = _dicom(tmp_path, "n.dcm", lambda ds: setattr(ds, "PixelSpacing", [-0.5, 0.5]))
    assert error_code(read_image, negative, kind=InputError) == "INPUT_INVALID"


def test_files_that_state_spacing_say_where_it_came_from(demo, tmp_path, hu):
    doc = demo(CT).to_dict()
    assert doc["input"]["spacing_source"] == "dicom"
    assert doc["input"]["spacing_mm"] == pytest.approx([0.661468, 0.661468])
    lung = doc["outputs"]["labels"]["lung"]
    assert lung["area_mm2"] == pytest.approx(lung["pixels"] * 0.661468**2, rel=1e-5)
    nib.save(nib.Nifti1Image(hu.T[:, :, None].copy(), np.diag([0.5, 0.5, 2, 1])),
             tmp_path / "ct.nii")  # fmt: skip
    doc = demo(str(tmp_path / "ct.nii")).to_dict()
    assert doc["input"]["spacing_source"] == "nifti"
    assert doc["input"]["spacing_mm"] == pytest.approx([0.5, 0.5])
    # A caller's own MedicalImage: the caller gave its spacing.
    doc = demo(MedicalImage(hu, spacing=(0.8, 0.8))).to_dict()
    assert doc["input"]["spacing_source"] == "user"


def test_user_spacing_fills_in_where_the_file_is_silent(hu, tmp_path):
    np.save(tmp_path / "ct.npy", hu)
    with Pipeline.from_bundle(
        edgemed.demo_bundle(), "onnxruntime", threads=1, spacing=(0.7, 0.4)
    ) as pipe:
        result = pipe(str(tmp_path / "ct.npy"))
        # (x, y): 0.7 mm along columns, 0.4 mm along rows -> spacing (dy, dx)
        assert result.image.spacing == (0.4, 0.7)
        doc = result.to_dict()
        assert (doc["input"]["spacing_source"], doc["input"]["spacing_mm"]) == ("user", [0.4, 0.7])
        for entry in doc["outputs"]["labels"].values():
            assert entry["area_mm2"] == pytest.approx(entry["pixels"] * 0.28, rel=1e-6)
        assert "(user)" in summary(result, [], "t")
        # A file's own spacing is never overridden.
        assert pipe(CT).to_dict()["input"]["spacing_mm"] == pytest.approx([0.661468] * 2)
        # A volume needs three values: with two it stays unknown.
        _no_mm(pipe(np.stack([hu, hu])).to_dict())
    with Pipeline.from_bundle(
        edgemed.demo_bundle(), "onnxruntime", threads=1, spacing=(0.7, 0.4, 2.5)
    ) as pipe:
        doc = pipe(np.stack([hu, hu])).to_dict()
        assert doc["input"]["spacing_mm"] == [2.5, 0.4, 0.7]
        lung = doc["outputs"]["labels"]["lung"]
        assert lung["volume_mm3"] == pytest.approx(lung["pixels"] * 0.7 * 0.4 * 2.5, rel=1e-6)


@pytest.mark.parametrize("bad", [(0.5,), (0.5, 0.5, 0.5, 0.5), (0.0, 1.0), (-1, 1),
                                 (float("nan"), 1.0), "0.5,0.5", (float("inf"), 1.0)])  # fmt: skip
def test_bad_spacing_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        Options(spacing=bad)


def test_cli_spacing_flag(hu, tmp_path):
    np.save(tmp_path / "ct.npy", hu)
    proc = cli("run", str(tmp_path / "ct.npy"), "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    _no_mm(json.loads((tmp_path / "a" / "result.json").read_text()))
    assert "spacing unknown" in proc.stdout and " mm2" not in proc.stdout
    proc = cli(
        "run", str(tmp_path / "ct.npy"), "--spacing", "0.7,0.7", "--out", str(tmp_path / "b")
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "b" / "result.json").read_text())
    assert doc["input"]["spacing_source"] == "user"
    assert doc["input"]["spacing_mm"] == pytest.approx([0.7, 0.7])
    assert "area_mm2" in doc["outputs"]["labels"]["lung"] and "(user)" in proc.stdout
    for bad in ("0.7", "a,b", "0,0.7", "1,2,3,4"):
        proc = cli("run", str(tmp_path / "ct.npy"), "--spacing", bad, "--out", str(tmp_path / "c"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith("edgemed: error USAGE:")
        assert len(proc.stderr.strip().splitlines()) == 1
