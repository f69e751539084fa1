"""Compiling the kernel sources: cubins with nvcc, and a host library with g++.

The kernels live in ``edgemed/cuda/kernels/*.cu`` (:data:`KERNEL_DIR`, package
data), each one translation unit. :func:`build_cubin` compiles them with nvcc for one
GPU architecture (``edgemed build`` stores the cubins beside the engines; the launchers
in :mod:`edgemed.cuda.launchers` load them). :func:`build_host_library` compiles the same
files as C++ through ``host_shim.h`` with g++ into one shared library, which
:class:`edgemed.cuda.host.HostKernels` drives through ctypes, so the kernel bodies run,
and are tested, without a GPU. Neither needs pycuda.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from edgemed.errors import BackendError

__all__ = [
    "HOST_CXXFLAGS",
    "KERNEL_DIR",
    "NVCC_OPTIONS",
    "kernel_sources",
    "nvcc_command",
    "build_cubin",
    "build_host_library",
]

#: Folder holding the ``.cu`` sources and their headers (package data).
KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: nvcc options of every kernel build (cubins here, pycuda's SourceModule in the
#: launchers). ``-fmad=false``: nvcc would otherwise contract ``a * b + c`` into one fused
#: multiply-add wherever the sources do not use the ``__*_rn`` intrinsics, while the host
#: build (:data:`HOST_CXXFLAGS`, ``-ffp-contract=off``) rounds twice: the GPU would compute
#: something other than what the host tests check.
NVCC_OPTIONS = ("-O3", "-fmad=false")

#: g++ flags of the host build that decide its arithmetic (see :data:`NVCC_OPTIONS`).
HOST_CXXFLAGS = ("-std=c++17", "-ffp-contract=off")


def kernel_sources() -> list[Path]:
    """The ``.cu`` files (each one translation unit, for nvcc and for g++)."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def _run_compiler(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BackendError(f"{cmd[0]} not found: needed to {what}", code="GPU_TOOLCHAIN") from exc
    if proc.returncode != 0:
        raise BackendError(
            f"{what} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}", code="GPU_KERNEL_BUILD"
        )


def nvcc_command(
    src: Path, dst: Path, arch: str, *, nvcc: str = "nvcc", werror: bool = False, ptx: bool = False
) -> list[str]:
    """The nvcc command line compiling ``src`` into ``dst`` for ``arch``: a cubin, or
    with ``ptx`` the PTX of the very same compilation (tests read the instructions)."""
    flags = ["-ptx" if ptx else "-cubin", f"-arch={arch}", *NVCC_OPTIONS, "-I", str(KERNEL_DIR)]
    if werror:
        flags += ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]
    return [nvcc, *flags, "-o", str(dst), str(src)]


def build_cubin(
    out_dir: str | os.PathLike[str], arch: str, nvcc: str = "nvcc", werror: bool = False
) -> list[Path]:
    """Compile every kernel source with nvcc into ``out_dir/<name>.<arch>.cubin``.

    Args:
        out_dir: where the cubins go (created).
        arch: the GPU architecture, e.g. ``sm_87`` (Orin) or ``sm_90``.
        nvcc: the compiler to run.
        werror: treat every nvcc and host-compiler warning as an error (the tests do).

    Returns:
        The cubin paths. :class:`edgemed.cuda.launchers.CudaPreprocessor` loads them with
        ``cubin_dir=out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # loaded only if others cannot write
    jobs = []
    for src in kernel_sources():
        dst = out / f"{src.stem}.{arch}.cubin"
        cmd = nvcc_command(src, dst, arch, nvcc=nvcc, werror=werror)
        try:  # the sources compile independently: run them side by side
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError as exc:
            raise BackendError(
                f"{nvcc} not found: needed to build cubins", code="GPU_TOOLCHAIN"
            ) from exc
        jobs.append((src, dst, cmd, proc))
    failures = []
    for src, _dst, cmd, proc in jobs:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{src.name} for {arch} ({' '.join(cmd)}):\n{err.strip()}")
    if failures:
        raise BackendError("nvcc failed: " + "\n".join(failures), code="GPU_KERNEL_BUILD")
    cubins = [dst for _src, dst, _cmd, _proc in jobs]
    for cubin in cubins:  # nvcc writes with the umask's mode: narrow it as plans are
        os.chmod(cubin, 0o600)
    return cubins


def build_host_library(
    out_dir: str | os.PathLike[str], sanitize: bool = False, cxx: str = "g++"
) -> Path:
    """Compile every kernel source as C++ (``host_shim.h``) into one shared library.

    For tests and ``kernel_bench.py --host``: the kernel bodies run on the CPU, one
    simulated thread after another, so the numbers say nothing about GPU speed.
    ``sanitize`` builds with AddressSanitizer and UBSan (errors abort); load such a
    library only in a process started with ``LD_PRELOAD`` of ``libasan.so``.
    The file name carries a hash of the sources and flags: a changed kernel rebuilds.
    """
    flags = [*HOST_CXXFLAGS, "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"]
    if sanitize:
        flags += ["-O1", "-g", "-fno-omit-frame-pointer"]
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    else:
        flags += ["-O2"]
    sources = kernel_sources()
    digest = hashlib.sha256(" ".join([cxx, *flags]).encode())
    for p in [*sources, *sorted(KERNEL_DIR.glob("*.h"))]:
        digest.update(p.name.encode() + p.read_bytes())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / f"libedgemed_kernels_{'asan_' if sanitize else ''}{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        from edgemed.fsutil import atomic_write

        atomic_write(
            lib,
            lambda tmp: _run_compiler(
                [cxx, *flags, "-x", "c++", *map(str, sources), "-o", tmp], "host build"
            ),
        )
    return lib
