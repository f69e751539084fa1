"""Helpers shared by the engine tests (``from tests.engine.support import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ["without_nvcc"]


def without_nvcc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take every ``PATH`` folder holding an ``nvcc`` out of ``PATH`` (for this test)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in path if not Path(p, "nvcc").exists()))
