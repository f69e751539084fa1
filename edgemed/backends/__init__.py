"""Inference backends: the protocol, the registry (with the one ``auto`` choice), and
implementations (ONNX Runtime; TensorRT in :mod:`edgemed.backends.tensorrt`)."""

from __future__ import annotations

from edgemed.backends.base import Backend, TensorSpec
from edgemed.backends.registry import (
    BackendChoice,
    backend_names,
    choose_backend,
    create_backend,
    probe,
    register,
    unregister,
)

__all__ = [
    "Backend",
    "BackendChoice",
    "TensorSpec",
    "backend_names",
    "choose_backend",
    "create_backend",
    "probe",
    "register",
    "unregister",
]
