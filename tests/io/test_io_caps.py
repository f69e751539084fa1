"""The readers' caps (edgemed.io.read): documented, looked up at call time, per format."""

from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import pytest

import edgemed.io.read as limits
from edgemed.errors import InputError
from edgemed.io.read import read_image

CAPS = ("MAX_FILE_BYTES", "MAX_DECOMPRESSED_BYTES", "MAX_FRAMES", "MAX_ELEMENTS")


def _code(path) -> str:
    with pytest.raises(InputError) as excinfo:
        read_image(path)
    return excinfo.value.code


def test_caps_are_documented_public_constants():
    for name in CAPS:
        assert name in limits.__all__
        assert f":data:`{name}`" in limits.__doc__
    assert limits.MAX_DECOMPRESSED_BYTES == 2**32
    assert limits.MAX_FILE_BYTES == 2**32 + 2**24
    assert limits.MAX_FRAMES == 2**14
    assert limits.MAX_ELEMENTS == 2**31


def test_file_size_cap_applies_to_every_format(corpus, tmp_path, monkeypatch):
    nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_filename(tmp_path / "v.nii")
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((64, 64), np.uint8) + 7)
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    paths = [corpus / "CT_small.dcm", tmp_path / "v.nii", tmp_path / "p.png", tmp_path / "a.npy"]
    for path in paths:
        read_image(path)
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 80)  # every file here is larger
    for path in paths:
        assert _code(path) == "INPUT_INVALID", path


def _png_claiming(tmp_path, width: int, height: int):
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR; CRC not redone
    (tmp_path / "claim.png").write_bytes(bytes(data))
    return tmp_path / "claim.png"


def test_png_header_size_is_capped_before_decoding(tmp_path):
    assert _code(_png_claiming(tmp_path, 2**31 - 1, 2**31 - 1)) == "INPUT_INVALID"


def test_png_decoded_bytes_cap(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((64, 64), np.uint16))
    assert read_image(tmp_path / "p.png").array.shape == (64, 64)
    monkeypatch.setattr(limits, "MAX_DECOMPRESSED_BYTES", 64 * 64 * 2 - 1)
    assert _code(tmp_path / "p.png") == "INPUT_INVALID"


def test_npy_element_cap(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    monkeypatch.setattr(limits, "MAX_ELEMENTS", 64 * 64 - 1)
    assert _code(tmp_path / "a.npy") == "INPUT_INVALID"
