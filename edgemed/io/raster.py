"""Plain raster images (PNG, JPEG, TIFF via OpenCV) and NumPy ``.npy`` arrays.

These formats carry no patient geometry: modality ``OT``, spacing 1.0, no origin or
direction. Values are kept as stored (a 16-bit PNG stays 0..65535), converted to
``float32``; the original dtype is recorded in ``metadata["dtype"]``.

Caps (:mod:`edgemed.io.read`): every file is held to ``MAX_FILE_BYTES`` before it is
read; a PNG's size from its header to ``MAX_DECOMPRESSED_BYTES`` and ``MAX_ELEMENTS``
before it is decoded; an NPY header to ``MAX_ELEMENTS``. JPEG and TIFF rely on
OpenCV's own limit on decoded pixels (``CV_IO_MAX_IMAGE_PIXELS``, 2**30 by default).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

import edgemed.io.read as limits
from edgemed.errors import InputError
from edgemed.io.image import MedicalImage

__all__ = ["read_raster", "read_npy", "RASTER_FORMATS"]

RASTER_FORMATS = ("png", "jpeg", "tiff")
# PNG colour type -> samples per pixel as stored (a palette expands to 3 when decoded).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _error(code: str, problem: str, path: object) -> InputError:
    return InputError(problem, code=code, path=path)


def _bytes(path: Path) -> np.ndarray:
    # np.fromfile + imdecode: cv2.imread cannot open every path encoding (non-ASCII
    # names on some platforms) and reports every failure as a bare None.
    limits.checked_file_size(path)
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise _error("INPUT_NOT_FOUND", "file does not exist", path) from exc
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "file cannot be opened or read", path) from exc


def _check_png_size(buffer: np.ndarray, path: Path) -> None:
    """Hold a PNG's header-declared size to the caps before OpenCV allocates it."""
    head = buffer[:26].tobytes()
    if len(head) < 26 or head[12:16] != b"IHDR":
        return  # not a well-formed PNG start: OpenCV refuses it without allocating
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    samples = _PNG_SAMPLES.get(head[25], 4)
    elements = width * height * samples
    if elements > limits.MAX_ELEMENTS:
        cap = limits.MAX_ELEMENTS
        raise _error("INPUT_INVALID", f"PNG has more than {cap} elements (MAX_ELEMENTS)", path)
    if elements * (2 if head[24] == 16 else 1) > limits.MAX_DECOMPRESSED_BYTES:
        cap = limits.MAX_DECOMPRESSED_BYTES
        problem = f"PNG decodes to more than {cap} bytes (MAX_DECOMPRESSED_BYTES)"
        raise _error("INPUT_INVALID", problem, path)


def _decode(buffer: np.ndarray, fmt: str, path: Path) -> np.ndarray:
    if fmt == "png":
        _check_png_size(buffer, path)
    try:
        if fmt == "tiff":
            # A multi-page TIFF would silently lose its other pages through imdecode.
            ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED)
            if ok and len(pages) > 1:
                raise _error(
                    "INPUT_UNSUPPORTED_FORMAT", f"TIFF has {len(pages)} pages; one is read", path
                )
            image = pages[0] if ok and pages else None
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise _error("INPUT_CORRUPT", f"{fmt.upper()} data cannot be decoded", path) from exc
    if image is None:
        raise _error("INPUT_CORRUPT", f"{fmt.upper()} data cannot be decoded", path)
    return image


