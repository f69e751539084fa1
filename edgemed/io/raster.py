"""Plain raster images (PNG, JPEG, TIFF via OpenCV) and NumPy ``.npy`` arrays.

These formats carry no patient geometry: modality ``OT``, spacing 1.0 as a placeholder
(``metadata["spacing_source"]`` ``unknown``: no millimetres are derived from it), no
origin or direction. JPEG is lossy by definition (``metadata["lossy_compression"]``).
Values are kept as stored (a 16-bit PNG stays 0..65535), converted to ``float32``; the
original dtype is recorded in ``metadata["dtype"]``.

Caps (:class:`~edgemed.limits.ReaderLimits`): every file (or bytes) is held to
``max_file_bytes`` before it is read; a PNG's size from its header to
``max_decompressed_bytes`` and ``max_elements`` before it is decoded; an NPY header to
``max_elements``. JPEG and TIFF rely on OpenCV's own limit on decoded pixels
(``CV_IO_MAX_IMAGE_PIXELS``, 2**30 by default).

Bytes are decoded where they lie: ``cv2.imdecode`` and the NPY array read a view of
them, never a copy of the encoded input.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from edgemed.errors import InputError
from edgemed.io.image import MedicalImage
from edgemed.io.source import Source, SourceLike, beyond_cap, input_error, resolve_source
from edgemed.limits import ReaderLimits

__all__ = ["read_raster", "read_npy", "RASTER_FORMATS"]

RASTER_FORMATS = ("png", "jpeg", "tiff")
# PNG colour type -> samples per pixel as stored (a palette expands to 3 when decoded).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _bytes(src: Source, limits: ReaderLimits) -> np.ndarray:
    src.size(limits)
    if src.data is not None:
        return np.frombuffer(src.data, dtype=np.uint8)  # read-only view: imdecode only reads
    # np.fromfile + imdecode: cv2.imread cannot open every path encoding (non-ASCII
    # names on some platforms) and reports every failure as a bare None.
    assert src.path is not None
    try:
        return np.fromfile(src.path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise input_error("INPUT_NOT_FOUND", "file does not exist", src.where) from exc
    except OSError as exc:
        raise input_error("INPUT_UNREADABLE", "file cannot be opened or read", src.where) from exc


def _check_png_size(buffer: np.ndarray, limits: ReaderLimits, where: object) -> None:
    """Hold a PNG's header-declared size to the caps before OpenCV allocates it."""
    head = buffer[:26].tobytes()
    if len(head) < 26 or head[12:16] != b"IHDR":
        return  # not a well-formed PNG start: OpenCV refuses it without allocating
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    samples = _PNG_SAMPLES.get(head[25], 4)
    elements = width * height * samples
    if elements > limits.max_elements:
        raise beyond_cap("PNG elements", "max_elements", limits, where)
    if elements * (2 if head[24] == 16 else 1) > limits.max_decompressed_bytes:
        raise beyond_cap("decoded PNG", "max_decompressed_bytes", limits, where)


def _decode(buffer: np.ndarray, fmt: str, limits: ReaderLimits, where: object) -> np.ndarray:
    if fmt == "png":
        _check_png_size(buffer, limits, where)
    try:
        if fmt == "tiff":
            # A multi-page TIFF would silently lose its other pages through imdecode.
            ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED)
            if ok and len(pages) > 1:
                raise input_error(
                    "INPUT_UNSUPPORTED_FORMAT", f"TIFF has {len(pages)} pages; one is read", where
                )
            image = pages[0] if ok and pages else None
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise input_error("INPUT_CORRUPT", f"{fmt.upper()} data cannot be decoded", where) from exc
    if image is None:
        raise input_error("INPUT_CORRUPT", f"{fmt.upper()} data cannot be decoded", where)
    return image


