"""Encapsulated DICOM pixel data, checked against the header before any decoder runs.

Decoders size their buffers from what the compressed data says, not from the DICOM
header, and the two can disagree in a hostile file. Found by benchmarks/fuzz_readers.py:
a JPEG 2000 codestream whose SIZ marker claims 256 x 394240 made OpenJPEG allocate
hundreds of MB for a 3 KB file, and pydicom's RLE decoder filled the whole 2 GiB frame a
header claimed before noticing that 7 KB of data could not hold it. So, before decoding:

* RLE: the data must be at least 1/64 of the decoded size (RLE's densest code, a
  replicate run, turns 2 bytes into 128), else ``INPUT_TRUNCATED``;
* JPEG (baseline, extended, lossless), JPEG-LS and JPEG 2000: the frame header of every
  frame (SOF, SOF55 or SIZ) must describe Rows x Columns, else ``INPUT_CORRUPT``.

A frame whose header cannot be found is left to the decoder, which refuses it too.
"""

from __future__ import annotations

import struct

from pydicom.encaps import generate_fragmented_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edgemed.errors import InputError

__all__ = ["ENCAPSULATED", "check_encapsulated"]

_JPEG = {
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
}
_J2K = {JPEG2000Lossless, JPEG2000}
#: The compressed transfer syntaxes whose frames this module checks; dicom.py allows
#: exactly these plus the native ones.
ENCAPSULATED = frozenset(_JPEG | _J2K | {RLELossless})
# Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC), and
# JPEG-LS SOF55 (F7). All carry Lf, P, Y (rows), X (columns) in the same place.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}
_HEADER_SEARCH = 4096  # the SIZ of a JPEG 2000 codestream follows SOC (and any JP2 boxes)


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG or JPEG-LS frame, from its first SOF marker."""
    if frame[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in _SOF:
            if pos + 9 > len(frame):
                return None
            rows, columns = struct.unpack_from(">HH", frame, pos + 5)
            return (rows, columns) if rows else None  # 0: rows come later (DNL)
        if marker == 0xDA:  # a scan without a frame header before it
            return None
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG 2000 codestream, from its SIZ marker."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, _HEADER_SEARCH)  # SOC, SIZ
    if at < 0 or at + 24 > len(frame):
        return None
    xsiz, ysiz, x_offset, y_offset = struct.unpack_from(">IIII", frame, at + 8)
    return ysiz - y_offset, xsiz - x_offset


def check_encapsulated(
    value: bytes, uid: UID, rows: int, columns: int, frames: int, decoded: int, path: object
) -> None:
    """Refuse encapsulated pixel data that cannot be the image the header describes.

    Args:
        value: the encapsulated Pixel Data element value.
        uid: its transfer syntax.
        rows, columns, frames: from the header.
        decoded: bytes the decoded stored array takes.
        path: what messages name (a path, or None for bytes).

    Raises:
        InputError: ``INPUT_TRUNCATED`` (RLE data too short) or ``INPUT_CORRUPT`` (a
            frame header that describes another size).
    """
    if uid == RLELossless:
        if 64 * len(value) < decoded:
            raise InputError(
                "RLE data is too short for the image described",
                code="INPUT_TRUNCATED",
                path=path,
            )
        return
    size_of = _jpeg_size if uid in _JPEG else _j2k_size if uid in _J2K else None
    if size_of is None:
        return
    try:
        fragmented = list(generate_fragmented_frames(value, number_of_frames=frames))
    except Exception:  # malformed encapsulation: the decoder reports it
        return
    for fragments in fragmented:
        size = size_of(fragments[0]) if fragments else None  # the header opens the frame
        if size is not None and size != (rows, columns):
            raise InputError(
                "a compressed frame describes a different size than Rows and Columns",
                code="INPUT_CORRUPT",
                path=path,
            )