def read_raster(path: str | Path, fmt: str) -> MedicalImage:
    """Read a PNG, JPEG or TIFF image.

    ``cv2.IMREAD_UNCHANGED`` keeps 16-bit and float data as stored (and also ignores
    JPEG EXIF orientation: pixels come back in stored order).

    Args:
        path: the file.
        fmt: ``"png"``, ``"jpeg"`` or ``"tiff"`` (recorded in the metadata).

    Returns:
        ``(Y, X)`` for grayscale, ``(Y, X, 3)`` RGB for colour (an alpha channel is
        dropped and ``metadata["alpha_dropped"]`` says so).

    Raises:
        InputError: ``INPUT_CORRUPT`` when the bytes do not decode,
            ``INPUT_UNSUPPORTED_FORMAT`` for multi-page TIFF or odd channel counts.
    """
    path = Path(path)
    if fmt not in RASTER_FORMATS:
        raise _error("INPUT_UNSUPPORTED_FORMAT", f"raster format {fmt!r} is not read", path)
    buffer = _bytes(path)
    if buffer.size == 0:
        raise _error("INPUT_TRUNCATED", "file is empty", path)
    image = _decode(buffer, fmt, path)
    dtype = str(image.dtype)
    alpha_dropped = False
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        alpha_dropped = image.shape[2] == 4
        code = cv2.COLOR_BGRA2RGB if alpha_dropped else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)  # OpenCV decodes colour as BGR(A)
    elif image.ndim != 2:
        raise _error("INPUT_UNSUPPORTED_FORMAT", f"{image.shape} image layout is not read", path)
    colour = image.ndim == 3
    array = np.ascontiguousarray(image, dtype=np.float32)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))  # float TIFF only
    if bad:
        raise _error("INPUT_INVALID", f"image holds {bad} non-finite values", path)
    metadata = {"format": fmt, "dtype": dtype, "alpha_dropped": alpha_dropped}
    return MedicalImage(
        array=array,
        spacing=(1.0, 1.0),
        modality="OT",
        photometric="RGB" if colour else "MONOCHROME2",
        metadata=metadata,
    )


def read_npy(path: str | Path) -> MedicalImage:
    """Read a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` numeric array from ``.npy``.

    The header is checked before any data is loaded: shape, dtype (bool, integer or
    float) and that the file holds every byte the header describes. Pickled (object)
    arrays are never loaded. A 3D array is always a volume, never a colour image.

    Raises:
        InputError: ``INPUT_TRUNCATED``, ``INPUT_CORRUPT`` (bad header),
            ``INPUT_UNSUPPORTED_FORMAT`` (other dtypes or dimensions), ``INPUT_INVALID``
            (non-finite values, too large).
    """
    path = Path(path)
    limits.checked_file_size(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            data_offset = handle.tell()
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise _error("INPUT_NOT_FOUND", "file does not exist", path) from exc
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "file cannot be opened or read", path) from exc
    except Exception as exc:  # ValueError and friends from a malformed header
        raise _error(
            "INPUT_CORRUPT", f"NPY header is invalid ({type(exc).__name__})", path
        ) from exc

    if dtype.hasobject or dtype.kind not in "biuf":
        raise _error("INPUT_UNSUPPORTED_FORMAT", f"NPY dtype {dtype} is not read", path)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise _error("INPUT_UNSUPPORTED_FORMAT", f"NPY array of shape {shape} is not 2D/3D", path)
    count = int(np.prod(shape, dtype=object))
    if count > limits.MAX_ELEMENTS:
        cap = limits.MAX_ELEMENTS
        raise _error("INPUT_INVALID", f"array has more than {cap} elements (MAX_ELEMENTS)", path)
    if size < data_offset + count * dtype.itemsize:
        raise _error("INPUT_TRUNCATED", "NPY file is shorter than its header describes", path)
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        array = np.ascontiguousarray(stored, dtype=np.float32)
    except MemoryError as exc:
        raise _error("INPUT_INVALID", "array too large to read here", path) from exc
    except Exception as exc:
        raise _error("INPUT_CORRUPT", f"NPY data unreadable ({type(exc).__name__})", path) from exc
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise _error("INPUT_INVALID", f"array holds {bad} non-finite values", path)
    metadata = {"format": "npy", "dtype": str(dtype), "fortran_order": bool(fortran)}
    spacing = (1.0,) * len(shape)
    return MedicalImage(array=array, spacing=spacing, modality="OT", metadata=metadata)
