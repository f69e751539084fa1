"""read_image dispatch: content first, then the name; the error boundary."""

from __future__ import annotations

import os
import shutil

import cv2
import nibabel as nib
import numpy as np
import pytest

from edgemed.errors import InputError, UsageError
from edgemed.io import read as read_module
from edgemed.io.read import INPUT_ERROR_CODES, detect_format, read_image


def test_content_beats_the_extension(corpus, tmp_path):
    shutil.copy(corpus / "CT_small.dcm", tmp_path / "scan.png")
    assert detect_format(tmp_path / "scan.png") == "dicom"
    assert read_image(tmp_path / "scan.png").modality == "CT"
    png = cv2.imencode(".png", np.eye(4, dtype=np.uint8))[1].tobytes()
    (tmp_path / "picture.dcm").write_bytes(png)
    assert detect_format(tmp_path / "picture.dcm") == "png"
    np.testing.assert_array_equal(read_image(tmp_path / "picture.dcm").array, np.eye(4))


def test_formats_found(corpus, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(tmp_path / "v.nii")
    shutil.copy(tmp_path / "v.nii", tmp_path / "v_no_ext")
    shutil.copy(corpus / "ExplVR_LitEndNoMeta.dcm", tmp_path / "nopreamble")
    (tmp_path / "notes.txt").write_text("hello")
    assert detect_format(tmp_path / "a.npy") == "npy"
    assert detect_format(tmp_path / "v.nii") == "nifti"
    assert detect_format(tmp_path / "v_no_ext") == "nifti"  # by its header magic
    assert detect_format(tmp_path / "nopreamble") == "dicom"  # no extension: try DICOM
    assert detect_format(tmp_path / "notes.txt") is None
    assert detect_format(tmp_path) == "dicom-series"
    assert detect_format(corpus / "MR_small.dcm") == "dicom"


def test_dicom_without_preamble_is_parsed_with_force(corpus, tmp_path):
    # CT_small minus its 128-byte preamble and "DICM": pydicom needs force=True for it.
    data = (corpus / "CT_small.dcm").read_bytes()[132:]
    (tmp_path / "bare.dcm").write_bytes(data)
    np.testing.assert_array_equal(
        read_image(tmp_path / "bare.dcm").array, read_image(corpus / "CT_small.dcm").array
    )


def test_not_a_path_is_a_usage_error():
    with pytest.raises(UsageError):
        read_image(42)


def test_missing_paths():
    with pytest.raises(InputError) as excinfo:
        read_image("/nonexistent/edgemed/scan.dcm")
    assert excinfo.value.code == "INPUT_NOT_FOUND"
    assert str(excinfo.value).startswith("INPUT_NOT_FOUND: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.dcm"
    path.write_bytes(b"x" * 200)
    path.chmod(0)
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    assert excinfo.value.code == "INPUT_UNREADABLE"


def test_unexpected_failures_become_input_errors(corpus, monkeypatch):
    def explode(path):
        raise KeyError("something deep inside a third-party reader")

    monkeypatch.setattr(read_module, "detect_format", explode)
    with pytest.raises(InputError) as excinfo:
        read_image(corpus / "CT_small.dcm")
    assert excinfo.value.code == "INPUT_CORRUPT"
    assert isinstance(excinfo.value.__cause__, KeyError)
    assert "something deep" not in str(excinfo.value)  # third-party text stays out


def test_codes_are_documented():
    doc = read_module.__doc__
    for code in INPUT_ERROR_CODES:
        assert f"``{code}``" in doc
