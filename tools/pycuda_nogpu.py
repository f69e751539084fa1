"""Build the *real* pycuda on a machine without a GPU, so tests can hold the stand-ins to it.

No NVIDIA driver (no ``libcuda.so.1``) exists here or in CI, and pycuda has no Linux
wheels. What this does, once per machine (about 2-3 minutes on 2 cores), into the
gitignored ``.cache/pycuda-nogpu/``:

1. ``pip download --no-deps --no-binary pycuda`` pycuda's sdist (only pycuda from
   source: its build dependencies come as wheels).
2. Generate ``stub/libcuda.so.1``: every ``cu*`` entry point that the toolkit's driver
   headers declare, under every spelling their macros select (``cuCtxCreate`` and
   ``cuCtxCreate_v4``, ``cuMemcpy`` and ``cuMemcpy_ptds``...), each returning
   ``CUDA_ERROR_NO_DEVICE``. ``cuGetErrorString``/``cuGetErrorName`` fill in a string:
   pycuda formats every error with them and reads the string without checking.
3. A venv with pycuda built against the toolkit's headers and that stub
   (``configure.py --cudadrv-lib-dir=stub``), and NVIDIA's ``cuda-bindings`` wheel (the
   driver API edgemed's CUDA graphs use), at the version the ``gpu`` extra allows.
4. Check: with ``LD_LIBRARY_PATH=stub``, ``import pycuda.driver`` works and ``init()``
   raises ``pycuda._driver.RuntimeError`` (no device): the module is real, the GPU is not.

:func:`api_surface` then lists, from that venv, the names the real modules offer (module
attributes, class attributes, enum members), for tests/engine/test_engine_conformance.py.

Needs: python3 with venv and its headers, gcc and g++, a CUDA toolkit (``include/cuda.h``;
found from ``CUDA_ROOT``, ``CUDA_HOME`` or nvcc), and PyPI. :class:`Unavailable` says
which is missing (tests skip on it); :class:`BuildFailed` is a step that failed with all
of them there (tests fail on it: the recipe, or what it builds, is broken).

Usage: ``python tools/pycuda_nogpu.py [--force] [--surface]``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "pycuda-nogpu"
PYCUDA = "pycuda==2026.1"
# The spec the `gpu` and `jetson` extras give (tests/engine/test_engine_conformance.py
# keeps them equal): the 12.x line runs on CUDA 12 and CUDA 13 drivers alike.
CUDA_BINDINGS = "cuda-bindings>=12.6,<13"
# pycuda's runtime and build dependencies, installed as wheels (pycuda itself is built
# without isolation, against these).
BUILD_DEPS = ("setuptools", "wheel", "numpy", "pytools", "platformdirs", "mako")
# Bump when the recipe changes: a cache made by another recipe is rebuilt.
RECIPE = 1
HEADERS = ("cuda.h", "cudaProfiler.h", "cudaGL.h", "cudaEGL.h", "cudaVDPAU.h")
# Macro sets under which the headers declare different names: the default (versioned
# `_v2`... targets), per-thread default stream (`_ptds`/`_ptsz`), and the library's
# own view (`__CUDA_API_VERSION_INTERNAL`: the old unversioned names).
VARIANTS = (
    (),
    ("-DCUDA_API_PER_THREAD_DEFAULT_STREAM",),
    ("-D__CUDA_API_VERSION_INTERNAL",),
    ("-D__CUDA_API_VERSION_INTERNAL", "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"),
)

__all__ = ["BuildFailed", "Unavailable", "ensure", "api_surface", "cuda_root", "driver_symbols"]


class Unavailable(RuntimeError):
    """The toolchain or network this build needs is missing (tests skip with this)."""


class BuildFailed(RuntimeError):
    """A step failed although its toolchain is there (tests fail with this)."""


def cuda_root() -> Path:
    """The CUDA toolkit folder (with ``include/cuda.h``).

    ``CUDA_ROOT`` or ``CUDA_HOME`` if set, else the folder nvcc itself reports (its
    ``TOP``): a wrapper script on ``PATH`` may live elsewhere than the toolkit.
    """
    for var in ("CUDA_ROOT", "CUDA_HOME"):
        if os.environ.get(var):
            root = Path(os.environ[var])
            break
    else:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            raise Unavailable("no CUDA toolkit: nvcc is not on PATH and CUDA_ROOT is unset")
        proc = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
        )
        top = re.search(r"^#\$ TOP=(.*)$", proc.stdout + proc.stderr, re.M)
        root = Path(top.group(1)) if top else Path(nvcc).resolve().parent.parent
    root = root.resolve()
    if not (root / "include" / "cuda.h").is_file():
        raise Unavailable(f"no include/cuda.h under the CUDA toolkit folder {root}")
    return root


_DECLARED = re.compile(r"\bCUresult\s+(?:CUDAAPI\s+)?(cu[A-Z]\w*)\s*\(")
_RENAMED = re.compile(r"^\s*#\s*define\s+(cu[A-Z]\w*)\s+(cu[A-Z]\w*)\s*$", re.M)
_PER_THREAD = re.compile(r"__CUDA_API_PT(DS|SZ)\s*\(\s*(cu[A-Z]\w*)\s*\)")


def driver_symbols(include: Path) -> set[str]:
    """Every ``cu*`` entry point name the driver headers under ``include`` can select.

    The preprocessed headers (under each of :data:`VARIANTS`) give the names a program
    compiled against them links to; the raw text adds both sides of every
    ``#define cuX cuX_v2`` and the per-thread names, whatever the macros chose.
    """
    names: set[str] = set()
    present = [h for h in HEADERS if (include / h).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "all.c")
        src.write_text("".join(f"#include <{h}>\n" for h in present[:2]))
        for flags in VARIANTS:
            proc = subprocess.run(
                ["gcc", "-E", "-P", "-I", str(include), *flags, str(src)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise BuildFailed(f"gcc cannot preprocess cuda.h: {proc.stderr[-500:]}")
            names.update(_DECLARED.findall(proc.stdout))
    for header in present:
        text = (include / header).read_text(errors="replace")
        names.update(_DECLARED.findall(text))
        for old, new in _RENAMED.findall(text):
            names.update((old, new))
        for kind, name in _PER_THREAD.findall(text):
            names.update((name, f"{name}_pt{kind.lower()}"))
    return names


_STUB_HEAD = r"""/* Generated by tools/pycuda_nogpu.py: a libcuda without a GPU. */
static const char *describe(int e, int name)
{
    switch (e) {
    case 0: return name ? "CUDA_SUCCESS" : "no error";
    case 100: return name ? "CUDA_ERROR_NO_DEVICE" : "no CUDA-capable device is detected";
    default: return name ? "CUDA_ERROR_UNKNOWN" : "unknown error";
    }
}
int cuGetErrorString(int e, const char **s) { if (s) *s = describe(e, 0); return 0; }
int cuGetErrorName(int e, const char **s) { if (s) *s = describe(e, 1); return 0; }
"""


def write_stub(include: Path, dest: Path) -> int:
    """Compile ``dest/libcuda.so.1`` (and the ``libcuda.so`` link name); returns how many
    entry points it exports."""
    names = sorted(driver_symbols(include) - {"cuGetErrorString", "cuGetErrorName"})
    if len(names) < 300:  # CUDA 12/13's cuda.h: over 600; fewer means a broken scan
        raise BuildFailed(f"only {len(names)} cu* names found in {include}/cuda.h")
    dest.mkdir(parents=True, exist_ok=True)
    src = dest / "libcuda_stub.c"
    body = "".join(f"int {n}(void) {{ return 100; }}\n" for n in names)
    src.write_text(_STUB_HEAD + body)
    lib = dest / "libcuda.so.1"
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(lib), str(src)]
    _run(cmd, "compiling the stub libcuda")
    link = dest / "libcuda.so"
    link.unlink(missing_ok=True)
    link.symlink_to(lib.name)
    return len(names) + 2


def _run(
    cmd: list[str], what: str, error: type[RuntimeError] = BuildFailed, **kw
) -> subprocess.CompletedProcess:
    """Run ``cmd``; ``error`` if it fails (:class:`Unavailable` for the steps that fail
    only offline: those that reach PyPI)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise error(f"{what} failed ({' '.join(cmd[:4])} ...):\n{tail}")
    return proc


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def env(cache: Path = CACHE) -> dict[str, str]:
    """The environment under which the built pycuda imports (the stub libcuda first)."""
    e = dict(os.environ)
    stub = str(cache / "stub")
    e["LD_LIBRARY_PATH"] = stub + (
        os.pathsep + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else ""
    )
    e.pop("PYTHONPATH", None)
    return e


