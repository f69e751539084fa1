"""Hostile NIfTI: header sanity, scaling rules, truncation, gzip streams, caps.

Also the regression tests for what the mutation fuzzer (test_io_fuzz.py,
benchmarks/fuzz_readers.py) found in the NIfTI reader.
"""

from __future__ import annotations

import gzip
import math
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edgemed.errors import InputError
from edgemed.io.read import read_image
from edgemed.limits import ReaderLimits
from tests.support import error_code

STORED = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (i, j, k)
EXPECTED = STORED.transpose(2, 1, 0).astype(np.float32)  # (z, y, x)


def _nifti(
    tmp_path: Path,
    edit: Callable[[np.ndarray], None] | None = None,
    *,
    version: int = 1,
    name: str = "image.nii",
) -> Path:
    """A small image written by nibabel, then ``edit(header)`` on its raw header record."""
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    written = tmp_path / "written.nii"
    klass(STORED, np.diag([1.0, 2.0, 3.0, 1.0])).to_filename(written)
    raw = bytearray(written.read_bytes())
    header_dtype = (nib.nifti1 if version == 1 else nib.nifti2).header_dtype
    header = np.frombuffer(bytes(raw[: header_dtype.itemsize]), header_dtype).copy()
    if edit is not None:
        edit(header)
    raw[: header_dtype.itemsize] = header.tobytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    return path


def _set(field: str, value, index: int | None = None) -> Callable[[np.ndarray], None]:
    def edit(header: np.ndarray) -> None:
        if index is None:
            header[field] = value
        else:
            header[field][0, index] = value

    return edit


def test_the_helper_writes_a_readable_image(tmp_path):
    for version in (1, 2):
        image = read_image(_nifti(tmp_path, version=version))
        np.testing.assert_array_equal(image.array, EXPECTED)
        assert image.metadata["nifti_version"] == version
        assert image.spacing == (3.0, 2.0, 1.0)


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (_set("sizeof_hdr", 0), "INPUT_CORRUPT"),
        (_set("sizeof_hdr", 347), "INPUT_CORRUPT"),
        (_set("sizeof_hdr", 540), "INPUT_CORRUPT"),  # NIfTI-2 size, no n+2 magic
        (_set("magic", b"ni1"), "INPUT_UNSUPPORTED_FORMAT"),  # a header/image pair
        (_set("magic", b"xyz"), "INPUT_CORRUPT"),
        (_set("dim", 0, 0), "INPUT_INVALID"),  # dim[0] out of 1..7
        (_set("dim", 8, 0), "INPUT_INVALID"),
        (_set("dim", -1, 0), "INPUT_INVALID"),
        (_set("dim", 0, 2), "INPUT_INVALID"),  # a zero dimension
        (_set("dim", -3, 1), "INPUT_INVALID"),
        (_set("datatype", 0), "INPUT_INVALID"),  # no such data type
        (_set("datatype", 9999), "INPUT_INVALID"),
        (_set("datatype", 32), "INPUT_UNSUPPORTED_FORMAT"),  # complex64
        (_set("datatype", 128), "INPUT_UNSUPPORTED_FORMAT"),  # RGB24
        (_set("datatype", 1), "INPUT_UNSUPPORTED_FORMAT"),  # binary
        (_set("vox_offset", 0), "INPUT_INVALID"),  # inside the header
        (_set("vox_offset", 348), "INPUT_INVALID"),
        (_set("vox_offset", 352.5), "INPUT_INVALID"),
        (_set("vox_offset", np.nan), "INPUT_INVALID"),
        (_set("vox_offset", np.inf), "INPUT_INVALID"),
        (_set("vox_offset", -352), "INPUT_INVALID"),
        (_set("vox_offset", 1e9), "INPUT_TRUNCATED"),  # past the end of the file
        (_set("scl_slope", np.inf), "INPUT_INVALID"),
        (_set("intent_code", 3001), "INPUT_UNSUPPORTED_FORMAT"),  # CIFTI
    ],
)
def test_nifti1_header_sanity(tmp_path, edit, code):
    assert error_code(read_image, _nifti(tmp_path, edit), kind=InputError) == code


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (_set("magic", b"ni2"), "INPUT_UNSUPPORTED_FORMAT"),
        (_set("eol_check", [13, 10, 10, 10]), "INPUT_CORRUPT"),  # a text-mode transfer
        (_set("dim", 2**40, 1), "INPUT_INVALID"),  # far beyond the element cap
        (_set("dim", -(2**40), 2), "INPUT_INVALID"),
        (_set("vox_offset", 540), "INPUT_INVALID"),  # before the extension flag ends
        (_set("vox_offset", 2**62), "INPUT_INVALID"),  # beyond max_decompressed_bytes
        (_set("vox_offset", 10**6), "INPUT_TRUNCATED"),
    ],
)
def test_nifti2_header_sanity(tmp_path, edit, code):
    assert error_code(read_image, _nifti(tmp_path, edit, version=2), kind=InputError) == code


