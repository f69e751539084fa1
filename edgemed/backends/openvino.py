"""OpenVINO: x86 CPUs (and their integrated GPU or NPU) without an NVIDIA GPU.

Precision is explicit and recorded, never left to the plugin. OpenVINO's CPU plugin
computes in bf16 by default on a CPU with BF16 instructions (AVX-512 BF16, AMX): outputs
then differ from FP32 by ~0.06 on the demo model, a silent precision change edgemed never
allows. So every compile sets ``INFERENCE_PRECISION_HINT`` (see :data:`HINTS`), and the
compiled model's own hint is read back and compared (``BACKEND_PRECISION`` when the
plugin did not honour it):

* ``fp32``: the bundle's FP32 ONNX, hint ``f32``;
* ``int8``: the bundle's INT8 Q/DQ ONNX, hint ``f32``: the Q/DQ pairs run as integer
  kernels (OpenVINO's low-precision transformations), everything outside them in FP32,
  as the export's calibration and gate assumed (``high_precision_dtype`` fp32);
* ``fp16``: the bundle's FP16 ONNX; hint ``f16`` on a GPU/NPU, ``f32`` on the CPU (the
  model's own casts hold, as with ONNX Runtime's CPU provider);
* ``bf16``: only when asked for by name: the FP32 ONNX with hint ``bf16``, on a CPU that
  lists BF16; ``edgemed check --precision bf16`` gates it against the bundle's
  validation set.

Compiled models are cached (OpenVINO's ``CACHE_DIR``) under the engine cache folder, one
folder per device and precision, with the engine cache's checks: the folders are made
mode 0700 and nothing is loaded from a folder or file another user could have written
(``ENGINE_INTEGRITY``). A bundle's default cache folder (``<bundle>/engines``) is used
only where it already exists (``edgemed build`` made it, or the user did); a named cache
(``engine_cache`` / ``EDGEMED_ENGINE_CACHE``) is created. Without a cache the model is
compiled each time (~0.2 s for the demo).
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed.backends.base import Backend, TensorSpec
from edgemed.errors import BackendError

__all__ = [
    "DEVICES",
    "HINTS",
    "OpenVinoBackend",
    "cache_folder",
    "compile_config",
    "device_problem",
    "ov_core",
]

log = logging.getLogger("edgemed.backends.openvino")

#: Devices a user may name (OpenVINO's names, case-insensitive on input).
DEVICES = ("CPU", "GPU", "NPU")

#: ``(precision, device kind)`` -> the INFERENCE_PRECISION_HINT set. Every precision
#: edgemed runs has an entry: none is left to the plugin's default.
HINTS: dict[tuple[str, str], str] = {
    ("fp32", "CPU"): "f32",
    ("int8", "CPU"): "f32",
    ("fp16", "CPU"): "f32",
    ("bf16", "CPU"): "bf16",
    ("fp32", "GPU"): "f32",
    ("int8", "GPU"): "f32",
    ("fp16", "GPU"): "f16",
    ("fp32", "NPU"): "f32",
    ("int8", "NPU"): "f32",
    ("fp16", "NPU"): "f16",
}

# OpenVINO element types -> NumPy dtypes for the IO types our bundles use.
_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "boolean": np.dtype(np.bool_),
}


def _ov() -> Any:
    return require("openvino", "openvino", "the OpenVINO backend")


@functools.lru_cache(maxsize=1)
def ov_core() -> Any:
    """One ``openvino.Core`` per process: creating it enumerates the devices (tens of
    ms), and ``auto``/``doctor`` probe on every pipeline."""
    return _ov().Core()


def _kind(device: str) -> str:
    """``GPU.1`` -> ``GPU``."""
    return device.split(".", 1)[0].upper()


def device_problem(core: Any, device: str, precision: str) -> str:
    """Why ``precision`` cannot run on ``device`` through ``core`` ("" when it can)."""
    kind = _kind(device)
    if kind not in DEVICES:
        return f"unknown OpenVINO device {device!r} (one of {', '.join(DEVICES)})"
    present = [d.upper() for d in core.available_devices]
    if device.upper() not in present and not (
        device.upper() == kind and any(d.split(".", 1)[0] == kind for d in present)
    ):
        return f"no OpenVINO {device} device here (devices: {', '.join(present) or 'none'})"
    if (precision, kind) not in HINTS:
        return f"{precision} is not a precision OpenVINO runs on {kind}"
    if precision == "bf16":
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return "this CPU has no BF16 instructions (bf16 would be emulated, not faster)"
    return ""


def compile_config(
    precision: str, device: str, threads: int | None, cache_dir: Path | None
) -> dict[str, Any]:
    """The properties every compile passes: the precision hint always (see :data:`HINTS`).

    Raises:
        BackendError: ``BACKEND_UNAVAILABLE`` for a precision/device pair without a hint.
    """
    kind = _kind(device)
    hint = HINTS.get((precision, kind))
    if hint is None:
        raise BackendError(f"OpenVINO runs no {precision} on {kind}", code="BACKEND_UNAVAILABLE")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": hint,
        # One synchronous request per call, as the pipeline makes them.
        "PERFORMANCE_HINT": "LATENCY",
    }
    if kind == "CPU":
        from edgemed.backends.ort import default_threads

        config["INFERENCE_NUM_THREADS"] = threads or default_threads()
        config["NUM_STREAMS"] = 1
        # Nothing set against oneTBB's busy-wait after a call (ONNX Runtime needs
        # force_spinning_stop): measured (2026.4, 2-core EPYC, calls alternated with ONNX
        # Runtime's), OpenVINO's threads use ~0.5 ms of CPU in the 2 ms after infer()
        # returns, as ONNX Runtime's do with it, and the pipeline's work around the model
        # costs the same CPU and wall floor with either engine (512x512: ~3 ms);
        # ENABLE_CPU_PINNING off and TBB_PARTITIONER changed neither.
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _element(port_type: Any) -> str:
    return str(port_type.get_type_name() if hasattr(port_type, "get_type_name") else port_type)


def _spec(port: Any, declared: Sequence[int | str] | None) -> TensorSpec:
    """A compiled model's port as a TensorSpec; dynamic dimensions take the bundle's
    name for that axis (``batch``) where it declares one, as ONNX Runtime reports them."""
    name = port.get_any_name()
    element = port.get_element_type().get_type_name()
    if element not in _DTYPES:
        raise BackendError(f"unsupported tensor type {element} for '{name}'")
    dims: list[int | str | None] = []
    for i, d in enumerate(port.get_partial_shape()):
        if d.is_static:
            dims.append(d.get_length())
        else:
            given = declared[i] if declared is not None and i < len(declared) else None
            dims.append(given if isinstance(given, str) else None)
    return TensorSpec(name, tuple(dims), _DTYPES[element])


class OpenVinoBackend(Backend):
    """An OpenVINO compiled model over verified ONNX bytes.

    Args:
        model: the ONNX bytes (verified by the bundle).
        precision: ``fp32``, ``fp16``, ``int8`` (the artifact) or ``bf16`` (the FP32
            artifact computed in bf16; asked for by name only).
        device: ``CPU`` (default), ``GPU`` or ``NPU`` (``GPU.1`` for a second one).
        threads: CPU inference threads (default: cores, at most 8).
        cache_dir: OpenVINO's model cache folder (checked and made private), or None.
        declared: the bundle's ``{name: shape}`` for naming dynamic axes.

    Raises:
        BackendError: ``BACKEND_UNAVAILABLE`` (device or precision not here),
            ``BACKEND_LOAD_FAILED``, ``BACKEND_PRECISION`` (the plugin did not take the
            precision hint), ``ENGINE_INTEGRITY`` (a cache others can write).
    """

    name = "openvino"

    def __init__(
        self,
        model: bytes,
        *,
        precision: str = "fp32",
        device: str = "CPU",
        threads: int | None = None,
        cache_dir: Path | None = None,
        declared: Mapping[str, Sequence[int | str]] | None = None,
    ) -> None:
        ov = _ov()
        device = device.upper()
        core = ov_core()
        why_not = device_problem(core, device, precision)
        if why_not:
            raise BackendError(why_not, code="BACKEND_UNAVAILABLE")
        config = compile_config(precision, device, threads, cache_dir)
        if cache_dir is not None:
            _check_cache(cache_dir)
        try:
            compiled = core.compile_model(core.read_model(model), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError for everything
            raise BackendError(
                f"OpenVINO cannot compile the model for {device} ({exc.__class__.__name__})",
                code="BACKEND_LOAD_FAILED",
            ) from exc
        try:
            #: The arithmetic precision the compiled model runs in, as OpenVINO says.
            self.inference_precision = _element(compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # a device plugin that cannot say: not confirmed, not run
            self.inference_precision = "unknown"
        # What this precision means (the table), not what the config happened to hold.
        want = HINTS[(precision, _kind(device))]
        if self.inference_precision != want:
            raise BackendError(
                f"OpenVINO compiled the {precision} model for {self.inference_precision} "
                f"arithmetic, not the {want} asked for; edgemed never runs a precision "
                "other than the one requested",
                code="BACKEND_PRECISION",
            )
        where = (
            device
            if _kind(device) != "CPU"
            else (f"cpu ({platform.machine()}, {config['INFERENCE_NUM_THREADS']} threads)")
        )
        super().__init__(precision=precision, device=where, version=ov.get_version())
        declared = declared or {}
        self._compiled = compiled
        self._inputs = [_spec(p, declared.get(p.get_any_name())) for p in compiled.inputs]
        self._outputs = [_spec(p, declared.get(p.get_any_name())) for p in compiled.outputs]
        self._request = compiled.create_infer_request()
        self.cache_dir = cache_dir

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            # share_inputs: the pipeline's input buffer is read in place (no copy);
            # share_outputs: the request's own output memory, valid until the next call
            # (the Backend contract).
            got = self._request.infer(dict(feeds), share_inputs=True, share_outputs=True)
        except Exception as exc:
            raise BackendError(
                f"OpenVINO inference failed ({exc.__class__.__name__}: {exc})",
                code="BACKEND_INFERENCE_FAILED",
            ) from exc
        return {spec.name: got[i] for i, spec in enumerate(self._outputs)}

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["inference_precision"] = self.inference_precision
        return out

    def close(self) -> None:
        self._request = None
        self._compiled = None
        super().close()


def _check_cache(folder: Path) -> None:
    """The engine cache's rule for executable code: the folder and every file in it are
    this user's (or root's) and writable by nobody else; else ``ENGINE_INTEGRITY``."""
    from edgemed.fsutil import check_private

    what = "an OpenVINO compiled model"
    # The engine cache root, its openvino/ folder, this folder, and every file in it.
    folders = (folder.parents[1], folder.parents[0], folder)
    check_private(*folders, *sorted(folder.iterdir()), what=what)


def cache_folder(root: Path, precision: str, device: str, *, create: bool) -> Path | None:
    """``<root>/openvino/<device>-<precision>``, made mode 0700 (with ``create``; else
    only where ``root`` exists). ``None`` when it cannot be used: never an error, a
    compile without cache is slower, not different.

    One folder per device and precision: OpenVINO's cache file name does not change
    with the precision hint (measured, 2026.4: f32 and bf16 compiles of one model wrote
    the same name), so a shared folder could hand one precision's blob to another.
    """
    if not create and not root.is_dir():
        return None
    folder = root / "openvino" / f"{_kind(device).lower()}{device[3:]}-{precision}"
    try:
        for d in (root, root / "openvino", folder):
            d.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        log.info("OpenVINO model cache not used: %s (%s)", folder, exc.strerror or exc)
        return None
    return folder