def _marker(root: Path) -> dict[str, object]:
    return {"recipe": RECIPE, "pycuda": PYCUDA, "cuda_bindings": CUDA_BINDINGS, "cuda": str(root)}


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (parallel test processes wait for the first)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(cache: Path = CACHE, force: bool = False, log=print) -> Path:
    """The venv's python with the real pycuda and cuda-bindings, built if needed.

    Raises:
        Unavailable: no CUDA toolkit, gcc, g++ or Python headers, or PyPI cannot be
            reached.
        BuildFailed: a step failed with all of those there.
    """
    root = cuda_root()
    with _locked(cache):
        marker = cache / "built.json"
        if not force and marker.is_file() and json.loads(marker.read_text()) == _marker(root):
            return _python(cache / "venv")
        for tool in ("gcc", "g++"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not on PATH")
        if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
            raise Unavailable("no Python.h for this interpreter (python3-dev): pycuda cannot build")
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        _build(cache, root, log)
        marker.write_text(json.dumps(_marker(root)))
    return _python(cache / "venv")


def _build(cache: Path, root: Path, log) -> None:
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    log(f"pycuda-nogpu: stub libcuda from {root}/include")
    count = write_stub(root / "include", cache / "stub")
    log(f"pycuda-nogpu: {count} entry points; downloading {PYCUDA} (sdist)")
    dl = cache / "dl"
    # --no-binary for pycuda alone: ':all:' would build its build dependencies from
    # source too, and some of those do not build that way.
    _run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "pycuda",
         "-d", str(dl), PYCUDA],
        "downloading pycuda's sdist",
        Unavailable,
        env=pip_env,
    )  # fmt: skip
    (sdist,) = dl.glob("pycuda-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(cache / "src", filter="data")
    (src,) = (cache / "src").iterdir()
    venv = cache / "venv"
    log("pycuda-nogpu: venv with pycuda's dependencies and cuda-bindings")
    _run([sys.executable, "-m", "venv", str(venv)], "creating the venv")
    py = str(_python(venv))
    _run(
        [py, "-m", "pip", "install", "-q", *BUILD_DEPS, CUDA_BINDINGS],
        "pip install",
        Unavailable,
        env=pip_env,
    )
    log("pycuda-nogpu: configure.py and compile (a few minutes)")
    _run(
        [py, "configure.py", f"--cuda-root={root}", f"--cudadrv-lib-dir={cache / 'stub'}",
         "--cudadrv-libname=cuda", "--no-cuda-enable-curand"],
        "pycuda's configure.py",
        cwd=src,
    )  # fmt: skip
    _run(
        [py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "."],
        "building pycuda",
        cwd=src,
        env=dict(pip_env, MAKEFLAGS=f"-j{os.cpu_count() or 1}"),
    )
    check = (
        "import pycuda.driver as d, pycuda._driver as _d\n"
        "try:\n    d.init()\nexcept _d.RuntimeError as e:\n    print('init:', e)\n"
        "else:\n    raise SystemExit('init() succeeded without a GPU')\n"
        "import cuda.bindings.driver\n"
    )
    out = _run([py, "-c", check], "importing the built pycuda", env=env(cache), cwd=cache)
    log(f"pycuda-nogpu: built; {out.stdout.strip()}")


# What api_surface() lists: the modules, and for each class its attributes (dir), for
# each enum its members. Runs inside the built venv.
_SURFACE = r"""
import enum, inspect, json, sys
import pycuda, pycuda.driver, pycuda.compiler, pycuda._driver
import cuda.bindings, cuda.bindings.driver

def members(cls):
    found = getattr(cls, "__members__", None)  # enum.Enum, cuda-bindings' FastEnum
    if isinstance(found, dict) or isinstance(cls, enum.EnumMeta):
        return sorted(found)
    names = getattr(cls, "names", None)  # Boost.Python enums: .names maps name -> value
    return sorted(names) if isinstance(names, dict) else None

def sig(value):
    try:  # Python-level functions (pycuda's own wrappers): their real signature
        return str(inspect.signature(value))
    except (TypeError, ValueError):
        return None

def doc(value):
    # The first lines of a docstring: where Boost.Python and Cython put the signature.
    return "\n".join((getattr(value, "__doc__", None) or "").strip().splitlines()[:3])

out = {}
for name in sys.argv[1:]:
    mod = sys.modules[name]
    attrs = {}
    for attr in dir(mod):
        value = getattr(mod, attr)
        entry = {"type": type(value).__name__}
        if isinstance(value, type):
            entry["attrs"] = sorted(dir(value))
            entry["members"] = members(value)
            entry["docs"] = {k: doc(getattr(value, k, None)) for k in entry["attrs"]
                             if callable(getattr(value, k, None))}
            entry["signatures"] = {k: sig(getattr(value, k, None)) for k in entry["attrs"]
                                   if callable(getattr(value, k, None))}
        elif callable(value):
            entry["doc"] = doc(value)
            entry["signature"] = sig(value)
        attrs[attr] = entry
    out[name] = attrs
json.dump({"pycuda": pycuda.VERSION_TEXT, "cuda_bindings": cuda.bindings.__version__,
           "modules": out}, sys.stdout)
"""

MODULES = ("pycuda", "pycuda.driver", "pycuda.compiler", "cuda.bindings.driver")


def api_surface(cache: Path = CACHE) -> dict:
    """``{"modules": {module: {attr: {"type", "attrs"?, "members"?}}}, "pycuda", ...}``
    of the real modules in the built venv (:func:`ensure` first). Listed once per build
    and listing script, then read from the cache (a rebuild removes it)."""
    digest = hashlib.sha256("\0".join((_SURFACE, *MODULES)).encode()).hexdigest()[:16]
    saved = cache / f"surface-{digest}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    py = str(_python(cache / "venv"))
    proc = _run([py, "-c", _SURFACE, *MODULES], "listing the real API", env=env(cache), cwd=cache)
    surface = json.loads(proc.stdout)
    tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
    tmp.write_text(proc.stdout)
    tmp.replace(saved)  # atomic: parallel test processes read a whole file or none
    return surface


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        py = ensure(force="--force" in args)
    except Unavailable as exc:
        print(f"pycuda-nogpu: unavailable: {exc}", file=sys.stderr)
        return 2
    print(f"LD_LIBRARY_PATH={CACHE / 'stub'} {py}")
    if "--surface" in args:
        json.dump(api_surface(), sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
