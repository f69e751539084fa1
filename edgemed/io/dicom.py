"""DICOM reader for one file (one or many frames), from a path or from bytes.

It returns a :class:`~edgemed.io.image.MedicalImage` that follows its conventions;
:mod:`edgemed.io.series` builds volumes from many files with :func:`parse_dicom` and
:func:`read_dicom`.

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
(no overflow) and held to the caps of the :class:`~edgemed.limits.ReaderLimits` passed
in (file size, frames, decoded bytes, elements). For native (uncompressed) transfer
syntaxes the length of the Pixel Data element is compared with the length the header
describes, so a truncated file fails with ``INPUT_TRUNCATED`` instead of being decoded
from whatever bytes happen to be there. A deflated dataset is measured while it is inflated, in
bounded memory, and refused beyond ``max_decompressed_bytes`` before pydicom keeps any
of it (a deflate bomb costs CPU time up to the cap, never memory).

Lookup tables. Palette colour and Modality LUT tables are checked before use: the
descriptors must agree with the table data (a segmented palette is measured before it
is expanded), and every stored value must index an entry of the table. PS3.3
C.7.6.3.1.5 maps values outside the table to its first or last entry; edgemed refuses
them instead (``INPUT_INVALID``), because in practice they mean a wrong descriptor or a
damaged file, and a clamped colour would be silently wrong.

Privacy: the metadata is built from an explicit allowlist of technical fields and
every error message names the file (nothing, for bytes) and the problem, never a DICOM
value (nor the text of a third-party exception, which may quote one).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from edgemed.errors import DecoderMissingError, InputError
from edgemed.io.dicom_frames import ENCAPSULATED, check_encapsulated
from edgemed.io.dicom_lut import check_modality_lut, check_palette
from edgemed.io.dicom_values import (
    as_triple,
    code_string,
    direction_matrix,
    even_step,
    first_float,
    frame_value,
    get_int,
    get_value,
    image_position,
    optional_positive,
    parse_floats,
    pixel_spacing,
)
from edgemed.io.image import MedicalImage
from edgemed.io.source import (
    Source,
    SourceLike,
    beyond_cap,
    has_preamble,
    input_error,
    resolve_source,
)
from edgemed.limits import ReaderLimits

__all__ = [
    "SUFFIXES_WITHOUT_MAGIC",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "parse_dicom",
    "read_dicom",
]

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
_UID_STRING = re.compile(r"^[0-9.]{1,64}$")
#: Extensions of files that may be DICOM without the ``DICM`` preamble (parsed with
#: ``force=True``); bytes, having no name, count as ``""``.
SUFFIXES_WITHOUT_MAGIC = ("", ".dcm", ".dicom", ".ima")


# --------------------------------------------------------------------------- parsing


def _check_inflated_size(raw: io.BufferedIOBase, limits: ReaderLimits, where: object) -> None:
    """Refuse a raw deflate stream that inflates beyond ``limits.max_decompressed_bytes``.

    Inflates chunk by chunk and keeps nothing, so memory stays at about one chunk
    whatever the stream claims. A damaged stream is left for pydicom to report.
    """
    cap = limits.max_decompressed_bytes
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof and (chunk := raw.read(1 << 16)):
            while chunk:
                total += len(inflater.decompress(chunk, 1 << 20))  # at most 1 MiB out
                if total > cap:
                    raise beyond_cap(
                        "deflated dataset inflates", "max_decompressed_bytes", limits, where
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

    def __init__(self, raw: io.BufferedIOBase, limits: ReaderLimits, where: object) -> None:
        self._raw = raw
        self._limits = limits
        self._where = where
        self._short_reads = 0
        self._partial = False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            start = self._raw.tell()
            _check_inflated_size(self._raw, self._limits, self._where)
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


def parse_dicom(
    source: SourceLike | Source, *, limits: ReaderLimits, header_only: bool
) -> tuple[Dataset, bool]:
    """Parse one DICOM file (a path or bytes) with every check the readers rely on.

    Args:
        source: a path, bytes, a binary file object or a resolved Source.
        limits: the caps (file size, inflated size of a deflated dataset).
        header_only: stop before the pixel data (series grouping reads headers first).

    Returns:
        The dataset and whether the file has the ``DICM`` preamble.

    Raises:
        InputError: ``INPUT_NOT_FOUND``, ``INPUT_UNREADABLE``, ``INPUT_TRUNCATED``,
            ``INPUT_UNSUPPORTED_FORMAT`` (not DICOM), ``INPUT_CORRUPT`` or
            ``INPUT_INVALID`` (beyond a cap).
    """
    src = resolve_source(source, limits)
    where = src.where
    src.size(limits)
    with src.open() as raw:
        try:
            has_magic = has_preamble(raw.read(132))
            raw.seek(0)
        except OSError as exc:
            raise input_error("INPUT_UNREADABLE", "file cannot be read", where) from exc
        watch = _ReadWatch(raw, limits, where)
        try:
            ds = pydicom.dcmread(watch, force=True, stop_before_pixels=header_only)
        except InputError:  # refused by the watch (a deflate bomb)
            raise
        except (EOFError, struct.error, zlib.error) as exc:
            # pydicom met the end of the data while unpacking a tag, a length or a
            # deflated stream: the file was cut short.
            raise input_error(
                "INPUT_TRUNCATED", "DICOM file ends before its data does", where
            ) from exc
        except InvalidDicomError as exc:
            raise input_error("INPUT_UNSUPPORTED_FORMAT", "not a DICOM file", where) from exc
        except MemoryError as exc:
            raise input_error("INPUT_INVALID", "DICOM file too large to parse here", where) from exc
        except Exception as exc:  # many kinds on malformed input; OSError too (bad seeks)
            code = "INPUT_CORRUPT" if has_magic else "INPUT_UNSUPPORTED_FORMAT"
            raise input_error(code, f"DICOM parsing failed ({type(exc).__name__})", where) from exc

    if not has_magic and not any(tag in ds for tag in _DICOM_MARKERS):
        # force=True turns any bytes into some dataset; without the preamble we only
        # believe it is DICOM when it holds elements every image/object has.
        raise input_error("INPUT_UNSUPPORTED_FORMAT", "not a DICOM file", where)
    if watch.ended_early:
        raise input_error("INPUT_TRUNCATED", "DICOM file ends inside a data element", where)
    return ds, has_magic


def _transfer_syntax(ds: Dataset, where: object) -> UID:
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
        raise input_error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX", "transfer syntax cannot be determined", where
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


def _decoder(uid: UID, where: object) -> Any:
    """pydicom's decoder for ``uid``: on the allowlist, with a usable plugin installed."""
    if uid not in SUPPORTED_TRANSFER_SYNTAXES:
        raise input_error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
            f"transfer syntax {_describe_uid(uid)} is not one edgemed reads",
            where,
        )
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise input_error(
            "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
            f"no DICOM decoder exists for transfer syntax {_describe_uid(uid)}",
            where,
        ) from exc
    if not decoder.is_available:
        raise DecoderMissingError(
            f"pixel data is compressed as {_describe_uid(uid)} and no installed decoder "
            'handles it: pip install "edgemed[dicom]"',
            path=where,
        )
    return decoder


