"""The engine cache: plain TensorRT plans with a sidecar JSON each, under a key.

Layout of a cache directory (``<bundle>/engines/`` by default, or ``--cache DIR`` when
the bundle is read-only on the device)::

    fp16-<key digest>.plan    the plan exactly as TensorRT serialised it (mode 0600)
    fp16-<key digest>.json    its sidecar: key fields, plan sha256 and size, created
    timing-<gpu>-<cc>-trt<version>.cache   TensorRT's timing cache for this GPU

The key, as Holoscan does it, is the ONNX sha256 + GPU name + compute capability +
TensorRT version + precision + profile, plus what else changes the plan or where it may
run: the GPU's multiprocessor count and memory (AGX Orin, Orin NX and Orin Nano all
report "Orin", cc 8.7: tactics timed on one are not the best, or not even runnable
within the memory, of another), the platform (OS, CPU architecture, integrated or
discrete GPU: TensorRT plans are not portable across platforms), the math mode (TF32
allowed or not) and the hardware compatibility level. A plan is only ever used under
the key it was built for: anything else is ``ENGINE_INCOMPATIBLE`` (or a rebuild, when
the caller allows one). The one exception is TensorRT's own: a plan built
hardware-compatible (``edgemed build --hardware-compat``) serves the other GPUs
TensorRT says it runs on (see :func:`_portable_fields`), on the same platform only.

Sidecars of schema 1 (edgemed before the multiprocessor, memory, platform and TF32
fields) are not migrated: nothing in them says which module or platform built the plan,
and their plans were built with TensorRT's default TF32 on. They are reported as
``ENGINE_INCOMPATIBLE`` ("rebuild with ``edgemed build``") and never loaded.

An engine is executable code, so :meth:`EngineCache.open` checks, in order, before a
single plan byte reaches the deserializer: the sidecar parses and describes the
expected key (a different ONNX sha256 is ``ENGINE_INTEGRITY``; a different GPU,
TensorRT version, precision or profile is ``ENGINE_INCOMPATIBLE``), neither file nor
the cache directory is writable by group or others or owned by another user (the
sidecar is not signed: the cache is trusted because only this user can write it), and
the plan's size and sha256 equal the sidecar's
(``ENGINE_INTEGRITY`` otherwise). The sidecar is written after the plan, so a crash
mid-build leaves a plan without sidecar, which counts as no engine at all.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgemed._version import __version__
from edgemed.backends.tensorrt.profiles import Profile
from edgemed.errors import BackendError
from edgemed.fsutil import check_private, write_private

if TYPE_CHECKING:
    from edgemed.bundle import Bundle
    from edgemed.cuda.device import DeviceInfo

__all__ = [
    "KEY_FIELDS",
    "SIDECAR_SCHEMA",
    "EngineCache",
    "EngineKey",
    "default_cache_dir",
    "gpu_fields",
    "host_platform",
]

log = logging.getLogger("edgemed.backends.tensorrt")

SIDECAR_SCHEMA = 2
# The fields of :class:`EngineKey` in the order messages list them, and their words there.
_FIELD_WORDS = {
    "onnx_sha256": "model (ONNX sha256)",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "multiprocessors": "multiprocessors",
    "memory_gib": "GPU memory (GiB)",
    "platform": "platform",
    "trt_version": "TensorRT version",
    "precision": "precision",
    "tf32": "TF32 math",
    "profile": "profile",
    "hardware_compat": "hardware compatibility",
}
#: The fields of :class:`EngineKey`, in the order messages list them.
KEY_FIELDS = tuple(_FIELD_WORDS)
_INT_FIELDS = ("multiprocessors", "memory_gib")
_BOOL_FIELDS = ("tf32",)
_SAFE = re.compile(r"[^A-Za-z0-9.]+")

T = TypeVar("T")


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on; two plans with one key are interchangeable.

    Attributes:
        onnx_sha256: sha256 of the ONNX artifact the plan was parsed from.
        gpu_name: the CUDA device name (``NVIDIA H100 80GB HBM3``, ``Orin``).
        compute_capability: ``"major.minor"``, e.g. ``"8.7"``.
        multiprocessors: the GPU's streaming multiprocessor count.
        memory_gib: the GPU's total memory in GiB, rounded to the nearest integer (a
            few MiB more or less reserved after a system update does not orphan the
            engines; Orin modules differ by 4 GiB or more).
        platform: ``<OS>-<CPU architecture>-<igpu|dgpu>`` (:func:`host_platform`).
        trt_version: ``tensorrt.__version__`` of the builder.
        precision: the bundle precision (``fp32``/``fp16``/``int8``).
        tf32: whether TensorRT was allowed TF32 for float32 math (``edgemed build
            --tf32``); False: float32 math stays float32.
        profile: :meth:`Profile.canonical` of the optimisation profile.
        hardware_compat: ``none``, ``ampere_plus`` or ``same_compute_capability``.
    """

    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    multiprocessors: int
    memory_gib: int
    platform: str
    trt_version: str
    precision: str
    profile: str
    tf32: bool = False
    hardware_compat: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        """sha256 over the canonical JSON of every field."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def stem(self) -> str:
        """File name stem in the cache: precision plus 32 hex digits of the digest."""
        return f"{_SAFE.sub('_', self.precision)}-{self.digest[:32]}"

    def differences(self, other: EngineKey) -> list[str]:
        """Names of the fields where ``other`` differs, in :data:`KEY_FIELDS` order."""
        return [f for f in KEY_FIELDS if getattr(self, f) != getattr(other, f)]

    def describe(self) -> str:
        """One line for messages: ``GPU x (cc 8.7), TensorRT y, fp16; 8 SMs, 7 GiB,
        Linux-aarch64-igpu``."""
        math = ", TF32 allowed" if self.tf32 else ""
        return (
            f"{self.gpu_name} (cc {self.compute_capability}), TensorRT {self.trt_version}, "
            f"{self.precision}{math}; {self.multiprocessors} SMs, {self.memory_gib} GiB, "
            f"{self.platform}"
        )


def host_platform(integrated: bool) -> str:
    """``<OS>-<CPU architecture>-<igpu|dgpu>`` of this machine, e.g. ``Linux-aarch64-igpu``
    (Jetson) or ``Linux-aarch64-dgpu`` (an SBSA server): TensorRT plans are not portable
    across platforms, and JetPack's TensorRT is another build than the server one."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{platform.system()}-{arch}-{'igpu' if integrated else 'dgpu'}"


