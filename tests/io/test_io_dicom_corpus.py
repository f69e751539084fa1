"""Every file of pydicom's bundled test corpus through read_image.

Each file either reads (finite float32 values, geometry consistent with the array, values
equal to pydicom's own decoding) or fails with an EdgemedError whose code is one of the
documented ones. Nothing else may escape.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut

from edgemed.errors import EdgemedError
from edgemed.io.image import MedicalImage
from edgemed.io.read import INPUT_ERROR_CODES, read_image

# Files whose failure we know and whose code is part of the contract.
EXPECTED_CODES = {
    "MR_truncated.dcm": "INPUT_TRUNCATED",  # pixel data cut short
    "rtplan_truncated.dcm": "INPUT_TRUNCATED",  # file ends inside an element
    "rtplan.dcm": "INPUT_NO_PIXEL_DATA",
    "rtstruct.dcm": "INPUT_NO_PIXEL_DATA",
    "test-SR.dcm": "INPUT_NO_PIXEL_DATA",
    "reportsi.dcm": "INPUT_NO_PIXEL_DATA",
    "waveform_ecg.dcm": "INPUT_NO_PIXEL_DATA",
    "ExplVR_LitEndNoMeta.dcm": "INPUT_NO_PIXEL_DATA",  # RT plan without file meta
    "ExplVR_BigEndNoMeta.dcm": "INPUT_NO_PIXEL_DATA",
    "dicomdirtests/DICOMDIR": "INPUT_NO_PIXEL_DATA",
    "JPEG-lossy.dcm": "INPUT_CORRUPT",  # broken 12-bit JPEG (JPGExtended.dcm is the fix)
    "JPEG2000-embedded-sequence-delimiter.dcm": "INPUT_CORRUPT",
    "badVR.dcm": "INPUT_INVALID",  # NumberOfFrames '1A'
    "nested_priv_SQ.dcm": "INPUT_INVALID",  # pixel data without an Image Pixel module
    "meta_missing_tsyntax.dcm": "INPUT_INVALID",
    "no_meta.dcm": "INPUT_UNSUPPORTED_FORMAT",  # no preamble and nothing DICOM-like parses
    "README.txt": "INPUT_UNSUPPORTED_FORMAT",
    "test1.json": "INPUT_UNSUPPORTED_FORMAT",
    "crayons.icc": "INPUT_UNSUPPORTED_FORMAT",
    "rtplan.dump": "INPUT_UNSUPPORTED_FORMAT",
    "zipMR.gz": "INPUT_UNSUPPORTED_FORMAT",  # gzip, but not NIfTI inside
}

# Files that must read: every compressed transfer syntax the `dicom` extra covers, plus
# big endian, deflate, multi-frame, 1-bit, palette and YBR colour.
MUST_READ = {
    "CT_small.dcm": (128, 128),
    "MR_small_bigendian.dcm": (64, 64),
    "MR_small_RLE.dcm": (64, 64),  # RLE
    "MR_small_jp2klossless.dcm": (64, 64),  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm": (64, 64),  # JPEG-LS lossless
    "JPEG2000.dcm": (1024, 256),  # JPEG 2000
    "JPEGLSNearLossless_16.dcm": (50, 10),  # JPEG-LS near lossless
    "JPGExtended.dcm": (1024, 256),  # JPEG extended 12-bit
    "SC_rgb_jpeg_dcmtk.dcm": (100, 100, 3),  # JPEG baseline, YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": (100, 100, 3),  # JPEG baseline, YBR_FULL_422
    "SC_rgb_jpeg_gdcm.dcm": (100, 100, 3),  # JPEG lossless SV1
    "examples_jpeg2k.dcm": (480, 640, 3),  # JPEG 2000 YBR_RCT
    "SC_ybr_full_422_uncompressed.dcm": (100, 100, 3),
    "SC_rgb_rle_2frame.dcm": (2, 100, 100, 3),
    "examples_ybr_color.dcm": (30, 240, 320, 3),
    "rtdose.dcm": (15, 10, 10),
    "rtdose_rle.dcm": (15, 10, 10),
    "image_dfl.dcm": (512, 512),  # deflated explicit VR little endian
    "liver_1frame.dcm": (512, 512),  # 1-bit segmentation
    "examples_palette.dcm": (350, 800, 3),
    "ExplVR_BigEnd.dcm": (60, 80, 3),
    "dicomdirtests/77654033/CR1/6154": (16, 16),  # MONOCHROME1
}


@pytest.fixture(scope="module")
def outcomes(corpus) -> dict[str, MedicalImage | EdgemedError]:
    results: dict[str, MedicalImage | EdgemedError] = {}
    for folder, _, names in os.walk(corpus):
        for name in names:
            path = Path(folder) / name
            rel = path.relative_to(corpus).as_posix()
            try:
                results[rel] = read_image(path)
            except EdgemedError as exc:  # anything else fails the test right here
                results[rel] = exc
    return results


def test_walks_the_whole_corpus(outcomes):
    assert len(outcomes) >= 170  # ~86 top-level files plus dicomdirtests
    assert any(rel.startswith("dicomdirtests/") for rel in outcomes)
    failures = {rel: o.code for rel, o in outcomes.items() if isinstance(o, EdgemedError)}
    reads = sorted(rel for rel, o in outcomes.items() if isinstance(o, MedicalImage))
    print(f"\n{len(reads)} read, {len(failures)} raised")
    for rel, code in sorted(failures.items()):
        if "TINY_ALPHA" not in rel:
            print(f"  {code:<28} {rel}")


def test_every_error_has_a_documented_code(outcomes):
    for rel, outcome in outcomes.items():
        if isinstance(outcome, EdgemedError):
            assert outcome.code in INPUT_ERROR_CODES, rel
            assert outcome.message, rel


def test_known_failures_have_their_codes(outcomes):
    got = {rel: getattr(outcomes[rel], "code", "READ") for rel in EXPECTED_CODES}
    assert got == EXPECTED_CODES


def test_known_files_read_with_expected_shapes(outcomes):
    got = {rel: getattr(outcomes[rel], "array", None) for rel in MUST_READ}
    shapes = {rel: None if a is None else a.shape for rel, a in got.items()}
    assert shapes == MUST_READ


def test_every_image_is_finite_float32_with_consistent_geometry(outcomes):
    images = {rel: o for rel, o in outcomes.items() if isinstance(o, MedicalImage)}
    assert len(images) >= 80
    for rel, image in images.items():
        array = image.array
        assert array.dtype == np.float32 and array.flags.c_contiguous, rel
        assert np.isfinite(array).all(), rel
        spatial = array.ndim - (1 if image.is_color else 0)
        assert spatial in (2, 3) and len(image.spacing) == spatial, rel
        assert all(np.isfinite(s) and s > 0 for s in image.spacing), rel
        if image.is_color:
            assert image.photometric == "RGB" and array.shape[-1] == 3, rel
        else:
            assert image.photometric == "MONOCHROME2", rel
        if image.direction is not None:
            d = image.direction
            np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-3, err_msg=rel)
        if image.origin is not None:
            assert len(image.origin) == 3 and np.isfinite(image.origin).all(), rel
        assert image.metadata["format"] == "dicom", rel
        rows, columns = image.metadata["rows"], image.metadata["columns"]
        assert array.shape[spatial - 2 : spatial] == (rows, columns), rel


def _pydicom_reference(path: Path) -> np.ndarray:
    """Physical values computed from pydicom's own decoding, independently of edgemed."""
    ds = pydicom.dcmread(path, force=True)
    stored = ds.pixel_array  # pydicom converts YBR to RGB itself
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        return apply_color_lut(stored, ds).astype(np.float32)
    if ds.SamplesPerPixel == 3:
        return stored.astype(np.float32)
    if "RescaleSlope" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    elif ds.get("Modality") == "RTDOSE":
        slope, intercept = float(ds.DoseGridScaling), 0.0
    else:
        slope, intercept = 1.0, 0.0
    values = stored.astype(np.float64) * slope + intercept
    if photometric == "MONOCHROME1":
        bits = int(ds.BitsStored)
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            if ds.PixelRepresentation
            else (0, 2**bits - 1)
        )
        values = (lo * slope + intercept) + (hi * slope + intercept) - values
    return values.astype(np.float32)


def test_values_equal_pydicom_decoding(outcomes, corpus):
    compared = 0
    for rel, image in outcomes.items():
        if not isinstance(image, MedicalImage):
            continue
        expected = _pydicom_reference(corpus / rel)
        np.testing.assert_allclose(image.array, expected, rtol=1e-6, atol=0, err_msg=rel)
        compared += 1
    assert compared >= 80
