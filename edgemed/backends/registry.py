"""Backends by name, and the one ``auto`` choice.

A backend is one module plus one :func:`register` call: a ``probe`` saying why it
cannot run a bundle here ("" when it can), a ``factory``, its priority for ``auto`` and
what it supports (device I/O, CUDA graphs). :func:`choose_backend` is the only place the
choice is made: ``create_backend``, the pipeline, ``edgemed doctor`` and
``edgemed bench`` all go through it, so they cannot disagree. ``auto`` tries the
registered backends from the highest priority down and takes the first that can run,
recording what it skipped and why. An explicitly named backend that cannot run is an
error, never a silent substitution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgemed._lazy import available
from edgemed.backends.base import Backend
from edgemed.errors import BackendError, UsageError
from edgemed.settings import PRECISIONS as ARTIFACT_PRECISIONS
from edgemed.settings import Options, artifact_precision

if TYPE_CHECKING:
    from edgemed.bundle import Bundle

__all__ = [
    "BackendChoice",
    "BackendEntry",
    "backend_names",
    "choose_backend",
    "create_backend",
    "entry",
    "probe",
    "register",
    "unregister",
]

log = logging.getLogger("edgemed.backends")


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend.

    Attributes:
        name: the name users pass (``--backend NAME``).
        probe: ``probe(bundle, options) -> str``: why it cannot run here ("" if it can).
            Cheap and side-effect free: ``doctor`` calls it for every backend.
        factory: ``factory(bundle, options) -> Backend``.
        priority: ``auto`` tries higher first.
        device_io: its instances have device I/O (:attr:`Backend.device_io`), so the
            CUDA preprocessing can feed it in place (``--preprocess auto`` uses this).
        cuda_graphs: it honours ``Options.cuda_graphs``.
        precisions: the precisions it runs (``bf16`` only where a backend computes the
            FP32 model in bf16 when asked); ``auto`` passes over a backend without the
            precision asked for, and naming it is ``BACKEND_UNAVAILABLE``.
    """

    name: str
    probe: Callable[[Bundle, Options], str]
    factory: Callable[[Bundle, Options], Backend]
    priority: int = 0
    device_io: bool = False
    cuda_graphs: bool = False
    precisions: tuple[str, ...] = ARTIFACT_PRECISIONS


@dataclass(frozen=True)
class BackendChoice:
    """What :func:`choose_backend` decided.

    Attributes:
        name: the backend to create, or ``None`` when none can run.
        reason: why, in words (``requested``, or ``auto: ...``).
        skipped: ``(name, why not)`` for every backend tried before it.
    """

    name: str | None
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def entry(self) -> BackendEntry | None:
        return None if self.name is None else _REGISTRY[self.name]


_REGISTRY: dict[str, BackendEntry] = {}


def register(
    name: str,
    probe: Callable[[Bundle, Options], str],
    factory: Callable[[Bundle, Options], Backend],
    *,
    priority: int = 0,
    device_io: bool = False,
    cuda_graphs: bool = False,
    precisions: tuple[str, ...] = ARTIFACT_PRECISIONS,
) -> BackendEntry:
    """Register (or replace) backend ``name``; see :class:`BackendEntry`."""
    if name == "auto" or not name:
        raise UsageError(f"{name!r} cannot name a backend")
    e = BackendEntry(name, probe, factory, priority, device_io, cuda_graphs, tuple(precisions))
    _REGISTRY[name] = e
    return e


def unregister(name: str) -> None:
    """Remove backend ``name`` (tests that register a toy backend clean up with it)."""
    _REGISTRY.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """Registered backends in the order ``auto`` tries them."""
    ordered = sorted(_REGISTRY.values(), key=lambda e: -e.priority)  # stable for ties
    return tuple(e.name for e in ordered)


