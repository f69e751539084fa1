"""Backends by name, and the ``auto`` choice.

``auto`` tries TensorRT first (when it can run here) and falls back to ONNX Runtime on
the CPU, logging one line that says why. An explicitly named backend that cannot run
is an error, never a silent substitution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgemed._lazy import available
from edgemed.backends.base import Backend
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, UsageError

__all__ = ["BACKENDS", "create_backend", "probe", "register"]

log = logging.getLogger("edgemed.backends")


@dataclass(frozen=True)
class _Entry:
    # probe(bundle, precision) -> "" when the backend can run here, else the reason not.
    probe: Callable[[Bundle, str], str]
    factory: Callable[[Bundle, str, int | None], Backend]


_REGISTRY: dict[str, _Entry] = {}
#: The order ``auto`` tries.
BACKENDS = ("tensorrt", "onnxruntime")


def register(
    name: str,
    probe: Callable[[Bundle, str], str],
    factory: Callable[[Bundle, str, int | None], Backend],
) -> None:
    """Register a backend: ``probe`` says why it cannot run ("" if it can)."""
    _REGISTRY[name] = _Entry(probe, factory)


def probe(name: str, bundle: Bundle, precision: str) -> str:
    """Why backend ``name`` cannot run ``bundle`` at ``precision`` here ("" if it can)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown backend '{name}' (known: auto, {', '.join(_REGISTRY)})")
    return _REGISTRY[name].probe(bundle, precision)


def create_backend(
    name: str, bundle: Bundle, precision: str = "fp32", threads: int | None = None
) -> Backend:
    """Create backend ``name`` (or the best one, for ``auto``) for the bundle's artifact.

    Raises:
        UsageError: unknown backend name.
        BundleError: the bundle has no artifact of that precision.
        BackendError: the named backend cannot run here (``BACKEND_UNAVAILABLE``).
    """
    bundle.artifact("onnx", precision)  # BUNDLE_ARTIFACT_MISSING before anything else
    if name == "auto":
        skipped: list[str] = []
        for candidate in BACKENDS:
            why_not = probe(candidate, bundle, precision)
            if not why_not:
                backend = _REGISTRY[candidate].factory(bundle, precision, threads)
                backend.reason = "auto: " + (
                    "; ".join(skipped) if skipped else f"{candidate} is available"
                )
                log.info("backend %s chosen (%s)", candidate, backend.reason)
                return backend
            skipped.append(f"{candidate} not used: {why_not}")
        raise BackendError(
            "no backend can run here: " + "; ".join(skipped), code="BACKEND_UNAVAILABLE"
        )
    why_not = probe(name, bundle, precision)
    if why_not:
        raise BackendError(f"backend {name} cannot run: {why_not}", code="BACKEND_UNAVAILABLE")
    backend = _REGISTRY[name].factory(bundle, precision, threads)
    backend.reason = "requested"
    return backend


def _ort_probe(bundle: Bundle, precision: str) -> str:
    return "" if available("onnxruntime") else "onnxruntime is not installed"


def _ort_factory(bundle: Bundle, precision: str, threads: int | None) -> Backend:
    from edgemed.backends.ort import OnnxRuntimeBackend

    model = bundle.read_artifact(bundle.artifact("onnx", precision))
    return OnnxRuntimeBackend(model, precision=precision, threads=threads)


def _trt_probe(bundle: Bundle, precision: str) -> str:
    # Lazily: the module imports tensorrt only inside its functions.
    from edgemed.backends.tensorrt import probe as trt_probe

    return trt_probe(bundle, precision)


def _trt_factory(bundle: Bundle, precision: str, threads: int | None) -> Backend:
    from edgemed.backends.tensorrt import TensorRTBackend

    # threads is ONNX Runtime's; the engine from <bundle>/engines is never built here
    # (minutes on a Jetson): `edgemed build` does that, explicitly.
    return TensorRTBackend.from_bundle(bundle, precision)


register("tensorrt", _trt_probe, _trt_factory)
register("onnxruntime", _ort_probe, _ort_factory)
