"""Fixtures for the reader tests: pydicom's real test corpus and modified copies of it,
and the three forms one input can take (path, bytes, open binary file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

CORPUS = Path(get_testdata_file("CT_small.dcm")).parent


@pytest.fixture(scope="session")
def corpus() -> Path:
    """pydicom's bundled test files (site-packages/pydicom/data/test_files)."""
    return CORPUS


@pytest.fixture
def dicom_copy(tmp_path) -> Callable[..., Path]:
    """Factory: ``dicom_copy(name, edit=None, dest=None)`` -> path of an edited copy.

    ``edit(ds)`` changes the dataset read from the corpus file ``name`` before pydicom
    writes it back, so each test starts from a real file and changes one thing.
    """

    def make(name: str, edit: Callable[[Dataset], None] | None = None, dest=None) -> Path:
        ds = pydicom.dcmread(CORPUS / name)
        if edit is not None:
            edit(ds)
        out = Path(dest) if dest is not None else tmp_path / f"copy-{name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out)
        return out

    return make


#: The forms read_image accepts for one file.
FORMS = ("path", "bytes", "file")


@pytest.fixture(params=FORMS)
def form(request):
    """Factory: ``form(path)`` -> the same input as a path, its bytes, or an open file.

    Parametrized, so a test that uses it runs once per form. A file object is read once:
    call ``form(path)`` again for every read. Files opened here are closed afterwards.
    """
    handles = []

    def make(path):
        if request.param == "path":
            return path
        if request.param == "bytes":
            return Path(path).read_bytes()
        handle = open(path, "rb")  # noqa: SIM115 - closed by the fixture
        handles.append(handle)
        return handle

    make.kind = request.param
    yield make
    for handle in handles:
        handle.close()
