"""Writers to binary file objects: the same bytes the path writers put on disk."""

from __future__ import annotations

import gzip
import io

import cv2
import nibabel as nib
import numpy as np
import pytest

from edgemed.errors import OutputError, UsageError
from edgemed.io.image import MedicalImage
from edgemed.io.read import read_image
from edgemed.io.writers import write_mask_nifti, write_overlay_png
from tests.io.compare import assert_same_image


@pytest.fixture
def labelled() -> tuple[MedicalImage, np.ndarray]:
    """A small CT-like volume with geometry, and a mask with three labels."""
    rng = np.random.default_rng(4)
    image = MedicalImage(
        rng.normal(size=(3, 40, 50)).astype(np.float32) * 300,
        spacing=(2.5, 0.7, 0.6),
        origin=(-10.0, 20.0, 30.0),
        direction=np.eye(3),
        modality="CT",
    )
    mask = np.zeros((3, 40, 50), np.uint8)
    mask[1, 5:20, 10:30] = 1
    mask[2, 25:35, 5:15] = 2
    mask[0, 0:3, 0:3] = 3
    return image, mask


def test_mask_to_a_file_object_is_what_the_path_writer_writes(labelled, tmp_path):
    image, mask = labelled
    path = write_mask_nifti(tmp_path / "mask.nii.gz", mask, image)
    buffer = io.BytesIO()
    assert write_mask_nifti(buffer, mask, image) is None
    data = buffer.getvalue()
    assert data[:2] == b"\x1f\x8b"  # gzip, as for .nii.gz
    assert gzip.decompress(data) == gzip.decompress(path.read_bytes())  # the same NIfTI-1
    assert data == path.read_bytes()  # and the same compression: byte for byte
    from_memory = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    from_disk = nib.load(path)
    assert from_memory.header["sizeof_hdr"] == 348 and from_memory.header["magic"] == b"n+1"
    np.testing.assert_array_equal(np.asarray(from_memory.dataobj), mask.transpose(2, 1, 0))
    assert np.asarray(from_memory.dataobj).dtype == np.uint8
    np.testing.assert_array_equal(from_memory.affine, from_disk.affine)
    assert from_memory.header.get_intent()[0] == "label"
    # edgemed reads it back as the mask in the image's geometry.
    back = read_image(data)
    np.testing.assert_array_equal(back.array, mask.astype(np.float32))
    assert back.spacing == pytest.approx(image.spacing)
    assert back.origin == pytest.approx(image.origin)
    assert_same_image(read_image(path), back)


def test_2d_mask_to_a_file_object(tmp_path):
    image = MedicalImage(np.zeros((4, 5), np.float32), spacing=(0.5, 0.4))
    mask = np.arange(20, dtype=np.uint8).reshape(4, 5) % 3
    buffer = io.BytesIO()
    write_mask_nifti(buffer, mask, image)
    path = write_mask_nifti(tmp_path / "m.nii.gz", mask, image)
    assert buffer.getvalue() == path.read_bytes()
    np.testing.assert_array_equal(read_image(buffer.getvalue()).array, mask)


def test_overlay_to_a_file_object_is_what_the_path_writer_writes(labelled, tmp_path):
    image, mask = labelled
    labels = ["bg", "lung", "heart", "bone"]
    stats = {"lung": {"volume_mm3": 1234.0}}
    path = write_overlay_png(tmp_path / "o.png", image, mask, labels, stats)
    buffer = io.BytesIO()
    assert write_overlay_png(buffer, image, mask, labels, stats) is None
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert buffer.getvalue() == path.read_bytes()
    decoded = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    assert decoded.shape == (40 * 13, 2 * 50 * 13 + 300, 3)  # enlarged x13 to reach 512
    # The middle slice with the mask drawn differs from the plain image on its left.
    left, right = decoded[:, :650], decoded[:, 650:1300]
    assert (left != right).any()


def test_file_object_writes_are_complete_and_failures_typed(labelled):
    image, mask = labelled
    expected = io.BytesIO()
    write_mask_nifti(expected, mask, image)

    class Trickle(io.RawIOBase):  # an unbuffered stream that takes 100 bytes at a time
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.data += bytes(b[:100])
            return min(100, len(b))

    trickle = Trickle()
    write_mask_nifti(trickle, mask, image)
    assert bytes(trickle.data) == expected.getvalue()

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OutputError) as excinfo:
        write_overlay_png(Full(), image, mask, ["bg", "a", "b", "c"])
    assert excinfo.value.code == "OUTPUT_WRITE_FAILED"
    with pytest.raises(UsageError):
        write_mask_nifti(io.StringIO(), mask, image)  # text, not binary
    with pytest.raises(UsageError):
        write_mask_nifti(42, mask, image)  # type: ignore[call-overload]
