"""DICOM readers: one file (one or many frames) and one series directory.

Both return a :class:`~edgemed.io.image.MedicalImage` that follows its conventions.

Pixel values. Stored values go through the Modality LUT step of DICOM: Rescale
Slope/Intercept (CT in HU), Dose Grid Scaling for RT Dose, or a Modality LUT Sequence;
the result is ``float32``. Colour is returned as RGB: YBR_FULL/YBR_FULL_422 and the
JPEG 2000 colour transforms are converted by pydicom, PALETTE COLOR is expanded through
its lookup table.

MONOCHROME1 (higher stored value = darker) is inverted so that higher means brighter:
with the representable stored range ``[lo, hi]`` (from Bits Stored and Pixel
Representation) mapped by the rescale to ``[a, b]``, each value becomes
``v' = a + b - v``. The range stays ``[a, b]``, ``a`` and ``b`` swap places, and the
window centre in the metadata is reflected the same way (the width is unchanged), so
windowing the returned array shows what a viewer shows. ``image.photometric`` then
describes the returned array (``MONOCHROME2``); ``metadata["photometric_original"]``
keeps what the file said.

Hostile input. The transfer syntax must be on :data:`SUPPORTED_TRANSFER_SYNTAXES`
before any decoder runs (else ``INPUT_UNSUPPORTED_TRANSFER_SYNTAX``). Geometry (Rows,
Columns, Samples per Pixel, Bits Allocated/Stored, High Bit, Number of Frames) is
validated before any pixel array is allocated, with sizes computed in Python integers
(no overflow) and held to the caps of :mod:`edgemed.io.read` (file size, frames,
decoded bytes, elements). For native (uncompressed) transfer syntaxes the length of
the Pixel Data element is compared with the length the header describes, so a
truncated file fails with ``INPUT_TRUNCATED`` instead of being decoded from whatever
bytes happen to be there. A deflated dataset is measured while it is inflated, in
bounded memory, and refused beyond ``MAX_DECOMPRESSED_BYTES`` before pydicom keeps any
of it (a deflate bomb costs CPU time up to the cap, never memory).

Lookup tables. Palette colour and Modality LUT tables are checked before use: the
descriptors must agree with the table data (a segmented palette is measured before it
is expanded), and every stored value must index an entry of the table. PS3.3
C.7.6.3.1.5 maps values outside the table to its first or last entry; edgemed refuses
them instead (``INPUT_INVALID``), because in practice they mean a wrong descriptor or a
damaged file, and a clamped colour would be silently wrong.

Privacy: the metadata is built from an explicit allowlist of technical fields and
every error message names the file and the problem, never a DICOM value (nor the text
of a third-party exception, which may quote one).
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import edgemed.io.read as limits
from edgemed.errors import DecoderMissingError, InputError
from edgemed.io.dicom_frames import ENCAPSULATED, check_encapsulated
from edgemed.io.dicom_lut import check_modality_lut, check_palette
from edgemed.io.image import MedicalImage

__all__ = ["read_dicom", "SUPPORTED_TRANSFER_SYNTAXES"]

#: The transfer syntaxes edgemed decodes; anything else is refused with
#: ``INPUT_UNSUPPORTED_TRANSFER_SYNTAX`` before a decoder runs, even where pydicom has
#: one (HTJ2K, for instance: not validated here yet).
SUPPORTED_TRANSFER_SYNTAXES = ENCAPSULATED | {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
}

_PIXEL_DATA = 0x7FE00010
_OTHER_PIXEL_DATA = (0x7FE00008, 0x7FE00009)  # Float / Double Float Pixel Data
_DICOM_MARKERS = (0x00080016, 0x00080060, 0x00280010, 0x00200013)  # SOPClass, Modality...
_BITS_ALLOCATED = (1, 8, 16, 32, 64)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}
# Defined terms we may name in a message; anything else is reported as unrecognised.
_KNOWN_PHOTOMETRIC = {*_PHOTOMETRIC_SAMPLES, "YBR_PARTIAL_420", "YBR_PARTIAL_422", "ARGB", "CMYK"}
_RESCALE_TYPES = {"HU", "OD", "US", "MGML", "Z_EFF", "ED", "EDW", "HU_MOD", "PCT"}
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID_STRING = re.compile(r"^[0-9.]{1,64}$")
_SUFFIXES_WITHOUT_MAGIC = ("", ".dcm", ".dicom", ".ima")


def _error(code: str, problem: str, path: object) -> InputError:
    return InputError(problem, code=code, path=path)


# --------------------------------------------------------------------------- parsing


def _check_inflated_size(raw: IO[bytes], path: Path) -> None:
    """Refuse a raw deflate stream that inflates beyond ``MAX_DECOMPRESSED_BYTES``.

    Inflates chunk by chunk and keeps nothing, so memory stays at about one chunk
    whatever the stream claims. A damaged stream is left for pydicom to report.
    """
    cap = limits.MAX_DECOMPRESSED_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof and (chunk := raw.read(1 << 16)):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))  # at most 1 MiB out
                if total > cap:
                    raise _error(
                        "INPUT_INVALID",
                        f"deflated dataset inflates beyond the {cap}-byte cap "
                        "(MAX_DECOMPRESSED_BYTES)",
                        path,
                    )
                chunk = inflater.unconsumed_tail
    except zlib.error:
        return


class _ReadWatch:
    """Wraps the file handed to pydicom: notices short reads, measures deflate streams.

    pydicom stops quietly when a file ends inside an element, and when it ends inside
    an undefined-length element it even returns an empty dataset. A complete file gives
    exactly one short read (the 8-byte tag read that meets the end of the file), so a
    partial read or a second short read means the file was cut.

    pydicom asks for "the rest of the file" (a read without a size) in one place only:
    to inflate a Deflated Explicit VR Little Endian dataset in one ``zlib.decompress``
    call. That read is where a deflate bomb would be expanded, so the stream is
    measured first (tests/io/test_io_hostile_dicom.py keeps this hook honest).
    """

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        self._raw = raw
        self._path = path
        self._short_reads = 0
        self._partial = False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            start = self._raw.tell()
            _check_inflated_size(self._raw, self._path)
            self._raw.seek(start)
        data = self._raw.read(-1 if size is None else size)
        if size is not None and size > 0 and len(data) < size:
            self._short_reads += 1
            self._partial = self._partial or bool(data)
        return data

    def __getattr__(self, name: str) -> Any:  # seek, tell, name... go to the real file
        return getattr(self._raw, name)

    @property
    def ended_early(self) -> bool:
        return self._partial or self._short_reads > 1


def _parse(path: Path, *, header_only: bool) -> tuple[Dataset, bool]:
    """Parse a file; returns the dataset and whether it has the DICM preamble."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError as exc:
        raise _error("INPUT_NOT_FOUND", "file does not exist", path) from exc
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "file cannot be opened or read", path) from exc
    with raw:
        try:
            size = os.fstat(raw.fileno()).st_size
            has_magic = raw.read(132)[128:132] == b"DICM"
            raw.seek(0)
        except OSError as exc:
            raise _error("INPUT_UNREADABLE", "file cannot be read", path) from exc
        if size > limits.MAX_FILE_BYTES:
            cap = limits.MAX_FILE_BYTES
            problem = f"file is larger than the {cap}-byte cap (MAX_FILE_BYTES)"
            raise _error("INPUT_INVALID", problem, path)
        watch = _ReadWatch(raw, path)
        try:
            ds = pydicom.dcmread(watch, force=True, stop_before_pixels=header_only)
        except InputError:  # refused by the watch (a deflate bomb)
            raise
        except (EOFError, struct.error, zlib.error) as exc:
            # pydicom met the end of the data while unpacking a tag, a length or a
            # deflated stream: the file was cut short.
            raise _error("INPUT_TRUNCATED", "DICOM file ends before its data does", path) from exc
        except InvalidDicomError as exc:
            raise _error("INPUT_UNSUPPORTED_FORMAT", "not a DICOM file", path) from exc
        except MemoryError as exc:
            raise _error("INPUT_INVALID", "DICOM file too large to parse here", path) from exc
        except Exception as exc:  # many kinds on malformed input; OSError too (bad seeks)
            code = "INPUT_CORRUPT" if has_magic else "INPUT_UNSUPPORTED_FORMAT"
            raise _error(code, f"DICOM parsing failed ({type(exc).__name__})", path) from exc

    if not has_magic and not any(tag in ds for tag in _DICOM_MARKERS):
        # force=True turns any bytes into some dataset; without the preamble we only
        # believe it is DICOM when it holds elements every image/object has.
        raise _error("INPUT_UNSUPPORTED_FORMAT", "not a DICOM file", path)
    if watch.ended_early:
        raise _error("INPUT_TRUNCATED", "DICOM file ends inside a data element", path)
    return ds, has_magic