def gpu_fields(gpu: DeviceInfo) -> dict[str, Any]:
    """The :class:`EngineKey` fields that describe ``gpu`` and this machine."""
    return {
        "gpu_name": gpu.name,
        "compute_capability": gpu.cc,
        "multiprocessors": int(gpu.multiprocessor_count),
        "memory_gib": round(gpu.total_memory / 2**30),
        "platform": host_platform(gpu.integrated),
    }


def default_cache_dir(bundle: Bundle) -> Path:
    """``<bundle>/engines``: engines travel with the bundle unless ``--cache`` is given."""
    return bundle.root / "engines"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _OldSchema(ValueError):
    """A sidecar written by an older edgemed (see the module docstring)."""


def _key_from_sidecar(data: Any) -> EngineKey:
    """The key a sidecar describes; ``ValueError`` if any field is missing or mistyped
    (:class:`_OldSchema` for a sidecar of an older schema)."""
    if isinstance(data, dict) and data.get("schema") == 1:
        raise _OldSchema(
            "engine built by an older edgemed (sidecar schema 1: no multiprocessor, memory, "
            "platform or TF32 fields, and TF32 was on); rebuild it with `edgemed build`"
        )
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        raise ValueError("not an edgemed engine sidecar of a known schema")
    fields: dict[str, Any] = {}
    for name in KEY_FIELDS:
        value = data.get(name)
        if name == "profile":
            value = Profile.from_dict(value).canonical() if isinstance(value, dict) else None
        if name in _BOOL_FIELDS:
            if type(value) is not bool:
                raise ValueError(f"{name} must be true or false")
        elif name in _INT_FIELDS:
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        elif not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        fields[name] = value
    for name in ("plan", "plan_sha256"):
        if not isinstance(data.get(name), str):
            raise ValueError(f"{name} must be a string")
    if type(data.get("plan_bytes")) is not int or data["plan_bytes"] < 0:
        raise ValueError("plan_bytes must be a non-negative integer")
    return EngineKey(**fields)


