"""Build a TensorRT engine from a bundle's ONNX, for this GPU and TensorRT version.

The network is strongly typed: the precision is the ONNX's own (FP16 by AutoCast,
INT8 by Q/DQ), so no precision builder flags exist here (TensorRT 11 removed them).
The ONNX bytes handed to the parser are the ones :meth:`Bundle.read_artifact` hashed.

A build writes, under the cache key (:mod:`edgemed.backends.tensorrt.cache`), the plain plan and
its sidecar, and keeps TensorRT's timing cache for this GPU beside them, so later
builds of other models or profiles reuse measured tactics. Builds on a Jetson take
minutes: progress is printed through ``IProgressMonitor`` where TensorRT has it, and
as elapsed-time lines otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemed._lazy import require
from edgemed.backends.tensorrt import compat as trt_compat
from edgemed.backends.tensorrt.cache import EngineCache, EngineKey
from edgemed.backends.tensorrt.profiles import Profile, derive_profile
from edgemed.errors import BackendError, UsageError
from edgemed.fsutil import write_private

if TYPE_CHECKING:
    import tensorrt as trt

    from edgemed.bundle import Bundle
    from edgemed.cuda.device import DeviceInfo

__all__ = ["BuildOptions", "BuildResult", "build_engine", "engine_key", "make_logger"]

log = logging.getLogger("edgemed.backends.tensorrt")


@dataclass(frozen=True)
class BuildOptions:
    """What ``edgemed build`` was asked for.

    Attributes:
        precision: which ONNX artifact of the bundle to build (``fp32``/``fp16``/``int8``).
        ranges: ``MIN:OPT:MAX`` per dynamic axis name (see :func:`derive_profile`).
        workspace_mib: cap on the builder's workspace pool (None: TensorRT's default).
        hardware_compat: ``none``, ``ampere_plus`` or ``same_compute_capability``.
        version_compat: build a version-compatible plan (lean runtime excluded).
        timing_cache: read and update the timing cache beside the engines.
        force: rebuild even when a verified engine for the key exists.
        device: CUDA device ordinal.
    """

    precision: str = "fp32"
    ranges: dict[str, str] = field(default_factory=dict)
    workspace_mib: int | None = None
    hardware_compat: str = "none"
    version_compat: bool = False
    timing_cache: bool = True
    force: bool = False
    device: int = 0


@dataclass(frozen=True)
class BuildResult:
    """What a build produced (or found already built, with ``built`` False)."""

    key: EngineKey
    plan_path: Path
    sidecar: dict[str, Any]
    built: bool
    seconds: float


def engine_key(
    bundle: Bundle,
    precision: str,
    profile: Profile,
    gpu: DeviceInfo,
    trt_version: str,
    *,
    hardware_compat: str = "none",
    version_compat: bool = False,
) -> EngineKey:
    """The cache key for building ``bundle``'s ``precision`` ONNX on ``gpu``."""
    return EngineKey(
        onnx_sha256=bundle.artifact("onnx", precision).sha256,
        gpu_name=gpu.name,
        compute_capability=gpu.cc,
        trt_version=trt_version,
        precision=precision,
        profile=profile.canonical(),
        hardware_compat=hardware_compat,
        version_compat=version_compat,
    )


def make_logger(errors: list[str]) -> trt.ILogger:
    """A TensorRT logger sending warnings to Python logging and keeping errors in
    ``errors`` (so a failure message can say what TensorRT said)."""
    require("tensorrt", "gpu", "TensorRT engines")
    import tensorrt as trt

    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: trt.ILogger.Severity, msg: str) -> None:
            if sev in (severity.INTERNAL_ERROR, severity.ERROR):
                errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif sev == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


