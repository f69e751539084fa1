"""Shared fixtures: real CT data from pydicom's corpus, small real ONNX bundles and the
kernels' host build.

``edgemed.export`` is installed from the top-level ``export/`` folder (pyproject's
``package-dir``). ``python -m pytest`` puts the checkout first on ``sys.path``, so
``edgemed`` is the checkout's ``edgemed/``, which has no ``export/`` inside. An editable
install maps ``edgemed.export`` to ``export/`` itself; a non-editable one installed it
as ``site-packages/edgemed/export``, which ``pkgutil.extend_path`` adds to the search
path of the ``edgemed`` package below (it changes nothing for an editable install, whose
``site-packages`` holds no ``edgemed/`` folder).
"""

from __future__ import annotations

import os
import pkgutil
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import edgemed
from tests.bundles import make_bundle

edgemed.__path__ = pkgutil.extend_path(edgemed.__path__, edgemed.__name__)


@pytest.fixture(scope="session")
def ct_small_path() -> str:
    return get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="session")
def ct_small_hu(ct_small_path) -> np.ndarray:
    """CT_small.dcm in HU, decoded by pydicom itself (independent of edgemed's reader)."""
    ds = pydicom.dcmread(ct_small_path)
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


@pytest.fixture
def tiny_bundle(tmp_path):
    """Factory: ``tiny_bundle(task, **kw)`` -> bundle directory."""
    counter = iter(range(1000))
    return lambda task, **kw: make_bundle(tmp_path / f"b{next(counter)}-{task}", task, **kw)


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """edgemed's ``.cu`` kernels built for the host by g++ (``edgemed.cuda.host``), once per
    session, for tests/kernels and tests/engine's stand-in GPU.

    With ``EDGEMED_KERNELS_SANITIZE=1`` the library is built with ASan/UBSan instead: the
    ASan test re-runs tests/kernels' comparisons that way in a subprocess started with
    ``LD_PRELOAD`` of libasan (ctypes cannot load an ASan library into a plain Python).
    """
    from edgemed.cuda.build import build_host_library
    from edgemed.cuda.host import HostKernels
    from tests.kernels.kernel_cases import BUILD_DIR_ENV, SANITIZE_ENV

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the host build of the kernels needs it")
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    # BUILD_DIR_ENV: the ASan test hands its subprocess the folder it already built in
    # (the library's name carries a hash of sources and flags, so nothing stale loads).
    where = os.environ.get(BUILD_DIR_ENV) or tmp_path_factory.mktemp("kernels-host")
    return HostKernels(build_host_library(where, sanitize=sanitize))
