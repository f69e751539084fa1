"""pyproject.toml ships every package: edgemed, its subpackages and edgemed.export.*."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk(folder: str, name: str) -> set[str]:
    base = ROOT / folder
    return {
        ".".join([name, *init.parent.relative_to(base).parts])
        for init in base.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"edgemed.export": "export"}
    on_disk = _packages_on_disk("edgemed", "edgemed") | _packages_on_disk(
        "export", "edgemed.export"
    )
    assert set(config["packages"]) == on_disk
    assert "data/**/*" in config["package-data"]["edgemed"]


def test_export_extra_avoids_modelopt_onnx_extra():
    """ModelOpt's [onnx] extra pulls onnxruntime-gpu and cupy, clashing with onnxruntime."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    export = " ".join(extras["export"])
    assert "torch==2.13.0" in export and "nvidia-modelopt" in export
    assert "[onnx]" not in export and "onnxruntime-gpu" not in export and "cupy" not in export
