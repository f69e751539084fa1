"""``read_image``: the one entry point for every image file or folder edgemed reads.

The format is found from the content first (DICOM ``DICM`` preamble, NIfTI header
magic, also inside gzip, PNG/JPEG/TIFF/NPY signatures) and only then from the name
(``.dcm`` or no extension: DICOM parsed with ``force=True``; ``.nii``, ``.nii.gz``,
``.png``, ``.jpg``, ``.tif``, ``.npy``). A directory is one DICOM series; given
``rules`` or ``series_uid``, a directory is a folder tree (or a DICOMDIR, also given as
the file itself) holding any number of series, and one is chosen
(:mod:`edgemed.io.series_select`).

Every failure is an :class:`~edgemed.errors.InputError` (or its subclass
:class:`~edgemed.errors.DecoderMissingError`) with one of these stable codes; no other
exception type leaves :func:`read_image`:

``INPUT_NOT_FOUND``
    The path does not exist.
``INPUT_UNREADABLE``
    It exists but cannot be opened or listed (permissions, I/O error).
``INPUT_UNSUPPORTED_FORMAT``
    Not an image edgemed reads: unknown bytes, a non-image file, 4D NIfTI, multi-page
    TIFF, an unsupported photometric interpretation or dtype.
``INPUT_NO_PIXEL_DATA``
    A valid DICOM object without pixel data (RT plan, structured report, DICOMDIR).
``INPUT_TRUNCATED``
    The file ends before the data its header describes (including an empty file).
``INPUT_CORRUPT``
    The bytes are there but do not parse or decode.
``INPUT_INVALID``
    Header values that make no sense (bad geometry, bit depths, non-finite values,
    lookup-table indices outside the table), or an input beyond one of the caps below.
``INPUT_DECODER_MISSING``
    Compressed DICOM whose decoder is not installed: ``pip install "edgemed[dicom]"``.
``INPUT_UNSUPPORTED_TRANSFER_SYNTAX``
    A DICOM transfer syntax nobody can decode (unknown or private).
``INPUT_SERIES_INCONSISTENT``
    Slices (or frames) that do not form one evenly spaced grid: different sizes,
    spacing or orientation, duplicate positions, uneven steps, sheared stacks.
``INPUT_MULTIPLE_SERIES``
    A directory (or the instances given to ``read_series``) with more than one DICOM
    series.
``INPUT_EMPTY_SERIES``
    A directory (or instances) with no DICOM image.
``INPUT_MIXED_ORIENTATION``
    The slices of one series lie in different planes (a three-plane localiser).
``INPUT_SLICE_GAP``
    The slices of one series are not evenly spaced along their normal: a missing
    slice, two stacked ranges.
``INPUT_GANTRY_TILT``
    The slices of one series are shifted in-plane along the stack (a tilted gantry):
    no grid of spacing and direction describes them.
``INPUT_SERIES_NOT_FOUND``
    ``series_uid`` names no series of the folder or DICOMDIR (the message lists them
    by salted id).
``INPUT_NO_SERIES_MATCH``
    No series of the folder or DICOMDIR passes ``rules`` (the message lists them by
    salted id, with the rules each fails).
``INPUT_MODALITY``
    With ``rules``: every series of the folder fails on its modality alone.

Error messages name the path (for bytes: nothing) and the problem, never a value read
from the file.

Sources. A path is read from disk as it always was. ``bytes`` (or a ``bytearray`` /
``memoryview``, copied once into immutable bytes) and binary file objects (read from
their current position to the end) are parsed in memory, never written to a temporary
file; they are found by their content alone, except that a file object's ``.name``
supplies the extension fallback exactly as a path's name does. Bytes without a
recognisable signature count as a file without an extension: parsed as DICOM, and
accepted only when they hold elements every DICOM object has.

Caps. Hostile or broken files must not make a reader allocate, inflate or loop without
bound, so every reader checks the caps of a :class:`~edgemed.limits.ReaderLimits`
*before* the work they limit and refuses with ``INPUT_INVALID`` beyond them.
``read_image(source, limits=ReaderLimits(...))`` passes them down to the reader; without
``limits`` they come from :func:`edgemed.settings.load_limits` (the ``EDGEMED_MAX_*``
variables, else :data:`~edgemed.limits.DEFAULT_LIMITS`), resolved once per call, so the
API and the CLI honour the same settings. Nothing is changed globally. What each cap
limits is documented on :class:`~edgemed.limits.ReaderLimits`; for bytes and file
objects ``max_file_bytes`` is the length of the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgemed.errors import UsageError
from edgemed.io.image import MedicalImage
from edgemed.io.source import (
    Source,
    SourceLike,
    describe,
    guard,
    input_error,
    resolve_limits,
    resolve_source,
    sniff_format,
)
from edgemed.limits import DEFAULT_LIMITS, ReaderLimits

if TYPE_CHECKING:
    from edgemed.io.series_rules import SeriesRules

__all__ = ["read_image", "detect_format", "preload_readers", "INPUT_ERROR_CODES"]

# The caps used to be module constants here (MAX_FILE_BYTES, ...) changed with setattr.
# Nothing reads such attributes any more: pass `limits=ReaderLimits(...)` or set
# EDGEMED_MAX_* instead.

INPUT_ERROR_CODES = (
    "INPUT_NOT_FOUND",
    "INPUT_UNREADABLE",
    "INPUT_UNSUPPORTED_FORMAT",
    "INPUT_NO_PIXEL_DATA",
    "INPUT_TRUNCATED",
    "INPUT_CORRUPT",
    "INPUT_INVALID",
    "INPUT_DECODER_MISSING",
    "INPUT_UNSUPPORTED_TRANSFER_SYNTAX",
    "INPUT_SERIES_INCONSISTENT",
    "INPUT_MULTIPLE_SERIES",
    "INPUT_EMPTY_SERIES",
    "INPUT_MIXED_ORIENTATION",
    "INPUT_SLICE_GAP",
    "INPUT_GANTRY_TILT",
    "INPUT_SERIES_NOT_FOUND",
    "INPUT_NO_SERIES_MATCH",
    "INPUT_MODALITY",
)


def detect_format(source: SourceLike | Source) -> str | None:
    """What ``read_image`` would read ``source`` as.

    Args:
        source: a path, bytes, or a resolved :class:`~edgemed.io.source.Source` (a file
            object is read to its end).

    Returns:
        ``"dicom-series"``, ``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``, ``"tiff"``,
        ``"npy"``, or ``None`` for a file it does not read.

    Raises:
        InputError: ``INPUT_NOT_FOUND`` or ``INPUT_UNREADABLE``.
    """
    src = resolve_source(source, DEFAULT_LIMITS)
    if src.path is not None:
        if src.path.is_dir():
            return "dicom-series"
        if not src.path.exists():
            raise input_error("INPUT_NOT_FOUND", "file does not exist", src.where)
        if not src.path.is_file():  # a FIFO or device would block or never end
            return None
    return sniff_format(src)


def _read(
    source: SourceLike | Source,
    limits: ReaderLimits,
    rules: SeriesRules | None = None,
    series_uid: str | None = None,
    salt: bytes | None = None,
) -> MedicalImage:
    """``read_image`` below its catch-all boundary (benchmarks/fuzz_readers.py calls it
    there, so that an exception only the boundary would catch counts as a failure)."""
    src = resolve_source(source, limits)
    # Readers are imported on first use so that `import edgemed` stays fast on devices.
    fmt = detect_format(src)
    choose = rules is not None or series_uid is not None
    if fmt == "dicom-series":
        if choose:
            from edgemed.io.series_select import read_chosen_series

            return read_chosen_series(
                src.path,  # type: ignore[arg-type]
                limits=limits,
                rules=rules,
                series_uid=series_uid,
                salt=salt,
            )
        from edgemed.io.series import read_dicom_series

        return read_dicom_series(src.path, limits=limits)  # type: ignore[arg-type]
    if fmt is not None and src.size(limits) == 0:
        raise input_error("INPUT_TRUNCATED", "file is empty", src.where)
    if fmt == "dicom" and choose and src.path is not None:
        from edgemed.io.series_select import is_dicomdir, read_chosen_series

        if is_dicomdir(src, limits):
            return read_chosen_series(
                src.path, limits=limits, rules=rules, series_uid=series_uid, salt=salt
            )
    if fmt == "dicom":
        from edgemed.io.dicom import read_dicom

        return read_dicom(src, limits=limits)
    if fmt == "nifti":
        from edgemed.io.nifti import read_nifti

        return read_nifti(src, limits=limits)
    if fmt == "npy":
        from edgemed.io.raster import read_npy

        return read_npy(src, limits=limits)
    if fmt in ("png", "jpeg", "tiff"):
        from edgemed.io.raster import read_raster

        return read_raster(src, fmt, limits=limits)
    raise input_error("INPUT_UNSUPPORTED_FORMAT", "not an image format edgemed reads", src.where)


def preload_readers() -> None:
    """Import every reader (and pydicom, nibabel, the orientation tools) now.

    ``import edgemed`` leaves them to the first read, which keeps start-up light for a
    caller that never reads a file; but that first read then pays a few hundred
    milliseconds of imports. A pipeline calls this when it is built, so its start-up
    cost is counted once, as start-up, and no input's ``read`` time includes it.
    """
    import edgemed.io.dicom
    import edgemed.io.nifti
    import edgemed.io.orientation
    import edgemed.io.raster
    import edgemed.io.series
    import edgemed.io.series_select
    import edgemed.io.writers  # noqa: F401


def read_image(
    source: SourceLike,
    *,
    limits: ReaderLimits | None = None,
    rules: SeriesRules | None = None,
    series_uid: str | None = None,
    salt: bytes | None = None,
) -> MedicalImage:
    """Read a DICOM file or series directory, NIfTI, PNG/JPEG/TIFF or NPY image.

    Args:
        source: a file path, a directory holding one DICOM series, the bytes of a file
            (``bytes``, ``bytearray``, ``memoryview``) or a binary file object (read from
            its current position to its end; it stays open). For several in-memory
            DICOM instances of one series use :func:`edgemed.io.series.read_series`.
        limits: the readers' caps; None resolves them from the environment
            (``EDGEMED_MAX_*``, see :func:`edgemed.settings.load_limits`).
        rules: for a directory or DICOMDIR: read the folder tree (or the DICOMDIR's
            files) and choose the series these rules match
            (:class:`~edgemed.io.series_rules.SeriesRules`, a bundle's ``series``
            block). Ignored for other inputs: a file is what it is.
        series_uid: for a directory or DICOMDIR: read the series with this
            SeriesInstanceUID (or the salted id a message listed for it); it wins over
            ``rules``. With neither, a directory must hold one series (not recursive).
        salt: salt of the series ids in messages, logs and
            ``metadata["series_selection"]`` (a pipeline passes its own); None: random
            per process.

    Returns:
        A :class:`~edgemed.io.image.MedicalImage` following its documented conventions.

    Raises:
        InputError: with one of the codes in the module docstring (also for failures
            nobody anticipated, as ``INPUT_CORRUPT`` chained to the original).
        UsageError: ``source`` is none of the above, ``limits`` is not a
            :class:`~edgemed.limits.ReaderLimits`, or an ``EDGEMED_MAX_*`` variable is
            not a positive integer.
    """
    limits = resolve_limits(limits)
    if series_uid is not None and (not isinstance(series_uid, str) or not series_uid.strip()):
        raise UsageError("series_uid must be a non-empty string")
    return guard(lambda: _read(source, limits, rules, series_uid, salt), describe(source))
