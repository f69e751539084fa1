"""NIfTI: nibabel's own test files and files written here with nibabel."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgemed.errors import InputError
from edgemed.io.read import read_image
from tests.support import error_code

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
LPS = np.diag([-1.0, -1.0, 1.0])


def test_anatomical_nii_is_z_y_x_in_lps():
    path = NIB_DATA / "anatomical.nii"
    reference = nib.load(path)
    data = reference.get_fdata()
    image = read_image(path)
    assert image.array.shape == (25, 41, 33) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, data.transpose(2, 1, 0))
    assert image.array[3, 7, 11] == data[11, 7, 3]  # [z, y, x] == nibabel [i, j, k]
    assert image.spacing == (2.0, 2.0, 2.0)
    # affine diag(-2, 2, 2) + (32, -40, -16) in RAS -> LPS
    assert image.origin == pytest.approx((-32.0, 40.0, -16.0))
    np.testing.assert_allclose(image.direction, np.diag([1.0, -1.0, 1.0]))
    assert image.metadata["format"] == "nifti" and image.metadata["nifti_version"] == 1


def test_first_volume_of_oblique_example4d():
    reference = nib.load(NIB_DATA / "example4d.nii.gz")
    assert reference.shape[3] == 2
    assert (
        error_code(read_image, NIB_DATA / "example4d.nii.gz", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )
    assert (
        error_code(read_image, NIB_DATA / "example_nifti2.nii.gz", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz"])
def test_single_volume_keeps_oblique_geometry(tmp_path, name):
    reference = nib.load(NIB_DATA / name)
    volume = np.asarray(reference.dataobj[..., :1])  # 4D with one volume is allowed
    klass = type(reference)
    path = tmp_path / name
    klass(volume, reference.affine, reference.header).to_filename(path)
    image = read_image(path)
    expected = volume[..., 0].astype(np.float32).transpose(2, 1, 0)
    np.testing.assert_array_equal(image.array, expected)
    zooms = reference.header.get_zooms()
    assert image.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]))
    axes = LPS @ reference.affine[:3, :3]
    np.testing.assert_allclose(image.direction, axes / np.linalg.norm(axes, axis=0), atol=1e-6)
    assert image.origin == pytest.approx(tuple(LPS @ reference.affine[:3, 3]))
    assert image.metadata["nifti_version"] == (2 if "nifti2" in name else 1)


def test_round_trip_with_scaling_and_translation(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(-500, 500, size=(6, 5, 4), dtype=np.int16)  # (i, j, k)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(stored, affine)
    img.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "scaled.nii.gz"
    img.to_filename(path)
    image = read_image(path)
    assert image.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(image.array, (stored * 2.0 - 5.0).transpose(2, 1, 0))
    assert image.spacing == pytest.approx((2.0, 0.7, 0.5))
    assert image.origin == pytest.approx((-10.0, 20.0, 30.0))
    np.testing.assert_allclose(image.direction, LPS)
    assert (image.metadata["scl_slope"], image.metadata["scl_inter"]) == (2.0, -5.0)


def test_two_dimensional_nifti_is_y_x(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(4, 3, 1)  # (i, j, k=1)
    path = tmp_path / "flat.nii"
    nib.Nifti1Image(data, np.diag([0.3, 0.6, 1.0, 1.0])).to_filename(path)
    image = read_image(path)
    assert image.array.shape == (3, 4) and not image.is_volume
    np.testing.assert_array_equal(image.array, data[:, :, 0].T)
    assert image.spacing == pytest.approx((0.6, 0.3))


def test_spacing_in_metres_is_converted_to_mm(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.diag([0.001, 0.002, 0.003, 1]))
    img.header.set_xyzt_units("meter")
    img.to_filename(tmp_path / "metres.nii")
    image = read_image(tmp_path / "metres.nii")
    assert image.spacing == pytest.approx((3.0, 2.0, 1.0))


def test_truncated_and_broken_files(tmp_path):
    noise = np.random.default_rng(2).normal(size=(8, 8, 8)).astype(np.float32)
    nib.Nifti1Image(noise, np.eye(4)).to_filename(tmp_path / "whole.nii")
    data = (tmp_path / "whole.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[:-100])
    assert error_code(read_image, tmp_path / "cut.nii", kind=InputError) == "INPUT_TRUNCATED"
    packed = gzip.compress(data)
    (tmp_path / "cut-data.nii.gz").write_bytes(packed[: len(packed) // 2])
    assert (
        error_code(read_image, tmp_path / "cut-data.nii.gz", kind=InputError) == "INPUT_TRUNCATED"
    )
    (tmp_path / "cut-header.nii.gz").write_bytes(packed[:100])
    assert (
        error_code(read_image, tmp_path / "cut-header.nii.gz", kind=InputError) == "INPUT_TRUNCATED"
    )
    (tmp_path / "garbage.nii").write_bytes(b"not a nifti header" * 40)
    assert error_code(read_image, tmp_path / "garbage.nii", kind=InputError) == "INPUT_CORRUPT"


def test_non_finite_values_are_refused(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "nan.nii")
    assert error_code(read_image, tmp_path / "nan.nii", kind=InputError) == "INPUT_INVALID"


def test_cifti_and_complex_are_unsupported(tmp_path):
    assert (
        error_code(read_image, NIB_DATA / "row_major.dconn.nii", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )
    data = np.ones((2, 2, 2), np.complex64)
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "complex.nii")
    assert (
        error_code(read_image, tmp_path / "complex.nii", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )


def test_nifti_is_found_by_content_whatever_its_name(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "real.nii.gz")
    renamed = tmp_path / "volume.bin"
    renamed.write_bytes((tmp_path / "real.nii.gz").read_bytes())
    np.testing.assert_array_equal(read_image(renamed).array, data.transpose(2, 1, 0))