def test_big_endian_header_reads(tmp_path):
    header = nib.Nifti1Header(endianness=">")
    nib.Nifti1Image(STORED, np.eye(4), header).to_filename(tmp_path / "be.nii")
    assert (tmp_path / "be.nii").read_bytes()[:4] == struct.pack(">i", 348)
    np.testing.assert_array_equal(read_image(tmp_path / "be.nii").array, EXPECTED)


# ------------------------------------------------------------------- scaling


@pytest.mark.parametrize("slope", [0.0, np.nan])
def test_zero_or_nan_slope_means_no_scaling(tmp_path, slope):
    def edit(header):
        header["scl_slope"], header["scl_inter"] = slope, 100.0  # the intercept is ignored

    path = _nifti(tmp_path, edit)
    image = read_image(path)
    np.testing.assert_array_equal(image.array, EXPECTED)
    # nibabel agrees: no scaling at all.
    np.testing.assert_array_equal(image.array, nib.load(path).get_fdata().transpose(2, 1, 0))
    assert image.metadata["scl_slope"] is None and image.metadata["scl_inter"] is None


def test_zero_slope_with_nan_intercept_is_still_no_scaling(tmp_path):
    def edit(header):
        header["scl_slope"], header["scl_inter"] = 0.0, np.nan

    np.testing.assert_array_equal(read_image(_nifti(tmp_path, edit)).array, EXPECTED)


@pytest.mark.parametrize(("slope", "inter"), [(2.0, np.nan), (2.0, np.inf), (-np.inf, 0.0)])
def test_unusable_scaling_is_invalid(tmp_path, slope, inter):
    def edit(header):
        header["scl_slope"], header["scl_inter"] = slope, inter

    assert error_code(read_image, _nifti(tmp_path, edit), kind=InputError) == "INPUT_INVALID"


def test_scaling_is_applied_and_recorded(tmp_path):
    def edit(header):
        header["scl_slope"], header["scl_inter"] = 0.5, -3.0

    image = read_image(_nifti(tmp_path, edit))
    np.testing.assert_array_equal(image.array, EXPECTED * 0.5 - 3.0)
    assert (image.metadata["scl_slope"], image.metadata["scl_inter"]) == (0.5, -3.0)


def test_scaling_that_overflows_float32_is_invalid(tmp_path):
    def edit(header):
        header["scl_slope"] = 3e38  # finite in the header, not once multiplied

    assert error_code(read_image, _nifti(tmp_path, edit), kind=InputError) == "INPUT_INVALID"


# ------------------------------------------------------- truncation and gzip


def test_file_shorter_than_header_or_data_is_truncated(tmp_path):
    data = _nifti(tmp_path).read_bytes()
    for keep in (200, 350, len(data) - 1):
        (tmp_path / "cut.nii").write_bytes(data[:keep])
        assert error_code(read_image, tmp_path / "cut.nii", kind=InputError) == "INPUT_TRUNCATED", (
            keep
        )