def _transfer_syntax(ds: Dataset, path: Path) -> UID:
    """The transfer syntax; inferred from the parsed encoding when the meta lacks it."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if value:
        return UID(str(value).strip())
    implicit, little = ds.original_encoding
    if little and implicit:
        uid = ImplicitVRLittleEndian
    elif little and implicit is False:
        uid = ExplicitVRLittleEndian
    elif little is False and implicit is False:
        uid = ExplicitVRBigEndian
    else:
        raise _error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX", "transfer syntax cannot be determined", path
        )
    # pydicom's decoders read the syntax from the file meta, so record what we inferred.
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid
    return uid


def _describe_uid(uid: UID) -> str:
    """UID and name for messages, but only when the value really is a UID."""
    text = str(uid)
    if not _UID_STRING.match(text):
        return "(malformed UID)"
    return f"{text} ({uid.name})" if uid.name != text else text


def _decoder(uid: UID, path: Path) -> Any:
    """pydicom's decoder for ``uid``: on the allowlist, with a usable plugin installed."""
    if uid not in SUPPORTED_TRANSFER_SYNTAXES:
        raise _error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
            f"transfer syntax {_describe_uid(uid)} is not one edgemed reads",
            path,
        )
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise _error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
            f"no DICOM decoder exists for transfer syntax {_describe_uid(uid)}",
            path,
        ) from exc
    if not decoder.is_available:
        raise DecoderMissingError(
            f"pixel data is compressed as {_describe_uid(uid)} and no installed decoder "
            'handles it: pip install "edgemed[dicom]"',
            path=path,
        )
    return decoder


