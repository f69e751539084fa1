"""Inference backends: the protocol, the registry (with ``auto``), and implementations."""

from __future__ import annotations

from edgemed.backends.base import Backend, TensorSpec
from edgemed.backends.registry import BACKENDS, create_backend, probe, register

__all__ = ["BACKENDS", "Backend", "TensorSpec", "create_backend", "probe", "register"]