def test_gzip_stream_shorter_than_vox_offset_is_truncated(tmp_path):
    path = _nifti(tmp_path, _set("vox_offset", 4096), name="far.nii.gz")
    assert error_code(read_image, path, kind=InputError) == "INPUT_TRUNCATED"


def test_gzip_with_much_more_data_than_the_header_reads_only_what_it_needs(tmp_path):
    # 256 MiB of trailing zeros (as extra gzip members: cheap to build); the header
    # describes 48 bytes, and only those are inflated and kept.
    path = _nifti(tmp_path, name="image.nii.gz")
    member = gzip.compress(bytes(1 << 20), compresslevel=1)
    with open(path, "ab") as out:
        for _ in range(256):
            out.write(member)
    tracemalloc.start()
    started = time.perf_counter()
    image = read_image(path)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(image.array, EXPECTED)
    assert peak < 8 << 20 and elapsed < 2.0


def test_huge_dimensions_are_refused_before_reading(tmp_path):
    def edit(header):
        header["dim"][0, 1:4] = 2048  # 2048**3 int16 = 16 GiB, past max_decompressed_bytes

    assert (
        error_code(read_image, _nifti(tmp_path, edit, name="huge.nii.gz"), kind=InputError)
        == "INPUT_INVALID"
    )


@pytest.mark.parametrize("name", ["image.nii", "image.nii.gz"])
def test_caps_come_from_the_limits_passed(tmp_path, form, name):
    path = _nifti(tmp_path, name=name)
    exact = ReaderLimits(max_decompressed_bytes=352 + STORED.nbytes, max_elements=STORED.size)
    np.testing.assert_array_equal(read_image(form(path), limits=exact).array, EXPECTED)
    data_cap = ReaderLimits(max_decompressed_bytes=352 + STORED.nbytes - 1)
    assert error_code(read_image, form(path), limits=data_cap, kind=InputError) == "INPUT_INVALID"
    element_cap = ReaderLimits(max_elements=STORED.size - 1)
    code = error_code(read_image, form(path), limits=element_cap, kind=InputError)
    assert code == "INPUT_INVALID"


def test_extensions_are_skipped_not_parsed(tmp_path):
    # An extension whose esize is 0 makes nibabel read "the rest of the file" as its
    # content; edgemed never parses extensions and reads the data at vox_offset.
    raw = _nifti(tmp_path).read_bytes()
    header = np.frombuffer(raw[:348], nib.nifti1.header_dtype).copy()
    header["vox_offset"] = 368
    extension = b"\x01\0\0\0" + struct.pack("<ii", 0, 0) + bytes(8)
    (tmp_path / "ext.nii").write_bytes(header.tobytes() + extension + raw[352:])
    np.testing.assert_array_equal(read_image(tmp_path / "ext.nii").array, EXPECTED)


def test_impossible_quaternion_is_invalid(tmp_path):
    def edit(header):
        header["qform_code"], header["sform_code"], header["quatern_b"] = 1, 0, 2.0

    assert error_code(read_image, _nifti(tmp_path, edit), kind=InputError) == "INPUT_INVALID"


# ------------------------------------------------- regressions found by fuzzing


def test_undefined_spatial_unit_is_unknown(tmp_path):
    # Fuzz seed 101322 (nifti2_3d.nii, one flipped bit in xyzt_units): nibabel's
    # get_xyzt_units raised KeyError for a unit code NIfTI does not define.
    image = read_image(_nifti(tmp_path, _set("xyzt_units", 7), version=2))
    assert image.metadata["spatial_unit"] == "unknown"
    assert image.spacing == (3.0, 2.0, 1.0)  # taken as mm


def test_non_finite_affine_is_invalid(tmp_path):
    # Fuzz seed 102394 (scaled.nii.gz, srow_z[3] = NaN): the origin came back NaN.
    def edit(header):
        header["sform_code"] = 1
        header["srow_z"][0, 3] = math.nan

    assert error_code(read_image, _nifti(tmp_path, edit), kind=InputError) == "INPUT_INVALID"
