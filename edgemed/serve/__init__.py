"""``edgemed serve``: the resident HTTP service (FastAPI + uvicorn) and its web page.

Needs the ``serve`` extra (``pip install "edgemed[serve]"``). :func:`load` checks it
and returns the server module; ``import edgemed.serve`` itself needs nothing.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["load"]

#: The modules of the ``serve`` extra.
_EXTRA = ("fastapi", "uvicorn", "python_multipart", "prometheus_client")


def load() -> ModuleType:
    """:mod:`edgemed.serve.server`, after checking the ``serve`` extra is installed.

    Raises:
        MissingDependencyError: a module of the extra is missing (names the pip command).
    """
    from edgemed._lazy import require

    for module in _EXTRA:
        require(module, "serve", "edgemed serve")
    import edgemed.serve.server as server

    return server
