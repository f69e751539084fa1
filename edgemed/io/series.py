"""DICOM series: single-frame instances of one series -> a ``(Z, Y, X)`` volume.

The instances come from a directory (:func:`read_dicom_series`, what ``read_image``
does with a folder) or from memory (:func:`read_series`: bytes, binary file objects or
paths, e.g. instances received over the network). Both take the same path through
here: the same grouping, sorting, spacing and consistency checks, the same codes.

The per-file rules (pixel values, geometry checks, privacy, caps) are those of
:mod:`edgemed.io.dicom`; this module groups, checks and orders the slices. A series
holds at most ``max_frames`` files (or instances) and the volume at most
``max_elements`` elements (:class:`~edgemed.limits.ReaderLimits`), both checked before
any pixel data is decoded.

Geometry refusals have their own codes: slices of one series in different planes
(``INPUT_MIXED_ORIENTATION``, e.g. a three-plane localiser), steps along the normal that
are not even (``INPUT_SLICE_GAP``: a missing slice, two stacked ranges) and a stack
sheared in-plane (``INPUT_GANTRY_TILT``); anything else that is not one grid (sizes,
pixel spacing, duplicate positions) is ``INPUT_SERIES_INCONSISTENT``. Choosing one series
among several (a folder tree, a DICOMDIR) is :mod:`edgemed.io.series_select`'s; it groups
with :func:`group_series` and assembles with :func:`assemble_series`, as here.

Metadata: ``spacing_source`` is ``dicom`` only when PixelSpacing and the slice step
(positions, else SpacingBetweenSlices) are both stated; ``lossy_compression`` is true
when any slice is lossy (with that slice's ratio and method).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from edgemed.errors import InputError, UsageError
from edgemed.io.dicom import SUFFIXES_WITHOUT_MAGIC, parse_dicom, read_dicom
from edgemed.io.dicom_values import (
    direction_matrix,
    even_step,
    get_int,
    get_value,
    image_position,
    optional_positive,
    pixel_spacing,
)
from edgemed.io.image import MedicalImage
from edgemed.io.series_rules import SeriesRules
from edgemed.io.source import (
    Source,
    SourceLike,
    beyond_cap,
    guard,
    has_preamble,
    input_error,
    resolve_limits,
    resolve_source,
)
from edgemed.limits import ReaderLimits

__all__ = [
    "SeriesGroup",
    "assemble_series",
    "group_series",
    "read_dicom_series",
    "read_series",
    "read_series_ordered",
]


def _series_header(src: Source, limits: ReaderLimits) -> Dataset | None:
    """Header of an image instance of a series, or None for anything else."""
    has_magic = has_preamble(src.head(132))
    if not has_magic and src.suffix not in SUFFIXES_WITHOUT_MAGIC:
        return None
    try:
        ds, _ = parse_dicom(src, limits=limits, header_only=True)
    except InputError:
        if has_magic:  # a DICOM file that is broken fails the series, loudly
            raise
        return None
    return ds if "Rows" in ds else None  # DICOMDIR, SR, RT plan...: not slices


def _same(
    values: list[Any],
    what: str,
    where: object,
    atol: float = 0.0,
    code: str = "INPUT_SERIES_INCONSISTENT",
) -> None:
    first = values[0]
    for value in values[1:]:
        if first is None or value is None:
            equal = first is value
        else:
            equal = bool(np.allclose(first, value, rtol=0.0, atol=atol)) if atol else first == value
        if not equal:
            raise input_error(code, f"slices differ in {what}", where)


def _slice_order(
    headers: list[tuple[Source, Dataset]], where: object, spacing_yx: tuple[float, float]
) -> tuple[list[int], float, str, str]:
    """Slice order (indices into headers), spacing along z, how the order was found and
    where the spacing came from (``default``: nowhere, 1.0 stands in)."""
    directions = [
        direction_matrix(get_value(ds, "ImageOrientationPatient", s.where), s.where)
        for s, ds in headers
    ]
    positions = [image_position(ds, 0, s.where) for s, ds in headers]
    present = [d is not None and x is not None for d, x in zip(directions, positions, strict=True)]
    if not any(present):
        numbers = [get_int(ds, "InstanceNumber", s.where, default=-1) for s, ds in headers]
        if min(numbers) < 0 or len(set(numbers)) != len(numbers):
            raise input_error(
                "INPUT_SERIES_INCONSISTENT",
                "slices have neither positions nor unique numbers",
                where,
            )
        first, ds = headers[0]
        between = optional_positive(ds, "SpacingBetweenSlices", first.where)
        order = sorted(range(len(headers)), key=numbers.__getitem__)
        if between:
            return order, between, "instance_number", "SpacingBetweenSlices"
        return order, 1.0, "instance_number", "default"
    if not all(present):
        raise input_error("INPUT_SERIES_INCONSISTENT", "some slices lack position", where)
    _same(directions, "orientation", where, atol=1e-4, code="INPUT_MIXED_ORIENTATION")

    normal = directions[0][:, 2]  # type: ignore[index]  # all present, checked above
    points = np.array(positions)
    projections = points @ normal
    order = [int(i) for i in np.argsort(projections, kind="stable")]
    steps = np.diff(projections[order])
    if np.any(steps < 1e-3):
        raise input_error("INPUT_SERIES_INCONSISTENT", "two slices share one position", where)
    step = even_step(steps)
    if step is None:
        # A missing slice (a step twice the others) or a stack of two ranges: counted,
        # never quoted (positions are values from the files).
        common = float(np.median(steps))
        odd = int(np.count_nonzero(np.abs(steps - common) > max(0.01, 0.02 * abs(common))))
        raise input_error(
            "INPUT_SLICE_GAP",
            f"slices are not evenly spaced: {odd} of {len(steps)} steps differ from the "
            "common one (missing slices?)",
            where,
        )
    # Slices must stack along the normal; a sheared stack (gantry tilt) is not a grid
    # that spacing + direction can describe.
    offsets = points[order] - points[order[0]]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > max(0.01, 0.1 * min(spacing_yx)):
        raise input_error(
            "INPUT_GANTRY_TILT",
            "slices are shifted in-plane along the stack (gantry tilt): the stack is not a "
            "grid; resample it upright first",
            where,
        )
    return order, step, "positions", "positions"


@dataclass
class SeriesGroup:
    """The DICOM image instances of one series found among some sources.

    Attributes:
        study_uid: StudyInstanceUID ("" when absent). Never log or show it unhashed.
        series_uid: SeriesInstanceUID ("" when absent). Never log or show it unhashed.
        headers: each instance's source and header (parsed without pixel data).
        kept: for each header, its position among the sources that were grouped.
    """

    study_uid: str
    series_uid: str
    headers: list[tuple[Source, Dataset]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    @property
    def slices(self) -> int:
        """Image planes: one per single-frame instance, NumberOfFrames per multi-frame one."""
        return sum(get_int(ds, "NumberOfFrames", s.where, default=1) for s, ds in self.headers)


def group_series(sources: list[Source], limits: ReaderLimits) -> tuple[list[SeriesGroup], int]:
    """The image instances among ``sources``, grouped by (StudyInstanceUID,
    SeriesInstanceUID), and how many sources are not DICOM images.

    Only headers are read (no pixel data). Groups come in the order their first instance
    appears in ``sources``. A DICOM file that is broken raises (it fails the read, loudly);
    other files (text, DICOMDIR, reports, RT plans) are counted, never named.
    """
    groups: dict[tuple[str, str], SeriesGroup] = {}
    ignored = 0
    for k, src in enumerate(sources):
        ds = _series_header(src, limits)
        if ds is None:
            ignored += 1
            continue
        key = (
            str(get_value(ds, "StudyInstanceUID", src.where) or ""),
            str(get_value(ds, "SeriesInstanceUID", src.where) or ""),
        )
        group = groups.setdefault(key, SeriesGroup(*key))
        group.headers.append((src, ds))
        group.kept.append(k)
    return list(groups.values()), ignored


def assemble_series(
    group: SeriesGroup, limits: ReaderLimits, where: object, *, ignored: int = 0
) -> tuple[MedicalImage, list[int]]:
    """One image from the instances of one series, and which source (``group.kept``)
    each of its slices came from, in volume order.

    One instance gives what the file alone gives (a 2D image for a single slice, its
    frames for a multi-frame file); several are stacked along their normal. ``ignored``
    is recorded as ``metadata["ignored_files"]``; ``where`` names the directory in
    messages, or is None for in-memory instances.

    Raises:
        InputError: ``INPUT_SERIES_INCONSISTENT``, ``INPUT_MIXED_ORIENTATION``,
            ``INPUT_SLICE_GAP``, ``INPUT_GANTRY_TILT`` or any code a single file can raise.
    """
    headers = group.headers
    # One file: its own frames, or a 2D image. A single slice is a 2D image wherever it
    # comes from (areas, not volumes), exactly as the file alone reads.
    if len(headers) == 1:
        image, order = read_dicom(headers[0][0], limits=limits), [0]
    else:
        image, order = _stack(headers, limits, where)
    image.metadata.update(format="dicom-series", num_slices=image.num_slices, ignored_files=ignored)
    # The source headers in slice order (no pixel data): what a DICOM SEG over the series
    # references (``run --dicom``). Kept in memory only; never written or logged.
    image.dicom_headers = [headers[i][1] for i in order]
    return image, [group.kept[i] for i in order]


def _assemble(
    sources: list[Source],
    limits: ReaderLimits,
    where: object,
    rules: SeriesRules | None = None,
    salt: bytes | None = None,
) -> tuple[MedicalImage, list[int]]:
    """One volume from the instances of one series (a directory's files, or items), and
    which of ``sources`` each of its slices came from, in volume order.

    ``where`` names the directory in messages, or is None for in-memory instances.
    ``rules``: the series must pass them (:func:`edgemed.io.series_select.require_rules`).
    ``salt``: for the series' id in ``metadata["series_selection"]`` (None: the process's).
    """
    groups, ignored = group_series(sources, limits)
    if not groups:
        raise input_error(
            "INPUT_EMPTY_SERIES", f"no DICOM image files ({ignored} other files)", where
        )
    if len(groups) > 1:  # never name the UIDs: they identify a study
        raise input_error(
            "INPUT_MULTIPLE_SERIES",
            f"{len(groups)} DICOM series were given together; give one series at a time",
            where,
        )
    from edgemed.io.series_select import only_series_record, require_rules

    if rules is not None:
        require_rules(rules, groups[0], where)
    image, order = assemble_series(groups[0], limits, where, ignored=ignored)
    # The same record a folder's series choice leaves (result.json's input.series), so
    # a series read from instances reports what `edgemed run DIR` reports for it.
    image.metadata["series_selection"] = only_series_record(groups[0], salt)
    return image, order


def _stack(
    headers: list[tuple[Source, Dataset]], limits: ReaderLimits, where: object
) -> tuple[MedicalImage, list[int]]:
    """One ``(Z, Y, X)`` volume from the single-frame slices of one series, and the
    order (indices into ``headers``) its slices were stacked in."""
    layouts = [
        (
            get_int(ds, "Rows", s.where),
            get_int(ds, "Columns", s.where),
            get_int(ds, "SamplesPerPixel", s.where, 1),
        )
        for s, ds in headers
    ]
    _same(layouts, "rows, columns or samples per pixel", where)
    if any(get_int(ds, "NumberOfFrames", s.where, default=1) != 1 for s, ds in headers):
        raise input_error("INPUT_SERIES_INCONSISTENT", "series holds multi-frame files", where)
    spacings = [pixel_spacing(ds, s.where)[0] for s, ds in headers]
    _same(spacings, "pixel spacing", where, atol=1e-4)
    rows, columns, samples = layouts[0]
    if rows * columns * samples * len(headers) > limits.max_elements:
        raise beyond_cap("series elements", "max_elements", limits, where)
    order, dz, how, z_source = _slice_order(headers, where, spacings[0])

    # Decode slice by slice into one preallocated volume: peak memory stays one volume
    # plus one slice, not two volumes.
    first = read_dicom(headers[order[0]][0], limits=limits)
    volume = np.empty((len(order), *first.array.shape), dtype=np.float32)
    rescales = set()
    lossy: dict[str, Any] = {}
    for k, index in enumerate(order):
        image = first if k == 0 else read_dicom(headers[index][0], limits=limits)
        if (image.photometric, image.array.shape) != (first.photometric, first.array.shape):
            raise input_error("INPUT_SERIES_INCONSISTENT", "slices differ in pixel layout", where)
        volume[k] = image.array
        rescales.add((image.metadata.get("rescale_slope"), image.metadata.get("rescale_intercept")))
        if image.metadata.get("lossy_compression") and not lossy:
            # One lossy slice makes the volume lossy; its ratio and method describe it.
            lossy = {k: v for k, v in image.metadata.items() if k.startswith("lossy_")}
    metadata = {k: v for k, v in first.metadata.items() if not k.startswith("lossy_")}
    metadata["lossy_compression"] = False
    metadata.update(lossy)
    if len(rescales) > 1:  # e.g. PET: each slice has its own slope; values are right anyway
        metadata.pop("rescale_slope", None)
        metadata.pop("rescale_intercept", None)
        metadata["rescale_varies"] = True
    metadata.update(
        slice_order=how,
        z_spacing_source=z_source,
        spacing_source=(
            "dicom"
            if first.metadata["spacing_source"] != "unknown" and z_source != "default"
            else "unknown"
        ),
    )
    volume_image = replace(
        first, array=volume, spacing=(float(dz), *first.spacing), metadata=metadata
    )
    return volume_image, order


def read_dicom_series(directory: str | os.PathLike[str], *, limits: ReaderLimits) -> MedicalImage:
    """Read one DICOM series from a directory (not recursive) as a ``(Z, Y, X)`` volume.

    Headers are read first (without pixel data). Files that are not DICOM images
    (other files, DICOMDIR, reports) are skipped and counted in
    ``metadata["ignored_files"]`` (a count, never names); a DICOM file that is broken
    fails the whole series. A directory with a single DICOM image gives what that file
    alone gives: a 2D image for one slice, its frames for a multi-frame file.
    Slices are sorted by the projection of ImagePositionPatient on the slice normal,
    ``spacing[0]`` is the median step and ``origin`` the first slice's position.

    Args:
        directory: the folder that holds the series.
        limits: the caps; ``max_frames`` also limits the number of files.

    Raises:
        InputError: ``INPUT_EMPTY_SERIES``, ``INPUT_MULTIPLE_SERIES``,
            ``INPUT_SERIES_INCONSISTENT``, ``INPUT_MIXED_ORIENTATION``, ``INPUT_SLICE_GAP``,
            ``INPUT_GANTRY_TILT`` or any code a single file can raise.
    """
    directory = Path(directory)
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise input_error("INPUT_UNREADABLE", "directory cannot be listed", directory) from exc
    if len(entries) > limits.max_frames:  # checked before any file is parsed
        raise beyond_cap("number of files in the directory", "max_frames", limits, directory)
    return _assemble([resolve_source(entry, limits) for entry in entries], limits, directory)[0]


def read_series(items: Iterable[SourceLike], *, limits: ReaderLimits | None = None) -> MedicalImage:
    """Read one DICOM series from separate instances, e.g. received over the network.

    Each item is the bytes of one DICOM file, a binary file object, or a path. The
    result is what :func:`read_dicom_series` gives for a directory holding the same
    files: the same sorting (the order of ``items`` does not matter), spacing, checks
    and error codes, and ``metadata["ignored_files"]`` counts the items that are not
    DICOM images. Nothing is written to disk.

    Args:
        items: the instances (a list or other iterable; counted before any is parsed).
        limits: the readers' caps; None resolves them from the environment
            (``EDGEMED_MAX_*``). ``max_frames`` also limits the number of items and
            ``max_file_bytes`` the size of each.

    Returns:
        A ``(Z, Y, X)`` volume (one instance: what it alone gives, a 2D image for a
        single slice, its own frames for a multi-frame one).

    Raises:
        InputError: ``INPUT_EMPTY_SERIES`` (no items, or no DICOM image among them),
            ``INPUT_MULTIPLE_SERIES``, ``INPUT_SERIES_INCONSISTENT`` (or its geometry
            codes ``INPUT_MIXED_ORIENTATION``, ``INPUT_SLICE_GAP``, ``INPUT_GANTRY_TILT``),
            ``INPUT_INVALID`` (beyond a cap) or any code a single file can raise. Only
            EdgemedError leaves this function, as for ``read_image``.
        UsageError: ``items`` is one path or one bytes object rather than a collection,
            or an item is neither bytes, a binary file object nor a path.
    """
    return read_series_ordered(items, limits=limits)[0]


def read_series_ordered(
    items: Iterable[SourceLike],
    *,
    limits: ReaderLimits | None = None,
    rules: SeriesRules | None = None,
    salt: bytes | None = None,
) -> tuple[MedicalImage, list[int]]:
    """:func:`read_series`, and which item each slice of the volume came from.

    Writers that reference the source instances slice by slice (a DICOM SEG over the
    received series) need that order; it is the one the volume was stacked in, not a
    second sort. With ``rules`` (a bundle's series rules, as the DICOM listener applies
    them), a series that fails them is refused before its pixels are read:
    ``INPUT_MODALITY`` when the modality alone fails, else ``INPUT_NO_SERIES_MATCH``
    naming the rules. ``salt`` keys the series' id in ``metadata["series_selection"]``
    (a pipeline's ``id_salt``; None: the process's own).

    Returns:
        ``(image, order)``: ``order[z]`` is the position in ``items`` of slice ``z``'s
        instance (items that are not DICOM images appear nowhere).

    Raises:
        The same as :func:`read_series`.
    """
    limits = resolve_limits(limits)
    if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)) or callable(
        getattr(items, "read", None)
    ):
        raise UsageError("read_series expects a collection of instances; use read_image for one")
    return guard(lambda: _read_series(items, limits, rules, salt), None)


def _read_series(
    items: Iterable[SourceLike],
    limits: ReaderLimits,
    rules: SeriesRules | None = None,
    salt: bytes | None = None,
) -> tuple[MedicalImage, list[int]]:
    try:
        instances = list(items)
    except TypeError as exc:
        raise UsageError("read_series expects a collection of instances") from exc
    if len(instances) > limits.max_frames:  # checked before any instance is parsed
        raise beyond_cap("number of instances", "max_frames", limits, None)
    sources = [resolve_source(item, limits) for item in instances]
    return _assemble(sources, limits, None, rules, salt)