def _portable_fields(built: EngineKey, here: EngineKey) -> tuple[str, ...]:
    """The GPU fields in which a hardware-compatible plan may differ from this GPU.

    TensorRT's ``AMPERE_PLUS`` plans run on any GPU of compute capability 8.0 or newer,
    ``SAME_COMPUTE_CAPABILITY`` plans on any GPU of the capability they were built on;
    neither crosses platforms (the ``platform`` field is never relaxed), and JetPack's
    TensorRT has no hardware compatibility at all (nothing is portable to an
    integrated GPU).
    """
    if here.platform.endswith("-igpu"):
        return ()
    same_gpu_model = ("gpu_name", "multiprocessors", "memory_gib")
    if built.hardware_compat == "ampere_plus" and _cc(here.compute_capability) >= (8, 0):
        return (*same_gpu_model, "compute_capability")
    if (
        built.hardware_compat == "same_compute_capability"
        and built.compute_capability == here.compute_capability
    ):
        return same_gpu_model
    return ()


def _cc(text: str) -> tuple[int, int]:
    """``"8.7"`` -> ``(8, 7)``; ``(0, 0)`` for anything else (never portable)."""
    major, _, minor = text.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (0, 0)


class EngineCache:
    """A directory of plans and sidecars (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def for_bundle(cls, bundle: Bundle, cache_dir: str | os.PathLike[str] | None = None):
        """The cache at ``cache_dir``, or :func:`default_cache_dir` of the bundle."""
        return cls(cache_dir if cache_dir is not None else default_cache_dir(bundle))

    # -- paths ---------------------------------------------------------------------------

    @property
    def kernel_dir(self) -> Path:
        """Where ``edgemed build`` puts the CUDA kernels' cubins for this cache's GPUs
        (the CUDA stages load them from here; trusted like the plans, by permissions)."""
        return self.root / "kernels"

    def plan_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem}.plan"

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.stem}.json"

    def timing_cache_path(self, gpu_name: str, compute_capability: str, trt_version: str) -> Path:
        """Timing caches are per GPU and TensorRT version, shared by all models."""
        gpu = _SAFE.sub("_", gpu_name).strip("_") or "gpu"
        return self.root / f"timing-{gpu}-cc{compute_capability}-trt{trt_version}.cache"

    # -- writing -------------------------------------------------------------------------

    def ensure_root(self) -> None:
        """Create the cache directory with mode 0700 (only the service user may add or
        swap engines). Call it before anything is written into the cache: a directory
        made by a plain file write would take the umask's mode, and a group-writable
        cache is refused when engines load."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def store(
        self, key: EngineKey, plan: bytes, profile: Profile, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write ``plan`` and its sidecar under ``key`` (both atomic, mode 0600).

        The plan is written first: the sidecar's arrival is what makes it an engine.

        Returns:
            The sidecar as written.
        """
        self.ensure_root()
        if profile.canonical() != key.profile:
            raise ValueError("profile does not match the key")
        sidecar: dict[str, Any] = {"schema": SIDECAR_SCHEMA, **key.to_dict()}
        sidecar["profile"] = profile.to_dict()
        sidecar.update(
            {
                "plan": self.plan_path(key).name,
                "plan_sha256": hashlib.sha256(plan).hexdigest(),
                "plan_bytes": len(plan),
                "created": _now(),
                "edgemed_version": __version__,
            }
        )
        sidecar.update(extra or {})
        write_private(self.plan_path(key), plan)
        text = json.dumps(sidecar, indent=2) + "\n"
        write_private(self.sidecar_path(key), text.encode("utf-8"))
        return sidecar

    # -- reading -------------------------------------------------------------------------

    def entries(self) -> list[tuple[EngineKey, dict[str, Any]]]:
        """Every readable sidecar in the cache with the key it describes.

        Sidecars that cannot be read or parsed are skipped here (and logged): they are
        nobody's engine. :meth:`open` reports them when asked for their key.
        """
        return self._scan()[0]

    def _scan(self) -> tuple[list[tuple[EngineKey, dict[str, Any]]], list[dict[str, Any]]]:
        """:meth:`entries`, and the sidecars of an older schema (with their plans)."""
        found: list[tuple[EngineKey, dict[str, Any]]] = []
        old: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return found, old
        for path in sorted(self.root.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                found.append((_key_from_sidecar(data), data))
            except _OldSchema:
                if (self.root / str(data.get("plan", ""))).is_file():
                    old.append(data)
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                log.debug("skipping %s: %s", path.name, exc)
        return found, old

    def select(self, want: EngineKey, *, any_profile: bool = True) -> EngineKey:
        """The key of the cached engine to use for ``want``.

        Args:
            want: the key wanted. With ``any_profile``, its profile, math mode and
                hardware compatibility are a preference: an engine built for this exact
                model, GPU, platform, TensorRT version and precision with another
                profile (or built ``--tf32``: the provenance then says so) is used when
                none has the preferred ones (the closest, float32 math first, then the
                newest).

        Raises:
            BackendError: ``ENGINE_MISSING`` (nothing for this model and precision) or
                ``ENGINE_INCOMPATIBLE`` (engines exist, but for another GPU, platform or
                TensorRT version, or built by an older edgemed, or another profile when
                ``any_profile`` is False).
        """
        relaxed: tuple[str, ...] = ("profile", "tf32", "hardware_compat") if any_profile else ()
        same_model: list[tuple[EngineKey, dict[str, Any]]] = []
        usable: list[tuple[EngineKey, dict[str, Any]]] = []
        entries, old_schema = self._scan()
        for key, data in entries:
            if key.onnx_sha256 != want.onnx_sha256 or key.precision != want.precision:
                continue
            if not self.plan_path(key).is_file():
                continue  # a sidecar left without its plan is nobody's engine
            same_model.append((key, data))
            allowed = relaxed + _portable_fields(key, want)
            if all(f in allowed for f in want.differences(key)):
                usable.append((key, data))
        for key, _ in usable:
            if key == want:
                return key
        if usable:
            # The closest to the preferences (float32 math first), then the newest.
            return max(
                usable,
                key=lambda kd: (
                    kd[0].tf32 == want.tf32,
                    kd[0].profile == want.profile,
                    kd[0].hardware_compat == want.hardware_compat,
                    str(kd[1].get("created", "")),
                ),
            )[0]
        if same_model:
            seen = "; ".join(sorted({k.describe() for k, _ in same_model}))
            raise BackendError(
                f"no engine for {want.describe()} in {self.root}; the cache holds engines "
                f"for {seen} only: rebuild with `edgemed build`",
                code="ENGINE_INCOMPATIBLE",
                path=self.root,
            )
        if any(
            d.get("onnx_sha256") == want.onnx_sha256 and d.get("precision") == want.precision
            for d in old_schema
        ):
            raise BackendError(
                f"the {want.precision} engine for this model in {self.root} was built by an "
                "older edgemed (sidecar schema 1: it does not record which GPU module or "
                "platform built it, and it ran TF32): rebuild it with `edgemed build "
                f"BUNDLE --precision {want.precision}`",
                code="ENGINE_INCOMPATIBLE",
                path=self.root,
            )
        raise BackendError(
            f"no {want.precision} engine for this model in {self.root}: run "
            f"`edgemed build BUNDLE --precision {want.precision}` first",
            code="ENGINE_MISSING",
            path=self.root,
        )

    def read_verified(self, key: EngineKey) -> tuple[bytes, dict[str, Any]]:
        """The plan bytes for ``key`` and its sidecar, checked as the module docstring says.

        Raises:
            BackendError: ``ENGINE_MISSING``, ``ENGINE_INCOMPATIBLE`` or
                ``ENGINE_INTEGRITY``.
        """
        sidecar_path, plan_path = self.sidecar_path(key), self.plan_path(key)
        if not sidecar_path.is_file() or not plan_path.is_file():
            raise BackendError(
                f"no engine for {key.describe()} in {self.root}",
                code="ENGINE_MISSING",
                path=plan_path,
            )
        check_private(self.root, sidecar_path, plan_path, what="an engine")
        try:
            data = json.loads(sidecar_path.read_text(encoding="utf-8"))
            found = _key_from_sidecar(data)
        except _OldSchema as exc:
            raise BackendError(str(exc), code="ENGINE_INCOMPATIBLE", path=sidecar_path) from exc
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"engine sidecar cannot be read ({exc.__class__.__name__}: {exc})",
                code="ENGINE_INTEGRITY",
                path=sidecar_path,
            ) from exc
        diff = key.differences(found)
        if "onnx_sha256" in diff:
            # The file name is derived from the model's hash: a sidecar naming another
            # model here was edited or swapped, which is not a compatibility question.
            raise BackendError(
                "engine sidecar names a different model (ONNX sha256) than the bundle's",
                code="ENGINE_INTEGRITY",
                path=sidecar_path,
            )
        if diff:
            what = ", ".join(
                f"{_FIELD_WORDS[f]} {getattr(found, f)!s} (here: {getattr(key, f)!s})" for f in diff
            )
            raise BackendError(
                f"engine was built for another setup: {what}; rebuild with `edgemed build`",
                code="ENGINE_INCOMPATIBLE",
                path=plan_path,
            )
        if data["plan"] != plan_path.name:
            raise BackendError(
                "engine sidecar names another plan file",
                code="ENGINE_INTEGRITY",
                path=sidecar_path,
            )
        # The size first: a truncated multi-GB plan fails without being hashed.
        if plan_path.stat().st_size != data["plan_bytes"]:
            raise BackendError(
                "engine plan is not the size its sidecar records (truncated or replaced)",
                code="ENGINE_INTEGRITY",
                path=plan_path,
            )
        plan = plan_path.read_bytes()
        # Hash the very bytes that will be deserialized, not the file a second time.
        if (
            len(plan) != data["plan_bytes"]
            or hashlib.sha256(plan).hexdigest() != str(data["plan_sha256"]).lower()
        ):
            raise BackendError(
                "engine plan does not match its sidecar's sha256 (tampered or corrupt)",
                code="ENGINE_INTEGRITY",
                path=plan_path,
            )
        return plan, data

    def open(self, key: EngineKey, deserialize: Callable[[bytes], T]) -> T:
        """Verify the plan for ``key`` (:meth:`read_verified`), then ``deserialize`` it.

        ``deserialize`` (``runtime.deserialize_cuda_engine``) sees only verified bytes.
        """
        plan, _ = self.read_verified(key)
        return deserialize(plan)

    def remove(self, keys: Iterable[EngineKey]) -> None:
        """Delete the plans and sidecars of ``keys`` (missing files are fine)."""
        for key in keys:
            for path in (self.sidecar_path(key), self.plan_path(key)):
                path.unlink(missing_ok=True)
