"""The kernel sources under the other toolchains: nvcc (sm_87, sm_90, warnings as
errors) and g++ with AddressSanitizer + UBSan running the same comparisons."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemed.cuda import build
from edgemed.cuda.packing import RAW_DTYPES
from edgemed.errors import BackendError
from tests.kernels.kernel_cases import BUILD_DIR_ENV, SANITIZE_ENV

pytestmark = pytest.mark.kernels

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvcc_compiles_every_kernel_without_warnings(tmp_path, arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    cubins = build.build_cubin(tmp_path, arch, werror=True)
    assert [p.name for p in cubins] == [f"{s.stem}.{arch}.cubin" for s in build.kernel_sources()]
    blob = b"".join(p.read_bytes() for p in cubins)
    # The entry points the launchers name are in the cubins, unmangled.
    for suffix in RAW_DTYPES.values():
        assert f"em_preprocess_{suffix}_f16".encode() in blob
        assert f"em_zstats_{suffix}".encode() in blob
    assert b"em_segment_f32" in blob and b"em_segment_f16" in blob
    from edgemed.cuda.volume_plan import RESAMPLE_DTYPES

    volume = ["blend_f32", "blend_f16", "finish_labels", "finish_probs", "resample_decide"]
    volume += ["gather", *(f"resample_{s}" for s in RESAMPLE_DTYPES.values())]
    for name in volume:
        assert f"em_vol_{name}".encode() in blob, name


def test_volume_spec_is_passed_by_value_where_pycuda_puts_it(tmp_path):
    """volume.cu's entry points take seven pointers and then the EmVolSpec struct by
    value: the PTX must place it at byte 56 with 4-byte alignment, which is where pycuda's
    argument buffer (struct format "PPPPPPP144s", edgemed.cuda.volume) puts the record's
    bytes; and reading it must not copy it to local memory."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    src = build.KERNEL_DIR / "volume.cu"
    ptx = tmp_path / "volume.ptx"
    proc = subprocess.run(
        build.nvcc_command(src, ptx, "sm_87", ptx=True), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    entry = re.search(r"\.entry em_vol_blend_f32\((.*?)\)", text, re.S)
    assert entry is not None
    params = re.findall(r"\.param \.(.*?) em_vol_blend_f32_param_(\d+)(\[\d+\])?", entry.group(1))
    assert [p[0] for p in params[:7]] == ["u64"] * 7
    assert params[7][0] == "align 4 .b8" and params[7][2] == "[144]"
    assert ".local" not in text  # the struct is read from parameter space


def test_nvcc_warnings_are_errors(tmp_path, monkeypatch):
    """The check above can fail: a kernel with an unused variable is refused."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    bad = tmp_path / "src"
    bad.mkdir()
    for p in build.KERNEL_DIR.glob("*.h"):
        shutil.copy(p, bad / p.name)
    (bad / "bad.cu").write_text(
        '#include "edgemed_kernels.h"\n'
        'extern "C" __global__ void em_bad(float* x) { int unused = 3; x[0] = 1.0f; }\n'
    )
    monkeypatch.setattr(build, "KERNEL_DIR", bad)
    with pytest.raises(BackendError) as exc:
        build.build_cubin(tmp_path / "out", "sm_87", werror=True)
    assert exc.value.code == "GPU_KERNEL_BUILD"


def _libasan() -> str:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    path = subprocess.run(
        ["g++", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip("this g++ has no AddressSanitizer runtime")
    return path


@pytest.fixture(scope="module")
def asan_dir(tmp_path_factory):
    """One ASan build for this module's tests and their subprocesses."""
    return tmp_path_factory.mktemp("kernels-asan")


def _asan_env(build_dir) -> dict[str, str]:
    # libstdc++ preloaded too: ASan resolves its __cxa_throw interceptor at start-up, and
    # Python does not link libstdc++, so the first C++ exception thrown (and caught) inside
    # OpenCV would otherwise abort the run with a CHECK failure.
    stdcxx = subprocess.run(
        ["g++", "-print-file-name=libstdc++.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        **os.environ,
        "LD_PRELOAD": f"{_libasan()}:{stdcxx}",
        # Python itself "leaks" at exit by design; everything else aborts on first error.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        SANITIZE_ENV: "1",
        BUILD_DIR_ENV: str(build_dir),
    }


def test_host_comparisons_pass_under_asan_and_ubsan(asan_dir):
    """Every host comparison again, with the kernels built -fsanitize=address,undefined
    -fno-sanitize-recover=all (an out-of-bounds read, overflow or misaligned access in a
    kernel body aborts the run)."""
    proc = subprocess.run(
        # -s: a sanitizer report goes to fd 2, which pytest's capture would swallow.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-m",
            "kernels",
            str(HERE / "test_kernels_host.py"),
            str(HERE / "test_kernels_launcher.py"),
            str(HERE / "test_volume_kernels.py"),
        ],
        cwd=REPO,
        env=_asan_env(asan_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 30, out[-2000:]
    assert "Sanitizer" not in out


def test_asan_build_catches_an_out_of_bounds_write(asan_dir):
    """The sanitizer is live: an output buffer half the needed size aborts with a report."""
    script = f"""
import numpy as np
from edgemed.cuda.build import build_host_library
from edgemed.cuda.host import HostKernels
from edgemed.cuda.packing import pack_preprocess
from edgemed.preprocess import PreprocessSpec
lib = HostKernels(build_host_library({str(asan_dir)!r}, sanitize=True))
spec = PreprocessSpec(size=(128, 128), clip=(0.0, 1.0))
launch = pack_preprocess(spec, [(64, 64)], np.int16)
raw = np.zeros(64 * 64, np.int16)
out = np.zeros(128 * 64, np.float32)  # half of 128 x 128
stats = np.zeros(2)
scale = np.zeros(2, np.float32)
lib._launch_pre(
    launch.kernel, launch.geometry, raw, launch.slices, launch.spec, launch.taps, stats, scale, out
)
print("no error")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_asan_env(asan_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]
    assert "no error" not in proc.stdout


def test_host_launch_walks_the_whole_grid(host_kernels):
    """The shim runs every thread of a partial edge block: a 33 x 9 input (two blocks
    wide, two high, mostly idle threads) is written everywhere, exactly."""
    from edgemed.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=(9, 33), clip=(0.0, 200.0), scale="none")
    raw = (np.arange(9 * 33) % 251).astype(np.uint8).reshape(9, 33)
    out, _ = host_kernels.preprocess([raw], spec)
    np.testing.assert_array_equal(out[0, 0], np.minimum(raw, 200).astype(np.float32))
