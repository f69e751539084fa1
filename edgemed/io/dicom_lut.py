"""DICOM lookup tables, checked before pydicom applies them (split from dicom.py).

A table is only as good as its descriptor: ``[entries, first stored value mapped, bits
per entry]``. These checks make the descriptor agree with the table data, bound the
expansion of segmented palettes, and require every stored value to index an entry of
the table, so that applying the table can neither fail with an arbitrary exception nor
index garbage. Every refusal is an ``INPUT_INVALID`` (``INPUT_UNSUPPORTED_FORMAT`` for a
Modality LUT whose entries are neither 8 nor 16 bits, which pydicom cannot apply).

PS3.3 C.7.6.3.1.5 maps stored values outside a table to its first or last entry;
edgemed refuses them instead: in practice they mean a wrong descriptor or a damaged
file, and a clamped value would be silently wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from edgemed.errors import InputError

__all__ = ["check_palette", "check_modality_lut"]

#: The descriptor's first value is 16 bits; 0 means 65536 entries.
MAX_LUT_ENTRIES = 2**16
# Segments visited while measuring a segmented palette (indirect segments revisit
# others) and how deep indirect segments may nest: far beyond real tables, yet bounded.
_MAX_SEGMENT_VISITS = 2**16
_MAX_INDIRECT_DEPTH = 4
_CHANNELS = ("Red", "Green", "Blue")


class _Unbounded(Exception):
    """A segmented table that does not describe a bounded, well-formed table."""


def _invalid(problem: str, path: object, code: str = "INPUT_INVALID") -> InputError:
    return InputError(problem, code=code, path=path)


def _descriptor(value: Any, what: str, path: object) -> tuple[int, int, int]:
    """(entries, first stored value mapped, bits per entry) of a LUT descriptor."""
    try:
        entries, first, bits = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise _invalid(f"{what} descriptor must hold three integers", path) from exc
    if not 0 <= entries < MAX_LUT_ENTRIES:
        raise _invalid(f"{what} descriptor has an impossible number of entries", path)
    return entries or MAX_LUT_ENTRIES, first, bits


def _check_indices(stored: np.ndarray, first: int, entries: int, what: str, path: object) -> None:
    """Every stored value must index an entry: ``first <= value < first + entries``."""
    if stored.size and (int(stored.min()) < first or int(stored.max()) >= first + entries):
        raise _invalid(f"stored values fall outside the {what}", path)


def _indirect_target(words: Sequence[int], offset: int, little_endian: bool | None) -> int:
    """The 32-bit offset of an indirect segment: two 16-bit words, or four bytes.

    ``little_endian`` is None for 16-bit words; for 8-bit tables it orders the bytes
    as pydicom does.
    """
    if little_endian is None:
        return words[offset + 1] << 16 | words[offset]
    order = (3, 2, 1, 0) if little_endian else (2, 3, 0, 1)
    b = [words[offset + i] for i in order]
    return (b[0] << 8 | b[1]) << 16 | (b[2] << 8 | b[3])


def _walk(
    words: Sequence[int],
    start: int,
    limit: int | None,
    budget: list[int],
    depth: int,
    byte_order: bool | None,
) -> int:
    """Entries a segmented table expands to, counted the way pydicom expands it.

    ``limit`` is the number of segments an indirect segment asks for (None: to the end);
    ``byte_order`` is None for 16-bit tables, else whether 8-bit ones are little endian.
    """
    total = segments = 0
    offset = start
    while offset + 1 < len(words):
        budget[0] -= 1
        if budget[0] < 0:
            raise _Unbounded
        opcode, length = words[offset], words[offset + 1]
        offset += 2
        if opcode == 0:  # discrete: `length` entries follow
            total += length
            offset += length
        elif opcode == 1:  # linear: one end value follows
            total += length
            offset += 1
        elif opcode == 2:  # indirect: `length` segments found at a 32-bit offset
            width = 2 if byte_order is None else 4
            if depth >= _MAX_INDIRECT_DEPTH or offset + width > len(words):
                raise _Unbounded
            target = _indirect_target(words, offset, byte_order)
            offset += width
            total += _walk(words, target, length, budget, depth + 1, byte_order)
        else:
            raise _Unbounded
        if total > MAX_LUT_ENTRIES:
            raise _Unbounded
        segments += 1
        if segments == limit:
            break
    return total


def _segmented_entries(data: bytes, bits: int, little_endian: bool) -> int | None:
    """Entries of a segmented palette table, or None when it is unbounded or malformed."""
    size = bits // 8  # pydicom reads 8-bit tables byte by byte, 16-bit ones by word
    count = len(data) // size
    fmt = f"{'<' if little_endian else '>'}{count}{'B' if size == 1 else 'H'}"
    words = struct.unpack(fmt, data[: size * count])
    byte_order = little_endian if size == 1 else None
    try:
        return _walk(words, 0, None, [_MAX_SEGMENT_VISITS], 0, byte_order)
    except _Unbounded:
        return None


def check_palette(ds: Dataset, stored: np.ndarray, path: object, little_endian: bool) -> None:
    """Refuse a PALETTE COLOR image whose tables cannot be applied exactly.

    Raises:
        InputError: ``INPUT_INVALID`` for missing, disagreeing or malformed tables,
            unbounded segmented tables, and stored values outside the table.
    """
    try:
        descriptors = [
            _descriptor(ds.get(f"{c}PaletteColorLookupTableDescriptor"), "palette", path)
            for c in _CHANNELS
        ]
        plain = [ds.get(f"{c}PaletteColorLookupTableData") for c in _CHANNELS]
        segmented = [ds.get(f"Segmented{c}PaletteColorLookupTableData") for c in _CHANNELS]
    except InputError:
        raise
    except Exception as exc:  # pydicom cannot convert a value
        raise _invalid("palette colour lookup table cannot be parsed", path) from exc
    if len({d[:2] for d in descriptors}) != 1:
        raise _invalid("palette descriptors of the three channels disagree", path)
    entries, first, _ = descriptors[0]
    if any(bits not in (8, 16) for _, _, bits in descriptors):
        raise _invalid("palette entries must have 8 or 16 bits", path)
    if all(isinstance(d, bytes) for d in plain):
        lengths = {len(d) for d in plain}  # 8-bit entries one per byte, else per word
        if len(lengths) != 1 or lengths.pop() not in (entries, 2 * entries):
            raise _invalid("palette table length does not match its descriptor", path)
    elif all(isinstance(d, bytes) for d in segmented):
        for data, (_, _, bits) in zip(segmented, descriptors, strict=True):
            expanded = _segmented_entries(data, bits, little_endian)
            if expanded is None or expanded < entries:
                raise _invalid("segmented palette table is malformed or too large", path)
    else:
        raise _invalid("palette colour lookup table data is missing", path)
    _check_indices(stored, first, entries, "palette colour lookup table", path)


def check_modality_lut(ds: Dataset, stored: np.ndarray, path: object) -> None:
    """Refuse a Modality LUT Sequence that cannot be applied exactly to ``stored``.

    Raises:
        InputError: ``INPUT_INVALID`` for a missing or malformed table and stored values
            outside it; ``INPUT_UNSUPPORTED_FORMAT`` for entries of other than 8 or 16 bits.
    """
    try:
        sequence = ds.get("ModalityLUTSequence")
        item = sequence[0] if sequence else None
        descriptor = item.get("LUTDescriptor") if item is not None else None
        element = item["LUTData"] if item is not None and "LUTData" in item else None
    except Exception as exc:  # pydicom cannot convert a value
        raise _invalid("Modality LUT Sequence cannot be parsed", path) from exc
    if element is None:
        raise _invalid("Modality LUT Sequence holds no table", path)
    entries, first, bits = _descriptor(descriptor, "Modality LUT", path)
    if bits not in (8, 16):
        raise _invalid(
            "Modality LUT entries of other than 8 or 16 bits", path, "INPUT_UNSUPPORTED_FORMAT"
        )
    value = element.value
    if isinstance(value, (bytes, bytearray)):  # OW: 16-bit words
        length = len(value) // 2 if len(value) % 2 == 0 else -1
    elif isinstance(value, int):  # a one-entry table reads as a plain number
        length = 1
    else:
        length = len(value) if value is not None else 0
    if length != entries:
        raise _invalid("Modality LUT length does not match its descriptor", path)
    _check_indices(stored, first, entries, "Modality LUT", path)
