"""``read_image``: the one entry point for every image file or folder edgemed reads.

The format is found from the content first (DICOM ``DICM`` preamble, NIfTI header
magic, also inside gzip, PNG/JPEG/TIFF/NPY signatures) and only then from the name
(``.dcm`` or no extension: DICOM parsed with ``force=True``; ``.nii``, ``.nii.gz``,
``.png``, ``.jpg``, ``.tif``, ``.npy``). A directory is one DICOM series.

Every failure is an :class:`~edgemed.errors.InputError` (or its subclass
:class:`~edgemed.errors.DecoderMissingError`) with one of these stable codes; no other
exception type leaves :func:`read_image`:

``INPUT_NOT_FOUND``
    The path does not exist.
``INPUT_UNREADABLE``
    It exists but cannot be opened or listed (permissions, I/O error).
``INPUT_UNSUPPORTED_FORMAT``
    Not an image edgemed reads: unknown bytes, a non-image file, 4D NIfTI, multi-page
    TIFF, an unsupported photometric interpretation or dtype.
``INPUT_NO_PIXEL_DATA``
    A valid DICOM object without pixel data (RT plan, structured report, DICOMDIR).
``INPUT_TRUNCATED``
    The file ends before the data its header describes (including an empty file).
``INPUT_CORRUPT``
    The bytes are there but do not parse or decode.
``INPUT_INVALID``
    Header values that make no sense (bad geometry, bit depths, non-finite values,
    lookup-table indices outside the table), or an input beyond one of the caps below.
``INPUT_DECODER_MISSING``
    Compressed DICOM whose decoder is not installed: ``pip install "edgemed[dicom]"``.
``INPUT_UNSUPPORTED_TRANSFER_SYNTAX``
    A DICOM transfer syntax nobody can decode (unknown or private).
``INPUT_SERIES_INCONSISTENT``
    Slices (or frames) that do not form one evenly spaced grid: different sizes,
    spacing or orientation, duplicate positions, uneven steps, sheared stacks.
``INPUT_MULTIPLE_SERIES``
    A directory with more than one DICOM series.
``INPUT_EMPTY_SERIES``
    A directory with no DICOM image files.

Error messages name the path and the problem, never a value read from the file.

Caps. Hostile or broken files must not make a reader allocate, inflate or loop without
bound, so every reader checks these module constants *before* the work they limit and
refuses with ``INPUT_INVALID`` beyond them. Readers look them up at call time, so a
deployment may lower them (``edgemed.io.read.MAX_FILE_BYTES = ...``) before reading.

:data:`MAX_FILE_BYTES`
    Size of one file on disk (a DICOM file, a NIfTI file, a raster or NPY file).
:data:`MAX_DECOMPRESSED_BYTES`
    Bytes produced by decompression or decoding: the inflated dataset of a Deflated
    Explicit VR Little Endian DICOM file (measured while inflating, in bounded memory,
    before anything is kept), the decoded stored pixel data of a DICOM file (computed
    from the header before decoding), NIfTI data (uncompressed size, from the header)
    and PNG pixels (from its header).
:data:`MAX_FRAMES`
    Frames of one multi-frame DICOM file, and files in one DICOM series directory
    (counted before any of them is parsed).
:data:`MAX_ELEMENTS`
    Array elements (rows x columns x frames x samples) of any image; the ``float32``
    result takes four bytes each.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from edgemed.errors import EdgemedError, InputError, UsageError
from edgemed.io.image import MedicalImage

__all__ = [
    "read_image",
    "detect_format",
    "checked_file_size",
    "INPUT_ERROR_CODES",
    "MAX_FILE_BYTES",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_FRAMES",
    "MAX_ELEMENTS",
]

#: Largest file read (4 GiB + 16 MiB): the largest 16-bit native pixel data the element
#: cap allows, plus room for headers.
MAX_FILE_BYTES = 2**32 + 2**24
#: Largest output of any decompression or decoding (4 GiB): 2**31 16-bit samples.
MAX_DECOMPRESSED_BYTES = 2**32
#: Most frames in one DICOM file, and files in one series directory. Cine loops,
#: tomosynthesis and CT/MR series stay in the low thousands; whole-slide tiles are not
#: volumes.
MAX_FRAMES = 2**14
#: Most array elements in one image (2**31: 8 GiB as float32).
MAX_ELEMENTS = 2**31

INPUT_ERROR_CODES = (
    "INPUT_NOT_FOUND",
    "INPUT_UNREADABLE",
    "INPUT_UNSUPPORTED_FORMAT",
    "INPUT_NO_PIXEL_DATA",
    "INPUT_TRUNCATED",
    "INPUT_CORRUPT",
    "INPUT_INVALID",
    "INPUT_DECODER_MISSING",
    "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
    "INPUT_SERIES_INCONSISTENT",
    "INPUT_MULTIPLE_SERIES",
    "INPUT_EMPTY_SERIES",
)

_SNIFF_BYTES = 1024
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


def _is_nifti(head: bytes) -> bool:
    """NIfTI-1 (magic at byte 344) or NIfTI-2 (magic at byte 4) single-file header.

    Header/image pairs (magic ``ni1``/``ni2``, ``.hdr`` + ``.img``) are not read.
    """
    sizeof_540 = head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # either endian
    return head[344:348] == b"n+1\x00" or (sizeof_540 and head[4:8] == b"n+2\x00")


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """What ``read_image`` would read ``path`` as.

    Returns:
        ``"dicom-series"``, ``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``, ``"tiff"``,
        ``"npy"``, or ``None`` for a file it does not read.

    Raises:
        InputError: ``INPUT_NOT_FOUND`` or ``INPUT_UNREADABLE``.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom-series"
    if not path.exists():
        raise InputError("file does not exist", code="INPUT_NOT_FOUND", path=path)
    if not path.is_file():  # a FIFO or device would block or never end
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InputError(
            "file cannot be opened or read", code="INPUT_UNREADABLE", path=path
        ) from exc

    if head[128:132] == b"DICM":  # checked first: a DICOM file may also look like a TIFF
        return "dicom"
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature):
            return fmt
    if _is_nifti(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(_SNIFF_BYTES)
        except (OSError, EOFError, zlib.error):  # damaged gzip: decided by the name below
            inner = b""
        if _is_nifti(inner):
            return "nifti"
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _EXTENSIONS.get(Path(name).suffix)


def checked_file_size(path: Path) -> int:
    """Size of the file at ``path`` in bytes, refused beyond :data:`MAX_FILE_BYTES`.

    Raises:
        InputError: ``INPUT_NOT_FOUND``, ``INPUT_UNREADABLE``, or ``INPUT_INVALID`` for a
            file larger than the cap.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise InputError("file does not exist", code="INPUT_NOT_FOUND", path=path) from exc
    except OSError as exc:
        raise InputError("file cannot be examined", code="INPUT_UNREADABLE", path=path) from exc
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"file is larger than the {MAX_FILE_BYTES}-byte cap (MAX_FILE_BYTES)",
            code="INPUT_INVALID",
            path=path,
        )
    return size


def _read(path: Path) -> MedicalImage:
    # Readers are imported on first use so that `import edgemed` stays fast on devices.
    fmt = detect_format(path)
    if fmt == "dicom-series":
        from edgemed.io.series import read_dicom_series

        return read_dicom_series(path)
    if fmt is not None and checked_file_size(path) == 0:
        raise InputError("file is empty", code="INPUT_TRUNCATED", path=path)
    if fmt == "dicom":
        from edgemed.io.dicom import read_dicom

        return read_dicom(path)
    if fmt == "nifti":
        from edgemed.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "npy":
        from edgemed.io.raster import read_npy

        return read_npy(path)
    if fmt in ("png", "jpeg", "tiff"):
        from edgemed.io.raster import read_raster

        return read_raster(path, fmt)
    raise InputError(
        "not an image format edgemed reads", code="INPUT_UNSUPPORTED_FORMAT", path=path
    )


def read_image(path: str | os.PathLike[str]) -> MedicalImage:
    """Read a DICOM file or series directory, NIfTI, PNG/JPEG/TIFF or NPY image.

    Args:
        path: a file, or a directory holding one DICOM series.

    Returns:
        A :class:`~edgemed.io.image.MedicalImage` following its documented conventions.

    Raises:
        InputError: with one of the codes in the module docstring (also for failures
            nobody anticipated, as ``INPUT_CORRUPT`` chained to the original).
        UsageError: ``path`` is not a path at all.
    """
    try:
        target = Path(os.fspath(path))
    except TypeError as exc:
        raise UsageError(f"read_image expects a path, not {type(path).__name__}") from exc
    try:
        return _read(target)
    except EdgemedError:
        raise
    except MemoryError as exc:
        raise InputError("image too large to read here", code="INPUT_INVALID", path=target) from exc
    except BaseException as exc:  # the reader boundary: no third-party exception escapes
        # BaseException: native decoders' panics (pyo3 PanicException) are not Exceptions.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        # Only the type name: third-party messages may quote values from the file.
        raise InputError(
            f"image could not be read ({type(exc).__name__})", code="INPUT_CORRUPT", path=target
        ) from exc
