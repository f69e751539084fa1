"""Type-check the TensorRT code against NVIDIA's API as described by ``tensorrt-stubs``.

No TensorRT library can be installed here or in CI, so mypy against the stubs is how
the TensorRT backend and builder are checked for API misuse (a misspelt method, a
removed call, a wrong argument type).

What it does:

1. Unless already there, ``pip download --no-deps tensorrt-stubs==10.13.0.35.1``
   (its dependencies are the unreachable libraries) and extract its ``tensorrt`` and
   ``tensorrt_bindings`` stub packages into the gitignored ``.typings/`` folder. The
   stubs are third-party code and are never committed.
2. Patch the three places where those stubs trip mypy: parameters named ``in`` (a
   keyword) are renamed ``in_``; ``add_scale_nd`` has a default before a non-default
   parameter (``channel_axis`` gets a default); ``import tensorrt_libs`` is dropped.
3. Run mypy on ``edgemed/backends/tensorrt/`` (or on the paths given) with
   ``mypy_path`` pointing at ``.typings`` and errors inside the stub modules ignored.
   ``tensorrt`` must resolve to the stubs: a missing stub is an error, never a silent
   ``Any``.

Usage: ``python tools/trt_typecheck.py [PATH ...]``; exits with mypy's status.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPINGS = ROOT / ".typings"
STUBS = "tensorrt-stubs==10.13.0.35.1"
PACKAGES = ("tensorrt", "tensorrt_bindings")
MARKER = TYPINGS / f".{STUBS}.patched"
DEFAULT_TARGETS = ("edgemed/backends/tensorrt",)

MYPY_INI = """\
[mypy]
python_version = 3.10
mypy_path = {typings}
# pycuda ships no types; tensorrt must come from the stubs (see below).
ignore_missing_imports = True
warn_unused_ignores = True
check_untyped_defs = True

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_missing_imports = False
ignore_errors = True
"""


def _download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), STUBS]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("tensorrt_stubs-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {STUBS} produced no wheel")
    return wheels[0]


def patch_stub(text: str) -> str:
    """The three fixes the stubs need before mypy can read them."""
    lines = []
    for line in text.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith("import tensorrt_libs"):
            continue  # the runtime library package: no stub exists, nothing uses it
        if stripped.startswith("def "):
            # `in` is a keyword: `def f(self, in: X)` is a syntax error.
            line = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", line)
            if stripped.startswith("def add_scale_nd("):
                # A default before a non-default parameter is a syntax error too.
                line = line.replace("channel_axis: int)", "channel_axis: int = ...)")
        lines.append(line)
    return "".join(lines).replace("'tensorrt_libs', ", "")


def install_stubs() -> None:
    """Download, extract and patch the stubs into ``.typings`` (once)."""
    if MARKER.is_file() and all((TYPINGS / p / "__init__.pyi").is_file() for p in PACKAGES):
        return
    TYPINGS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                top = name.split("/", 1)[0]
                if top not in PACKAGES or not name.endswith(".pyi"):
                    continue
                target = TYPINGS / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(patch_stub(zf.read(name).decode("utf-8")), encoding="utf-8")
    MARKER.write_text(STUBS + "\n", encoding="utf-8")


def run_mypy(targets: list[str]) -> int:
    """mypy over ``targets`` against the patched stubs; returns its exit status."""
    config = TYPINGS / "mypy.ini"
    config.write_text(MYPY_INI.format(typings=TYPINGS), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(config),
        "--no-incremental",
        *targets,
    ]
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    targets = list(argv if argv is not None else sys.argv[1:]) or list(DEFAULT_TARGETS)
    install_stubs()
    return run_mypy(targets)


if __name__ == "__main__":
    sys.exit(main())
