"""Optional imports that fail with a typed error naming the extra to install.

``import edgemed`` must work with tensorrt, pycuda and torch absent; modules that need
them call :func:`require` at the point of use, never at import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgemed.errors import MissingDependencyError

__all__ = ["require", "available"]


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``edgemed[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also raised when sys.modules[module] is None (blocked)
        raise MissingDependencyError(module, extra, purpose=purpose) from exc


def available(module: str) -> bool:
    """True when ``module`` imports here (used by ``auto`` backend selection)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
