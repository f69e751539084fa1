"""DICOM series: one directory of single-frame files -> a ``(Z, Y, X)`` volume.

The per-file rules (pixel values, geometry checks, privacy, caps) are those of
:mod:`edgemed.io.dicom`; this module groups, checks and orders the slices. A directory
holds at most ``MAX_FRAMES`` files and the volume at most ``MAX_ELEMENTS`` elements
(:mod:`edgemed.io.read`), both checked before any pixel data is decoded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

import edgemed.io.read as limits
from edgemed.errors import InputError
from edgemed.io.dicom import (
    _SUFFIXES_WITHOUT_MAGIC,
    _direction,
    _error,
    _even_steps,
    _get,
    _int,
    _optional_positive,
    _parse,
    _pixel_spacing,
    _position,
    read_dicom,
)
from edgemed.io.image import MedicalImage

__all__ = ["read_dicom_series"]


def _series_header(path: Path) -> Dataset | None:
    """Header of an image file in a series directory, or None for anything else."""
    try:
        with open(path, "rb") as raw:
            has_magic = raw.read(132)[128:132] == b"DICM"
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "file cannot be opened or read", path) from exc
    if not has_magic and path.suffix.lower() not in _SUFFIXES_WITHOUT_MAGIC:
        return None
    try:
        ds, _ = _parse(path, header_only=True)
    except InputError:
        if has_magic:  # a DICOM file that is broken fails the series, loudly
            raise
        return None
    return ds if "Rows" in ds else None  # DICOMDIR, SR, RT plan...: not slices


def _same(values: list[Any], what: str, directory: Path, atol: float = 0.0) -> None:
    first = values[0]
    for value in values[1:]:
        if first is None or value is None:
            equal = first is value
        else:
            equal = bool(np.allclose(first, value, rtol=0.0, atol=atol)) if atol else first == value
        if not equal:
            raise _error("INPUT_SERIES_INCONSISTENT", f"slices differ in {what}", directory)


def _slice_order(
    headers: list[tuple[Path, Dataset]], directory: Path, spacing_yx: tuple[float, float]
) -> tuple[list[int], float, str]:
    """Slice order (indices into headers), spacing along z, and how it was found."""
    paths = [p for p, _ in headers]
    directions = [_direction(_get(ds, "ImageOrientationPatient", p), p) for p, ds in headers]
    positions = [_position(ds, 0, p) for p, ds in headers]
    present = [d is not None and x is not None for d, x in zip(directions, positions, strict=True)]
    if not any(present):
        numbers = [_int(ds, "InstanceNumber", p, default=-1) for p, ds in headers]
        if min(numbers) < 0 or len(set(numbers)) != len(numbers):
            raise _error(
                "INPUT_SERIES_INCONSISTENT",
                "slices have neither positions nor unique numbers",
                directory,
            )
        between = _optional_positive(headers[0][1], "SpacingBetweenSlices", paths[0])
        order = sorted(range(len(headers)), key=numbers.__getitem__)
        return order, between or 1.0, "instance_number"
    if not all(present):
        raise _error("INPUT_SERIES_INCONSISTENT", "some slices lack position", directory)
    _same(directions, "orientation", directory, atol=1e-4)

    normal = directions[0][:, 2]  # type: ignore[index]  # all present, checked above
    points = np.array(positions)
    projections = points @ normal
    order = [int(i) for i in np.argsort(projections, kind="stable")]
    steps = np.diff(projections[order])
    if np.any(steps < 1e-3):
        raise _error("INPUT_SERIES_INCONSISTENT", "two slices share one position", directory)
    step = _even_steps(steps)
    if step is None:
        raise _error("INPUT_SERIES_INCONSISTENT", "slices are not evenly spaced", directory)
    # Slices must stack along the normal; a sheared stack (gantry tilt) is not a grid
    # that spacing + direction can describe.
    offsets = points[order] - points[order[0]]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > max(0.01, 0.1 * min(spacing_yx)):
        raise _error(
            "INPUT_SERIES_INCONSISTENT", "slices are shifted in-plane (gantry tilt?)", directory
        )
    return order, step, "positions"


def read_dicom_series(directory: str | Path) -> MedicalImage:
    """Read one DICOM series from a directory (not recursive) as a ``(Z, Y, X)`` volume.

    Headers are read first (without pixel data). Files that are not DICOM images
    (other files, DICOMDIR, reports) are skipped and counted in
    ``metadata["ignored_files"]``; a DICOM file that is broken fails the whole series.
    Slices are sorted by the projection of ImagePositionPatient on the slice normal,
    ``spacing[0]`` is the median step and ``origin`` the first slice's position.

    Args:
        directory: the folder that holds the series.

    Raises:
        InputError: ``INPUT_EMPTY_SERIES``, ``INPUT_MULTIPLE_SERIES``,
            ``INPUT_SERIES_INCONSISTENT`` or any code a single file can raise.
    """
    directory = Path(directory)
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "directory cannot be listed", directory) from exc
    if len(entries) > limits.MAX_FRAMES:  # checked before any file is parsed
        cap = limits.MAX_FRAMES
        raise _error("INPUT_INVALID", f"directory holds more than {cap} files", directory)
    headers: list[tuple[Path, Dataset]] = []
    for entry in entries:
        ds = _series_header(entry)
        if ds is not None:
            headers.append((entry, ds))
    ignored = len(entries) - len(headers)
    if not headers:
        raise _error(
            "INPUT_EMPTY_SERIES", f"no DICOM image files ({ignored} other files)", directory
        )
    series = {str(_get(ds, "SeriesInstanceUID", p) or "") for p, ds in headers}
    if len(series) > 1:  # never name the UIDs: they identify a study
        raise _error(
            "INPUT_MULTIPLE_SERIES",
            f"directory holds {len(series)} DICOM series; give one series per directory",
            directory,
        )

    if len(headers) == 1:  # one file: its own frames, or a one-slice volume
        image = read_dicom(headers[0][0])
        if not image.is_volume:
            dz = image.metadata.get("spacing_between_slices") or 1.0
            image = replace(image, array=image.array[np.newaxis], spacing=(dz, *image.spacing))
        image.metadata.update(
            format="dicom-series", num_slices=image.num_slices, ignored_files=ignored
        )
        return image

    layouts = [
        (_int(ds, "Rows", p), _int(ds, "Columns", p), _int(ds, "SamplesPerPixel", p, 1))
        for p, ds in headers
    ]
    _same(layouts, "rows, columns or samples per pixel", directory)
    if any(_int(ds, "NumberOfFrames", p, default=1) != 1 for p, ds in headers):
        raise _error("INPUT_SERIES_INCONSISTENT", "series holds multi-frame files", directory)
    spacings = [_pixel_spacing(ds, p)[0] for p, ds in headers]
    _same(spacings, "pixel spacing", directory, atol=1e-4)
    rows, columns, samples = layouts[0]
    if rows * columns * samples * len(headers) > limits.MAX_ELEMENTS:
        cap = limits.MAX_ELEMENTS
        raise _error("INPUT_INVALID", f"series has more than {cap} elements", directory)
    order, dz, how = _slice_order(headers, directory, spacings[0])

    # Decode slice by slice into one preallocated volume: peak memory stays one volume
    # plus one slice, not two volumes.
    first = read_dicom(headers[order[0]][0])
    volume = np.empty((len(order), *first.array.shape), dtype=np.float32)
    rescales = set()
    for k, index in enumerate(order):
        image = first if k == 0 else read_dicom(headers[index][0])
        if (image.photometric, image.array.shape) != (first.photometric, first.array.shape):
            raise _error("INPUT_SERIES_INCONSISTENT", "slices differ in pixel layout", directory)
        volume[k] = image.array
        rescales.add((image.metadata.get("rescale_slope"), image.metadata.get("rescale_intercept")))
    metadata = dict(first.metadata)
    if len(rescales) > 1:  # e.g. PET: each slice has its own slope; values are right anyway
        metadata.pop("rescale_slope", None)
        metadata.pop("rescale_intercept", None)
        metadata["rescale_varies"] = True
    metadata.update(
        format="dicom-series",
        num_slices=len(order),
        ignored_files=ignored,
        slice_order=how,
        z_spacing_source=how,
    )
    return replace(first, array=volume, spacing=(float(dz), *first.spacing), metadata=metadata)