def read_raster(source: SourceLike | Source, fmt: str, *, limits: ReaderLimits) -> MedicalImage:
    """Read a PNG, JPEG or TIFF image.

    ``cv2.IMREAD_UNCHANGED`` keeps 16-bit and float data as stored (and also ignores
    JPEG EXIF orientation: pixels come back in stored order).

    Args:
        source: the file, its bytes, a binary file object, or a resolved Source.
        fmt: ``"png"``, ``"jpeg"`` or ``"tiff"`` (recorded in the metadata).
        limits: the caps.

    Returns:
        ``(Y, X)`` for grayscale, ``(Y, X, 3)`` RGB for colour (an alpha channel is
        dropped and ``metadata["alpha_dropped"]`` says so).

    Raises:
        InputError: ``INPUT_CORRUPT`` when the bytes do not decode,
            ``INPUT_UNSUPPORTED_FORMAT`` for multi-page TIFF or odd channel counts.
    """
    src = resolve_source(source, limits)
    where = src.where
    if fmt not in RASTER_FORMATS:
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT", "raster format is not one of png, jpeg, tiff", where
        )
    buffer = _bytes(src, limits)
    if buffer.size == 0:
        raise input_error("INPUT_TRUNCATED", "file is empty", where)
    image = _decode(buffer, fmt, limits, where)
    dtype = str(image.dtype)
    alpha_dropped = False
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        alpha_dropped = image.shape[2] == 4
        code = cv2.COLOR_BGRA2RGB if alpha_dropped else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)  # OpenCV decodes colour as BGR(A)
    elif image.ndim != 2:
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT", f"{image.shape} image layout is not read", where
        )
    colour = image.ndim == 3
    array = np.ascontiguousarray(image, dtype=np.float32)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))  # float TIFF only
    if bad:
        raise input_error("INPUT_INVALID", f"image holds {bad} non-finite values", where)
    metadata = {
        "format": fmt,
        "dtype": dtype,
        "alpha_dropped": alpha_dropped,
        "spacing_source": "unknown",
        "lossy_compression": fmt == "jpeg",
    }
    if fmt == "jpeg":
        metadata["lossy_method"] = ["ISO_10918_1"]  # DICOM's term for JPEG
    return MedicalImage(
        array=array,
        spacing=(1.0, 1.0),
        modality="OT",
        photometric="RGB" if colour else "MONOCHROME2",
        metadata=metadata,
    )


def _npy_header(src: Source) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of an NPY file or bytes."""
    where = src.where
    try:
        with src.open() as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            data_offset = handle.tell()
    except OSError as exc:
        raise input_error("INPUT_UNREADABLE", "file cannot be read", where) from exc
    except InputError:  # from src.open()
        raise
    except Exception as exc:  # ValueError and friends from a malformed header
        raise input_error(
            "INPUT_CORRUPT", f"NPY header is invalid ({type(exc).__name__})", where
        ) from exc
    return shape, fortran, dtype, data_offset


def read_npy(source: SourceLike | Source, *, limits: ReaderLimits) -> MedicalImage:
    """Read a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` numeric array from ``.npy``.

    The header is checked before any data is loaded: shape, dtype (bool, integer or
    float) and that the file holds every byte the header describes. Pickled (object)
    arrays are never loaded. A 3D array is always a volume, never a colour image.

    Args:
        source: the file, its bytes, a binary file object, or a resolved Source.
        limits: the caps.

    Raises:
        InputError: ``INPUT_TRUNCATED``, ``INPUT_CORRUPT`` (bad header),
            ``INPUT_UNSUPPORTED_FORMAT`` (other dtypes or dimensions), ``INPUT_INVALID``
            (non-finite values, too large).
    """
    src = resolve_source(source, limits)
    where = src.where
    size = src.size(limits)
    shape, fortran, dtype, data_offset = _npy_header(src)

    if dtype.hasobject or dtype.kind not in "biuf":
        # The kind only: a structured dtype's field names are text from the file.
        problem = f"NPY data of kind {dtype.kind!r} is not read (bool, int or float only)"
        raise input_error("INPUT_UNSUPPORTED_FORMAT", problem, where)
    if len(shape) not in (2, 3) or min(shape) < 1:
        problem = f"NPY array with {len(shape)} dimensions (or an empty one) is not 2D/3D"
        raise input_error("INPUT_UNSUPPORTED_FORMAT", problem, where)
    count = int(np.prod(shape, dtype=object))
    if count > limits.max_elements:
        raise beyond_cap("array elements", "max_elements", limits, where)
    if size < data_offset + count * dtype.itemsize:
        raise input_error("INPUT_TRUNCATED", "NPY file is shorter than its header describes", where)
    order: Literal["F", "C"] = "F" if fortran else "C"
    try:
        # A view of the bytes, or of the file mapped read-only: only the float32 result
        # is allocated.
        buffer = src.data if src.path is None else np.memmap(src.path, np.uint8, "r")
        stored = np.ndarray(shape, dtype, buffer=buffer, offset=data_offset, order=order)
        array = np.ascontiguousarray(stored, dtype=np.float32)
    except MemoryError as exc:
        raise input_error("INPUT_INVALID", "array too large to read here", where) from exc
    except Exception as exc:
        raise input_error(
            "INPUT_CORRUPT", f"NPY data unreadable ({type(exc).__name__})", where
        ) from exc
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise input_error("INPUT_INVALID", f"array holds {bad} non-finite values", where)
    metadata = {
        "format": "npy",
        "dtype": str(dtype),
        "fortran_order": bool(fortran),
        "spacing_source": "unknown",
    }
    spacing = (1.0,) * len(shape)
    return MedicalImage(array=array, spacing=spacing, modality="OT", metadata=metadata)
