"""Small file helpers every layer uses: atomic writes, private files, hashes.

Here, at the bottom of the layers, so that the bundle, the engine cache, the CUDA
kernels' cubins and the result writers share one implementation without importing each
other.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemed.errors import BackendError, OutputError

__all__ = [
    "atomic_write",
    "check_private",
    "json_text",
    "sha256_file",
    "write_json",
    "write_private",
]


def _fsync(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it.

    Raises:
        OutputError: ``OUTPUT_WRITE_FAILED`` (directory unwritable, disk full, ...).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Keep the real suffix last: some writers pick the format from it. os.open with
        # 0o666 lets the umask decide the final mode (mkstemp would leave 0600).
        tmp = str(path.parent / f".tmp-{secrets.token_hex(8)}-{path.name}")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        write(tmp)
        _fsync(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        tmp = None
        _fsync(path.parent, directory=True)  # and the rename survives a power cut
    except OSError as exc:
        raise OutputError(f"cannot write {path.name} ({exc.strerror or exc})", path=path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_text(data: Any) -> str:
    """``data`` as the indented JSON text :func:`write_json` writes (front-ends that
    send a result instead of writing it, such as the Triton model, send this text)."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json_text(data)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (owner read/write only).

    The temporary file is narrowed to 0600 before any byte is written, so the plan is
    never readable by others, not even half-written.

    Raises:
        OutputError: ``OUTPUT_WRITE_FAILED`` (directory unwritable, disk full, ...).
    """

    def write(tmp: str) -> None:
        os.chmod(tmp, 0o600)
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def check_private(*paths: Path, what: str) -> None:
    """Refuse files (and their directories) that someone else could have written.

    Plans' sidecars and the kernels' cubins are not signed: what makes them trustworthy
    is that only this user (or root) can write the cache. Executable code another user
    can replace is never loaded (``ENGINE_INTEGRITY``); ``what`` names it in the message.
    """
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    for path in paths:
        st = path.stat()
        kind_ok = stat.S_ISDIR(st.st_mode) if path.is_dir() else stat.S_ISREG(st.st_mode)
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        foreign = uid is not None and st.st_uid not in (uid, 0)
        if not kind_ok or writable or foreign:
            who = "owned by another user" if foreign else "writable by other users"
            raise BackendError(
                f"{path.name} is {who}; {what} is executable code, so it is not loaded "
                "(rebuild it in a cache only you can write: --cache DIR, or chmod go-w)",
                code="ENGINE_INTEGRITY",
                path=path,
            )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
