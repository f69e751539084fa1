"""Fixtures for series selection: pydicom's ``dicomdirtests`` tree (real CT, CR and MR
series of three patients with a DICOMDIR) and series built from CT_small.dcm with edited
headers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

CORPUS = Path(get_testdata_file("CT_small.dcm")).parent
TREE = CORPUS / "dicomdirtests"
#: Salt of the ids in these tests (a pipeline passes its own).
SALT = bytes(range(16))
#: SeriesInstanceUIDs of the corpus series the tests name.
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
CT2_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
MR700_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.118"


@pytest.fixture(scope="session")
def tree() -> Path:
    """pydicom's dicomdirtests folder (read-only: never write into it)."""
    return TREE


@pytest.fixture
def make_series(tmp_path) -> Callable[..., tuple[Path, str]]:
    """Factory: ``make_series(folder, count, **changes)`` -> (folder, SeriesInstanceUID).

    ``count`` copies of CT_small.dcm as one new series (one study for all series a test
    makes): slice ``k`` at z = ``k * step``; ``changes`` set header values on every
    slice (``ImageType=[...]``, ``SliceThickness=...``, ``Modality=...``,
    ``SeriesDescription=...``); ``edit(ds, k)`` changes slice ``k`` further.
    """
    study = pydicom.uid.generate_uid()

    def make(
        folder: str,
        count: int,
        *,
        step: float = 2.5,
        edit: Callable[[Any, int], None] | None = None,
        **changes: Any,
    ) -> tuple[Path, str]:
        series = pydicom.uid.generate_uid()
        out = tmp_path / folder
        out.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            ds = pydicom.dcmread(CORPUS / "CT_small.dcm")
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [0.0, 0.0, step * k]
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
            if edit is not None:
                edit(ds, k)
            ds.save_as(out / f"im{k:04d}")
        return out, series

    return make
