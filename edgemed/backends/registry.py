"""Backends by name, and the ``auto`` choice.

``auto`` tries TensorRT first (when it can run here) and falls back to ONNX Runtime on
the CPU, logging one line that says why. An explicitly named backend that cannot run
is an error, never a silent substitution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from edgemed._lazy import available
from edgemed.backends.base import Backend
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, UsageError

__all__ = ["BACKENDS", "BackendOptions", "create_backend", "probe", "register"]

log = logging.getLogger("edgemed.backends")


@dataclass(frozen=True)
class BackendOptions:
    """Backend settings beyond the bundle and precision; each backend reads its own.

    Attributes:
        threads: ONNX Runtime intra-op threads (None: cores, at most 8).
        engine_cache: TensorRT engine cache directory (None: ``<bundle>/engines``).
        cuda_graphs: TensorRT: capture a CUDA graph for repeated calls of one shape.
    """

    threads: int | None = None
    engine_cache: str | os.PathLike[str] | None = None
    cuda_graphs: bool = False


@dataclass(frozen=True)
class _Entry:
    # probe(bundle, precision, options) -> "" when the backend can run here, else why not.
    probe: Callable[[Bundle, str, BackendOptions], str]
    factory: Callable[[Bundle, str, BackendOptions], Backend]


_REGISTRY: dict[str, _Entry] = {}
#: The order ``auto`` tries.
BACKENDS = ("tensorrt", "onnxruntime")


def register(
    name: str,
    probe: Callable[[Bundle, str, BackendOptions], str],
    factory: Callable[[Bundle, str, BackendOptions], Backend],
) -> None:
    """Register a backend: ``probe`` says why it cannot run ("" if it can)."""
    _REGISTRY[name] = _Entry(probe, factory)


def probe(name: str, bundle: Bundle, precision: str, options: BackendOptions | None = None) -> str:
    """Why backend ``name`` cannot run ``bundle`` at ``precision`` here ("" if it can)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown backend '{name}' (known: auto, {', '.join(_REGISTRY)})")
    return _REGISTRY[name].probe(bundle, precision, options or BackendOptions())


def create_backend(
    name: str,
    bundle: Bundle,
    precision: str = "fp32",
    threads: int | None = None,
    *,
    engine_cache: str | os.PathLike[str] | None = None,
    cuda_graphs: bool = False,
) -> Backend:
    """Create backend ``name`` (or the best one, for ``auto``) for the bundle's artifact.

    ``cuda_graphs`` is a TensorRT option: with ``auto`` choosing ONNX Runtime it has no
    effect (logged); asked of a named backend other than TensorRT it is an error.

    Raises:
        UsageError: unknown backend name, or CUDA graphs asked of a backend without them.
        BundleError: the bundle has no artifact of that precision.
        BackendError: the named backend cannot run here (``BACKEND_UNAVAILABLE``).
    """
    bundle.artifact("onnx", precision)  # BUNDLE_ARTIFACT_MISSING before anything else
    if cuda_graphs and name not in ("auto", "tensorrt"):
        raise UsageError(f"CUDA graphs are a TensorRT option; backend {name} has none")
    options = BackendOptions(threads=threads, engine_cache=engine_cache, cuda_graphs=cuda_graphs)
    if name == "auto":
        skipped: list[str] = []
        for candidate in BACKENDS:
            why_not = probe(candidate, bundle, precision, options)
            if not why_not:
                backend = _REGISTRY[candidate].factory(bundle, precision, options)
                backend.reason = "auto: " + (
                    "; ".join(skipped) if skipped else f"{candidate} is available"
                )
                log.info("backend %s chosen (%s)", candidate, backend.reason)
                if cuda_graphs and candidate != "tensorrt":
                    log.info("CUDA graphs not used: %s has none", candidate)
                return backend
            skipped.append(f"{candidate} not used: {why_not}")
        raise BackendError(
            "no backend can run here: " + "; ".join(skipped), code="BACKEND_UNAVAILABLE"
        )
    why_not = probe(name, bundle, precision, options)
    if why_not:
        raise BackendError(f"backend {name} cannot run: {why_not}", code="BACKEND_UNAVAILABLE")
    backend = _REGISTRY[name].factory(bundle, precision, options)
    backend.reason = "requested"
    return backend


def _ort_probe(bundle: Bundle, precision: str, options: BackendOptions) -> str:
    return "" if available("onnxruntime") else "onnxruntime is not installed"


def _ort_factory(bundle: Bundle, precision: str, options: BackendOptions) -> Backend:
    from edgemed.backends.ort import OnnxRuntimeBackend

    model = bundle.read_artifact(bundle.artifact("onnx", precision))
    return OnnxRuntimeBackend(model, precision=precision, threads=options.threads)


def _trt_probe(bundle: Bundle, precision: str, options: BackendOptions) -> str:
    # Lazily: the module imports tensorrt only inside its functions.
    from edgemed.backends.tensorrt.backend import probe as trt_probe

    return trt_probe(bundle, precision, options.engine_cache)


def _trt_factory(bundle: Bundle, precision: str, options: BackendOptions) -> Backend:
    from edgemed.backends.tensorrt.backend import TensorRTBackend

    # The engine is never built here (minutes on a Jetson): `edgemed build` does that,
    # explicitly, into the same cache.
    return TensorRTBackend.from_bundle(
        bundle, precision, cache_dir=options.engine_cache, cuda_graphs=options.cuda_graphs
    )


register("tensorrt", _trt_probe, _trt_factory)
register("onnxruntime", _ort_probe, _ort_factory)
