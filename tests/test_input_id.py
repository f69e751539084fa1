"""input_id: keyed BLAKE3 of the pixel bytes under a key derived from the salt (README,
"Use"), 32 hex digits; the same pixels and salt give the same id, anything else not."""

from __future__ import annotations

import blake3
import numpy as np

from edgemed import MedicalImage
from edgemed.pipeline import input_id


def _image(a: np.ndarray) -> MedicalImage:
    return MedicalImage(a, spacing=(1.0,) * a.ndim)


def test_input_id_is_keyed_blake3_of_the_pixels():
    a = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32)
    salt = b"0123456789abcdef"
    key = blake3.blake3(
        salt, derive_key_context="edgemed 2026 input_id v2: keyed BLAKE3 of the pixel bytes"
    ).digest()
    want = blake3.blake3(a.tobytes(), key=key).hexdigest()[:32]
    assert input_id(_image(a), salt) == want
    assert len(want) == 32 and int(want, 16) >= 0
    # Not the unkeyed hash, and not the HMAC-SHA256 id of edgemed < 0.3.
    assert input_id(_image(a), salt) != blake3.blake3(a.tobytes()).hexdigest()[:32]


def test_input_id_follows_pixels_and_salt_only():
    a = np.random.default_rng(1).normal(size=(3, 32, 32)).astype(np.float32)
    salt = b"s" * 16
    same = input_id(_image(a.copy()), salt)
    assert input_id(_image(a), salt) == same
    assert input_id(_image(np.asfortranarray(a)), salt) == same  # C order bytes either way
    b = a.copy()
    b[1, 2, 3] = np.nextafter(b[1, 2, 3], np.float32(np.inf))  # one ulp of one voxel
    assert input_id(_image(b), salt) != same
    assert input_id(_image(a), b"t" * 16) != same
