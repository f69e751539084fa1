"""Values read out of a parsed DICOM dataset: conversions and geometry.

Shared by the single-file reader (:mod:`edgemed.io.dicom`) and the series reader
(:mod:`edgemed.io.series`). Every helper refuses an unusable value with
``INPUT_INVALID`` and a message that names the keyword, never the value (it may
identify a patient). ``where`` is what the message names: a path, or None for bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from edgemed.io.source import input_error

__all__ = [
    "as_triple",
    "code_string",
    "direction_matrix",
    "even_step",
    "first_float",
    "frame_value",
    "get_int",
    "get_value",
    "image_position",
    "optional_positive",
    "parse_floats",
    "pixel_spacing",
]

_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def get_value(ds: Dataset, keyword: str, where: object) -> Any:
    """``ds.get(keyword)``; a value pydicom cannot convert is ``INPUT_INVALID``."""
    try:
        return ds.get(keyword)
    except Exception as exc:
        raise input_error("INPUT_INVALID", f"{keyword} cannot be parsed", where) from exc


def get_int(ds: Dataset, keyword: str, where: object, default: int | None = None) -> int:
    """An integer value (``IS``/``US``/... or a whole ``DS``); ``default`` when absent.

    Raises:
        InputError: ``INPUT_INVALID`` when it is missing without a default, or not a
            whole number.
    """
    value = get_value(ds, keyword, where)
    if value is None or value == "":
        if default is None:
            raise input_error("INPUT_INVALID", f"{keyword} is missing", where)
        return default
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise input_error("INPUT_INVALID", f"{keyword} is not an integer", where) from exc


def parse_floats(value: Any, count: int, what: str, where: object) -> list[float] | None:
    """``count`` finite floats from a (multi-)value, ``None`` when absent."""
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise input_error("INPUT_INVALID", f"{what} is not numeric", where) from exc
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise input_error("INPUT_INVALID", f"{what} must hold {count} finite numbers", where)
    return numbers


def first_float(value: Any) -> float | None:
    """First value of an optional display hint (window centre/width); None if unusable."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def code_string(value: Any) -> str | None:
    """A DICOM code string (CS) value, or None when it is not a plain code."""
    text = str(value).strip().upper() if value is not None else ""
    return text if _CODE_STRING.match(text) else None


def frame_value(ds: Dataset, macro: str, keyword: str, frame: int, where: object) -> Any:
    """Top-level value, else the frame's functional group, else the shared group.

    Enhanced (multi-frame) objects keep geometry and rescale in functional group
    macros instead of the top level.
    """
    value = get_value(ds, keyword, where)
    if value is not None:
        return value
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = get_value(ds, groups, where)
        if seq is not None and len(seq) > index:
            items = get_value(seq[index], macro, where)
            if items is not None and len(items) > 0:
                value = get_value(items[0], keyword, where)
                if value is not None:
                    return value
    return None


def direction_matrix(iop: Any, where: object) -> np.ndarray | None:
    """3x3 matrix whose columns are the LPS unit vectors of the x, y, z index axes."""
    values = parse_floats(iop, 6, "ImageOrientationPatient", where)
    if values is None:
        return None
    row, col = np.array(values[:3]), np.array(values[3:])
    row_norm, col_norm = np.linalg.norm(row), np.linalg.norm(col)
    # An overflowing norm (components near 1e308) would turn the matrix into NaNs.
    if not 1e-6 < row_norm < 1e100 or not 1e-6 < col_norm < 1e100:
        raise input_error(
            "INPUT_INVALID", "ImageOrientationPatient is not a pair of vectors", where
        )
    row, col = row / row_norm, col / col_norm
    if abs(float(row @ col)) > 1e-3:
        raise input_error(
            "INPUT_INVALID", "ImageOrientationPatient vectors are not orthogonal", where
        )
    normal = np.cross(row, col)
    return np.column_stack([row, col, normal / np.linalg.norm(normal)])


def pixel_spacing(ds: Dataset, where: object) -> tuple[tuple[float, float], str]:
    """In-plane ``(dy, dx)``: PixelSpacing is [row spacing, column spacing].

    Returns the spacing and the keyword it came from, or ``(1.0, 1.0)`` and
    ``"default"`` when the file does not say. A zero (``0\\0`` is what some writers
    put when they do not know) says nothing, as if the element were absent; a negative
    value is ``INPUT_INVALID``.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = frame_value(ds, "PixelMeasuresSequence", keyword, 0, where)
        numbers = parse_floats(value, 2, keyword, where)
        if numbers is not None:
            if min(numbers) < 0:
                raise input_error("INPUT_INVALID", f"{keyword} must not be negative", where)
            if min(numbers) > 0:
                return (numbers[0], numbers[1]), keyword
    return (1.0, 1.0), "default"


#: Largest patient coordinate accepted (mm): 10 km is beyond any scanner's space.
MAX_POSITION_MM = 1e7


def image_position(ds: Dataset, frame: int, where: object) -> np.ndarray | None:
    """ImagePositionPatient of ``frame`` (top level or functional groups), or None."""
    value = frame_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame, where)
    numbers = parse_floats(value, 3, "ImagePositionPatient", where)
    if numbers is not None and max(abs(n) for n in numbers) > MAX_POSITION_MM:
        # Finite but absurd (1e308 fits a float64, not the float32 of a NIfTI affine): a
        # mask written with it would carry an infinite offset.
        raise input_error("INPUT_INVALID", "ImagePositionPatient is beyond 10 km", where)
    return None if numbers is None else np.array(numbers)


def as_triple(values: np.ndarray) -> tuple[float, float, float]:
    """Three numpy values as a tuple of Python floats (an origin)."""
    return (float(values[0]), float(values[1]), float(values[2]))


def optional_positive(ds: Dataset, keyword: str, where: object) -> float | None:
    """A positive pixel-measure value (SliceThickness, ...), or None when unusable."""
    value = first_float(frame_value(ds, "PixelMeasuresSequence", keyword, 0, where))
    return value if value is not None and value > 0 else None


def even_step(steps: np.ndarray) -> float | None:
    """The common step of ``steps`` (signed), or None when they are not evenly spaced."""
    step = float(np.median(steps))
    tolerance = max(0.01, 0.02 * abs(step))  # decimal-string positions carry rounding
    # Positions near 1e308 overflow into inf and NaN steps, which compare False.
    if not np.isfinite(steps).all() or abs(step) < 1e-3 or np.any(np.abs(steps - step) > tolerance):
        return None
    return step
