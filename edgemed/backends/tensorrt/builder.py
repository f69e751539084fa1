"""Build a TensorRT engine from a bundle's ONNX, for this GPU and TensorRT version.

The network is strongly typed: the precision is the ONNX's own (FP16 by AutoCast,
INT8 by Q/DQ), so no precision builder flags exist here (TensorRT 11 removed them).
The ONNX bytes handed to the parser are the ones :meth:`Bundle.read_artifact` hashed.
TensorRT's TF32 flag, on by default, is cleared unless ``--tf32`` asks for it: float32
layers then compute in float32, as the ONNX Runtime reference and the export's accuracy
gates did (TF32 rounds the inputs of every float32 convolution and matrix product to 10
mantissa bits on the tensor cores of sm_80 and newer, Orin and H100 included). This
holds for the float32 parts of FP16 and INT8 models too. The math mode is part of the
engine's key and sidecar and of every result's provenance.

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

from edgemed.backends.tensorrt import compat as trt_compat
from edgemed.backends.tensorrt.cache import EngineCache, EngineKey, gpu_fields
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
        hardware_compat: ``none``, ``ampere_plus`` or ``same_compute_capability``
            (refused on integrated GPUs: JetPack's TensorRT has no hardware
            compatibility).
        tf32: allow TF32 for float32 math (TensorRT's default, which edgemed turns off:
            see the module docstring). Recorded in the key, sidecar and provenance.
        version_compat: refused (``UsageError``). A version-compatible plan needs
            TensorRT's lean runtime of the building version at load time, either
            embedded in the plan (host code, which edgemed never allows) or loaded from
            a library, which edgemed does not do; and the cache key pins the TensorRT
            version anyway. After a TensorRT update, rebuild with ``edgemed build``.
        timing_cache: read and update the timing cache beside the engines.
        force: rebuild even when a verified engine for the key exists.
        device: CUDA device ordinal.
    """

    precision: str = "fp32"
    ranges: dict[str, str] = field(default_factory=dict)
    workspace_mib: int | None = None
    hardware_compat: str = "none"
    tf32: bool = False
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
    profile: str,
    gpu: DeviceInfo,
    trt_version: str,
    *,
    hardware_compat: str = "none",
    tf32: bool = False,
) -> EngineKey:
    """The cache key of ``bundle``'s ``precision`` ONNX on ``gpu`` (on this machine's
    platform) with ``profile`` (:meth:`Profile.canonical`)."""
    return EngineKey(
        onnx_sha256=bundle.artifact("onnx", precision).sha256,
        **gpu_fields(gpu),
        trt_version=trt_version,
        precision=precision,
        profile=profile,
        tf32=tf32,
        hardware_compat=hardware_compat,
    )


def make_logger(errors: list[str]) -> trt.ILogger:
    """A TensorRT logger sending warnings to Python logging and keeping errors in
    ``errors`` (so a failure message can say what TensorRT said)."""
    trt_compat.require_tensorrt("TensorRT engines")
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
        MissingDependencyError: tensorrt (installed apart from edgemed's extras:
            ``compat.TENSORRT_INSTALL``) or pycuda (``edgemed[gpu]``) missing.
        BackendError: ``GPU_UNAVAILABLE``, ``ENGINE_BUILD_FAILED``.
        OutputError: the cache directory cannot be written.
    """
    bundle.artifact("onnx", options.precision)  # BUNDLE_ARTIFACT_MISSING first
    profile = derive_profile(bundle.input, options.ranges)
    if options.hardware_compat not in trt_compat.HARDWARE_COMPAT_LEVELS:
        raise UsageError(f"unknown hardware compatibility level {options.hardware_compat!r}")
    if options.version_compat:
        raise UsageError(
            "version-compatible engines are not supported: loading one needs TensorRT's "
            "lean runtime of the building version (embedded host code, which edgemed never "
            "allows, or a separate library edgemed does not load); after a TensorRT "
            "update, rebuild with `edgemed build`"
        )
    cache = cache or EngineCache.for_bundle(bundle)

    trt_compat.require_tensorrt("building TensorRT engines")
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

    if gpu.integrated and options.hardware_compat != "none":
        # TensorRT's support matrix: hardware compatibility is not supported on JetPack
        # (nor DRIVE OS); a plan for an integrated GPU is built on that device.
        raise UsageError(
            f"--hardware-compat {options.hardware_compat} is not supported on an integrated "
            f"GPU ({gpu.name}: Jetson/JetPack's TensorRT has no hardware compatibility); "
            "build without it on each device model"
        )
    artifact = bundle.artifact("onnx", options.precision)
    key = engine_key(
        bundle,
        options.precision,
        profile.canonical(),
        gpu,
        trt.__version__,
        hardware_compat=options.hardware_compat,
        tf32=options.tf32,
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
    trt_compat.set_tf32(trt, config, options.tf32)

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