@contextmanager
def _elapsed_lines(emit: Callable[[str], None], interval: float = 15.0) -> Iterator[None]:
    """Print ``building... N s`` every ``interval`` seconds while the block runs
    (for TensorRT versions without ``IProgressMonitor``)."""
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(interval):
            emit(f"  building... {time.monotonic() - start:.0f} s")

    thread = threading.Thread(target=tick, name="edgemed-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _fail(message: str, errors: list[str]) -> BackendError:
    detail = f": {errors[-1]}" if errors else ""
    return BackendError(message + detail, code="ENGINE_BUILD_FAILED")


def build_engine(
    bundle: Bundle,
    options: BuildOptions,
    cache: EngineCache | None = None,
    *,
    progress: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or find up to date) the engine for ``bundle`` at ``options.precision``.

    Usage errors (a bad range, a precision the bundle lacks) are raised before
    TensorRT is imported, so they are reported the same on any machine.

    Raises:
        UsageError: bad ranges or options.
        BundleError: no ONNX of that precision, or its bytes fail verification.
        MissingDependencyError: tensorrt or pycuda missing (``edgemed[gpu]``).
        BackendError: ``GPU_UNAVAILABLE``, ``ENGINE_BUILD_FAILED``.
        OutputError: the cache directory cannot be written.
    """
    bundle.artifact("onnx", options.precision)  # BUNDLE_ARTIFACT_MISSING first
    profile = derive_profile(bundle.input, options.ranges)
    if options.hardware_compat not in trt_compat.HARDWARE_COMPAT_LEVELS:
        raise UsageError(f"unknown hardware compatibility level {options.hardware_compat!r}")
    cache = cache or EngineCache.for_bundle(bundle)

    require("tensorrt", "gpu", "building TensorRT engines")
    from edgemed.cuda.device import CudaDevice

    device = CudaDevice.open(options.device)
    try:
        # TensorRT's CUDA runtime builds on the device whose context is current.
        with device.active():
            return _build_on(bundle, options, cache, profile, device.info, progress)
    finally:
        device.close()


def _build_on(
    bundle: Bundle,
    options: BuildOptions,
    cache: EngineCache,
    profile: Profile,
    gpu: DeviceInfo,
    progress: Callable[[str], None],
) -> BuildResult:
    import tensorrt as trt

    artifact = bundle.artifact("onnx", options.precision)
    key = engine_key(
        bundle,
        options.precision,
        profile,
        gpu,
        trt.__version__,
        hardware_compat=options.hardware_compat,
        version_compat=options.version_compat,
    )
    if not options.force:
        try:
            _, sidecar = cache.read_verified(key)
            return BuildResult(key, cache.plan_path(key), sidecar, built=False, seconds=0.0)
        except BackendError as exc:
            if exc.code != "ENGINE_MISSING":
                progress(f"replacing the cached engine ({exc.code}: {exc.message})")

    onnx = bundle.read_artifact(artifact)  # the verified bytes, and only these, are parsed
    cache.ensure_root()  # 0700 before the timing cache or the plan lands in it
    errors: list[str] = []
    logger = make_logger(errors)
    start = time.monotonic()
    progress(f"building {options.precision} engine for {key.describe()}")
    progress(f"  profile {profile.canonical()}")
    plan, timing = _build(logger, errors, onnx, profile, options, cache, gpu, progress)
    seconds = time.monotonic() - start

    timing_path = cache.timing_cache_path(gpu.name, gpu.cc, trt.__version__)
    if timing is not None:
        write_private(timing_path, timing)
    sidecar = cache.store(
        key,
        plan,
        profile,
        extra={
            "onnx_path": artifact.path,
            "bundle": {"name": bundle.name, "version": bundle.version},
            "workspace_mib": options.workspace_mib,
            "build_seconds": round(seconds, 3),
            "timing_cache": timing_path.name if timing is not None else None,
        },
    )
    progress(f"built in {seconds:.1f} s: {cache.plan_path(key)} ({len(plan) / 1e6:.2f} MB)")
    return BuildResult(key, cache.plan_path(key), sidecar, built=True, seconds=seconds)


def _build(
    logger: trt.ILogger,
    errors: list[str],
    onnx: bytes,
    profile: Profile,
    options: BuildOptions,
    cache: EngineCache,
    gpu: DeviceInfo,
    progress: Callable[[str], None],
) -> tuple[bytes, bytes | None]:
    """Parse, configure and build; returns the plan and the updated timing cache."""
    import tensorrt as trt

    builder: trt.Builder = trt.Builder(logger)
    network: trt.INetworkDefinition = builder.create_network(trt_compat.network_flags(trt))
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        descs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise _fail("TensorRT cannot parse the ONNX model", descs or errors)

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if profile.input not in names:
        raise BackendError(
            f"the ONNX model has no input '{profile.input}' (it has {', '.join(names)})",
            code="ENGINE_BUILD_FAILED",
        )
    rank = len(inputs[names.index(profile.input)].shape)
    if rank != len(profile.min):
        raise BackendError(
            f"input '{profile.input}' has rank {rank} in the ONNX, {len(profile.min)} in "
            "bundle.json",
            code="ENGINE_BUILD_FAILED",
        )

    config: trt.IBuilderConfig = builder.create_builder_config()
    opt_profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    opt_profile.set_shape(
        profile.input,
        trt.Dims(list(profile.min)),
        trt.Dims(list(profile.opt)),
        trt.Dims(list(profile.max)),
    )
    config.add_optimization_profile(opt_profile)
    trt_compat.set_workspace(trt, config, options.workspace_mib)
    level = trt_compat.hardware_compat_level(trt, options.hardware_compat)
    if level is not None:
        config.hardware_compatibility_level = level
    if options.version_compat:
        for flag in trt_compat.version_compat_flags(trt):
            config.set_flag(flag)

    timing_path = cache.timing_cache_path(gpu.name, gpu.cc, trt.__version__)
    if options.timing_cache:
        previous = timing_path.read_bytes() if timing_path.is_file() else b""
        timing_cache: trt.ITimingCache = config.create_timing_cache(previous)
        # ignore_mismatch False: a cache from another GPU or version is not applied.
        if not config.set_timing_cache(timing_cache, False) and previous:
            progress("  timing cache does not match this GPU/TensorRT; starting afresh")
            config.set_timing_cache(config.create_timing_cache(b""), False)

    printer = trt_compat.ProgressPrinter(progress)
    monitor = trt_compat.progress_monitor(trt, printer)
    if monitor is not None:
        config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    else:
        with _elapsed_lines(progress):
            serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _fail("TensorRT could not build the engine", errors)
    plan = bytes(memoryview(serialized))
    timing: bytes | None = None
    if options.timing_cache:
        timing = bytes(memoryview(config.get_timing_cache().serialize()))
    return plan, timing
