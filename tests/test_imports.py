"""``import edgemed`` and every runtime module work without torch, tensorrt or pycuda."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edgemed

BLOCKED = ["torch", "tensorrt", "pycuda", "cuda", "cuda.bindings", "modelopt", "cupy"]


def test_runtime_imports_without_optional_packages():
    # edgemed.export (installed from export/) is the export stage, not the runtime: it
    # needs torch, and no runtime module may import it (checked below).
    modules = [
        m.name
        for m in pkgutil.walk_packages(edgemed.__path__, "edgemed.")
        if not m.name.startswith("edgemed.export") and not m.name.endswith(".__main__")
    ]
    assert "edgemed.pipeline" in modules and "edgemed.backends.ort" in modules
    code = (
        "import sys, importlib\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import edgemed.backends as b, edgemed.bundle as bu\n"
        "assert not [m for m in sys.modules if m.startswith('edgemed.export')]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_extra_names_the_pip_command():
    from edgemed._lazy import require
    from edgemed.errors import MissingDependencyError

    code = (
        "import sys; sys.modules['pycuda'] = None\n"
        "from edgemed._lazy import require\n"
        "try:\n    require('pycuda', 'gpu', 'CUDA preprocessing')\n"
        "except Exception as e:\n    print(type(e).__name__, e.code, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.startswith("MissingDependencyError DEPENDENCY_MISSING")
    assert 'pip install "edgemed[gpu]"' in out.stdout
    assert require("json", "x").dumps([]) == "[]"
    assert issubclass(MissingDependencyError, edgemed.EdgemedError)
