"""Comparing reader outcomes in the io tests (import as ``tests.io.compare``)."""

from __future__ import annotations

import numpy as np

from edgemed.io.image import MedicalImage


def assert_same_image(a: MedicalImage, b: MedicalImage, what: object = "") -> None:
    """Everything a MedicalImage carries is equal (arrays exactly, dtype included)."""
    assert a.array.dtype == b.array.dtype and a.array.shape == b.array.shape, what
    np.testing.assert_array_equal(a.array, b.array, err_msg=str(what))
    assert b.array.flags.c_contiguous, what
    assert (a.spacing, a.origin, a.modality, a.photometric) == (
        b.spacing,
        b.origin,
        b.modality,
        b.photometric,
    ), what
    if a.direction is None:
        assert b.direction is None, what
    else:
        np.testing.assert_array_equal(a.direction, b.direction, err_msg=str(what))
    assert a.metadata == b.metadata, what
