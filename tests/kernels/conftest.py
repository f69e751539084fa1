"""The kernel sources built for the host (g++ through host_shim.h), once per session.

With ``EDGEMED_KERNELS_SANITIZE=1`` the library is built with ASan/UBSan instead: the
ASan test re-runs this folder's comparisons that way in a subprocess started with
``LD_PRELOAD`` of libasan (ctypes cannot load an ASan library into a plain Python).
"""

from __future__ import annotations

import os
import shutil

import pytest
from kernel_cases import BUILD_DIR_ENV, SANITIZE_ENV

from edgemed.cuda.build import build_host_library
from edgemed.cuda.host import HostKernels


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory) -> HostKernels:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the host build of the kernels needs it")
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    # BUILD_DIR_ENV: the ASan test hands its subprocess the folder it already built in
    # (the library's name carries a hash of sources and flags, so nothing stale loads).
    where = os.environ.get(BUILD_DIR_ENV) or tmp_path_factory.mktemp("kernels-host")
    lib = build_host_library(where, sanitize=sanitize)
    return HostKernels(lib)
