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
    EDGEMED_MAX_FILE_BYTES, EDGEMED_MAX_DECOMPRESSED_BYTES, EDGEMED_MAX_FRAMES,
    EDGEMED_MAX_ELEMENTS: the readers' caps (see ``edgemed.io.read``); the CLI applies
        them at start. A small device lowers them so hostile files are refused before
        they can exhaust its memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["READER_CAPS", "Settings", "load_settings", "trusted_key_path"]

#: Caps of edgemed.io.read that EDGEMED_<NAME> overrides (positive integers).
READER_CAPS = ("MAX_FILE_BYTES", "MAX_DECOMPRESSED_BYTES", "MAX_FRAMES", "MAX_ELEMENTS")


@dataclass(frozen=True)
class Settings:
    log_level: str = "WARNING"
    ort_threads: int | None = None
    backend: str = "auto"
    id_salt: bytes | None = None
    trusted_key: Path | None = None
    engine_cache: Path | None = None
    #: Reader caps to apply (name in :data:`READER_CAPS` -> value); empty: the defaults.
    reader_caps: dict[str, int] = field(default_factory=dict)


def trusted_key_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """``EDGEMED_TRUSTED_KEY`` as a path, or None when unset or blank.

    Separate from :func:`load_settings` so that loading a bundle does not fail over an
    unrelated bad variable (a typo in ``EDGEMED_LOG_LEVEL``).
    """
    env = os.environ if environ is None else environ
    text = env.get("EDGEMED_TRUSTED_KEY", "").strip()
    return Path(text) if text else None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (``os.environ`` by default); bad values raise UsageError."""
    from edgemed.errors import UsageError

    env = os.environ if environ is None else environ
    threads = _positive_int(env, "EDGEMED_ORT_THREADS")
    caps = {name: value for name in READER_CAPS if (value := _positive_int(env, "EDGEMED_" + name))}
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
        reader_caps=caps,
    )


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
