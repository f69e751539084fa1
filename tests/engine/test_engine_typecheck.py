"""Static checks of the TensorRT code: mypy against tensorrt-stubs, and no API that
TensorRT 11 removed."""

from __future__ import annotations

import importlib.util
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from tools import trt_typecheck

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "trt_typecheck.py"

# TensorRT 11 removed these; naming any of them breaks on 11 (or silently downgrades
# precision on 10). Patterns match identifiers, attribute access and string lookups.
REMOVED = {
    "BuilderFlag precision flags": r"BuilderFlag\s*\.\s*(FP16|INT8|BF16|FP8)\b",
    "precision flags by getattr": (
        r"""getattr\s*\(\s*[\w.\s]*BuilderFlag\s*,\s*["'](FP16|INT8|BF16|FP8)["']"""
    ),
    "OBEY_PRECISION_CONSTRAINTS": r"\bOBEY_PRECISION_CONSTRAINTS\b",
    "PREFER_PRECISION_CONSTRAINTS": r"\bPREFER_PRECISION_CONSTRAINTS\b",
    "int8_calibrator": r"\bint8_calibrator\b",
    "platform_has_fast_fp16": r"\bplatform_has_fast_fp16\b",
    "device_memory_size (without _v2)": r"\bdevice_memory_size\b(?!_v2)",
    "IAlgorithmSelector": r"\bIAlgorithmSelector\b",
}


def _code_without_comments(path: Path) -> str:
    """Source text minus comments (docstrings and strings are kept: getattr names count)."""
    return _strip_comments(path.read_text(encoding="utf-8"))


def _strip_comments(source: str) -> str:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return tokenize.untokenize(t for t in tokens if t.type != tokenize.COMMENT)


def _sources() -> list[Path]:
    files = sorted((ROOT / "edgemed").rglob("*.py")) + sorted((ROOT / "export").rglob("*.py"))
    files.append(SCRIPT)
    return [f for f in files if f.is_file()]


def test_the_scan_covers_the_tensorrt_code():
    names = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert {"edgemed/backends/tensorrt/backend.py", "edgemed/backends/tensorrt/builder.py"} <= names
    assert "edgemed/backends/tensorrt/compat.py" in names


def test_patterns_catch_what_they_should():
    bad = [
        "config.set_flag(trt.BuilderFlag.FP16)",
        "getattr(trt.BuilderFlag, 'INT8')",
        "config.int8_calibrator = c",
        "if builder.platform_has_fast_fp16:",
        "n = engine.device_memory_size",
        "class S(trt.IAlgorithmSelector): pass",
        "trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
    ]
    for line in bad:
        text = _strip_comments(line + "\n")
        assert any(re.search(p, text) for p in REMOVED.values()), line
    assert not any(
        re.search(p, _strip_comments("x = 1  # BuilderFlag.FP16\n")) for p in REMOVED.values()
    )
    assert not any(re.search(p, "engine.device_memory_size_v2") for p in REMOVED.values())


def test_no_api_removed_in_tensorrt_11_is_named():
    found = []
    for path in _sources():
        text = _code_without_comments(path)
        for what, pattern in REMOVED.items():
            if re.search(pattern, text):
                found.append(f"{path.relative_to(ROOT)}: {what}")
    assert found == []


@pytest.fixture(scope="module")
def mypy_available():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install mypy)")


def _typecheck(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_tensorrt_code_typechecks_against_the_stubs(mypy_available):
    proc = _typecheck()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
    assert (ROOT / ".typings" / "tensorrt" / "__init__.pyi").is_file()


def test_stubs_catch_a_misnamed_tensorrt_call(mypy_available, tmp_path):
    # Proves tensorrt resolves to the stubs (not Any): a wrong method name fails.
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n\n\n"
        "def run(context: trt.IExecutionContext, stream: int) -> bool:\n"
        "    return context.execute_async_v4(stream)\n"
    )
    proc = _typecheck(str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'has no attribute "execute_async_v4"; maybe "execute_async_v3"' in proc.stdout


def test_stub_patches():
    text = (
        "import tensorrt_libs as tensorrt_libs\n"
        "    def configure_plugin(self, in: list[int], out: list[int]) -> None:\n"
        "        :arg in: The input tensors\n"
        "    def add_scale_nd(self, input: ITensor, shift: W = None, channel_axis: int) -> X:\n"
        "__all__ = ['a', 'tensorrt_libs', 'b']\n"
    )
    out = trt_typecheck.patch_stub(text)
    assert "import tensorrt_libs" not in out
    assert "(self, in_: list[int], out: list[int])" in out
    assert ":arg in: The input tensors" in out  # docstrings untouched
    assert "channel_axis: int = ...)" in out
    assert "__all__ = ['a', 'b']" in out
