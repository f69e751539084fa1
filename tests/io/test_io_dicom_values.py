"""Golden values and geometry of single DICOM files, against pydicom's own decoding."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from edgemed.io.read import read_image


def test_ct_small_is_in_hounsfield_units(corpus, ct_small_hu):
    image = read_image(corpus / "CT_small.dcm")
    ds = pydicom.dcmread(corpus / "CT_small.dcm")
    assert image.array.shape == (128, 128) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, ct_small_hu)  # pixel_array * slope + intercept
    assert (image.array.min(), image.array.max()) == (-896.0, 1167.0)
    assert image.modality == "CT" and image.photometric == "MONOCHROME2"
    assert image.spacing == (0.661468, 0.661468)
    assert image.origin == pytest.approx((-158.135803, -179.035797, -75.699997))
    np.testing.assert_array_equal(image.direction, np.eye(3))
    md = image.metadata
    assert md["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert (md["rescale_slope"], md["rescale_intercept"]) == (1.0, -1024.0)
    assert (md["rows"], md["columns"], md["bits_allocated"], md["bits_stored"]) == (
        128,
        128,
        16,
        16,
    )
    assert md["pixel_representation"] == 1 and md["number_of_frames"] == 1
    assert md["slice_thickness"] == pytest.approx(float(ds.SliceThickness))


def test_window_centre_and_width_are_kept(corpus):
    image = read_image(corpus / "MR_small.dcm")
    assert (image.metadata["window_center"], image.metadata["window_width"]) == (600.0, 1600.0)


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_lossless_and_byte_order_variants_equal_the_original(corpus, variant):
    original = read_image(corpus / "MR_small.dcm")
    other = read_image(corpus / variant)
    np.testing.assert_array_equal(other.array, original.array)
    assert other.spacing == original.spacing and other.origin == original.origin


def test_monochrome1_from_the_corpus_is_inverted_over_the_rescaled_range(corpus):
    path = corpus / "dicomdirtests/77654033/CR1/6154"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    stored = ds.pixel_array.astype(np.float64)
    a, b = 0 * slope + intercept, 4095 * slope + intercept  # unsigned 12-bit range, rescaled
    image = read_image(path)
    np.testing.assert_allclose(image.array, a + b - (stored * slope + intercept), rtol=1e-6)
    # brightest stored value is now darkest and vice versa
    assert np.unravel_index(image.array.argmax(), (16, 16)) == np.unravel_index(
        stored.argmin(), (16, 16)
    )
    assert image.photometric == "MONOCHROME2"
    assert image.metadata["photometric_original"] == "MONOCHROME1"
    assert image.metadata["monochrome1_inverted"] is True
    assert image.spacing == (0.1, 0.1)  # from ImagerPixelSpacing: CR has no PixelSpacing
    assert image.metadata["window_center"] == pytest.approx(a + b - float(ds.WindowCenter))


def test_monochrome1_written_by_pydicom_is_inverted(dicom_copy, corpus):
    def to_monochrome1(ds):
        ds.PhotometricInterpretation = "MONOCHROME1"

    path = dicom_copy("MR_small.dcm", to_monochrome1)
    stored = pydicom.dcmread(corpus / "MR_small.dcm").pixel_array.astype(np.float64)
    image = read_image(path)
    # signed 16-bit, no rescale: range [-32768, 32767] -> v' = -1 - v
    np.testing.assert_array_equal(image.array, (-1.0 - stored).astype(np.float32))
    assert image.metadata["window_center"] == -1.0 - 600.0


def test_multiframe_rt_dose_is_a_volume_scaled_by_dose_grid_scaling(corpus):
    path = corpus / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.array.shape == (15, 10, 10) and image.is_volume
    expected = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(image.array, expected, rtol=1e-6)
    assert image.spacing == (5.0, 10.0, 10.0)  # GridFrameOffsetVector steps, PixelSpacing
    assert image.origin == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    assert image.metadata["z_spacing_source"] == "positions"
    assert image.metadata["dose_units"] == ds.DoseUnits == "RELATIVE"
    np.testing.assert_array_equal(read_image(corpus / "rtdose_rle.dcm").array, image.array)
    np.testing.assert_array_equal(read_image(corpus / "rtdose_expb.dcm").array, image.array)


def test_multiframe_colour_is_z_y_x_rgb(corpus):
    path = corpus / "SC_rgb_rle_2frame.dcm"
    image = read_image(path)
    assert image.array.shape == (2, 100, 100, 3) and image.is_color and image.is_volume
    np.testing.assert_array_equal(image.array, pydicom.dcmread(path).pixel_array)
    assert image.spacing == (1.0, 1.0, 1.0)


def test_ybr_jpeg_is_converted_to_rgb(corpus):
    # The same picture stored as RGB (uncompressed) and as lossless JPEG.
    rgb = read_image(corpus / "SC_rgb_jpeg_dcmd.dcm").array
    jpeg = read_image(corpus / "SC_rgb_jpeg.dcm").array
    assert rgb.shape == jpeg.shape == (256, 256, 3)
    # baseline JPEG is lossy; the colour conversion must still land near the truth
    assert np.abs(rgb - jpeg).mean() < 3.0
    # red channel first: a YBR array left unconverted would fail this by a wide margin
    uncompressed = pydicom.dcmread(corpus / "SC_rgb_jpeg_dcmd.dcm").pixel_array
    np.testing.assert_array_equal(rgb, uncompressed)


def test_compressed_jpeg2000_equals_pydicom(corpus):
    image = read_image(corpus / "JPEG2000.dcm")
    np.testing.assert_array_equal(image.array, pydicom.dcmread(corpus / "JPEG2000.dcm").pixel_array)
    assert image.metadata["transfer_syntax"] == "1.2.840.10008.1.2.4.91"


def test_palette_colour_is_expanded_to_rgb(corpus):
    image = read_image(corpus / "examples_palette.dcm")
    assert image.array.shape == (350, 800, 3) and image.photometric == "RGB"
    assert image.metadata["photometric_original"] == "PALETTE COLOR"
    assert image.array.max() > 255  # 16-bit LUT entries, not the 8-bit indices


def test_metadata_holds_only_allowlisted_technical_fields(corpus):
    allowed = {
        "format", "transfer_syntax", "rows", "columns", "number_of_frames",
        "samples_per_pixel", "bits_allocated", "bits_stored", "high_bit",
        "pixel_representation", "photometric_original", "pixel_spacing_source",
        "slice_thickness", "spacing_between_slices", "lossy_compression", "rescale_slope",
        "rescale_intercept", "rescale_varies", "rescale_type", "modality_lut",
        "window_center", "window_width", "monochrome1_inverted", "z_spacing_source",
        "dose_units", "spacing_source", "lossy_ratio", "lossy_method",
    }  # fmt: skip
    names = ("CT_small.dcm", "rtdose.dcm", "examples_ybr_color.dcm", "liver_1frame.dcm",
             "SC_rgb_jpeg.dcm")  # fmt: skip
    for name in names:
        md = read_image(corpus / name).metadata
        assert set(md) <= allowed, set(md) - allowed
        for value in md.values():
            # Lossy ratio and method are lists: one value per compression step.
            items = value if isinstance(value, list) else [value]
            assert all(v is None or isinstance(v, (bool, int, float, str)) for v in items)
