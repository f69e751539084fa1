"""The one place environment variables are read.

Variables:
    EDGEMED_LOG_LEVEL: default log level for the CLI (``WARNING``).
    EDGEMED_ORT_THREADS: ONNX Runtime intra-op threads (default: physical cores, at most 8).
    EDGEMED_BACKEND: default backend name for the CLI (``auto``).
    EDGEMED_ID_SALT: hex salt (>= 16 bytes) for the input ids in results and logs;
        random per process when unset, so ids then link results of one run only.
    EDGEMED_TRUSTED_KEY: path of an ed25519 public key PEM. When set, every bundle must
        carry a ``bundle.sig`` made with its private key, for the CLI and the API alike
        (``Bundle.load`` reads it through :func:`trusted_key_path`); unset or blank,
        signatures are not required. A relative path resolves against the working
        directory. Whether the file exists and holds a key is checked where it is used
        (``USAGE_KEY_INVALID``), not here.
    EDGEMED_ENGINE_CACHE: the TensorRT engine cache directory for ``edgemed build`` and
        the TensorRT backend (default ``<bundle>/engines``; a bundle on read-only
        storage needs one elsewhere). The compiled CUDA kernels go beside the engines.
    EDGEMED_SERIES: the SeriesInstanceUID (or the salted id a message listed) of the
        series to read from a folder or DICOMDIR that holds several
        (:attr:`Options.series`, ``--series``).
    EDGEMED_MAX_FILE_BYTES, EDGEMED_MAX_DECOMPRESSED_BYTES, EDGEMED_MAX_FRAMES,
    EDGEMED_MAX_ELEMENTS: the readers' caps (:class:`edgemed.limits.ReaderLimits`,
        resolved by :func:`load_limits` on each ``read_image`` call that is given no
        limits). A small device lowers them so hostile files are refused before they can
        exhaust its memory.

The library and the CLI resolve them the same way: :meth:`Options.resolve` (what
``Pipeline.from_bundle``, ``create_backend``, ``edgemed bench`` and every CLI command
use) takes what the caller gave, then these variables, then the defaults. Nothing here
is a module global that callers change.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgemed.limits import DEFAULT_LIMITS, ReaderLimits

__all__ = [
    "COMPUTED_FROM",
    "MAX_BATCH_SIZE",
    "PRECISIONS",
    "PREPROCESS_DEVICES",
    "Options",
    "Settings",
    "artifact_precision",
    "load_limits",
    "load_settings",
    "trusted_key_path",
]

#: Where preprocessing may run.
PREPROCESS_DEVICES = ("auto", "cpu", "cuda")
#: Model variants a bundle may carry.
PRECISIONS = ("fp32", "fp16", "int8")
#: Precisions that are a way of computing an artifact rather than an artifact: ``bf16``
#: runs the FP32 ONNX with bf16 arithmetic (OpenVINO on a BF16 CPU). Only a backend that
#: registers the precision runs it (:mod:`edgemed.backends.registry`), so no other
#: backend can run it silently as FP32.
COMPUTED_FROM = {"bf16": "fp32"}


def artifact_precision(precision: str) -> str:
    """The precision of the ONNX artifact that runs ``precision`` (``bf16`` -> ``fp32``)."""
    return COMPUTED_FROM.get(precision, precision)


#: The largest ``batch_size`` accepted. A batch is one model input of ``batch_size``
#: slices (the demo's: 3 x 256 x 256 float32, 0.8 MB a slice): beyond this a typo such
#: as an extra zero asks for gigabytes; larger batches stop paying off long before.
MAX_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Settings:
    log_level: str = "WARNING"
    ort_threads: int | None = None
    backend: str = "auto"
    id_salt: bytes | None = None
    trusted_key: Path | None = None
    engine_cache: Path | None = None
    #: The readers' caps (the defaults where no EDGEMED_MAX_* variable lowers them).
    limits: ReaderLimits = field(default=DEFAULT_LIMITS)
    #: EDGEMED_SERIES: the series to read from a folder of several (None: by the rules).
    series: str | None = None


def trusted_key_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """``EDGEMED_TRUSTED_KEY`` as a path, or None when unset or blank.

    Separate from :func:`load_settings` so that loading a bundle does not fail over an
    unrelated bad variable (a typo in ``EDGEMED_LOG_LEVEL``).
    """
    env = os.environ if environ is None else environ
    text = env.get("EDGEMED_TRUSTED_KEY", "").strip()
    return Path(text) if text else None


def load_limits(environ: Mapping[str, str] | None = None) -> ReaderLimits:
    """The readers' caps from ``EDGEMED_MAX_*`` (the defaults where unset); a bad value
    raises UsageError. Separate from :func:`load_settings` so that reading an image does
    not fail over an unrelated bad variable (a typo in ``EDGEMED_LOG_LEVEL``)."""
    env = os.environ if environ is None else environ
    caps = {
        attr: value
        for var, attr in ReaderLimits.env_names().items()
        if (value := _positive_int(env, var))
    }
    return replace(DEFAULT_LIMITS, **caps) if caps else DEFAULT_LIMITS


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (``os.environ`` by default); bad values raise UsageError."""
    from edgemed.errors import UsageError

    env = os.environ if environ is None else environ
    threads = _positive_int(env, "EDGEMED_ORT_THREADS")
    level = env.get("EDGEMED_LOG_LEVEL", "WARNING").strip().upper() or "WARNING"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise UsageError(f"EDGEMED_LOG_LEVEL must be a logging level name, got {level!r}")
    backend = env.get("EDGEMED_BACKEND", "auto").strip() or "auto"
    salt_text = env.get("EDGEMED_ID_SALT", "").strip()
    try:
        salt = bytes.fromhex(salt_text) if salt_text else None
    except ValueError:
        salt = b""
    if salt is not None and len(salt) < 16:
        raise UsageError("EDGEMED_ID_SALT must be at least 16 bytes, given as hex")
    cache_text = env.get("EDGEMED_ENGINE_CACHE", "").strip()
    return Settings(
        engine_cache=Path(cache_text) if cache_text else None,
        log_level=level,
        ort_threads=threads,
        backend=backend,
        id_salt=salt,
        trusted_key=trusted_key_path(env),
        limits=load_limits(env),
        series=_series(env.get("EDGEMED_SERIES", "").strip() or None),
    )