#: Transfer syntaxes whose pixel data is lossy by definition (JPEG Baseline and
#: Extended, JPEG-LS near-lossless), whatever LossyImageCompression says.
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
)


def _lossy(ds: Dataset, uid: UID, where: object) -> dict[str, Any]:
    """Whether the pixels went through lossy compression, with the ratios and methods
    the file records (PS3.3 C.7.6.1.1.5: one value per compression step).

    ``LossyImageCompression`` ``01`` says the image was lossy-compressed at some point
    (it may be stored uncompressed now); a lossy transfer syntax says so by itself.
    Ratio and method are descriptions: a malformed one is dropped, never refused.
    """
    flag = code_string(get_value(ds, "LossyImageCompression", where)) == "01"
    facts: dict[str, Any] = {"lossy_compression": flag or str(uid) in LOSSY_TRANSFER_SYNTAXES}
    try:
        ratio = ds.get("LossyImageCompressionRatio")
        method = ds.get("LossyImageCompressionMethod")
    except Exception:  # an unparsable description is no reason to refuse the image
        ratio = method = None
    ratios = [first_float(v) for v in _values(ratio)]
    if ratios and all(r is not None and r > 0 for r in ratios):
        facts["lossy_ratio"] = ratios
    methods = [code_string(v) for v in _values(method)]
    if methods and all(methods):
        facts["lossy_method"] = methods
    return facts