# -------------------------------------------------------------------- value helpers


def _get(ds: Dataset, keyword: str, path: Path) -> Any:
    """``ds.get(keyword)``; a value pydicom cannot convert is a geometry error."""
    try:
        return ds.get(keyword)
    except Exception as exc:
        raise _error("INPUT_INVALID", f"{keyword} cannot be parsed", path) from exc


def _int(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    value = _get(ds, keyword, path)
    if value is None or value == "":
        if default is None:
            raise _error("INPUT_INVALID", f"{keyword} is missing", path)
        return default
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _error("INPUT_INVALID", f"{keyword} is not an integer", path) from exc


def _floats(value: Any, count: int, what: str, path: Path) -> list[float] | None:
    """``count`` finite floats from a (multi-)value, ``None`` when absent."""
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise _error("INPUT_INVALID", f"{what} is not numeric", path) from exc
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise _error("INPUT_INVALID", f"{what} must hold {count} finite numbers", path)
    return numbers


def _first_float(value: Any) -> float | None:
    """First value of an optional display hint (window centre/width); None if unusable."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _token(value: Any) -> str | None:
    """A DICOM code string (CS) value, or None when it is not a plain code."""
    text = str(value).strip().upper() if value is not None else ""
    return text if _CODE_STRING.match(text) else None


def _name_term(photometric: str) -> str:
    return photometric if photometric in _KNOWN_PHOTOMETRIC else "(unrecognised)"


def _frame_attr(ds: Dataset, macro: str, keyword: str, frame: int, path: Path) -> Any:
    """Top-level value, else the frame's functional group, else the shared group.

    Enhanced (multi-frame) objects keep geometry and rescale in functional group
    macros instead of the top level.
    """
    value = _get(ds, keyword, path)
    if value is not None:
        return value
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = _get(ds, groups, path)
        if seq is not None and len(seq) > index:
            items = _get(seq[index], macro, path)
            if items is not None and len(items) > 0:
                value = _get(items[0], keyword, path)
                if value is not None:
                    return value
    return None


# ------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class _Layout:
    """The Image Pixel module values that decide how many bytes and elements exist."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    frames: int
    photometric: str

    @property
    def elements(self) -> int:
        return self.rows * self.columns * self.frames * self.samples

    def decoded_nbytes(self) -> int:
        """Bytes of the decoded stored array (1-bit data is unpacked to a byte each)."""
        return self.elements * max(1, self.bits_allocated // 8)

    def native_nbytes(self) -> int:
        """Bytes an uncompressed Pixel Data element must hold (Python ints: no overflow)."""
        if self.bits_allocated == 1:  # bit-packed across frame boundaries
            return (self.elements + 7) // 8
        per_frame = self.rows * self.columns * self.samples * (self.bits_allocated // 8)
        if self.photometric == "YBR_FULL_422":  # chroma stored at half horizontal rate
            per_frame = per_frame // 3 * 2
        return per_frame * self.frames


def _layout(ds: Dataset, path: Path) -> _Layout:
    rows = _int(ds, "Rows", path)
    columns = _int(ds, "Columns", path)
    samples = _int(ds, "SamplesPerPixel", path)
    bits_allocated = _int(ds, "BitsAllocated", path)
    bits_stored = _int(ds, "BitsStored", path)
    high_bit = _int(ds, "HighBit", path)
    representation = _int(ds, "PixelRepresentation", path)
    frames = _int(ds, "NumberOfFrames", path, default=1)
    photometric = _token(_get(ds, "PhotometricInterpretation", path))

    if min(rows, columns, samples, frames) < 1:
        raise _error("INPUT_INVALID", "rows, columns, samples and frames must be positive", path)
    if frames > limits.MAX_FRAMES:
        cap = limits.MAX_FRAMES
        raise _error("INPUT_INVALID", f"more than {cap} frames (MAX_FRAMES)", path)
    if bits_allocated not in _BITS_ALLOCATED:
        raise _error("INPUT_INVALID", f"BitsAllocated {bits_allocated} is not supported", path)
    if not 1 <= bits_stored <= bits_allocated:
        raise _error("INPUT_INVALID", "BitsStored must be between 1 and BitsAllocated", path)
    if not bits_stored - 1 <= high_bit < bits_allocated:
        raise _error("INPUT_INVALID", "HighBit is inconsistent with BitsStored", path)
    if representation not in (0, 1):
        raise _error("INPUT_INVALID", "PixelRepresentation must be 0 or 1", path)
    if photometric is None:
        raise _error("INPUT_INVALID", "PhotometricInterpretation is missing or malformed", path)
    if photometric not in _PHOTOMETRIC_SAMPLES:
        raise _error(
            "INPUT_UNSUPPORTED_FORMAT",
            f"photometric interpretation {_name_term(photometric)} is not read",
            path,
        )
    if _PHOTOMETRIC_SAMPLES[photometric] != samples:
        raise _error("INPUT_INVALID", f"{photometric} needs a different SamplesPerPixel", path)
    layout = _Layout(
        rows,
        columns,
        samples,
        bits_allocated,
        bits_stored,
        high_bit,
        representation,
        frames,
        photometric,
    )
    if layout.elements > limits.MAX_ELEMENTS:
        cap = limits.MAX_ELEMENTS
        raise _error("INPUT_INVALID", f"image has more than {cap} elements (MAX_ELEMENTS)", path)
    if layout.decoded_nbytes() > limits.MAX_DECOMPRESSED_BYTES:
        cap = limits.MAX_DECOMPRESSED_BYTES
        problem = f"decoded pixel data exceeds {cap} bytes (MAX_DECOMPRESSED_BYTES)"
        raise _error("INPUT_INVALID", problem, path)
    return layout


def _direction(iop: Any, path: Path) -> np.ndarray | None:
    """3x3 matrix whose columns are the LPS unit vectors of the x, y, z index axes."""
    values = _floats(iop, 6, "ImageOrientationPatient", path)
    if values is None:
        return None
    row, col = np.array(values[:3]), np.array(values[3:])
    row_norm, col_norm = np.linalg.norm(row), np.linalg.norm(col)
    # An overflowing norm (components near 1e308) would turn the matrix into NaNs.
    if not 1e-6 < row_norm < 1e100 or not 1e-6 < col_norm < 1e100:
        raise _error("INPUT_INVALID", "ImageOrientationPatient is not a pair of vectors", path)
    row, col = row / row_norm, col / col_norm
    if abs(float(row @ col)) > 1e-3:
        raise _error("INPUT_INVALID", "ImageOrientationPatient vectors are not orthogonal", path)
    normal = np.cross(row, col)
    return np.column_stack([row, col, normal / np.linalg.norm(normal)])


def _pixel_spacing(ds: Dataset, path: Path) -> tuple[tuple[float, float], str]:
    """In-plane ``(dy, dx)``: PixelSpacing is [row spacing, column spacing]."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _frame_attr(ds, "PixelMeasuresSequence", keyword, 0, path)
        numbers = _floats(value, 2, keyword, path)
        if numbers is not None:
            if min(numbers) <= 0:
                raise _error("INPUT_INVALID", f"{keyword} must be positive", path)
            return (numbers[0], numbers[1]), keyword
    return (1.0, 1.0), "default"


def _position(ds: Dataset, frame: int, path: Path) -> np.ndarray | None:
    value = _frame_attr(ds, "PlanePositionSequence", "ImagePositionPatient", frame, path)
    numbers = _floats(value, 3, "ImagePositionPatient", path)
    return None if numbers is None else np.array(numbers)


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _optional_positive(ds: Dataset, keyword: str, path: Path) -> float | None:
    value = _first_float(_frame_attr(ds, "PixelMeasuresSequence", keyword, 0, path))
    return value if value is not None and value > 0 else None


def _even_steps(steps: np.ndarray) -> float | None:
    """The common step of ``steps`` (signed), or None when they are not evenly spaced."""
    step = float(np.median(steps))
    tolerance = max(0.01, 0.02 * abs(step))  # decimal-string positions carry rounding
    # Positions near 1e308 overflow into inf and NaN steps, which compare False.
    if not np.isfinite(steps).all() or abs(step) < 1e-3 or np.any(np.abs(steps - step) > tolerance):
        return None
    return step


def _frame_spacing(
    ds: Dataset, frames: int, direction: np.ndarray | None, path: Path
) -> tuple[float, float, str]:
    """Spacing between frames, the sign of the step along the normal, and its source."""
    projections = None
    if direction is not None:
        normal = direction[:, 2]
        per_frame = _get(ds, "PerFrameFunctionalGroupsSequence", path)
        offsets = _get(ds, "GridFrameOffsetVector", path)
        if per_frame is not None and len(per_frame) == frames:
            positions = [_position(ds, i, path) for i in range(frames)]
            if all(p is not None for p in positions):
                projections = np.array([p @ normal for p in positions])
        if projections is None and offsets is not None:
            # RT Dose: offsets along the normal (relative to the first plane, or plain
            # z values when the first is not 0; their differences are the steps either way).
            projections = np.array(_floats(offsets, frames, "GridFrameOffsetVector", path))
    if projections is not None and np.ptp(projections) > 1e-3:
        step = _even_steps(np.diff(projections))
        if step is None:
            raise _error(
                "INPUT_SERIES_INCONSISTENT", "frames are not evenly spaced along the normal", path
            )
        return abs(step), math.copysign(1.0, step), "positions"
    between = _optional_positive(ds, "SpacingBetweenSlices", path)
    return (between, 1.0, "SpacingBetweenSlices") if between else (1.0, 1.0, "default")


# ------------------------------------------------------------------------- pixels


def _decode(ds: Dataset, uid: UID, layout: _Layout, path: Path) -> tuple[np.ndarray, str]:
    """Decoded stored values shaped ``([F,] Y, X[, S])`` and their photometric."""
    decoder = _decoder(uid, path)
    value = ds.get_item(_PIXEL_DATA).value
    actual = len(value) if isinstance(value, (bytes, bytearray)) else 0
    if decoder.is_native:
        expected = layout.native_nbytes()
        if actual < expected:
            raise _error(
                "INPUT_TRUNCATED",
                f"pixel data holds {actual} bytes, the header describes {expected}",
                path,
            )
    elif isinstance(value, bytes):  # decoders trust the frames' own headers, not ours
        rows, columns, frames = layout.rows, layout.columns, layout.frames
        check_encapsulated(value, uid, rows, columns, frames, layout.decoded_nbytes(), path)
    try:
        array, properties = decoder.as_array(ds)
    except MemoryError as exc:
        raise _error("INPUT_INVALID", "pixel data too large to decode here", path) from exc
    except BaseException as exc:  # every plugin failed: the encoded bytes are bad
        # BaseException because Rust decoders (pylibjpeg-rle) report a panic on bad
        # data as pyo3's PanicException, which is not an Exception.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise _error(
            "INPUT_CORRUPT",
            f"pixel data could not be decoded as {_describe_uid(uid)} ({type(exc).__name__})",
            path,
        ) from exc

    expected_shape: tuple[int, ...] = (layout.rows, layout.columns)
    if layout.frames > 1:
        expected_shape = (layout.frames, *expected_shape)
    if layout.samples > 1:
        expected_shape = (*expected_shape, layout.samples)
    if array.shape != expected_shape:
        raise _error("INPUT_CORRUPT", "decoded pixel data has an unexpected shape", path)
    photometric = properties.get("photometric_interpretation", layout.photometric)
    return array, str(getattr(photometric, "value", photometric))


def _stored_range(layout: _Layout) -> tuple[int, int]:
    if layout.pixel_representation == 1:
        return -(2 ** (layout.bits_stored - 1)), 2 ** (layout.bits_stored - 1) - 1
    return 0, 2**layout.bits_stored - 1


def _rescale(ds: Dataset, frames: int, path: Path) -> tuple[list[float], list[float], str]:
    """Per-frame slope and intercept of the linear Modality LUT, and where they came from."""
    slopes, intercepts, source = [], [], "none"
    for frame in range(frames):
        slope = _frame_attr(ds, "PixelValueTransformationSequence", "RescaleSlope", frame, path)
        intercept = _frame_attr(
            ds, "PixelValueTransformationSequence", "RescaleIntercept", frame, path
        )
        if slope is not None or intercept is not None:
            source = "rescale"
        elif _token(_get(ds, "Modality", path)) == "RTDOSE" and "DoseGridScaling" in ds:
            slope, source = _get(ds, "DoseGridScaling", path), "dose_grid_scaling"
        slope = _floats(slope, 1, "RescaleSlope", path) or [1.0]
        intercept = _floats(intercept, 1, "RescaleIntercept", path) or [0.0]
        if slope[0] == 0:
            raise _error("INPUT_INVALID", "RescaleSlope is zero", path)
        slopes.append(slope[0])
        intercepts.append(intercept[0])
        if frame == 0 and "PerFrameFunctionalGroupsSequence" not in ds:
            # Classic objects have one rescale for every frame: no need to look again.
            return slopes * frames, intercepts * frames, source
    return slopes, intercepts, source


def _monochrome(
    stored: np.ndarray, ds: Dataset, layout: _Layout, path: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """Physical values (float32, frames first) and the rescale facts for the metadata."""
    frames = stored.reshape((-1, layout.rows, layout.columns))  # a view, frames first
    out = np.empty(frames.shape, dtype=np.float32)
    lo, hi = _stored_range(layout)
    invert = layout.photometric == "MONOCHROME1"
    facts: dict[str, Any] = {}

    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        if layout.bits_stored > 16:
            raise _error("INPUT_UNSUPPORTED_FORMAT", "Modality LUT on >16-bit data", path)
        check_modality_lut(ds, stored, path)
        try:
            outputs = apply_modality_lut(np.arange(lo, hi + 1), ds)
            for i, frame in enumerate(frames):
                out[i] = apply_modality_lut(frame, ds)
        except Exception as exc:
            raise _error("INPUT_INVALID", "Modality LUT Sequence cannot be applied", path) from exc
        if invert:
            out[...] = float(outputs.min()) + float(outputs.max()) - out
        facts["modality_lut"] = "sequence"
        reflect = float(outputs.min()) + float(outputs.max())
    else:
        slopes, intercepts, source = _rescale(ds, len(frames), path)
        for i, frame in enumerate(frames):
            # frame * python float computes in float64 one frame at a time: exact
            # rescale, then a single rounding to float32, without a float64 copy of
            # the whole volume.
            values = frame * slopes[i] + intercepts[i]
            if invert:
                a, b = lo * slopes[i] + intercepts[i], hi * slopes[i] + intercepts[i]
                values = (a + b) - values
            with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
                out[i] = values
        reflect = (lo + hi) * slopes[0] + 2 * intercepts[0]
        if len(set(slopes)) == 1 and len(set(intercepts)) == 1:
            facts["rescale_slope"], facts["rescale_intercept"] = slopes[0], intercepts[0]
        else:
            facts["rescale_varies"] = True
        facts["modality_lut"] = source

    # Finite slopes and intercepts can still overflow float32 (1e38 x 4095).
    if not np.isfinite(out).all():
        raise _error("INPUT_INVALID", "rescaled values are not finite in float32", path)
    centre = _first_float(_frame_attr(ds, "FrameVOILUTSequence", "WindowCenter", 0, path))
    width = _first_float(_frame_attr(ds, "FrameVOILUTSequence", "WindowWidth", 0, path))
    if centre is not None and width is not None and width > 0:
        centre = reflect - centre if invert else centre
        if math.isfinite(centre):  # a display hint: dropped rather than refused
            facts["window_center"], facts["window_width"] = centre, width
    facts["monochrome1_inverted"] = invert
    shape = (layout.frames, layout.rows, layout.columns) if layout.frames > 1 else stored.shape
    return out.reshape(shape), facts


def _colour(stored: np.ndarray, photometric: str, ds: Dataset, path: Path) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        check_palette(ds, stored, path, little_endian=ds.original_encoding[1] is not False)
        try:
            stored = apply_color_lut(stored, ds)[..., :3]  # an alpha table is dropped
        except Exception as exc:
            raise _error("INPUT_INVALID", "palette colour lookup table is unusable", path) from exc
    elif photometric != "RGB":
        # pydicom converts YBR_FULL(_422) and the JPEG 2000 colour transforms to RGB; any
        # other colour model left over is one we would misread.
        raise _error(
            "INPUT_UNSUPPORTED_FORMAT",
            f"decoded colour model {_name_term(photometric)} is not read",
            path,
        )
    return np.ascontiguousarray(stored, dtype=np.float32)


# -------------------------------------------------------------------------- public


def _image(ds: Dataset, path: Path) -> MedicalImage:
    """Build the image from a fully parsed dataset."""
    if _PIXEL_DATA not in ds:
        if any(tag in ds for tag in _OTHER_PIXEL_DATA):
            raise _error("INPUT_UNSUPPORTED_FORMAT", "float pixel data is not read", path)
        raise _error("INPUT_NO_PIXEL_DATA", "DICOM object holds no pixel data", path)
    uid = _transfer_syntax(ds, path)
    layout = _layout(ds, path)
    spacing_yx, spacing_source = _pixel_spacing(ds, path)
    direction = _direction(
        _frame_attr(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0, path), path
    )
    position = _position(ds, 0, path)

    stored, photometric = _decode(ds, uid, layout, path)
    metadata: dict[str, Any] = {
        "format": "dicom",
        "transfer_syntax": str(uid) if _UID_STRING.match(str(uid)) else None,
        "rows": layout.rows,
        "columns": layout.columns,
        "number_of_frames": layout.frames,
        "samples_per_pixel": layout.samples,
        "bits_allocated": layout.bits_allocated,
        "bits_stored": layout.bits_stored,
        "high_bit": layout.high_bit,
        "pixel_representation": layout.pixel_representation,
        "photometric_original": layout.photometric,
        "pixel_spacing_source": spacing_source,
        "slice_thickness": _optional_positive(ds, "SliceThickness", path),
        "spacing_between_slices": _optional_positive(ds, "SpacingBetweenSlices", path),
        "lossy_compression": _token(_get(ds, "LossyImageCompression", path)) == "01",
    }
    if photometric in _MONOCHROME:
        array, facts = _monochrome(stored, ds, layout, path)
        metadata.update(facts)
        # RescaleType is free text (LO): keep it only when it is a defined unit term.
        rescale_type = _token(_get(ds, "RescaleType", path))
        if rescale_type in _RESCALE_TYPES:
            metadata["rescale_type"] = rescale_type
        photometric_out = "MONOCHROME2"
    else:
        array, photometric_out = _colour(stored, photometric, ds, path), "RGB"
    if _token(_get(ds, "Modality", path)) == "RTDOSE":
        metadata["dose_units"] = _token(_get(ds, "DoseUnits", path))

    spacing: tuple[float, ...] = spacing_yx
    if layout.frames > 1:
        dz, sign, z_source = _frame_spacing(ds, layout.frames, direction, path)
        spacing = (dz, *spacing_yx)
        metadata["z_spacing_source"] = z_source
        if direction is not None and sign < 0:
            direction = direction * np.array([1.0, 1.0, -1.0])  # frames run against the normal
    modality = _token(_get(ds, "Modality", path)) or "OT"
    return MedicalImage(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=tuple(float(s) for s in spacing),
        modality=modality,
        photometric=photometric_out,
        origin=None if position is None else _triple(position),
        direction=direction,
        metadata=metadata,
    )


def read_dicom(path: str | Path) -> MedicalImage:
    """Read one DICOM file (single- or multi-frame).

    Files without the ``DICM`` preamble are parsed with ``force=True`` and accepted
    only when they hold elements every DICOM object has.

    Args:
        path: the file.

    Returns:
        ``(Y, X)`` for one frame, ``(Z, Y, X)`` for several, with a trailing RGB axis
        for colour; values in physical units (see the module docstring).

    Raises:
        InputError: with one of the ``INPUT_*`` codes listed in :mod:`edgemed.io.read`.
    """
    path = Path(path)
    ds, _ = _parse(path, header_only=False)
    return _image(ds, path)
