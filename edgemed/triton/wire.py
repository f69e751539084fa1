"""What travels between a Triton client and the edgemed model: tensor names and packing.

The model (:mod:`edgemed.triton.model`, inside the server) and the client helper
(:mod:`edgemed.triton.client`) both use these functions, so the two ends agree by
construction. Plain NumPy: no Triton import here.

Request:
    ``INPUT`` (UINT8, ``[batch, -1]``): one row per file, the file's bytes (any format
    :func:`edgemed.read_image` takes). A tensor is rectangular, so rows of one request
    that differ in length are zero-padded to the longest and ``LENGTH`` (INT64,
    ``[batch, 1]``, optional) gives each row's real length. Each row is one image,
    unless the request parameter ``series`` is true: then the rows are the instances of
    one DICOM series (what a directory holds for ``edgemed run DIR``) and give one image.
Response:
    ``RESULT`` (BYTES, ``[images, 1]``): per image, ``result.json`` as ``edgemed run``
    writes it. ``MASK`` (UINT8, ``[images, Z, Y, X]``, segmentation only): per image its
    mask in the input's own voxel grid, ``Z`` = 1 for a 2D image; masks of different
    sizes in one response are zero-padded to the largest (``RESULT``'s
    ``input.shape`` gives each one's own size: :func:`crop_mask`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemed.errors import InputError, UsageError
from edgemed.fsutil import json_text

__all__ = [
    "INPUT",
    "LENGTH",
    "MASK",
    "RESULT",
    "SERIES",
    "crop_mask",
    "mask_zyx",
    "pack",
    "parse_result",
    "result_text",
    "stack_masks",
    "unpack",
]

INPUT = "INPUT"
LENGTH = "LENGTH"
RESULT = "RESULT"
MASK = "MASK"
#: Request parameter: the rows are the instances of one DICOM series.
SERIES = "series"


def pack(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
    """Files' bytes as one ``INPUT`` tensor, and ``LENGTH`` when their lengths differ."""
    if not items:
        raise UsageError("nothing to send: give at least one file")
    sizes = [len(b) for b in items]
    rows = np.zeros((len(items), max(sizes)), dtype=np.uint8)
    for row, data in zip(rows, items, strict=True):
        row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    if len(set(sizes)) == 1:
        return rows, None
    return rows, np.asarray(sizes, dtype=np.int64).reshape(-1, 1)


def unpack(rows: np.ndarray, lengths: np.ndarray | None) -> list[bytes]:
    """The files' bytes from ``INPUT`` (and ``LENGTH``) as :func:`pack` made them.

    Raises:
        InputError: ``INPUT_INVALID``: a tensor of the wrong rank, or lengths that do not
            fit the rows.
    """
    if rows.ndim != 2:
        raise InputError(f"{INPUT} must be [batch, bytes], got rank {rows.ndim}")
    if lengths is None:
        return [row.tobytes() for row in rows]
    sizes = np.asarray(lengths).reshape(-1)
    if sizes.shape[0] != rows.shape[0]:
        raise InputError(f"{LENGTH} has {sizes.shape[0]} values for {rows.shape[0]} rows")
    if np.any(sizes < 0) or np.any(sizes > rows.shape[1]):
        raise InputError(f"{LENGTH} values must be between 0 and {rows.shape[1]}")
    return [row[: int(n)].tobytes() for row, n in zip(rows, sizes, strict=True)]


def result_text(data: dict[str, Any]) -> bytes:
    """``result.json`` as ``edgemed run`` writes it (``data`` is ``Result.to_dict()``)."""
    return json_text(data).encode("utf-8")


def mask_zyx(mask: np.ndarray) -> np.ndarray:
    """A result's mask, ``(Y, X)`` or ``(Z, Y, X)``, as ``(Z, Y, X)`` uint8."""
    m = np.asarray(mask, dtype=np.uint8)
    return m[np.newaxis] if m.ndim == 2 else m


def stack_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    """``(Z, Y, X)`` masks as one ``[n, Z, Y, X]`` tensor, zero-padded to the largest."""
    shape = tuple(max(m.shape[k] for m in masks) for k in range(3))
    out = np.zeros((len(masks), *shape), dtype=np.uint8)
    for dst, m in zip(out, masks, strict=True):
        dst[: m.shape[0], : m.shape[1], : m.shape[2]] = m
    return out


def crop_mask(padded: np.ndarray, result: dict[str, Any]) -> np.ndarray:
    """One image's mask from its ``MASK`` row, in the shape the in-process
    ``Result.mask`` has (``(Y, X)`` for a 2D input, ``(Z, Y, X)`` for a volume)."""
    shape = [int(s) for s in result["input"]["shape"]]
    zyx = shape if len(shape) == 3 else [1, *shape]
    m = padded[: zyx[0], : zyx[1], : zyx[2]]
    return np.ascontiguousarray(m[0] if len(shape) == 2 else m)


def parse_result(raw: bytes | str) -> dict[str, Any]:
    """A ``RESULT`` element as the dict ``Result.to_dict()`` gave."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    data = json.loads(text)
    if not isinstance(data, dict):
        raise UsageError("RESULT is not a JSON object")
    return data
