"""Where a reader's bytes come from: a file on disk, or bytes held in memory.

``read_image`` and ``read_series`` accept a path, ``bytes``/``bytearray``/``memoryview``
or a binary file object. :func:`resolve_source` turns each into one :class:`Source`
that every reader understands, and this module holds the few things all readers share:
the file-size cap, the content sniffing that picks a format, the error boundary. It
imports no reader, so readers and :mod:`edgemed.io.read` can both import it.

Bytes and file objects never touch the disk: readers parse them from memory
(``io.BytesIO``, ``np.frombuffer``, ``cv2.imdecode``).
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from edgemed.errors import EdgemedError, InputError, UsageError
from edgemed.limits import ReaderLimits
from edgemed.settings import load_limits

__all__ = [
    "SNIFF_BYTES",
    "Source",
    "SourceLike",
    "beyond_cap",
    "describe",
    "format_from_name",
    "guard",
    "has_preamble",
    "input_error",
    "resolve_limits",
    "resolve_source",
    "sniff_format",
]

#: What ``read_image`` accepts: a path, bytes, or a binary file object (read from its
#: current position to its end).
SourceLike = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

#: Bytes looked at to recognise a format from its content.
SNIFF_BYTES = 1024
# Compressed bytes inflated to find SNIFF_BYTES of a gzip stream (its header may carry
# a long file name, and a header compresses poorly).
_GZIP_SNIFF_BYTES = 1 << 16
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
)
_EXTENSIONS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".dcm": "dicom",
    ".dicom": "dicom",
    "": "dicom",
}

_T = TypeVar("_T")


def _suffix(name: str) -> str:
    """The lower-case extension of a file name (``.nii.gz`` counts as one)."""
    name = name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def input_error(code: str, problem: str, where: object) -> InputError:
    """An :class:`~edgemed.errors.InputError`; ``where`` is a path, a name or None."""
    return InputError(problem, code=code, path=where)


def beyond_cap(what: str, cap: str, limits: ReaderLimits, where: object) -> InputError:
    """``INPUT_INVALID`` for an input beyond the ``cap`` field of ``limits``.

    The message names the cap and the variable that lowers or raises it, never a value
    read from the input.
    """
    value = getattr(limits, cap)
    problem = f"{what} beyond the {value} cap ({cap}, EDGEMED_{cap.upper()})"
    return input_error("INPUT_INVALID", problem, where)


@dataclass(frozen=True, eq=False)  # eq=False: comparing would compare whole inputs
class Source:
    """One input as the readers see it: a file on disk or bytes in memory.

    Exactly one of ``path`` and ``data`` is set. Build it with :func:`resolve_source`.

    Attributes:
        path: the file (or series directory) on disk.
        data: the whole input in memory. Always immutable ``bytes``: a buffer the
            caller could change while it is checked and decoded would make the checks
            worthless.
        name: the file name whose extension is the fallback when the content does not
            say what the format is (a path's name, a file object's ``.name``); empty
            for bytes.
        where: what error messages name: the path, the file object's name, or None
            (bytes never put a path in a message).
    """

    path: Path | None = None
    data: bytes | None = None
    name: str = ""
    where: object = None

    @property
    def suffix(self) -> str:
        """The lower-case extension of :attr:`name` (``.nii.gz`` counts as one)."""
        return _suffix(self.name)

    def open(self) -> io.BufferedIOBase:
        """A binary stream positioned at the start (the caller closes it).

        Raises:
            InputError: ``INPUT_NOT_FOUND`` or ``INPUT_UNREADABLE`` for a path.
        """
        if self.data is not None:
            return io.BytesIO(self.data)  # shares the bytes object: no copy
        assert self.path is not None
        try:
            return open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise input_error("INPUT_NOT_FOUND", "file does not exist", self.where) from exc
        except OSError as exc:
            raise input_error(
                "INPUT_UNREADABLE", "file cannot be opened or read", self.where
            ) from exc

    def head(self, count: int) -> bytes:
        """The first ``count`` bytes (fewer when the input is shorter)."""
        if self.data is not None:
            return self.data[:count]
        with self.open() as handle:
            try:
                return handle.read(count)
            except OSError as exc:
                raise input_error("INPUT_UNREADABLE", "file cannot be read", self.where) from exc

    def size(self, limits: ReaderLimits) -> int:
        """Length in bytes, refused beyond ``limits.max_file_bytes``.

        Raises:
            InputError: ``INPUT_NOT_FOUND``, ``INPUT_UNREADABLE`` or ``INPUT_INVALID``.
        """
        if self.data is not None:
            size = len(self.data)
        else:
            assert self.path is not None
            try:
                size = self.path.stat().st_size
            except FileNotFoundError as exc:
                raise input_error("INPUT_NOT_FOUND", "file does not exist", self.where) from exc
            except OSError as exc:
                raise input_error(
                    "INPUT_UNREADABLE", "file cannot be examined", self.where
                ) from exc
        if size > limits.max_file_bytes:
            raise beyond_cap("file size", "max_file_bytes", limits, self.where)
        return size


def _file_name(handle: Any) -> str | None:
    name = getattr(handle, "name", None)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return name if isinstance(name, str) else None  # open(fd).name is an int


def _read_capped(handle: Any, limits: ReaderLimits, where: object) -> bytes:
    """The rest of a binary file object, refused (before reading it) beyond the cap."""
    cap = limits.max_file_bytes
    try:
        remaining = None
        seekable = getattr(handle, "seekable", None)
        if seekable is not None and seekable():  # the size up front: refuse unread
            start = handle.tell()
            remaining = handle.seek(0, io.SEEK_END) - start
            handle.seek(start)
        if remaining is not None and remaining > cap:
            raise beyond_cap("file size", "max_file_bytes", limits, where)
        # One read of the known size is one copy; otherwise read in pieces (a single
        # read(cap + 1) would allocate the whole cap up front) and stop one byte past it.
        parts, total = [], 0
        want = remaining if remaining is not None else 1 << 20
        while total <= cap:
            chunk = handle.read(min(max(want, 1), cap + 1 - total))
            if chunk is None:  # a non-blocking stream with nothing ready
                raise input_error(
                    "INPUT_UNREADABLE", "file object returned no data (non-blocking)", where
                )
            if not isinstance(chunk, bytes):
                raise UsageError("read_image needs a binary file object (opened with 'rb')")
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            want = 1 << 20
    except OSError as exc:
        raise input_error("INPUT_UNREADABLE", "file object cannot be read", where) from exc
    if total > cap:
        raise beyond_cap("file size", "max_file_bytes", limits, where)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def resolve_limits(limits: ReaderLimits | None) -> ReaderLimits:
    """``limits``, or the caps the environment sets (``EDGEMED_MAX_*``) when None.

    The public entry points call this once per call, so an API user gets the same caps
    as the CLI without any global state.

    Raises:
        UsageError: ``limits`` is not a ReaderLimits, or an ``EDGEMED_*`` variable is bad.
    """
    if limits is None:
        return load_limits()
    if not isinstance(limits, ReaderLimits):
        raise UsageError(f"limits must be a ReaderLimits, not {type(limits).__name__}")
    return limits


def resolve_source(source: SourceLike | Source, limits: ReaderLimits) -> Source:
    """The :class:`Source` for what a caller handed to a reader.

    A path is not opened here. Bytes are held to ``limits.max_file_bytes``; a
    ``bytearray`` or ``memoryview`` is copied once into ``bytes`` (see
    :attr:`Source.data`). A binary file object is read from its current position to its
    end, at most ``max_file_bytes`` bytes (the object stays open).

    Raises:
        UsageError: for anything else (a text-mode file, a number, a closed file).
        InputError: ``INPUT_INVALID`` beyond the cap, ``INPUT_UNREADABLE`` when a file
            object fails to read.
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source))
        return Source(path=path, name=path.name, where=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        nbytes = source.nbytes if isinstance(source, memoryview) else len(source)
        if nbytes > limits.max_file_bytes:  # before any copy
            raise beyond_cap("input size", "max_file_bytes", limits, None)
        data = source if type(source) is bytes else bytes(source)
        return Source(data=data)
    if callable(getattr(source, "read", None)):
        if getattr(source, "closed", False):
            raise UsageError("read_image was given a closed file object")
        name = _file_name(source)
        data = _read_capped(source, limits, name)
        return Source(data=data, name=Path(name).name if name else "", where=name)
    raise UsageError(
        f"read_image expects a path, bytes or a binary file object, not {type(source).__name__}"
    )


def has_preamble(head: bytes) -> bool:
    """Whether the first 132 bytes of a file hold the DICOM ``DICM`` preamble."""
    return head[128:132] == b"DICM"


def _is_nifti(head: bytes) -> bool:
    """NIfTI-1 (magic at byte 344) or NIfTI-2 (magic at byte 4) single-file header.

    Header/image pairs (magic ``ni1``/``ni2``, ``.hdr`` + ``.img``) are not read.
    """
    sizeof_540 = head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # either endian
    return head[344:348] == b"n+1\x00" or (sizeof_540 and head[4:8] == b"n+2\x00")


def format_from_name(name: str) -> str | None:
    """The format a file name's extension suggests; no extension means DICOM.

    Bytes have no name and so count as a file without an extension: tried as DICOM,
    whose parser then only accepts data that really holds DICOM elements.
    """
    return _EXTENSIONS.get(_suffix(name))


def sniff_format(source: Source) -> str | None:
    """The format of a file or bytes: from the content, else from the name.

    Returns:
        ``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"npy"``, or
        ``None`` for something no reader takes.

    Raises:
        InputError: ``INPUT_NOT_FOUND`` or ``INPUT_UNREADABLE`` for a path.
    """
    head = source.head(SNIFF_BYTES)
    if has_preamble(head):  # checked first: a DICOM file may also look like a TIFF
        return "dicom"
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature):
            return fmt
    if _is_nifti(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        # Inflate just the start, from a prefix of the compressed data: a stream cut short
        # is still recognised by its header (and then refused as truncated by the reader).
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            unpacked = inflater.decompress(source.head(_GZIP_SNIFF_BYTES), SNIFF_BYTES)
        except zlib.error:  # damaged gzip: decided by the name below
            unpacked = b""
        if _is_nifti(unpacked):
            return "nifti"
    return format_from_name(source.name)


def guard(read: Callable[[], _T], where: object) -> _T:
    """Run ``read()`` so that only :class:`~edgemed.errors.EdgemedError` leaves it.

    The public entry points' boundary: a failure nobody anticipated becomes
    ``INPUT_CORRUPT`` chained to the original, memory exhaustion ``INPUT_INVALID``.
    """
    try:
        return read()
    except EdgemedError:
        raise
    except MemoryError as exc:
        raise input_error("INPUT_INVALID", "image too large to read here", where) from exc
    except BaseException as exc:  # the reader boundary: no third-party exception escapes
        # BaseException: native decoders' panics (pyo3 PanicException) are not Exceptions.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        # Only the type name: third-party messages may quote values from the file.
        raise input_error(
            "INPUT_CORRUPT", f"image could not be read ({type(exc).__name__})", where
        ) from exc


def describe(source: object) -> object:
    """What an error names for ``source`` before it is resolved (no I/O)."""
    if isinstance(source, Source):
        return source.where
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(os.fspath(source))
        except TypeError:
            return None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None
    return _file_name(source) if callable(getattr(source, "read", None)) else None
