"""NIfTI-1/NIfTI-2 single-file reader (``.nii``, ``.nii.gz``).

nibabel indexes the data ``[i, j, k]`` with ``i`` fastest in the file and maps indices
to RAS+ millimetres through the affine. edgemed wants ``(Z, Y, X)`` arrays in DICOM LPS:
the bytes, read in file order, are exactly a C-ordered ``(k, j, i)`` array; the zooms
are reversed to match, and the affine is turned from RAS into LPS by negating its first
two rows.

Hostile input. edgemed checks the header itself before any data is read, and reads the
data itself (nibabel only turns the checked header into an affine), so a header cannot
make it allocate or inflate more than the header honestly describes:

* ``sizeof_hdr`` must be 348 (NIfTI-1) or 540 (NIfTI-2), in either byte order, else
  ``INPUT_CORRUPT``; the magic must be ``n+1`` (at byte 344) or ``n+2`` (at byte 4),
  ``ni1``/``ni2`` (header/image pairs) are ``INPUT_UNSUPPORTED_FORMAT``.
* ``dim[0]`` must be 1..7 and ``dim[1..dim[0]]`` positive (``INPUT_INVALID``); only 2D
  and 3D images are read (a 4th and later axis of length 1 is allowed).
* ``datatype`` must be a NIfTI code: integers and floats are read, binary, complex and
  RGB(A) are ``INPUT_UNSUPPORTED_FORMAT``, anything else ``INPUT_INVALID``. ``bitpix``
  is ignored, as nibabel does: the datatype decides.
* ``vox_offset`` must be a whole number, at least 352 (NIfTI-1: header plus the 4-byte
  extension flag) or 544 (NIfTI-2), else ``INPUT_INVALID``; header extensions between
  the header and ``vox_offset`` are skipped, never parsed.
* A file (or, gzipped, its decompressed stream) shorter than ``vox_offset`` plus the
  data is ``INPUT_TRUNCATED``. The data, ``vox_offset`` included, is held to
  ``max_decompressed_bytes`` and ``max_elements`` (:class:`~edgemed.limits.ReaderLimits`)
  before it is read, for a file and for bytes alike: gzip is inflated in memory and only
  as far as the header describes.

Bytes. The same checks and the same code read bytes in memory (nibabel's ``from_bytes``
would parse the header and its extensions itself, before these checks); uncompressed
bytes are not even copied: the data is a view of them until it is scaled into the
``float32`` result.

Scaling. NIfTI says values are ``scl_slope * stored + scl_inter`` when ``scl_slope`` is
nonzero. ``scl_slope`` 0 or NaN means no scaling (and ``scl_inter`` is ignored), as in
nibabel's ``get_slope_inter``; an infinite ``scl_slope`` (nibabel also ignores it) and a
non-finite ``scl_inter`` with a valid slope (nibabel raises) are ``INPUT_INVALID``.
``metadata["scl_slope"]``/``["scl_inter"]`` hold what was applied, or None for none.
Scaled values that are not finite in ``float32`` are ``INPUT_INVALID``.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import nibabel as nib
import numpy as np

from edgemed.io.image import MedicalImage
from edgemed.io.source import Source, SourceLike, beyond_cap, input_error, resolve_source
from edgemed.limits import ReaderLimits

__all__ = ["read_nifti"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# xyzt_units spatial codes (bits 0-2) -> factor to millimetres; unknown and undefined
# codes are taken as mm, as nibabel does for unknown.
_TO_MM = {1: 1000.0, 2: 1.0, 3: 0.001}
_UNIT_NAMES = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
_READ_DTYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
_UNREAD_DTYPES = {
    1: "binary",
    32: "complex64",
    128: "RGB24",
    1536: "float128",
    1792: "complex128",
    2048: "complex256",
    2304: "RGBA32",
}
_CIFTI_INTENTS = range(3000, 3100)  # CIFTI: brainordinates, not an image grid
_EOL_CHECK = (b"\r\n\x1a\n", b"\0\0\0\0")  # NIfTI-2; zeros from old writers (nibabel)


@dataclass(frozen=True)
class _Header:
    """The checked header: what the data is and where it lies."""

    version: int
    order: Literal["<", ">"]
    block: bytes  # the 348 or 540 header bytes
    fields: Any  # numpy record of the header fields
    shape: tuple[int, int, int]  # (i, j, k)
    dtype: np.dtype[Any]
    offset: int
    slope: float | None  # None: no scaling
    inter: float

    @property
    def nbytes(self) -> int:
        i, j, k = self.shape
        return i * j * k * self.dtype.itemsize


def _version(head: bytes, where: object) -> tuple[int, Literal["<", ">"]]:
    """NIfTI version and byte order, from ``sizeof_hdr`` and the magic."""
    if len(head) < 4:
        raise input_error("INPUT_TRUNCATED", "file ends inside the NIfTI header", where)
    order: Literal["<", ">"] = "<"
    size = int.from_bytes(head[:4], "little", signed=True)
    if size not in (348, 540):
        order, size = ">", int.from_bytes(head[:4], "big", signed=True)
    if size not in (348, 540):
        raise input_error("INPUT_CORRUPT", "not a NIfTI header (sizeof_hdr)", where)
    # The magic first: a wrong sizeof_hdr is a corrupt header, not a short file.
    magic = head[344:348] if size == 348 else head[4:8]
    if magic in (b"ni1\0", b"ni2\0"):
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT", "NIfTI header/image pairs are not read (one file)", where
        )
    if len(magic) == 4 and magic != (b"n+1\0" if size == 348 else b"n+2\0"):
        raise input_error("INPUT_CORRUPT", "NIfTI magic does not match sizeof_hdr", where)
    if len(head) < size:
        raise input_error("INPUT_TRUNCATED", "file ends inside the NIfTI header", where)
    if size == 540 and head[8:12] not in _EOL_CHECK:
        raise input_error(
            "INPUT_CORRUPT", "NIfTI-2 line-ending check failed (text transfer?)", where
        )
    return (1 if size == 348 else 2), order


def _shape(dims: list[int], limits: ReaderLimits, where: object) -> tuple[int, int, int]:
    """(i, j, k) of a 2D/3D image; a 4th or later axis is allowed only with length 1."""
    if not 1 <= dims[0] <= 7:
        raise input_error("INPUT_INVALID", "NIfTI dim[0] must be between 1 and 7", where)
    shape = dims[1 : dims[0] + 1]
    if any(n < 1 for n in shape):
        raise input_error("INPUT_INVALID", "NIfTI dimensions must be positive", where)
    if len(shape) < 2:
        raise input_error("INPUT_UNSUPPORTED_FORMAT", "NIfTI image is not 2D or 3D", where)
    if any(n != 1 for n in shape[3:]):
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT",
            "NIfTI image has more than one volume; edgemed reads 2D and 3D images",
            where,
        )
    i, j, k = shape[0], shape[1], shape[2] if len(shape) > 2 else 1
    if i * j * k > limits.max_elements:
        raise beyond_cap("image elements", "max_elements", limits, where)
    return i, j, k


def _scaling(fields: Any, where: object) -> tuple[float | None, float]:
    """The slope and intercept to apply (see the module docstring)."""
    slope, inter = float(fields["scl_slope"]), float(fields["scl_inter"])
    if slope == 0 or math.isnan(slope):
        return None, 0.0
    if math.isinf(slope):
        raise input_error("INPUT_INVALID", "NIfTI scl_slope is infinite", where)
    if not math.isfinite(inter):
        raise input_error("INPUT_INVALID", "NIfTI scl_inter is not finite", where)
    return slope, inter


def _parse_header(head: bytes, limits: ReaderLimits, where: object) -> _Header:
    version, order = _version(head, where)
    header_dtype = (nib.nifti1 if version == 1 else nib.nifti2).header_dtype
    block = head[: header_dtype.itemsize]
    fields = np.frombuffer(block, dtype=header_dtype.newbyteorder(order))[0]
    shape = _shape([int(n) for n in fields["dim"]], limits, where)

    code = int(fields["datatype"])
    if code in _UNREAD_DTYPES:
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT", f"NIfTI data type {_UNREAD_DTYPES[code]} is not read", where
        )
    if code not in _READ_DTYPES:
        raise input_error("INPUT_INVALID", "NIfTI datatype is not a NIfTI data type code", where)
    if int(fields["intent_code"]) in _CIFTI_INTENTS:
        raise input_error("INPUT_UNSUPPORTED_FORMAT", "CIFTI files are not images", where)

    offset = float(fields["vox_offset"])
    minimum = 352 if version == 1 else 544  # header + the 4-byte extension flag
    if not math.isfinite(offset) or offset != int(offset) or offset < minimum:
        raise input_error(
            "INPUT_INVALID", f"NIfTI vox_offset must be a whole number >= {minimum}", where
        )
    slope, inter = _scaling(fields, where)
    dtype = np.dtype(_READ_DTYPES[code]).newbyteorder(order)
    header = _Header(version, order, block, fields, shape, dtype, int(offset), slope, inter)
    if header.offset + header.nbytes > limits.max_decompressed_bytes:
        raise beyond_cap("NIfTI data", "max_decompressed_bytes", limits, where)
    return header


def _read_exactly(stream: io.BufferedIOBase, count: int) -> np.ndarray:
    """``count`` bytes into a new buffer; fewer means the file was cut."""
    buffer = np.empty(count, dtype=np.uint8)
    view, filled = buffer.data, 0
    while filled < count:
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return buffer[:filled]


def _read_stored(src: Source, limits: ReaderLimits) -> tuple[_Header, np.ndarray]:
    """The checked header and the stored data as a ``(k, j, i)`` array."""
    where = src.where
    size = src.size(limits)
    try:
        with src.open() as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            head = stream.read(540)
            header = _parse_header(head, limits, where)
            if not gzipped and size < header.offset + header.nbytes:
                raise input_error(
                    "INPUT_TRUNCATED", "NIfTI file is shorter than its header describes", where
                )
            if not gzipped and src.data is not None:  # bytes: a view, not a copy
                data = np.frombuffer(src.data, np.uint8, header.nbytes, header.offset)
            else:
                stream.seek(header.offset)  # gzip: inflates and drops what it skips
                data = _read_exactly(stream, header.nbytes)
    except EOFError as exc:  # gzip stream ends before its end-of-stream marker
        raise input_error("INPUT_TRUNCATED", "compressed NIfTI file ends early", where) from exc
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise input_error("INPUT_CORRUPT", "compressed NIfTI data is damaged", where) from exc
    except OSError as exc:
        raise input_error("INPUT_UNREADABLE", "file cannot be opened or read", where) from exc
    if data.size < header.nbytes:
        raise input_error("INPUT_TRUNCATED", "NIfTI data ends early", where)
    i, j, k = header.shape
    return header, data.view(header.dtype).reshape((k, j, i))


def _scaled(stored: np.ndarray, header: _Header, where: object) -> np.ndarray:
    """float32 values, one slice at a time (no float64 copy of the whole volume)."""
    out = np.empty(stored.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, not warned
        for z in range(stored.shape[0]):
            if header.slope is None:
                out[z] = stored[z]
            else:
                out[z] = stored[z] * header.slope + header.inter
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise input_error("INPUT_INVALID", f"NIfTI data holds {bad} non-finite values", where)
    return out


def _geometry(header: _Header, where: object) -> tuple[np.ndarray, float]:
    """The affine (RAS, file units) from nibabel, and the factor from file units to mm."""
    klass = nib.Nifti1Header if header.version == 1 else nib.Nifti2Header
    try:
        affine = np.asarray(
            klass(header.block, endianness=header.order, check=False).get_best_affine(),
            dtype=float,
        )
    except Exception as exc:  # an impossible quaternion, for one
        raise input_error("INPUT_INVALID", "NIfTI orientation cannot be computed", where) from exc
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise input_error("INPUT_INVALID", "NIfTI orientation is not finite", where)
    return affine, _TO_MM.get(int(header.fields["xyzt_units"]) & 0x07, 1.0)


def read_nifti(source: SourceLike | Source, *, limits: ReaderLimits) -> MedicalImage:
    """Read a NIfTI-1 or NIfTI-2 image (single file, optionally gzipped).

    Args:
        source: a ``.nii`` or ``.nii.gz`` file (gzip is found from the content), its
            bytes, a binary file object, or a resolved Source.
        limits: the caps the header is held to before any data is read.

    Returns:
        ``(Z, Y, X)`` for 3D data, ``(Y, X)`` when the third axis has length 1, in the
        file's own voxel order; ``spacing`` from the header's pixdim in the same order
        (mm; ``metadata["spacing_source"]`` ``unknown`` where pixdim is 0), ``origin``
        and ``direction`` from the affine in LPS.

    Raises:
        InputError: ``INPUT_TRUNCATED``, ``INPUT_CORRUPT``, ``INPUT_UNSUPPORTED_FORMAT``
            (4D, complex or RGB data, pairs, CIFTI), ``INPUT_INVALID`` (header values
            that make no sense, non-finite values, beyond a cap); see the module docstring.
    """
    src = resolve_source(source, limits)
    where = src.where
    header, stored = _read_stored(src, limits)
    array = _scaled(stored, header, where)
    affine, to_mm = _geometry(header, where)

    pixdim = [float(z) * to_mm for z in header.fields["pixdim"][1:4]]
    stated = [math.isfinite(z) and z != 0 for z in pixdim]
    # pixdim 0 (or NaN) means the file does not say: 1.0, as everywhere in edgemed.
    zi, zj, zk = (abs(z) if ok else 1.0 for z, ok in zip(pixdim, stated, strict=True))
    ox, oy, oz = (float(v) for v in _RAS_TO_LPS @ affine[:3, 3] * to_mm)
    axes = _RAS_TO_LPS @ affine[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    direction = axes / norms if np.all(norms > 1e-12) and np.all(np.isfinite(norms)) else None
    if not all(math.isfinite(v) for v in (ox, oy, oz)):  # finite affine, overflow in mm
        raise input_error("INPUT_INVALID", "NIfTI origin is not finite in mm", where)

    k = header.shape[2]
    spacing: tuple[float, ...] = (zj, zi) if k == 1 else (zk, zj, zi)
    metadata: dict[str, Any] = {
        "format": "nifti",
        "nifti_version": header.version,
        "dtype": str(header.dtype.newbyteorder("=")),
        "scl_slope": header.slope,
        "scl_inter": None if header.slope is None else header.inter,
        "qform_code": int(header.fields["qform_code"]),
        "sform_code": int(header.fields["sform_code"]),
        "spatial_unit": _UNIT_NAMES.get(int(header.fields["xyzt_units"]) & 0x07, "unknown"),
        # Millimetres only where pixdim states every axis the image has.
        "spacing_source": "nifti" if all(stated[: 2 if k == 1 else 3]) else "unknown",
    }
    if k == 1 and stated[2]:
        # A 2D image's step along its normal: the mask written for it keeps the input's
        # affine (edgemed.io.writers.nifti_affine reads it).
        metadata["slice_thickness"] = zk
    return MedicalImage(
        array=array[0] if k == 1 else array,
        spacing=spacing,
        modality="OT",
        photometric="MONOCHROME2",
        origin=(ox, oy, oz),
        direction=direction,
        metadata=metadata,
    )
