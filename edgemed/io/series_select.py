"""One DICOM series chosen among several: a folder tree or a DICOMDIR, by rules.

A folder handed to a pipeline (``edgemed run DIR``) may hold a whole study: several
series (scouts, thin and thick reconstructions, reformats, contrast phases), in
subfolders, or listed by a DICOMDIR. :func:`read_chosen_series` finds every image
instance (the folder walked recursively, hidden folders skipped; or, where the folder
holds a ``DICOMDIR`` or the path is one, exactly the files its records reference, read
with pydicom's :class:`~pydicom.fileset.FileSet`), groups them by (StudyInstanceUID,
SeriesInstanceUID) with :func:`edgemed.io.series.group_series` (headers only, no pixel
data) and chooses one:

1. ``series_uid`` (``--series``, ``EDGEMED_SERIES``): the series with exactly that
   SeriesInstanceUID, or the salted id listed for it in a message; the rules are not
   applied (a warning says which it fails). None: ``INPUT_SERIES_NOT_FOUND``.
2. Else the series that pass every rule of :class:`~edgemed.io.series_rules.SeriesRules`
   (a bundle's ``series`` block). Several: the one with the most slices (ties: the
   smaller UID), with a warning and ``reason: "most_slices"`` in the record. None:
   ``INPUT_NO_SERIES_MATCH``, or ``INPUT_MODALITY`` when every series fails on its
   modality alone.

Only the chosen series' pixels are decoded; its geometry is then checked as any series
(``INPUT_MIXED_ORIENTATION``, ``INPUT_SLICE_GAP``, ``INPUT_GANTRY_TILT``, see
:mod:`edgemed.io.series`). The image's ``metadata["series_selection"]`` records the
choice: the series' salted id, its slices, how many series were found and matched, the
reason, and the rules it fails when ``series_uid`` chose it.

Privacy: UIDs never appear unhashed in messages, logs or records; a series is named by
its salted id (:func:`edgemed.ids.salted_id` of study and series UID, as the DICOM
node's spool names it: the same id under the same salt, ``EDGEMED_ID_SALT``; random per
pipeline otherwise, so an id then only means something within one run). A
SeriesDescription is shown only when it reads as protocol text, never as a name or
number (:func:`~edgemed.io.series_rules.safe_description`).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import InputError
from edgemed.ids import salted_id
from edgemed.io.dicom import parse_dicom
from edgemed.io.dicom_values import direction_matrix, frame_value, get_value, optional_positive
from edgemed.io.image import MedicalImage
from edgemed.io.series import SeriesGroup, assemble_series, group_series
from edgemed.io.series_rules import MODALITY, ORIENTATIONS, SeriesRules, safe_description
from edgemed.io.source import Source, beyond_cap, input_error, resolve_source
from edgemed.limits import ReaderLimits

__all__ = [
    "SeriesCandidate",
    "choose_series",
    "failed_rules",
    "find_instances",
    "is_dicomdir",
    "list_series",
    "only_series_record",
    "read_chosen_series",
    "series_id",
]

log = logging.getLogger("edgemed.io.series")

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
#: Candidates listed in a message at most (the rest are counted).
_LISTED = 20
# A random salt per process for callers that give none (read_image without a pipeline):
# ids then link nothing beyond this process.
_PROCESS_SALT = secrets.token_bytes(16)


def failed_rules(rules: SeriesRules, group: SeriesGroup) -> tuple[str, ...]:
    """The rules (names from :data:`~edgemed.io.series_rules.RULES`) that ``group`` fails;
    empty: it matches."""
    headers = group.headers
    failed = []
    if rules.modalities:
        found = {_text(get_value(ds, "Modality", s.where)) for s, ds in headers}
        if not found <= set(rules.modalities):
            failed.append("modality")
    if rules.image_type:
        wanted = tuple(v.upper() for v in rules.image_type)
        if not all(_image_type(ds, s)[: len(wanted)] == wanted for s, ds in headers):
            failed.append("image_type")
    if (
        rules.orientation is not None
        and _orientation(group, rules.orientation_tolerance_deg) != rules.orientation
    ):
        failed.append("orientation")
    if group.slices < rules.min_slices:
        failed.append("min_slices")
    if rules.slice_thickness is not None:
        lo, hi = rules.slice_thickness
        for s, ds in headers:
            thickness = optional_positive(ds, "SliceThickness", s.where)
            if thickness is None or not lo - 1e-6 <= thickness <= hi + 1e-6:
                failed.append("slice_thickness")
                break
    return tuple(failed)


def require_rules(rules: SeriesRules, group: SeriesGroup, where: object) -> None:
    """Refuse ``group`` unless it passes ``rules``: ``INPUT_MODALITY`` when the modality
    alone fails (as the pipeline's own check says it), else ``INPUT_NO_SERIES_MATCH``
    naming the rules it fails (never a UID or description)."""
    failed = failed_rules(rules, group)
    if not failed:
        return
    if failed == ("modality",):
        raise input_error(
            "INPUT_MODALITY",
            f"the series' modality is not one this model is made for "
            f"({', '.join(rules.modalities or ())})",
            where,
        )
    raise input_error(
        "INPUT_NO_SERIES_MATCH",
        f"the series fails the model's series rules: {', '.join(failed)} ({_rules_text(rules)})",
        where,
    )


@dataclass(frozen=True)
class SeriesCandidate:
    """One series found, as messages, logs and callers may see it (no UID, no name).

    Attributes:
        id: the salted id (:func:`series_id`).
        modality: its Modality code ("?" when absent or not a code; "mixed" when
            instances differ).
        slices: image planes (instances, or frames of multi-frame ones).
        orientation: ``axial``, ``coronal``, ``sagittal``, ``oblique``, ``mixed`` or
            ``unknown`` (no ImageOrientationPatient), at the rules' tolerance.
        description: SeriesDescription where :func:`safe_description` lets it show.
        failed: the rules it fails (empty: it matches).
    """

    id: str
    modality: str
    slices: int
    orientation: str
    description: str | None
    failed: tuple[str, ...]

    def describe(self) -> str:
        """One line for messages: id, modality, slices, plane, description, failures."""
        text = f"{self.id} {self.modality} {self.slices} slice(s) {self.orientation}"
        if self.description:
            text += f" '{self.description}'"
        return text + (f" fails {'+'.join(self.failed)}" if self.failed else " matches")


def only_series_record(group: SeriesGroup, salt: bytes | None = None) -> dict[str, Any]:
    """The choice record of a series that was the only one given (instances received,
    uploaded, or a folder read without a choice): as :func:`choose_series` records it."""
    return {
        "candidates": 1,
        "matching": 1,
        "reason": "only_match",
        "id": series_id(group, salt or _PROCESS_SALT),
        "slices": group.slices,
    }


def series_id(group: SeriesGroup, salt: bytes) -> str:
    """The salted id of a series: keyed BLAKE3 of its study and series UIDs, 32 hex
    digits (the DICOM node's spool names a series the same way under the same salt)."""
    return salted_id(salt, f"{group.study_uid}\x1f{group.series_uid}".encode())


# -- finding the instances ---------------------------------------------------------------


def is_dicomdir(source: Source, limits: ReaderLimits) -> bool:
    """Whether ``source`` is a DICOMDIR (Media Storage Directory), by its header."""
    try:
        ds, _ = parse_dicom(source, limits=limits, header_only=True)
    except InputError:
        return False
    meta = getattr(ds, "file_meta", None)
    storage = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return storage == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds


def find_instances(path: str | os.PathLike[str], limits: ReaderLimits) -> list[Source]:
    """The files that may hold a series' instances: what a DICOMDIR references (``path``
    is one, or a folder holding one at its top), else every file of the folder tree.

    Hidden folders (``.git``, an interrupted run's staging folder) are not entered and
    symbolic links to folders not followed (no loops). Files are listed in a fixed order
    (sorted paths). ``limits.max_frames`` caps how many (before any is parsed).

    Raises:
        InputError: ``INPUT_UNREADABLE`` (a folder cannot be listed), ``INPUT_INVALID``
            (beyond the cap, or a DICOMDIR that references a file outside its folder),
            ``INPUT_CORRUPT`` (a DICOMDIR pydicom cannot load), ``INPUT_NOT_FOUND``.
    """
    path = Path(path)
    if path.is_dir():
        try:
            entries = sorted(path.iterdir())
        except OSError as exc:
            raise input_error("INPUT_UNREADABLE", "folder cannot be listed", path) from exc
        dicomdir = next((p for p in entries if p.name.upper() == "DICOMDIR" and p.is_file()), None)
        if dicomdir is None:
            return _walk(path, limits)
        path = dicomdir
    return _dicomdir_files(path, limits)


def _walk(root: Path, limits: ReaderLimits) -> list[Source]:
    files: list[Path] = []

    def refuse(exc: OSError) -> None:
        raise input_error("INPUT_UNREADABLE", "folder cannot be listed", root) from exc

    for folder, dirs, names in os.walk(root, onerror=refuse):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            entry = Path(folder) / name
            if entry.is_file():  # not FIFOs or devices (a read would block)
                files.append(entry)
                if len(files) > limits.max_frames:  # before any file is parsed
                    raise beyond_cap("files in the folder tree", "max_frames", limits, root)
    return [resolve_source(p, limits) for p in sorted(files)]


def _dicomdir_files(path: Path, limits: ReaderLimits) -> list[Source]:
    from pydicom.fileset import FileSet

    src = resolve_source(path, limits)
    ds, _ = parse_dicom(src, limits=limits, header_only=False)
    ds.filename = str(path)  # the FileSet's root is the DICOMDIR's folder
    try:
        with warnings.catch_warnings():  # pydicom warns about fixable transfer syntaxes
            warnings.simplefilter("ignore")
            fileset = FileSet(ds)
    except PermissionError as exc:  # pydicom's refusal of a record leaving the root
        raise input_error(
            "INPUT_INVALID", "DICOMDIR references a file outside its folder", path
        ) from exc
    except Exception as exc:  # only the type: pydicom's text may quote record values
        raise input_error(
            "INPUT_CORRUPT", f"DICOMDIR cannot be read ({type(exc).__name__})", path
        ) from exc
    root = path.parent.resolve()
    files: list[Path] = []
    for instance in fileset:
        target = Path(instance.path)
        if not target.resolve().is_relative_to(root):
            raise input_error(
                "INPUT_INVALID", "DICOMDIR references a file outside its folder", path
            )
        files.append(target)
        if len(files) > limits.max_frames:
            raise beyond_cap("files the DICOMDIR references", "max_frames", limits, path)
    return [resolve_source(p, limits) for p in files]


# -- choosing ---------------------------------------------------------------------------


def list_series(
    path: str | os.PathLike[str],
    *,
    limits: ReaderLimits | None = None,
    rules: SeriesRules | None = None,
    salt: bytes | None = None,
) -> list[SeriesCandidate]:
    """The series under ``path`` (a folder tree, a DICOMDIR or a folder holding one),
    each with the rules it fails, most slices first. Reads headers only.

    Raises:
        InputError: as :func:`find_instances`, or for a broken DICOM file.
    """
    from edgemed.io.source import guard, resolve_limits

    limits = resolve_limits(limits)
    rules = rules if rules is not None else SeriesRules()

    def run() -> list[SeriesCandidate]:
        groups, _ = group_series(find_instances(path, limits), limits)
        return [_candidate(g, rules, salt or _PROCESS_SALT) for g in _by_size(groups)]

    return guard(run, Path(path))


def choose_series(
    groups: Sequence[SeriesGroup],
    rules: SeriesRules,
    *,
    series_uid: str | None = None,
    salt: bytes | None = None,
    where: object = None,
) -> tuple[SeriesGroup, dict[str, Any]]:
    """The series to read among ``groups`` and the record of that choice (see the module
    docstring for the order of precedence).

    Returns:
        ``(group, record)``: ``record`` holds ``id`` (salted), ``slices``,
        ``candidates`` (series found), ``matching`` (series passing the rules),
        ``reason`` (``series_uid``, ``only_match`` or ``most_slices``) and, when
        ``series_uid`` chose a series that fails rules, ``failed_rules``.

    Raises:
        InputError: ``INPUT_EMPTY_SERIES`` (no groups), ``INPUT_SERIES_NOT_FOUND``,
            ``INPUT_NO_SERIES_MATCH`` or ``INPUT_MODALITY``; each message lists the
            series found by salted id.
    """
    salt = salt or _PROCESS_SALT
    if not groups:
        raise input_error("INPUT_EMPTY_SERIES", "no DICOM image files", where)
    ordered = _by_size(groups)
    found = [(g, _candidate(g, rules, salt)) for g in ordered]
    record: dict[str, Any] = {"candidates": len(found)}
    if series_uid is not None:
        wanted = series_uid.strip()
        picked = [(g, c) for g, c in found if wanted in (g.series_uid, c.id)]
        if not picked:
            raise input_error(
                "INPUT_SERIES_NOT_FOUND",
                f"no series has the SeriesInstanceUID or id given (--series); "
                f"{_listing([c for _, c in found])}",
                where,
            )
        group, candidate = picked[0]  # several studies may reuse one UID: the largest
        record.update(matching=len([c for _, c in found if not c.failed]), reason="series_uid")
        if candidate.failed:
            record["failed_rules"] = list(candidate.failed)
            log.warning(
                "series %s chosen by --series although it fails the rules: %s",
                candidate.id,
                ", ".join(candidate.failed),
            )
    else:
        matching = [(g, c) for g, c in found if not c.failed]
        record["matching"] = len(matching)
        if not matching:
            listing = _listing([c for _, c in found])
            if rules.modalities and all("modality" in c.failed for _, c in found):
                raise input_error(
                    "INPUT_MODALITY",
                    f"no series of a modality this model is made for "
                    f"({', '.join(rules.modalities)}); --any-modality (check_modality=False) "
                    f"runs others anyway; {listing}",
                    where,
                )
            raise input_error(
                "INPUT_NO_SERIES_MATCH",
                f"no series matches the bundle's series rules ({_rules_text(rules)}); "
                f"choose one with --series ID; {listing}",
                where,
            )
        group, candidate = matching[0]
        if len(matching) > 1:
            record["reason"] = "most_slices"
            log.warning(
                "%d series match the rules; chose %s, the one with the most slices (%d); "
                "others: %s",
                len(matching),
                candidate.id,
                candidate.slices,
                ", ".join(f"{c.id} ({c.slices})" for _, c in matching[1:_LISTED]),
            )
        else:
            record["reason"] = "only_match"
            log.info("series %s chosen: the only one of %d that matches", candidate.id, len(found))
    record.update(id=candidate.id, slices=candidate.slices)
    return group, record


def read_chosen_series(
    path: str | os.PathLike[str],
    *,
    limits: ReaderLimits,
    rules: SeriesRules | None = None,
    series_uid: str | None = None,
    salt: bytes | None = None,
) -> MedicalImage:
    """Read the series :func:`choose_series` picks under ``path`` (a folder tree, a
    DICOMDIR, or a folder holding one) as :func:`edgemed.io.series.read_dicom_series`
    reads one: the same stacking, checks and metadata, plus ``series_selection`` (the
    record) and ``ignored_files`` counting every file found that is not one of its
    slices.

    Raises:
        InputError: the codes of :func:`find_instances`, :func:`choose_series` and
            :func:`edgemed.io.series.assemble_series`.
    """
    where = Path(path)
    sources = find_instances(where, limits)
    groups, _ = group_series(sources, limits)
    if not groups:
        raise input_error(
            "INPUT_EMPTY_SERIES", f"no DICOM image files ({len(sources)} other files)", where
        )
    rules = rules if rules is not None else SeriesRules()
    group, record = choose_series(groups, rules, series_uid=series_uid, salt=salt, where=where)
    image, _ = assemble_series(group, limits, where, ignored=len(sources) - len(group.headers))
    image.metadata["series_selection"] = record
    return image


# -- facts of one series -------------------------------------------------------------


def _by_size(groups: Sequence[SeriesGroup]) -> list[SeriesGroup]:
    """Most slices first; ties by UID (a fixed order that reveals nothing)."""
    return sorted(groups, key=lambda g: (-g.slices, g.series_uid, g.study_uid))


def _candidate(group: SeriesGroup, rules: SeriesRules, salt: bytes) -> SeriesCandidate:
    headers = group.headers
    modalities = {_text(get_value(ds, "Modality", s.where)) for s, ds in headers}
    first_source, first = headers[0]
    return SeriesCandidate(
        id=series_id(group, salt),
        modality=_shown_modality(modalities),
        slices=group.slices,
        orientation=_orientation(group, rules.orientation_tolerance_deg),
        description=safe_description(get_value(first, "SeriesDescription", first_source.where)),
        failed=failed_rules(rules, group),
    )


def _shown_modality(found: set[str]) -> str:
    """The series' Modality as messages may show it: a code (a value that is not one,
    which could be anything a writer put there, shows as ``?``), or ``mixed``."""
    if len(found) > 1:
        return "mixed"
    code = next(iter(found), "")
    return code if MODALITY.fullmatch(code) else "?"


def _text(value: Any) -> str:
    return str(value).strip().upper() if value is not None else ""


def _image_type(ds: Any, src: Source) -> tuple[str, ...]:
    value = get_value(ds, "ImageType", src.where)
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _plane(ds: Any, src: Source, tolerance_deg: float) -> str:
    """``axial``/``coronal``/``sagittal`` (normal within the tolerance of z/y/x),
    ``oblique``, or ``unknown`` (no usable ImageOrientationPatient)."""
    try:
        iop = frame_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0, src.where)
        direction = direction_matrix(iop, src.where)
    except InputError:  # unusable orientation: this series simply has none
        return "unknown"
    if direction is None:
        return "unknown"
    normal = np.abs(direction[:, 2])
    axis = int(np.argmax(normal))
    angle = math.degrees(math.acos(min(1.0, float(normal[axis]))))
    return ORIENTATIONS[axis] if angle <= tolerance_deg + 1e-9 else "oblique"


def _orientation(group: SeriesGroup, tolerance_deg: float) -> str:
    planes = {_plane(ds, s, tolerance_deg) for s, ds in group.headers}
    return planes.pop() if len(planes) == 1 else "mixed"


def _listing(candidates: Sequence[SeriesCandidate]) -> str:
    shown = "; ".join(c.describe() for c in candidates[:_LISTED])
    more = len(candidates) - _LISTED
    return f"{len(candidates)} series found: {shown}" + (f"; and {more} more" if more > 0 else "")


def _rules_text(rules: SeriesRules) -> str:
    parts = [f"{k}={v}" for k, v in rules.to_dict().items()]
    return ", ".join(parts) if parts else "none"
