"""Inputs the Triton tests and benchmarks/triton_compare.py send: real DICOM files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["ct5n_series", "ct_small", "slice512_dicom"]


def ct_small() -> Path:
    """pydicom's CT_small.dcm (128 x 128 CT)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        raise FileNotFoundError("pydicom's CT_small.dcm test file is not installed")
    return Path(path)


def ct5n_series() -> Path:
    """pydicom's 5-slice CT series folder ``dicomdirtests/98892001/CT5N``."""
    return ct_small().parent / "dicomdirtests" / "98892001" / "CT5N"


def slice512_dicom(path: str | os.PathLike[str]) -> Path:
    """A 512 x 512 CT DICOM file: CT_small.dcm's header with edgemed's seeded synthetic
    CT slice (``edgemed.bench.inputs.synthetic_ct``) as its pixels, 0.7 mm spacing."""
    import pydicom

    from edgemed.bench.inputs import synthetic_ct

    ds = pydicom.dcmread(ct_small())
    hu = synthetic_ct(512, 512, seed=3)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    stored = np.clip(np.round((hu - intercept) / slope), -32768, 32767).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for tag in ("LargestImagePixelValue", "SmallestImagePixelValue"):
        if tag in ds:
            del ds[tag]
    ds.PixelData = stored.tobytes()
    out = Path(path)
    ds.save_as(out)
    return out
