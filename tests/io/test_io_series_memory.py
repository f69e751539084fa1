"""read_series: a DICOM series from in-memory instances equals the directory read."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgemed.errors import InputError, UsageError
from edgemed.io import read_series
from edgemed.io.read import read_image
from edgemed.limits import DEFAULT_LIMITS, ReaderLimits
from tests.io.compare import assert_same_image
from tests.support import error_code

STEP = 2.5


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _shuffled(items: list, seed: int = 3) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


@pytest.fixture
def series(dicom_copy, tmp_path):
    """Factory: a series of CT_small copies (value + 10*i in slice i, z = -2.5*i) in a
    folder; ``tweak(i, ds)`` edits one slice."""

    def make(count=4, tweak=None, folder="series"):
        uid = pydicom.uid.generate_uid()
        for i in range(count):

            def edit(ds, i=i):
                ds.PixelData = (ds.pixel_array.astype(np.int16) + 10 * i).tobytes()
                ds.SeriesInstanceUID = uid
                ds.SOPInstanceUID = pydicom.uid.generate_uid()
                ds.InstanceNumber = i + 1
                x, y, _ = (float(v) for v in ds.ImagePositionPatient)
                ds.ImagePositionPatient = [x, y, -STEP * i]
                if tweak is not None:
                    tweak(i, ds)

            dicom_copy("CT_small.dcm", edit, dest=tmp_path / folder / f"im{i:03d}")
        return tmp_path / folder

    return make


def test_real_corpus_series_from_bytes_files_and_paths_equals_the_directory(corpus):
    folder = corpus / "dicomdirtests/98892001/CT5N"
    expected = read_image(folder)
    assert expected.array.shape == (5, 16, 16)
    files = _files(folder)
    assert_same_image(expected, read_series([p.read_bytes() for p in _shuffled(files)]))
    handles = [open(p, "rb") for p in _shuffled(files, seed=5)]  # noqa: SIM115
    try:
        assert_same_image(expected, read_series(handles))
    finally:
        for handle in handles:
            handle.close()
    mixed = [files[0], files[1].read_bytes(), io.BytesIO(files[2].read_bytes()), *files[3:]]
    assert_same_image(expected, read_series(tuple(mixed)))
    assert_same_image(expected, read_series(p.read_bytes() for p in files))  # any iterable


def test_built_series_equals_the_directory_whatever_the_order(series, ct_small_hu):
    folder = series(count=5)
    expected = read_image(folder)
    for k in range(5):  # lowest z first: the slice written last comes first
        np.testing.assert_array_equal(expected.array[k], ct_small_hu + 10 * (4 - k))
    data = [p.read_bytes() for p in _files(folder)]
    for seed in range(3):
        image = read_series(_shuffled(data, seed))
        assert_same_image(expected, image)
    assert image.metadata["format"] == "dicom-series" and image.metadata["num_slices"] == 5
    assert image.spacing[0] == pytest.approx(STEP)


def test_items_that_are_not_dicom_images_are_ignored_and_counted(series, corpus):
    folder = series(count=3)
    (folder / "notes.txt").write_text("not DICOM")
    expected = read_image(folder)
    assert expected.metadata["ignored_files"] == 1
    items = [p.read_bytes() for p in _files(folder)]
    items.append((corpus / "rtplan.dcm").read_bytes())  # DICOM, but not an image
    image = read_series(items)
    assert image.metadata["ignored_files"] == 2
    np.testing.assert_array_equal(image.array, expected.array)


def test_single_instance_is_a_2d_image(corpus):
    expected = read_image(corpus / "dicomdirtests/77654033/CR1")
    assert expected.array.shape == (16, 16) and not expected.is_volume
    data = (corpus / "dicomdirtests/77654033/CR1/6154").read_bytes()
    assert_same_image(expected, read_series([data]))
    frames = read_series([(corpus / "rtdose.dcm").read_bytes()])  # multi-frame: its frames
    assert frames.array.shape == (15, 10, 10)


@pytest.mark.parametrize(
    ("folder", "code"),
    [
        ("dicomdirtests/77654033/CT2", "INPUT_SLICE_GAP"),  # 202 mm gap
        ("dicomdirtests/98892003/MR700", "INPUT_MIXED_ORIENTATION"),  # projections
        ("dicomdirtests/98892003/MR2", "INPUT_MULTIPLE_SERIES"),
        ("dicomdirtests", "INPUT_EMPTY_SERIES"),  # only DICOMDIR files and a README
    ],
)
def test_real_problem_series_have_the_directory_codes(corpus, folder, code):
    assert error_code(read_image, corpus / folder, kind=InputError) == code
    items = [p.read_bytes() for p in _files(corpus / folder)]
    with pytest.raises(InputError) as excinfo:
        read_series(items)
    assert excinfo.value.code == code
    assert excinfo.value.path is None  # nothing in memory has a path


def _tweaked(i_bad: int, change):
    def tweak(i, ds):
        if i == i_bad:
            change(ds)

    return tweak


def _shorter(ds):
    ds.PixelData = ds.pixel_array[:64].tobytes()
    ds.Rows = 64


def _duplicate(ds):
    ds.ImagePositionPatient = [-158.135803, -179.035797, -STEP * 2]


def _far(ds):
    ds.ImagePositionPatient = [-158.135803, -179.035797, -20.0]


def _spacing(ds):
    ds.PixelSpacing = [0.5, 0.5]


def _other_series(ds):
    ds.SeriesInstanceUID = "1.2.3.4.5"


@pytest.mark.parametrize(
    ("tweak", "code"),
    [
        (_tweaked(2, _shorter), "INPUT_SERIES_INCONSISTENT"),
        (_tweaked(3, _duplicate), "INPUT_SERIES_INCONSISTENT"),
        (_tweaked(3, _far), "INPUT_SLICE_GAP"),
        (_tweaked(1, _spacing), "INPUT_SERIES_INCONSISTENT"),
        (_tweaked(1, _other_series), "INPUT_MULTIPLE_SERIES"),
    ],
)
def test_inconsistent_instances_have_the_directory_codes(series, tweak, code):
    folder = series(tweak=tweak)
    assert error_code(read_image, folder, kind=InputError) == code
    items = [p.read_bytes() for p in _files(folder)]
    assert error_code(read_series, items, kind=InputError) == code
    with pytest.raises(InputError) as excinfo:
        read_series(items)
    assert "1.2.3.4.5" not in str(excinfo.value)


def test_a_broken_instance_fails_the_series(series):
    folder = series()
    items = [p.read_bytes() for p in _files(folder)]
    items[2] = items[2][:-3000]
    (folder / _files(folder)[2].name).write_bytes(items[2])
    assert error_code(read_image, folder, kind=InputError) == "INPUT_TRUNCATED"
    assert error_code(read_series, items, kind=InputError) == "INPUT_TRUNCATED"


def test_empty_collections():
    assert error_code(read_series, [], kind=InputError) == "INPUT_EMPTY_SERIES"
    not_dicom = [b"hello", io.BytesIO(b"x" * 300)]
    assert error_code(read_series, not_dicom, kind=InputError) == "INPUT_EMPTY_SERIES"


def test_caps_for_instances(series):
    folder = series(count=3)
    items = [p.read_bytes() for p in _files(folder)]
    assert read_series(items, limits=ReaderLimits(max_frames=3)).num_slices == 3
    assert (
        error_code(read_series, items, limits=ReaderLimits(max_frames=2), kind=InputError)
        == "INPUT_INVALID"
    )
    size = max(len(item) for item in items)
    assert read_series(items, limits=ReaderLimits(max_file_bytes=size)).num_slices == 3
    small = ReaderLimits(max_file_bytes=size - 1)
    assert error_code(read_series, items, limits=small, kind=InputError) == "INPUT_INVALID"
    elements = ReaderLimits(max_elements=3 * 128 * 128 - 1)
    assert error_code(read_series, items, limits=elements, kind=InputError) == "INPUT_INVALID"


def test_the_instance_count_is_checked_before_any_is_parsed(series):
    data = _files(series(count=3))[0].read_bytes()
    given = []

    def instances():
        for _ in range(5):
            given.append(1)
            yield data

    limits = ReaderLimits(max_frames=4)
    assert error_code(read_series, instances(), limits=limits, kind=InputError) == "INPUT_INVALID"
    assert len(given) == 5  # counted (the iterable was consumed), nothing parsed


def test_caps_come_from_the_environment(series, monkeypatch):
    items = [p.read_bytes() for p in _files(series(count=3))]
    monkeypatch.setenv("EDGEMED_MAX_FRAMES", "2")
    assert error_code(read_series, items, kind=InputError) == "INPUT_INVALID"
    assert read_series(items, limits=DEFAULT_LIMITS).num_slices == 3


def test_one_instance_or_a_non_collection_is_a_usage_error(corpus):
    data = (corpus / "CT_small.dcm").read_bytes()
    for wrong in (data, str(corpus / "CT_small.dcm"), corpus, io.BytesIO(data), 42):
        with pytest.raises(UsageError):
            read_series(wrong)
    with pytest.raises(UsageError):
        read_series([data, 42])