def entry(name: str) -> BackendEntry:
    """The registered backend ``name``; ``UsageError`` for an unknown name."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown backend '{name}' (known: auto, {', '.join(backend_names())})")
    return _REGISTRY[name]


def probe(name: str, bundle: Bundle, options: Options | str = "fp32") -> str:
    """Why backend ``name`` cannot run ``bundle`` here ("" if it can); ``options`` or
    just a precision (the other options from ``EDGEMED_*``)."""
    if isinstance(options, str):
        options = Options.resolve(precision=options)
    e = entry(name)
    if options.precision not in e.precisions:
        return f"it runs no {options.precision} (it runs {', '.join(e.precisions)})"
    return e.probe(bundle, options)


def choose_backend(bundle: Bundle, options: Options) -> BackendChoice:
    """The backend ``options.backend`` means for ``bundle`` here, and why.

    Never raises for a backend that cannot run: the choice then has ``name=None`` and
    says why (:func:`create_backend` turns that into ``BACKEND_UNAVAILABLE``).

    Raises:
        UsageError: an unknown backend name.
    """
    if options.backend != "auto":
        why_not = probe(options.backend, bundle, options)
        if why_not:
            return BackendChoice(
                None,
                f"backend {options.backend} cannot run: {why_not}",
                ((options.backend, why_not),),
            )
        return BackendChoice(options.backend, "requested")
    skipped: list[tuple[str, str]] = []
    for name in backend_names():
        why_not = probe(name, bundle, options)
        if not why_not:
            said = "; ".join(f"{n} not used: {w}" for n, w in skipped)
            return BackendChoice(name, "auto: " + (said or f"{name} is available"), tuple(skipped))
        skipped.append((name, why_not))
    said = "; ".join(f"{n} not used: {w}" for n, w in skipped)
    return BackendChoice(None, "no backend can run here: " + said, tuple(skipped))


def create_backend(
    name: str | None,
    bundle: Bundle,
    precision: str | None = None,
    threads: int | None = None,
    *,
    options: Options | None = None,
    engine_cache: str | os.PathLike[str] | None = None,
    cuda_graphs: bool | None = None,
) -> Backend:
    """Create backend ``name`` (``auto``: the one :func:`choose_backend` picks) for the
    bundle's artifact.

    ``options`` (default: :meth:`Options.resolve`, i.e. ``EDGEMED_*``) carries
    everything; the other arguments, where given, override its fields.

    ``options.cuda_graphs`` asked of a named backend without CUDA graphs is an error;
    when ``auto`` picks such a backend it has no effect (logged).

    Raises:
        UsageError: unknown backend name, CUDA graphs asked of a backend without them, or
            ``USAGE_PRECISION_MISSING``: the bundle has no ONNX model of that precision.
        BackendError: the backend cannot run here (``BACKEND_UNAVAILABLE``).
    """
    options = (options or Options.resolve()).replace(
        backend=name,
        precision=precision,
        threads=threads,
        engine_cache=engine_cache,  # Options makes it a Path
        cuda_graphs=cuda_graphs,
    )
    # USAGE_PRECISION_MISSING before anything (bf16 needs the FP32 model).
    bundle.artifact("onnx", artifact_precision(options.precision))
    if options.cuda_graphs and options.backend != "auto" and not entry(options.backend).cuda_graphs:
        raise UsageError(f"CUDA graphs are a TensorRT option; backend {options.backend} has none")
    choice = choose_backend(bundle, options)
    if choice.name is None:
        raise BackendError(choice.reason, code="BACKEND_UNAVAILABLE")
    chosen = _REGISTRY[choice.name]
    if options.cuda_graphs and not chosen.cuda_graphs:
        log.info("CUDA graphs not used: %s has none", chosen.name)
        options = options.replace(cuda_graphs=False)
    backend = chosen.factory(bundle, options)
    backend.reason = choice.reason
    if options.backend == "auto":
        log.info("backend %s chosen (%s)", chosen.name, choice.reason)
    return backend


# -- the built-in backends ----------------------------------------------------------------


def _ort_probe(bundle: Bundle, options: Options) -> str:
    if options.device and options.device.upper() != "CPU":
        return f"it runs on the CPU, not {options.device}"  # never a silent substitute
    return "" if available("onnxruntime") else "onnxruntime is not installed"


def _ort_factory(bundle: Bundle, options: Options) -> Backend:
    from edgemed.backends.ort import OnnxRuntimeBackend

    model = bundle.read_artifact(bundle.artifact("onnx", options.precision))
    return OnnxRuntimeBackend(model, precision=options.precision, threads=options.threads)


def _trt_probe(bundle: Bundle, options: Options) -> str:
    # Lazily: the module imports tensorrt only inside its functions.
    from edgemed.backends.tensorrt.backend import probe as trt_probe

    return trt_probe(bundle, options.precision, options.engine_cache)


def _trt_factory(bundle: Bundle, options: Options) -> Backend:
    from edgemed.backends.tensorrt.backend import TensorRTBackend

    # The engine is never built here (minutes on a Jetson): `edgemed build` does that,
    # explicitly, into the same cache.
    return TensorRTBackend.from_bundle(
        bundle,
        options.precision,
        cache_dir=options.engine_cache,
        cuda_graphs=options.cuda_graphs,
    )


def _ov_probe(bundle: Bundle, options: Options) -> str:
    if not available("openvino"):
        return 'openvino is not installed (pip install "edgemed[openvino]")'
    from edgemed.backends.openvino import device_problem, ov_core

    return device_problem(ov_core(), options.device or "CPU", options.precision)


def _ov_factory(bundle: Bundle, options: Options) -> Backend:
    from edgemed.backends.openvino import OpenVinoBackend, cache_folder
    from edgemed.backends.tensorrt.cache import EngineCache

    model = bundle.read_artifact(bundle.artifact("onnx", artifact_precision(options.precision)))
    device = (options.device or "CPU").upper()
    cache = cache_folder(
        EngineCache.for_bundle(bundle, options.engine_cache).root,
        options.precision,
        device,
        create=options.engine_cache is not None,  # never write into a bundle unasked
    )
    declared = {t.name: t.shape for t in (bundle.input, *bundle.outputs)}
    return OpenVinoBackend(
        model,
        precision=options.precision,
        device=device,
        threads=options.threads,
        cache_dir=cache,
        declared=declared,
    )


# auto: TensorRT where it can run, then OpenVINO where installed (faster than ONNX
# Runtime on x86 CPUs, and the only CPU engine that runs INT8 Q/DQ models as integer
# kernels at a speed-up: see README "CPU backends"), then ONNX Runtime.
register("tensorrt", _trt_probe, _trt_factory, priority=100, device_io=True, cuda_graphs=True)
register("openvino", _ov_probe, _ov_factory, priority=50, precisions=(*ARTIFACT_PRECISIONS, "bf16"))
register("onnxruntime", _ort_probe, _ort_factory, priority=0)