def _spacing(value: Any) -> tuple[float, ...]:
    """``Options.spacing`` checked: 2 or 3 finite positive millimetres."""
    from edgemed.errors import UsageError

    problem = "spacing must be 2 or 3 positive numbers in mm: (x, y) or (x, y, z)"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise UsageError(problem)
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise UsageError(problem) from exc
    if len(numbers) not in (2, 3) or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise UsageError(problem)
    return numbers


#: What ``series`` may be: a DICOM UID (digits and dots, at most 64 characters; letters
#: tolerated, as some writers use them) or a 32-hex-digit salted id.
_SERIES = re.compile(r"[0-9A-Za-z._-]{1,64}")


def _series(value: Any) -> str | None:
    """``Options.series`` checked: None, or a UID or salted id without spaces."""
    from edgemed.errors import UsageError

    if value is None:
        return None
    if not isinstance(value, str) or not _SERIES.fullmatch(value.strip()):
        raise UsageError(
            "series must be a SeriesInstanceUID or a series id (at most 64 letters, "
            "digits, dots, '-' or '_')"
        )
    return value.strip()


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    from edgemed.errors import UsageError

    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {text!r}")
    return value


@dataclass(frozen=True)
class Options:
    """How a pipeline runs: one object from the caller down to the backend.

    Build it with :meth:`resolve` (what was given, then ``EDGEMED_*``, then defaults);
    the constructor alone reads no environment.

    Attributes:
        backend: ``auto`` or a registered backend name (``EDGEMED_BACKEND``).
        precision: which artifact runs (``fp32``, ``fp16``, ``int8``; ``bf16``: the FP32
            one in bf16 arithmetic, where a backend offers it); never substituted.
        threads: CPU threads for ONNX Runtime (``EDGEMED_ORT_THREADS``; None: cores,
            at most 8).
        engine_cache: TensorRT engine cache (``EDGEMED_ENGINE_CACHE``; None:
            ``<bundle>/engines``); the compiled CUDA kernels go beside the engines.
        batch_size: most 2D slices per backend call, 1 to :data:`MAX_BATCH_SIZE`
            (memory is taken for the largest call actually made, not for this bound).
        preprocess: ``auto``, ``cpu`` or ``cuda`` (see :data:`PREPROCESS_DEVICES`).
        cuda_graphs: replay a captured CUDA graph while calls keep one shape (a backend
            option; only backends that declare it accept it).
        check_modality: refuse DICOM inputs whose Modality the bundle does not list.
        trusted_key: ed25519 public key (PEM path or bytes, or a key object) bundles
            must be signed with (``EDGEMED_TRUSTED_KEY``; None: signatures optional).
        id_salt: salt of the input ids in results and logs (``EDGEMED_ID_SALT``;
            None: random per pipeline).
        limits: the readers' caps (``EDGEMED_MAX_*``).
        device: the accelerator, for a backend that can use several (OpenVINO: ``CPU``,
            the default, ``GPU`` or ``NPU``); None: the backend's default.
        spacing: pixel spacing in mm for inputs whose files do not state it (PNG,
            JPEG, TIFF, NPY, arrays, DICOM without PixelSpacing): ``(x, y)`` or
            ``(x, y, z)`` along the input's columns, rows and slices. A file's own
            spacing is never overridden; a volume needs all three values. None: such
            inputs get pixel counts only, no millimetres.
        series: for a folder or DICOMDIR input holding several series: the
            SeriesInstanceUID (or the salted id a message listed for it) of the one to
            read, over the bundle's ``series`` rules (``EDGEMED_SERIES``, ``--series``);
            None: chosen by the rules (:mod:`edgemed.io.series_select`).
    """

    backend: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    engine_cache: Path | None = None
    batch_size: int = 8
    preprocess: str = "auto"
    cuda_graphs: bool = False
    check_modality: bool = True
    trusted_key: Any = None
    id_salt: bytes | None = None
    limits: ReaderLimits = field(default=DEFAULT_LIMITS)
    spacing: tuple[float, ...] | None = None
    device: str | None = None
    series: str | None = None

    def __post_init__(self) -> None:
        from edgemed.errors import UsageError

        if type(self.batch_size) is not int or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UsageError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if self.spacing is not None:
            object.__setattr__(self, "spacing", _spacing(self.spacing))
        object.__setattr__(self, "series", _series(self.series))
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise UsageError("threads must be >= 1")
        if self.preprocess not in PREPROCESS_DEVICES:
            raise UsageError(
                f"preprocess must be one of {PREPROCESS_DEVICES}, got {self.preprocess!r}"
            )
        if not isinstance(self.backend, str) or not self.backend:
            raise UsageError("backend must be a backend name or 'auto'")
        if self.engine_cache is not None and not isinstance(self.engine_cache, Path):
            object.__setattr__(self, "engine_cache", Path(self.engine_cache))

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Options:
        """Options from ``given`` (``None`` values count as not given), then the
        ``EDGEMED_*`` variables of ``environ`` (``os.environ`` by default), then the
        defaults. Bad variables raise ``UsageError``.
        """
        from edgemed.errors import UsageError

        known = {f.name for f in fields(cls)}
        unknown = set(given) - known
        if unknown:
            raise UsageError(f"unknown options {sorted(unknown)}")
        s = load_settings(environ)
        from_env: dict[str, Any] = {
            "backend": s.backend,
            "threads": s.ort_threads,
            "engine_cache": s.engine_cache,
            "trusted_key": s.trusted_key,
            "id_salt": s.id_salt,
            "limits": s.limits,
            "series": s.series,
        }
        values = {k: v for k, v in from_env.items() if v is not None}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` (``None`` values leave a field as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
