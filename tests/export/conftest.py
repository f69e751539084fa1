"""Make ``edgemed.export`` importable when the tests run from a source checkout.

setuptools installs the top-level ``export/`` folder as ``edgemed.export``. Running
``python -m pytest`` from the repository root puts the checkout's ``edgemed/`` first on
``sys.path``, and that folder has no ``export/`` inside: with a non-editable install
``edgemed.export`` would then not be found. Here it is bound to the checkout's
``export/`` folder, the same source the install copied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import edgemed


def _bind_source_export() -> None:
    if importlib.util.find_spec("edgemed.export") is not None:
        return
    root = Path(__file__).resolve().parents[2] / "export"
    spec = importlib.util.spec_from_file_location(
        "edgemed.export", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edgemed.export"] = module
    edgemed.export = module  # type: ignore[attr-defined]
    spec.loader.exec_module(module)


_bind_source_export()
