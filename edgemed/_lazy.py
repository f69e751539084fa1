"""Optional imports that fail with a typed error naming the extra to install.

``import edgemed`` must work with tensorrt, pycuda and torch absent; modules that need
them call :func:`require` at the point of use, never at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

from edgemed.errors import MissingDependencyError

__all__ = ["available", "import_module", "interrupts_held", "require"]


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is over, then deliver them.

    A Ctrl-C inside a compiled extension's first import is swallowed there: onnxruntime's
    and OpenVINO's initialisers turn it into ``ImportError('import numpy failed')``, which
    would read as "not installed" (exit 5, or ``auto`` quietly taking the next backend)
    and lose the interrupt. Imports are short; the signal waits for their end. (Only the
    main thread can set handlers; elsewhere the block runs as it is.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # A handler installed outside Python (None: e.g. Triton's Python backend stub) is
    # left alone: Python could not put it back.
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:  # now through the handler in place: KeyboardInterrupt, or the CLI's own
            signal.raise_signal(held[0])


def import_module(module: str) -> ModuleType:
    """``importlib.import_module`` with SIGINT/SIGTERM held while a first import runs
    (:func:`interrupts_held`); a module already imported is returned as it is, without
    touching the signal handlers (some callers ask for it once per result)."""
    found = sys.modules.get(module)
    if found is not None:
        return found
    with interrupts_held():
        return importlib.import_module(module)


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``edgemed[extra]``."""
    try:
        return import_module(module)
    except ImportError as exc:  # also raised when sys.modules[module] is None (blocked)
        raise MissingDependencyError(module, extra, purpose=purpose) from exc


def available(module: str) -> bool:
    """True when ``module`` imports here (used by ``auto`` backend selection)."""
    try:
        import_module(module)
    except ImportError:
        return False
    return True