def _values(value: Any) -> list[Any]:
    """A DICOM value as a list of its values (empty when absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _name_term(photometric: str) -> str:
    return photometric if photometric in _KNOWN_PHOTOMETRIC else "(unrecognised)"


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


def _layout(ds: Dataset, limits: ReaderLimits, where: object) -> _Layout:
    rows = get_int(ds, "Rows", where)
    columns = get_int(ds, "Columns", where)
    samples = get_int(ds, "SamplesPerPixel", where)
    bits_allocated = get_int(ds, "BitsAllocated", where)
    bits_stored = get_int(ds, "BitsStored", where)
    high_bit = get_int(ds, "HighBit", where)
    representation = get_int(ds, "PixelRepresentation", where)
    frames = get_int(ds, "NumberOfFrames", where, default=1)
    photometric = code_string(get_value(ds, "PhotometricInterpretation", where))

    if min(rows, columns, samples, frames) < 1:
        raise input_error(
            "INPUT_INVALID", "rows, columns, samples and frames must be positive", where
        )
    if frames > limits.max_frames:
        raise beyond_cap("number of frames", "max_frames", limits, where)
    if bits_allocated not in _BITS_ALLOCATED:
        raise input_error(
            "INPUT_INVALID", f"BitsAllocated {bits_allocated} is not supported", where
        )
    if not 1 <= bits_stored <= bits_allocated:
        raise input_error("INPUT_INVALID", "BitsStored must be between 1 and BitsAllocated", where)
    if not bits_stored - 1 <= high_bit < bits_allocated:
        raise input_error("INPUT_INVALID", "HighBit is inconsistent with BitsStored", where)
    if representation not in (0, 1):
        raise input_error("INPUT_INVALID", "PixelRepresentation must be 0 or 1", where)
    if photometric is None:
        raise input_error(
            "INPUT_INVALID", "PhotometricInterpretation is missing or malformed", where
        )
    if photometric not in _PHOTOMETRIC_SAMPLES:
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT",
            f"photometric interpretation {_name_term(photometric)} is not read",
            where,
        )
    if _PHOTOMETRIC_SAMPLES[photometric] != samples:
        raise input_error(
            "INPUT_INVALID", f"{photometric} needs a different SamplesPerPixel", where
        )
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
    if layout.elements > limits.max_elements:
        raise beyond_cap("image elements", "max_elements", limits, where)
    if layout.decoded_nbytes() > limits.max_decompressed_bytes:
        raise beyond_cap("decoded pixel data", "max_decompressed_bytes", limits, where)
    return layout


def _frame_spacing(
    ds: Dataset, frames: int, direction: np.ndarray | None, where: object
) -> tuple[float, float, str]:
    """Spacing between frames, the sign of the step along the normal, and its source."""
    projections = None
    if direction is not None:
        normal = direction[:, 2]
        per_frame = get_value(ds, "PerFrameFunctionalGroupsSequence", where)
        offsets = get_value(ds, "GridFrameOffsetVector", where)
        if per_frame is not None and len(per_frame) == frames:
            positions = [image_position(ds, i, where) for i in range(frames)]
            if all(p is not None for p in positions):
                projections = np.array([p @ normal for p in positions])
        if projections is None and offsets is not None:
            # RT Dose: offsets along the normal (relative to the first plane, or plain
            # z values when the first is not 0; their differences are the steps either way).
            projections = np.array(parse_floats(offsets, frames, "GridFrameOffsetVector", where))
    if projections is not None and np.ptp(projections) > 1e-3:
        step = even_step(np.diff(projections))
        if step is None:
            raise input_error(
                "INPUT_SERIES_INCONSISTENT", "frames are not evenly spaced along the normal", where
            )
        return abs(step), math.copysign(1.0, step), "positions"
    between = optional_positive(ds, "SpacingBetweenSlices", where)
    return (between, 1.0, "SpacingBetweenSlices") if between else (1.0, 1.0, "default")


# ------------------------------------------------------------------------- pixels


def _decode(ds: Dataset, uid: UID, layout: _Layout, where: object) -> tuple[np.ndarray, str]:
    """Decoded stored values shaped ``([F,] Y, X[, S])`` and their photometric."""
    decoder = _decoder(uid, where)
    value = ds.get_item(_PIXEL_DATA).value
    actual = len(value) if isinstance(value, (bytes, bytearray)) else 0
    if decoder.is_native:
        expected = layout.native_nbytes()
        if actual < expected:
            raise input_error(
                "INPUT_TRUNCATED",
                f"pixel data holds {actual} bytes, the header describes {expected}",
                where,
            )
    elif isinstance(value, bytes):  # decoders trust the frames' own headers, not ours
        rows, columns, frames = layout.rows, layout.columns, layout.frames
        check_encapsulated(value, uid, rows, columns, frames, layout.decoded_nbytes(), where)
    try:
        array, properties = decoder.as_array(ds)
    except MemoryError as exc:
        raise input_error("INPUT_INVALID", "pixel data too large to decode here", where) from exc
    except BaseException as exc:  # every plugin failed: the encoded bytes are bad
        # BaseException because Rust decoders (pylibjpeg-rle) report a panic on bad
        # data as pyo3's PanicException, which is not an Exception.
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise input_error(
            "INPUT_CORRUPT",
            f"pixel data could not be decoded as {_describe_uid(uid)} ({type(exc).__name__})",
            where,
        ) from exc

    expected_shape: tuple[int, ...] = (layout.rows, layout.columns)
    if layout.frames > 1:
        expected_shape = (layout.frames, *expected_shape)
    if layout.samples > 1:
        expected_shape = (*expected_shape, layout.samples)
    if array.shape != expected_shape:
        raise input_error("INPUT_CORRUPT", "decoded pixel data has an unexpected shape", where)
    photometric = properties.get("photometric_interpretation", layout.photometric)
    return array, str(getattr(photometric, "value", photometric))


def _stored_range(layout: _Layout) -> tuple[int, int]:
    if layout.pixel_representation == 1:
        return -(2 ** (layout.bits_stored - 1)), 2 ** (layout.bits_stored - 1) - 1
    return 0, 2**layout.bits_stored - 1


def _rescale(ds: Dataset, frames: int, where: object) -> tuple[list[float], list[float], str]:
    """Per-frame slope and intercept of the linear Modality LUT, and where they came from."""
    slopes, intercepts, source = [], [], "none"
    dose = code_string(get_value(ds, "Modality", where)) == "RTDOSE" and "DoseGridScaling" in ds
    for frame in range(frames):
        slope = frame_value(ds, "PixelValueTransformationSequence", "RescaleSlope", frame, where)
        intercept = frame_value(
            ds, "PixelValueTransformationSequence", "RescaleIntercept", frame, where
        )
        if slope is not None or intercept is not None:
            source = "rescale"
        elif dose:
            slope, source = get_value(ds, "DoseGridScaling", where), "dose_grid_scaling"
        slope = parse_floats(slope, 1, "RescaleSlope", where) or [1.0]
        intercept = parse_floats(intercept, 1, "RescaleIntercept", where) or [0.0]
        if slope[0] == 0:
            raise input_error("INPUT_INVALID", "RescaleSlope is zero", where)
        slopes.append(slope[0])
        intercepts.append(intercept[0])
        if frame == 0 and "PerFrameFunctionalGroupsSequence" not in ds:
            # Classic objects have one rescale for every frame: no need to look again.
            return slopes * frames, intercepts * frames, source
    return slopes, intercepts, source


def _monochrome(
    stored: np.ndarray, ds: Dataset, layout: _Layout, where: object
) -> tuple[np.ndarray, dict[str, Any]]:
    """Physical values (float32, frames first) and the rescale facts for the metadata."""
    frames = stored.reshape((-1, layout.rows, layout.columns))  # a view, frames first
    out = np.empty(frames.shape, dtype=np.float32)
    lo, hi = _stored_range(layout)
    invert = layout.photometric == "MONOCHROME1"
    facts: dict[str, Any] = {}

    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        if layout.bits_stored > 16:
            raise input_error("INPUT_UNSUPPORTED_FORMAT", "Modality LUT on >16-bit data", where)
        check_modality_lut(ds, stored, where)
        try:
            outputs = apply_modality_lut(np.arange(lo, hi + 1), ds)
            for i, frame in enumerate(frames):
                out[i] = apply_modality_lut(frame, ds)
        except Exception as exc:
            raise input_error(
                "INPUT_INVALID", "Modality LUT Sequence cannot be applied", where
            ) from exc
        if invert:
            out[...] = float(outputs.min()) + float(outputs.max()) - out
        facts["modality_lut"] = "sequence"
        reflect = float(outputs.min()) + float(outputs.max())
    else:
        slopes, intercepts, source = _rescale(ds, len(frames), where)
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
        raise input_error("INPUT_INVALID", "rescaled values are not finite in float32", where)
    centre = first_float(frame_value(ds, "FrameVOILUTSequence", "WindowCenter", 0, where))
    width = first_float(frame_value(ds, "FrameVOILUTSequence", "WindowWidth", 0, where))
    if centre is not None and width is not None and width > 0:
        centre = reflect - centre if invert else centre
        if math.isfinite(centre):  # a display hint: dropped rather than refused
            facts["window_center"], facts["window_width"] = centre, width
    facts["monochrome1_inverted"] = invert
    shape = (layout.frames, layout.rows, layout.columns) if layout.frames > 1 else stored.shape
    return out.reshape(shape), facts


def _colour(stored: np.ndarray, photometric: str, ds: Dataset, where: object) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        check_palette(ds, stored, where, little_endian=ds.original_encoding[1] is not False)
        try:
            stored = apply_color_lut(stored, ds)[..., :3]  # an alpha table is dropped
        except Exception as exc:
            raise input_error(
                "INPUT_INVALID", "palette colour lookup table is unusable", where
            ) from exc
    elif photometric != "RGB":
        # pydicom converts YBR_FULL(_422) and the JPEG 2000 colour transforms to RGB; any
        # other colour model left over is one we would misread.
        raise input_error(
            "INPUT_UNSUPPORTED_FORMAT",
            f"decoded colour model {_name_term(photometric)} is not read",
            where,
        )
    return np.ascontiguousarray(stored, dtype=np.float32)


# -------------------------------------------------------------------------- public


def _image(ds: Dataset, limits: ReaderLimits, where: object) -> MedicalImage:
    """Build the image from a fully parsed dataset."""
    if _PIXEL_DATA not in ds:
        if any(tag in ds for tag in _OTHER_PIXEL_DATA):
            raise input_error("INPUT_UNSUPPORTED_FORMAT", "float pixel data is not read", where)
        raise input_error("INPUT_NO_PIXEL_DATA", "DICOM object holds no pixel data", where)
    uid = _transfer_syntax(ds, where)
    layout = _layout(ds, limits, where)
    spacing_yx, spacing_source = pixel_spacing(ds, where)
    direction = direction_matrix(
        frame_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0, where), where
    )
    position = image_position(ds, 0, where)

    stored, photometric = _decode(ds, uid, layout, where)
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
        "slice_thickness": optional_positive(ds, "SliceThickness", where),
        "spacing_between_slices": optional_positive(ds, "SpacingBetweenSlices", where),
        **_lossy(ds, uid, where),
    }
    if photometric in _MONOCHROME:
        array, facts = _monochrome(stored, ds, layout, where)
        metadata.update(facts)
        # RescaleType is free text (LO): keep it only when it is a defined unit term.
        rescale_type = code_string(get_value(ds, "RescaleType", where))
        if rescale_type in _RESCALE_TYPES:
            metadata["rescale_type"] = rescale_type
        photometric_out = "MONOCHROME2"
    else:
        array, photometric_out = _colour(stored, photometric, ds, where), "RGB"
    modality = code_string(get_value(ds, "Modality", where)) or "OT"
    if modality == "RTDOSE":
        metadata["dose_units"] = code_string(get_value(ds, "DoseUnits", where))

    spacing: tuple[float, ...] = spacing_yx
    known = spacing_source != "default"
    if layout.frames > 1:
        dz, sign, z_source = _frame_spacing(ds, layout.frames, direction, where)
        spacing = (dz, *spacing_yx)
        metadata["z_spacing_source"] = z_source
        known = known and z_source != "default"
        if direction is not None and sign < 0:
            direction = direction * np.array([1.0, 1.0, -1.0])  # frames run against the normal
    # Millimetres only where the file states every spacing the image needs.
    metadata["spacing_source"] = "dicom" if known else "unknown"
    return MedicalImage(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=tuple(float(s) for s in spacing),
        modality=modality,
        photometric=photometric_out,
        origin=None if position is None else as_triple(position),
        direction=direction,
        metadata=metadata,
    )


def read_dicom(source: SourceLike | Source, *, limits: ReaderLimits) -> MedicalImage:
    """Read one DICOM file (single- or multi-frame) from a path or from memory.

    Files without the ``DICM`` preamble are parsed with ``force=True`` and accepted
    only when they hold elements every DICOM object has.

    Args:
        source: a path, the file's bytes, a binary file object, or a resolved Source.
        limits: the caps every check holds the file to.

    Returns:
        ``(Y, X)`` for one frame, ``(Z, Y, X)`` for several, with a trailing RGB axis
        for colour; values in physical units (see the module docstring).

    Raises:
        InputError: with one of the ``INPUT_*`` codes listed in :mod:`edgemed.io.read`.
    """
    src = resolve_source(source, limits)
    ds, _ = parse_dicom(src, limits=limits, header_only=False)
    image = _image(ds, limits, src.where)
    # Its header (pixel data dropped: decoded above) for a DICOM SEG that references it
    # (``run --dicom``); in memory only, never written or logged.
    if "PixelData" in ds:
        del ds.PixelData
    image.dicom_headers = [ds]
    return image
