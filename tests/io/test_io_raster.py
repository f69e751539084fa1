"""PNG/JPEG/TIFF through OpenCV and .npy arrays: written here, read back, values compared."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgemed.errors import InputError
from edgemed.io.read import read_image
from tests.support import error_code

RNG = np.random.default_rng(3)


def _write(path, array) -> None:
    ok, encoded = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(encoded.tobytes())


def test_uint16_png_keeps_its_range(tmp_path):
    stored = RNG.integers(0, 65536, size=(40, 30), dtype=np.uint16)
    stored[0, 0] = 65535
    _write(tmp_path / "deep.png", stored)
    image = read_image(tmp_path / "deep.png")
    assert image.array.shape == (40, 30) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, stored)
    assert image.array.max() == 65535.0
    assert (image.modality, image.photometric, image.spacing) == ("OT", "MONOCHROME2", (1.0, 1.0))
    assert image.metadata == {
        "format": "png",
        "dtype": "uint16",
        "alpha_dropped": False,
        "spacing_source": "unknown",  # 1.0 is a placeholder: no mm derived from it
        "lossy_compression": False,
    }


def test_colour_png_comes_back_rgb(tmp_path):
    bgr = np.zeros((8, 9, 3), np.uint8)
    bgr[..., 2] = 200  # OpenCV writes BGR: this is red
    bgr[..., 0] = 10
    _write(tmp_path / "red.png", bgr)
    image = read_image(tmp_path / "red.png")
    assert image.array.shape == (8, 9, 3) and image.photometric == "RGB"
    assert (image.array[..., 0] == 200).all() and (image.array[..., 2] == 10).all()


def test_alpha_is_dropped_and_recorded(tmp_path):
    bgra = RNG.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    _write(tmp_path / "alpha.png", bgra)
    image = read_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(image.array, bgra[..., 2::-1])
    assert image.metadata["alpha_dropped"] is True


def test_16_bit_and_float_tiff(tmp_path):
    stored = RNG.integers(0, 65536, size=(16, 12), dtype=np.uint16)
    _write(tmp_path / "deep.tif", stored)
    image = read_image(tmp_path / "deep.tif")
    np.testing.assert_array_equal(image.array, stored)
    assert image.metadata["format"] == "tiff" and image.metadata["dtype"] == "uint16"
    values = RNG.normal(size=(7, 5)).astype(np.float32) * 1000
    _write(tmp_path / "float.tiff", values)
    np.testing.assert_array_equal(read_image(tmp_path / "float.tiff").array, values)


def test_multi_page_tiff_is_refused(tmp_path):
    pages = [np.full((4, 4), i, np.uint8) for i in range(3)]
    assert cv2.imwritemulti(str(tmp_path / "pages.tif"), pages)
    assert (
        error_code(read_image, tmp_path / "pages.tif", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )


def test_jpeg_grayscale(tmp_path):
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    _write(tmp_path / "g.jpg", gradient)
    image = read_image(tmp_path / "g.jpg")
    assert image.array.shape == (32, 64) and image.metadata["format"] == "jpeg"
    assert np.abs(image.array - gradient).max() <= 8  # lossy, but the same picture


def test_non_ascii_file_name(tmp_path):
    stored = RNG.integers(0, 256, size=(3, 4), dtype=np.uint8)
    path = tmp_path / "bild-ü-图像.png"
    _write(path, stored)
    np.testing.assert_array_equal(read_image(path).array, stored)


def test_corrupt_raster_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    assert error_code(read_image, tmp_path / "bad.png", kind=InputError) == "INPUT_CORRUPT"
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    assert error_code(read_image, tmp_path / "bad.jpg", kind=InputError) == "INPUT_CORRUPT"
    good = cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    assert error_code(read_image, tmp_path / "cut.png", kind=InputError) == "INPUT_CORRUPT"


@pytest.mark.parametrize("shape", [(6, 7), (3, 6, 7)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64, np.bool_])
def test_npy_round_trip(tmp_path, shape, dtype):
    stored = (RNG.normal(size=shape) * 100).astype(dtype)
    np.save(tmp_path / "a.npy", stored)
    image = read_image(tmp_path / "a.npy")
    np.testing.assert_array_equal(image.array, stored.astype(np.float32))
    assert image.spacing == (1.0,) * len(shape) and image.is_volume == (len(shape) == 3)
    assert image.metadata["dtype"] == str(np.dtype(dtype))


def test_fortran_ordered_npy(tmp_path):
    stored = np.asfortranarray(RNG.normal(size=(4, 5)).astype(np.float32))
    np.save(tmp_path / "f.npy", stored)
    image = read_image(tmp_path / "f.npy")
    np.testing.assert_array_equal(image.array, stored)
    assert image.array.flags.c_contiguous


def test_npy_refusals(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    assert (
        error_code(read_image, tmp_path / "obj.npy", kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
    )  # never unpickled
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    assert (
        error_code(read_image, tmp_path / "4d.npy", kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
    )
    np.save(tmp_path / "1d.npy", np.zeros(5))
    assert (
        error_code(read_image, tmp_path / "1d.npy", kind=InputError) == "INPUT_UNSUPPORTED_FORMAT"
    )
    np.save(tmp_path / "complex.npy", np.zeros((2, 2), np.complex64))
    assert (
        error_code(read_image, tmp_path / "complex.npy", kind=InputError)
        == "INPUT_UNSUPPORTED_FORMAT"
    )
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    assert error_code(read_image, tmp_path / "nan.npy", kind=InputError) == "INPUT_INVALID"
    np.save(tmp_path / "whole.npy", np.zeros((50, 50)))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    assert error_code(read_image, tmp_path / "cut.npy", kind=InputError) == "INPUT_TRUNCATED"
    (tmp_path / "header.npy").write_bytes(data[:20])
    assert error_code(read_image, tmp_path / "header.npy", kind=InputError) == "INPUT_CORRUPT"
