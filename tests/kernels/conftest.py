"""The kernel sources built for the host (g++ through host_shim.h), once per session.

With ``EDGEMED_KERNELS_SANITIZE=1`` the library is built with ASan/UBSan instead: the
ASan test re-runs this folder's comparisons that way in a subprocess started with
``LD_PRELOAD`` of libasan (ctypes cannot load an ASan library into a plain Python).
"""

from __future__ import annotations

import os
import shutil

import pytest
from kernel_cases import SANITIZE_ENV

from edgemed.cuda.kernels import HostKernels, build_host_library


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory) -> HostKernels:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the host build of the kernels needs it")
    sanitize = os.environ.get(SANITIZE_ENV) == "1"
    lib = build_host_library(tmp_path_factory.mktemp("kernels-host"), sanitize=sanitize)
    return HostKernels(lib)
