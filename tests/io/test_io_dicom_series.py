"""DICOM series directories: real series from pydicom's corpus and series built from CT_small."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from edgemed.errors import InputError
from edgemed.io.read import read_image
from tests.support import error_code

STEP = 2.5
BASE_Z = -75.699997  # CT_small's own ImagePositionPatient z


@pytest.fixture
def ct_series(dicom_copy, tmp_path):
    """Factory: a series of CT_small copies with pixel value + 10*i in slice i.

    Slice i sits at z = BASE_Z - i*STEP (so sorting must reverse the write order) and is
    written under a shuffled name without extension. ``tweak(i, ds)`` edits one slice.
    """

    def make(count=5, tweak=None, folder="series"):
        series_uid = pydicom.uid.generate_uid()
        names = np.random.default_rng(7).permutation(count)
        for i in range(count):

            def edit(ds, i=i):
                stored = ds.pixel_array.astype(np.int16) + 10 * i
                ds.PixelData = stored.tobytes()
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = pydicom.uid.generate_uid()
                ds.InstanceNumber = i + 1
                x, y, _ = (float(v) for v in ds.ImagePositionPatient)
                ds.ImagePositionPatient = [x, y, BASE_Z - i * STEP]
                if tweak is not None:
                    tweak(i, ds)

            dicom_copy("CT_small.dcm", edit, dest=tmp_path / folder / f"im{names[i]:04d}")
        return tmp_path / folder

    return make


def test_series_is_sorted_along_the_normal(ct_series, ct_small_hu):
    folder = ct_series()
    (folder / "notes.txt").write_text("not DICOM")
    image = read_image(folder)
    assert image.array.shape == (5, 128, 128) and image.is_volume
    # lowest z first: slice written last (i = 4) comes first
    for k in range(5):
        np.testing.assert_array_equal(image.array[k], ct_small_hu + 10 * (4 - k))
    assert image.spacing == pytest.approx((STEP, 0.661468, 0.661468))
    assert image.origin == pytest.approx((-158.135803, -179.035797, BASE_Z - 4 * STEP))
    np.testing.assert_allclose(image.direction, np.eye(3))
    md = image.metadata
    assert (md["format"], md["num_slices"], md["ignored_files"]) == ("dicom-series", 5, 1)
    assert md["slice_order"] == "positions"


def test_oblique_series_sorts_along_its_own_normal(ct_series, ct_small_hu):
    # Rows along x, columns along z: the slice normal is -y (row x col = x x z = -y).
    def tweak(i, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
        ds.ImagePositionPatient = [0.0, 3.0 * i, 0.0]

    image = read_image(ct_series(count=4, tweak=tweak))
    np.testing.assert_allclose(image.direction[:, 2], [0, -1, 0], atol=1e-12)
    assert image.spacing[0] == pytest.approx(3.0)
    assert image.origin == pytest.approx((0.0, 9.0, 0.0))  # largest y is lowest along -y
    np.testing.assert_array_equal(image.array[0], ct_small_hu + 30)


def test_two_series_in_one_directory(ct_series, tmp_path):
    ct_series(count=2, folder="mixed")

    def other(i, ds):
        ds.SeriesInstanceUID = "1.2.3.4.5"

    ct_series(count=1, tweak=other, folder="mixed-b")
    (tmp_path / "mixed-b").rename(tmp_path / "mixed" / "extra")  # a subfolder is not read
    assert read_image(tmp_path / "mixed").num_slices == 2
    extra = next((tmp_path / "mixed" / "extra").iterdir())
    extra.rename(tmp_path / "mixed" / "zz-other")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "mixed")
    assert excinfo.value.code == "INPUT_MULTIPLE_SERIES"
    assert "1.2.3.4.5" not in str(excinfo.value)


def test_mismatched_rows(ct_series):
    def tweak(i, ds):
        if i == 2:
            ds.PixelData = ds.pixel_array[:64].tobytes()
            ds.Rows = 64

    assert (
        error_code(read_image, ct_series(tweak=tweak), kind=InputError)
        == "INPUT_SERIES_INCONSISTENT"
    )


def test_duplicate_positions(ct_series):
    def tweak(i, ds):
        if i == 3:
            ds.ImagePositionPatient = [-158.135803, -179.035797, BASE_Z - 2 * STEP]

    assert (
        error_code(read_image, ct_series(tweak=tweak), kind=InputError)
        == "INPUT_SERIES_INCONSISTENT"
    )


def test_uneven_spacing(ct_series):
    def tweak(i, ds):
        if i == 4:
            ds.ImagePositionPatient = [-158.135803, -179.035797, BASE_Z - 20.0]

    assert error_code(read_image, ct_series(tweak=tweak), kind=InputError) == "INPUT_SLICE_GAP"


def test_different_pixel_spacing(ct_series):
    def tweak(i, ds):
        if i == 1:
            ds.PixelSpacing = [0.5, 0.5]

    assert (
        error_code(read_image, ct_series(tweak=tweak), kind=InputError)
        == "INPUT_SERIES_INCONSISTENT"
    )


def test_gantry_tilt_shear_is_refused(ct_series):
    def tweak(i, ds):
        ds.ImagePositionPatient = [-158.135803, -179.035797 + 1.5 * i, BASE_Z - i * STEP]

    assert error_code(read_image, ct_series(tweak=tweak), kind=InputError) == "INPUT_GANTRY_TILT"


def test_a_broken_slice_fails_the_series(ct_series):
    folder = ct_series()
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-3000])
    assert error_code(read_image, folder, kind=InputError) == "INPUT_TRUNCATED"


def test_empty_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    assert error_code(read_image, tmp_path / "empty", kind=InputError) == "INPUT_EMPTY_SERIES"
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hello")
    assert error_code(read_image, tmp_path / "text", kind=InputError) == "INPUT_EMPTY_SERIES"


def test_real_ct_series_from_the_corpus(corpus):
    folder = corpus / "dicomdirtests/98892001/CT5N"
    image = read_image(folder)
    assert image.array.shape == (5, 16, 16)
    assert image.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    files = sorted(
        folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2])
    )
    assert image.origin == pytest.approx(tuple(pydicom.dcmread(files[0]).ImagePositionPatient))
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(image.array[k], expected)


@pytest.mark.parametrize(
    ("folder", "code"),
    [
        ("dicomdirtests/77654033/CT2", "INPUT_SLICE_GAP"),  # 202 mm gap, then 1.25
        ("dicomdirtests/98892003/MR700", "INPUT_MIXED_ORIENTATION"),  # projections
        ("dicomdirtests/98892003/MR2", "INPUT_MULTIPLE_SERIES"),
        ("dicomdirtests", "INPUT_EMPTY_SERIES"),  # only DICOMDIR files and a README
    ],
)
def test_real_problem_series_from_the_corpus(corpus, folder, code):
    assert error_code(read_image, corpus / folder, kind=InputError) == code


def test_single_file_directory_is_the_files_2d_image(corpus):
    # A single slice is a 2D image wherever it comes from: areas, not volumes.
    folder = corpus / "dicomdirtests/77654033/CR1"
    image = read_image(folder)
    alone = read_image(next(folder.iterdir()))
    assert image.array.shape == (16, 16) and image.spacing == (0.1, 0.1)
    np.testing.assert_array_equal(image.array, alone.array)
    assert (image.metadata["format"], image.metadata["num_slices"]) == ("dicom-series", 1)
