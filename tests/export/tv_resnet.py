"""torchvision's own ResNet-18, for the export tests (a model nobody here wrote).

PyPI's torchvision 0.28.0 (the release paired with torch 2.13.0) is built against the
CUDA build of torch: its package ``__init__`` loads C++ operators (``_C.so`` links
``libc10_cuda.so``) and registers fake kernels for them, which fails beside the CPU
build of torch that the export extra pins. ``torchvision.models.resnet`` itself is plain
PyTorch and needs none of those operators, so the package is bound here as a namespace
over the installed folder (its ``__init__`` not run) and the real model code is used.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["available", "resnet18", "unbind"]


def available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _bind() -> None:
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.submodule_search_locations is not None
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["torchvision"] = pkg


def unbind() -> None:
    """Forget the namespace binding so later imports of torchvision start afresh."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def resnet18(num_classes: int = 1000):
    """torchvision's ``resnet18`` with random (seeded by the caller) weights."""
    _bind()
    from torchvision.models.resnet import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)
