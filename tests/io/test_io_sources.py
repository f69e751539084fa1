"""read_image from bytes and from binary file objects: the same images, the same codes.

Every file pydicom and nibabel ship as test data, and raster/NPY files written here, is
read three ways (path, bytes, open file); the outcomes must be identical: the same array
(values, dtype, shape), geometry, modality and metadata, or the same error code. Bytes
never put a path in an error and never touch the disk.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import tempfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from edgemed.errors import EdgemedError, InputError, UsageError
from edgemed.io import read as read_module
from edgemed.io.image import MedicalImage
from edgemed.io.read import detect_format, read_image
from tests.io.compare import assert_same_image
from tests.support import error_code

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
RNG = np.random.default_rng(11)


def _outcome(source) -> MedicalImage | EdgemedError:
    try:
        return read_image(source)
    except EdgemedError as exc:  # anything else fails the test right here
        return exc


def _three_ways(path: Path) -> tuple[object, object, object]:
    data = path.read_bytes()
    with open(path, "rb") as handle:
        from_file = _outcome(handle)
    return _outcome(path), _outcome(data), from_file


def assert_same_outcome(path: Path, outcomes: tuple[object, object, object]) -> str:
    """Path, bytes and file reads agree; returns ``"read"`` or the error code."""
    by_path, by_bytes, by_file = outcomes
    if isinstance(by_path, MedicalImage):
        assert isinstance(by_bytes, MedicalImage), (path, by_bytes)
        assert isinstance(by_file, MedicalImage), (path, by_file)
        assert_same_image(by_path, by_bytes, path)
        assert_same_image(by_path, by_file, path)
        return "read"
    assert isinstance(by_bytes, EdgemedError) and isinstance(by_file, EdgemedError), path
    assert by_bytes.code == by_path.code == by_file.code, (path, by_path, by_bytes, by_file)
    assert by_bytes.path is None, path  # bytes have no path to name
    assert str(path.parent) not in str(by_bytes) and path.name not in str(by_bytes), path
    assert by_file.path == str(path), path  # a file object is named by its .name
    return by_path.code


# ------------------------------------------------------------------ the corpora


@pytest.fixture(scope="module")
def corpus_outcomes(corpus) -> dict[str, tuple[object, object, object]]:
    outcomes = {}
    for folder, _, names in os.walk(corpus):
        for name in names:
            path = Path(folder) / name
            outcomes[path.relative_to(corpus).as_posix()] = _three_ways(path)
    return outcomes


def test_every_dicom_corpus_file_reads_the_same_from_bytes_and_files(corpus, corpus_outcomes):
    assert len(corpus_outcomes) >= 170
    results = {
        rel: assert_same_outcome(corpus / rel, outcomes)
        for rel, outcomes in corpus_outcomes.items()
    }
    reads = [rel for rel, result in results.items() if result == "read"]
    assert len(reads) >= 80  # images, not only refusals, were compared
    # A few whose outcome is known, so the comparison is not between two failures.
    assert results["CT_small.dcm"] == results["image_dfl.dcm"] == "read"
    assert results["JPEG2000.dcm"] == results["examples_palette.dcm"] == "read"
    assert results["MR_truncated.dcm"] == "INPUT_TRUNCATED"
    assert results["rtplan.dcm"] == "INPUT_NO_PIXEL_DATA"
    assert results["ExplVR_LitEndNoMeta.dcm"] == "INPUT_NO_PIXEL_DATA"  # no preamble
    assert results["README.txt"] == results["zipMR.gz"] == "INPUT_UNSUPPORTED_FORMAT"


def test_every_nibabel_nifti_reads_the_same_from_bytes_and_files():
    paths = sorted([*NIB_DATA.glob("*.nii"), *NIB_DATA.glob("*.nii.gz")])
    assert len(paths) >= 5
    results = {p.name: assert_same_outcome(p, _three_ways(p)) for p in paths}
    assert results["anatomical.nii"] == "read"
    assert results["example4d.nii.gz"] == "INPUT_UNSUPPORTED_FORMAT"
    assert results["row_major.dconn.nii"] == "INPUT_UNSUPPORTED_FORMAT"


def _raster_files(folder: Path) -> dict[str, Path]:
    """The kinds of raster and NPY files the raster tests use, good and broken."""
    files = {}

    def encoded(name: str, array: np.ndarray) -> None:
        ok, data = cv2.imencode(Path(name).suffix, array)
        assert ok
        files[name] = folder / name
        files[name].write_bytes(data.tobytes())

    encoded("deep.png", RNG.integers(0, 65536, size=(40, 30), dtype=np.uint16))
    encoded("colour.png", RNG.integers(0, 256, size=(8, 9, 3), dtype=np.uint8))
    encoded("alpha.png", RNG.integers(0, 256, size=(5, 6, 4), dtype=np.uint8))
    encoded("deep.tif", RNG.integers(0, 65536, size=(16, 12), dtype=np.uint16))
    encoded("float.tiff", RNG.normal(size=(7, 5)).astype(np.float32))
    encoded("g.jpg", np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1)))
    files["pages.tif"] = folder / "pages.tif"
    assert cv2.imwritemulti(str(files["pages.tif"]), [np.full((4, 4), i, np.uint8) for i in (1, 2)])
    files["bad.png"] = folder / "bad.png"
    files["bad.png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    files["cut.png"] = folder / "cut.png"
    files["cut.png"].write_bytes(files["deep.png"].read_bytes()[:100])
    for name, array in {
        "i16.npy": RNG.integers(-500, 500, size=(6, 7), dtype=np.int16),
        "vol.npy": RNG.normal(size=(3, 6, 7)),
        "bool.npy": RNG.integers(0, 2, size=(4, 5)).astype(bool),
        "fortran.npy": np.asfortranarray(RNG.normal(size=(4, 5)).astype(np.float32)),
        "big_endian.npy": RNG.normal(size=(4, 5)).astype(">f8"),
        "nan.npy": np.array([[1.0, np.nan]]),
        "4d.npy": np.zeros((2, 2, 2, 2)),
    }.items():
        files[name] = folder / name
        np.save(files[name], array)
    files["obj.npy"] = folder / "obj.npy"
    np.save(files["obj.npy"], np.array([[1, "a"]], dtype=object), allow_pickle=True)
    files["cut.npy"] = folder / "cut.npy"
    files["cut.npy"].write_bytes(files["vol.npy"].read_bytes()[:-10])
    return files


def test_raster_and_npy_files_read_the_same_from_bytes_and_files(tmp_path):
    files = _raster_files(tmp_path)
    results = {name: assert_same_outcome(p, _three_ways(p)) for name, p in files.items()}
    assert results == {
        "deep.png": "read",
        "colour.png": "read",
        "alpha.png": "read",
        "deep.tif": "read",
        "float.tiff": "read",
        "g.jpg": "read",
        "pages.tif": "INPUT_UNSUPPORTED_FORMAT",
        "bad.png": "INPUT_CORRUPT",
        "cut.png": "INPUT_CORRUPT",
        "i16.npy": "read",
        "vol.npy": "read",
        "bool.npy": "read",
        "fortran.npy": "read",
        "big_endian.npy": "read",
        "nan.npy": "INPUT_INVALID",
        "4d.npy": "INPUT_UNSUPPORTED_FORMAT",
        "obj.npy": "INPUT_UNSUPPORTED_FORMAT",
        "cut.npy": "INPUT_TRUNCATED",
    }
    np.testing.assert_array_equal(
        read_image(files["fortran.npy"].read_bytes()).array, np.load(files["fortran.npy"])
    )
    np.testing.assert_array_equal(
        read_image(files["big_endian.npy"].read_bytes()).array,
        np.load(files["big_endian.npy"]).astype(np.float32),
    )


def test_nifti_written_here_reads_the_same_from_bytes(tmp_path):
    stored = RNG.integers(-500, 500, size=(6, 5, 4), dtype=np.int16)
    image = nib.Nifti1Image(stored, np.diag([0.5, 0.7, 2.0, 1.0]))
    image.header.set_slope_inter(2.0, -5.0)
    for name in ("scaled.nii", "scaled.nii.gz"):
        image.to_filename(tmp_path / name)
        assert assert_same_outcome(tmp_path / name, _three_ways(tmp_path / name)) == "read"
        from_bytes = read_image((tmp_path / name).read_bytes())
        np.testing.assert_array_equal(from_bytes.array, (stored * 2.0 - 5.0).transpose(2, 1, 0))
    cut = (tmp_path / "scaled.nii.gz").read_bytes()[:-20]
    assert error_code(read_image, cut, kind=InputError) == "INPUT_TRUNCATED"
    cut = (tmp_path / "scaled.nii").read_bytes()[:-1]
    assert error_code(read_image, cut, kind=InputError) == "INPUT_TRUNCATED"


# --------------------------------------------------------------- the forms


def test_bytearray_and_memoryview_read_like_bytes(corpus):
    data = (corpus / "CT_small.dcm").read_bytes()
    expected = read_image(data)
    assert_same_image(expected, read_image(bytearray(data)))
    assert_same_image(expected, read_image(memoryview(data)))
    buffer = bytearray(b"junk" + data)
    assert_same_image(expected, read_image(memoryview(buffer)[4:]))  # a slice of a buffer


def test_a_file_object_is_read_from_its_position_and_left_open(corpus):
    data = (corpus / "CT_small.dcm").read_bytes()
    handle = io.BytesIO(b"not part of it" + data)
    handle.seek(len(b"not part of it"))
    assert_same_image(read_image(corpus / "CT_small.dcm"), read_image(handle))
    assert not handle.closed and handle.tell() == len(handle.getvalue())


def test_bytes_are_found_by_content_and_a_file_name_is_the_fallback(corpus, tmp_path):
    # A NIfTI whose magic is damaged: by name (a path, or a file object's .name) it is
    # still read as NIfTI and refused as corrupt; bytes have no name and are tried as
    # DICOM, like a file without an extension, which refuses them as not DICOM.
    nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(tmp_path / "v.nii")
    raw = bytearray((tmp_path / "v.nii").read_bytes())
    raw[344:348] = b"xyz\0"
    (tmp_path / "bad.nii").write_bytes(bytes(raw))
    (tmp_path / "bad").write_bytes(bytes(raw))
    assert error_code(read_image, tmp_path / "bad.nii", kind=InputError) == "INPUT_CORRUPT"
    with open(tmp_path / "bad.nii", "rb") as handle:
        assert error_code(read_image, handle, kind=InputError) == "INPUT_CORRUPT"
    assert error_code(read_image, bytes(raw), kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
    assert error_code(read_image, tmp_path / "bad", kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
    # DICOM without the preamble needs no name either way.
    bare = (corpus / "CT_small.dcm").read_bytes()[132:]
    assert_same_image(read_image(corpus / "CT_small.dcm"), read_image(bare))


def test_detect_format_of_bytes():
    png = cv2.imencode(".png", np.eye(4, dtype=np.uint8))[1].tobytes()
    assert detect_format(png) == "png"
    assert detect_format(np.lib.format.magic(1, 0) + b"{}") == "npy"
    nifti = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_bytes()
    assert detect_format(nifti) == detect_format(gzip.compress(nifti)) == "nifti"
    assert detect_format(b"\0" * 128 + b"DICM") == "dicom"
    assert detect_format(b"anything else") == "dicom"  # nameless: tried as DICOM


def test_empty_and_unreadable_inputs():
    assert error_code(read_image, b"", kind=InputError) == "INPUT_TRUNCATED"
    assert error_code(read_image, io.BytesIO(), kind=InputError) == "INPUT_TRUNCATED"
    assert error_code(read_image, b"\x89PNG\r\n\x1a\n", kind=InputError) == "INPUT_CORRUPT"

    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise OSError("device gone")

    assert error_code(read_image, Failing(), kind=InputError) == "INPUT_UNREADABLE"


def test_what_is_not_an_input_is_a_usage_error(corpus, tmp_path):
    with pytest.raises(UsageError):
        read_image(42)
    (tmp_path / "t.dcm").write_bytes((corpus / "CT_small.dcm").read_bytes())
    with open(tmp_path / "t.dcm", encoding="latin-1") as text, pytest.raises(UsageError):
        read_image(text)
    handle = open(tmp_path / "t.dcm", "rb")  # noqa: SIM115 - closed on purpose
    handle.close()
    with pytest.raises(UsageError):
        read_image(handle)


def test_unexpected_failures_on_bytes_name_no_path(corpus, monkeypatch):
    def explode(source):
        raise KeyError("something deep inside a third-party reader")

    monkeypatch.setattr(read_module, "detect_format", explode)
    with pytest.raises(InputError) as excinfo:
        read_image((corpus / "CT_small.dcm").read_bytes())
    assert excinfo.value.code == "INPUT_CORRUPT" and excinfo.value.path is None
    assert isinstance(excinfo.value.__cause__, KeyError)


# --------------------------------------------------------- nothing on disk


@pytest.fixture
def writes():
    """Paths opened for writing (or created) while the test runs, from an audit hook."""
    seen: list[str] = []
    active = [True]
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event, args):
        if not active[0]:
            return
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                isinstance(flags, int) and flags & write_flags
            ):
                seen.append(str(path))
        elif event in ("tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir"):
            seen.append(str(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet instead
    yield seen
    active[0] = False


def test_bytes_are_never_written_to_disk(corpus, tmp_path, writes):
    nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)).to_filename(tmp_path / "v.nii.gz")
    np.save(tmp_path / "a.npy", np.ones((3, 3)))
    cv2.imwrite(str(tmp_path / "p.png"), np.ones((3, 3), np.uint8))
    names = ["CT_small.dcm", "image_dfl.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]
    inputs = [(corpus / n).read_bytes() for n in names]
    inputs += [(tmp_path / n).read_bytes() for n in ("v.nii.gz", "a.npy", "p.png")]
    for data in inputs:
        read_image(data)  # warm: decoders may set themselves up once
    writes.clear()
    tempfile.tempdir, saved = str(tmp_path / "no-temp-here"), tempfile.tempdir
    try:
        for data in inputs:
            assert read_image(data).array.size > 0
    finally:
        tempfile.tempdir = saved
    assert writes == []
    assert not (tmp_path / "no-temp-here").exists()
    (tmp_path / "probe").write_bytes(b"")  # the hook does see writes
    assert writes == [str(tmp_path / "probe")]
