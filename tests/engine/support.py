"""Helpers shared by the engine tests (``from tests.engine.support import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

__all__ = ["IN", "OUT", "batch", "live", "without_nvcc"]

IN = 3 * 256 * 256 * 4  # bytes of one demo input slice (float32)
OUT = 5 * 256 * 256 * 4  # bytes of one slice's demo logits


def batch(n: int, seed: int) -> np.ndarray:
    """``n`` random demo input slices, ``(n, 3, 256, 256)`` float32."""
    return np.random.default_rng(seed).random((n, 3, 256, 256), dtype=np.float32)


def live(sim, kind: str) -> list[int]:
    """The sizes of the stand-in's live allocations of ``kind`` (device, pinned, mapped)."""
    return sorted(n for n, k, _ in sim.mem.values() if k == kind)


def without_nvcc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take every ``PATH`` folder holding an ``nvcc`` out of ``PATH`` (for this test)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in path if not Path(p, "nvcc").exists()))
