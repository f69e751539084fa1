"""edgemed on NVIDIA Triton Inference Server.

- :mod:`edgemed.triton.repo`: ``edgemed triton-repo`` writes a model repository whose
  Python-backend model runs edgemed's own pipeline on a bundle.
- :mod:`edgemed.triton.model`: that model (runs inside the server).
- :mod:`edgemed.triton.client`: :func:`infer` on ``tritonclient`` (``edgemed[triton]``),
  returning the same result dict and mask as the in-process call.
- :mod:`edgemed.triton.wire`: the tensors both ends exchange.

Importing this package needs no Triton module: the client imports ``tritonclient`` when
it is created, the model gets Triton's utilities from the generated ``model.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgemed.triton.client import RemoteResult, TritonClient, infer
    from edgemed.triton.repo import RepoOptions, write_repository

__all__ = ["RemoteResult", "RepoOptions", "TritonClient", "infer", "write_repository"]

_WHERE = {
    "RemoteResult": "edgemed.triton.client",
    "TritonClient": "edgemed.triton.client",
    "infer": "edgemed.triton.client",
    "RepoOptions": "edgemed.triton.repo",
    "write_repository": "edgemed.triton.repo",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'edgemed.triton' has no attribute {name!r}")
