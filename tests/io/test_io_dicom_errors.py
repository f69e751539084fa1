"""DICOM failures: truncation, bad geometry, transfer syntaxes, missing decoders, privacy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest

from edgemed.errors import DecoderMissingError, EdgemedError, InputError
from edgemed.io.read import read_image
from tests.support import error_code

SENTINEL = "ZQXSENTINELQZ"


def _cut(src, dest, keep) -> None:
    data = src.read_bytes()
    dest.write_bytes(data[: keep(len(data))])


def test_ct_small_cut_inside_pixel_data_is_truncated(corpus, tmp_path):
    path = tmp_path / "cut.dcm"
    _cut(corpus / "CT_small.dcm", path, lambda n: n - 1000)
    assert error_code(read_image, path, kind=InputError) == "INPUT_TRUNCATED"


def test_ct_small_cut_inside_the_header_is_truncated(corpus, tmp_path):
    path = tmp_path / "cut.dcm"
    _cut(corpus / "CT_small.dcm", path, lambda n: 1000)  # inside a sequence
    assert error_code(read_image, path, kind=InputError) == "INPUT_TRUNCATED"


def test_compressed_file_cut_in_half_is_truncated(corpus, tmp_path):
    # pydicom returns an *empty* dataset for this one; only the short reads tell.
    path = tmp_path / "cut.dcm"
    _cut(corpus / "MR_small_RLE.dcm", path, lambda n: n // 2)
    assert error_code(read_image, path, kind=InputError) == "INPUT_TRUNCATED"


def test_pixel_data_shorter_than_the_geometry_is_caught_before_decoding(dicom_copy):
    def taller(ds):
        ds.Rows = 256  # PixelData holds 128 rows

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", taller), kind=InputError)
        == "INPUT_TRUNCATED"
    )


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("BitsAllocated", 12),
        ("BitsStored", 20),
        ("HighBit", 16),
        ("Rows", 0),
        ("SamplesPerPixel", 3),
        ("PixelRepresentation", 2),
        ("NumberOfFrames", 2**31),  # rejected by the element cap, nothing allocated
    ],
)
def test_bad_geometry_is_invalid(dicom_copy, keyword, value):
    def edit(ds):
        setattr(ds, keyword, value)

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", edit), kind=InputError) == "INPUT_INVALID"
    )


def test_missing_rows_is_invalid(dicom_copy):
    def edit(ds):
        del ds.Rows

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", edit), kind=InputError) == "INPUT_INVALID"
    )


def test_unknown_transfer_syntax_is_unsupported(corpus, tmp_path):
    data = (corpus / "CT_small.dcm").read_bytes()
    uid = b"1.2.840.10008.1.2.1"
    at = data.index(uid)  # the first occurrence is the file meta's Transfer Syntax UID
    path = tmp_path / "private.dcm"
    path.write_bytes(data[:at] + b"1.2.999.10008.1.2.1" + data[at + len(uid) :])
    assert error_code(read_image, path, kind=InputError) == "INPUT_UNSUPPORTED_TRANSFER_SYNTAX"


def test_random_bytes_and_empty_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("noise", "noise.dcm", "noise.bin"):
        (tmp_path / name).write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        assert (
            error_code(read_image, tmp_path / name, kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
        )
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert error_code(read_image, tmp_path / "empty.dcm", kind=InputError) == "INPUT_TRUNCATED"
    assert error_code(read_image, tmp_path / "absent.dcm", kind=InputError) == "INPUT_NOT_FOUND"


def test_decoder_missing_names_the_extra():
    # Block every decoder backend pydicom could use for JPEG 2000 before it is imported:
    # pylibjpeg and its plugins, GDCM, Pillow, pyjpegls.
    code = (
        "import sys\n"
        "for name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'gdcm', 'PIL', 'jpeg_ls'):\n"
        "    sys.modules[name] = None\n"
        "from pydicom.data import get_testdata_file\n"
        "from edgemed.io.read import read_image\n"
        "from edgemed.errors import DecoderMissingError\n"
        "read_image(get_testdata_file('MR_small_RLE.dcm'))  # pydicom's own RLE still works\n"
        "try:\n"
        "    read_image(get_testdata_file('JPEG2000.dcm'))\n"
        "except DecoderMissingError as exc:\n"
        "    print(exc.code)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "INPUT_DECODER_MISSING"
    assert 'pip install "edgemed[dicom]"' in lines[1]
    assert issubclass(DecoderMissingError, InputError)


def _identify(ds) -> None:
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "StudyDescription",
        "SeriesDescription",
        "ReferringPhysicianName",
        "AccessionNumber",
        "ImageComments",
    ):
        value = "19700101" if keyword == "PatientBirthDate" else SENTINEL
        setattr(ds, keyword, value)


def test_metadata_never_holds_patient_values(dicom_copy):
    image = read_image(dicom_copy("CT_small.dcm", _identify))
    assert SENTINEL not in repr(image.metadata)
    assert "19700101" not in repr(image.metadata)
    assert SENTINEL not in repr(image)


@pytest.mark.parametrize("damage", ["truncate", "zero_rows", "photometric"])
def test_errors_never_quote_patient_values(dicom_copy, tmp_path, damage):
    def edit(ds):
        _identify(ds)
        if damage == "zero_rows":
            ds.Rows = 0
        if damage == "photometric":
            ds.PhotometricInterpretation = SENTINEL[:16]

    path = dicom_copy("CT_small.dcm", edit)
    if damage == "truncate":
        _cut(path, tmp_path / "cut.dcm", lambda n: n - 500)
        path = tmp_path / "cut.dcm"
    with pytest.raises(EdgemedError) as excinfo:
        read_image(path)
    assert SENTINEL not in str(excinfo.value)
    assert SENTINEL[:16] not in str(excinfo.value)


def test_multiple_series_message_has_no_uid(dicom_copy, tmp_path):
    uids = []
    for i in range(2):

        def edit(ds, i=i):
            ds.SeriesInstanceUID = pydicom.uid.generate_uid()
            ds.ImagePositionPatient = [0, 0, 2.5 * i]
            uids.append(str(ds.SeriesInstanceUID))

        dicom_copy("CT_small.dcm", edit, dest=tmp_path / "series" / f"{i}.dcm")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "series")
    assert excinfo.value.code == "INPUT_MULTIPLE_SERIES"
    assert not any(uid in str(excinfo.value) for uid in uids)


def test_decoder_panic_on_bad_rle_data_is_corrupt(corpus, tmp_path):
    # A replicate run of 128 bytes at the start of the RLE segment overruns the frame:
    # pylibjpeg-rle panics (pyo3 PanicException, a BaseException, not an Exception).
    data = bytearray((corpus / "MR_small_RLE.dcm").read_bytes())
    pixel_data = data.index(b"\xe0\x7f\x10\x00")
    offset_table_length = int.from_bytes(data[pixel_data + 16 : pixel_data + 20], "little")
    fragment = pixel_data + 20 + offset_table_length + 8  # past the first item's header
    assert int.from_bytes(data[fragment : fragment + 4], "little") == 2  # two RLE segments
    data[fragment + 64 : fragment + 66] = b"\x81\x7f"
    (tmp_path / "overrun.dcm").write_bytes(bytes(data))
    assert error_code(read_image, tmp_path / "overrun.dcm", kind=InputError) == "INPUT_CORRUPT"


def test_an_absurd_image_position_is_invalid(corpus, tmp_path):
    """1e308 mm is a finite float64 but no place in a scanner; as a NIfTI offset (float32)
    it became -inf in mask.nii.gz. Refused at reading."""
    ds = pydicom.dcmread(corpus / "CT_small.dcm")
    ds.ImagePositionPatient = [1e308, 0, 0]
    path = tmp_path / "far.dcm"
    ds.save_as(path)
    assert error_code(read_image, path, kind=InputError) == "INPUT_INVALID"
    ds.ImagePositionPatient = [-9999.5, 120.0, 30.0]  # large but real: still reads
    ds.save_as(path)
    assert read_image(path).origin[0] == -9999.5
