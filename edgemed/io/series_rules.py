"""A bundle's ``series`` block: which of a folder's DICOM series a model takes.

:class:`SeriesRules` is the block (parsed and written back by :meth:`SeriesRules.from_dict`
and :meth:`SeriesRules.to_dict`); :mod:`edgemed.io.series_select` applies it to the
series of a folder tree or a DICOMDIR and reads the one chosen. This module holds only
the rules and :func:`safe_description` (which SeriesDescriptions messages may show), and
imports no reader, so a bundle can carry its rules without loading pydicom.

The block, every key optional::

    "series": {"modalities": ["CT"], "image_type": ["ORIGINAL", "PRIMARY"],
               "orientation": "axial", "orientation_tolerance_deg": 20,
               "min_slices": 20, "slice_thickness": [0.5, 3.0]}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgemed.errors import BundleError, UsageError

__all__ = ["MODALITY", "ORIENTATIONS", "RULES", "SeriesRules", "safe_description"]

#: The planes the ``orientation`` rule names (by the slice normal's main axis: x, y, z).
ORIENTATIONS = ("sagittal", "coronal", "axial")
#: The rules, in the order they are checked; each is also the reason code a series that
#: fails it is listed with.
RULES = ("modality", "image_type", "orientation", "min_slices", "slice_thickness")
#: A DICOM Modality code (the same pattern as edgemed.bundle.MODALITY_CODE).
MODALITY = re.compile(r"[A-Z0-9_]{1,16}")

_DEFAULT_TOLERANCE_DEG = 20.0
_IMAGE_TYPE_VALUE = re.compile(r"[A-Z0-9_ ]{1,16}")


@dataclass(frozen=True, kw_only=True)
class SeriesRules:
    """Which series of a folder a model takes (a bundle's ``series`` block).

    Every rule that is set must hold for a series to match; unset rules hold always.

    Attributes:
        modalities: DICOM Modality codes accepted; None: the bundle's ``modalities``
            (see :meth:`for_pipeline`); empty: any.
        image_type: required leading values of ImageType, e.g. ``("ORIGINAL",
            "PRIMARY")`` (case-insensitive); empty: any. Every instance must have them.
        orientation: ``axial``, ``coronal`` or ``sagittal``: every slice's normal within
            ``orientation_tolerance_deg`` of that plane's axis (z, y, x in patient
            coordinates); None: any.
        orientation_tolerance_deg: the angle allowed between the slice normal and the
            plane's axis, 0 to 45 degrees (default 20: angled brain MR passes as axial, a
            45 degree oblique does not).
        min_slices: fewest image planes (instances, or frames of a multi-frame one).
        slice_thickness: ``(lo, hi)`` mm, inclusive: every instance's SliceThickness in
            it (an instance without one fails); None: any.
    """

    modalities: tuple[str, ...] | None = None
    image_type: tuple[str, ...] = ()
    orientation: str | None = None
    orientation_tolerance_deg: float = _DEFAULT_TOLERANCE_DEG
    min_slices: int = 1
    slice_thickness: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise UsageError(f"series rules: {problem}")

    def _problem(self) -> str | None:
        if self.modalities is not None and (
            not isinstance(self.modalities, tuple)
            or not all(isinstance(m, str) and MODALITY.fullmatch(m) for m in self.modalities)
        ):
            return "modalities must be a list of DICOM Modality codes such as 'CT'"
        if not isinstance(self.image_type, tuple) or not all(
            isinstance(v, str) and _IMAGE_TYPE_VALUE.fullmatch(v) for v in self.image_type
        ):
            return "image_type must be a list of ImageType values such as 'ORIGINAL'"
        if self.orientation is not None and self.orientation not in ORIENTATIONS:
            return f"orientation must be one of {list(ORIENTATIONS)} or null"
        tolerance = self.orientation_tolerance_deg
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not 0 <= tolerance <= 45
        ):
            return "orientation_tolerance_deg must be a number from 0 to 45"
        if type(self.min_slices) is not int or self.min_slices < 1:
            return "min_slices must be a positive integer"
        if self.slice_thickness is not None:
            pair = self.slice_thickness
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in pair
                )
                or not 0 <= pair[0] <= pair[1]
            ):
                return "slice_thickness must be [lo, hi] in mm with 0 <= lo <= hi, or null"
        return None

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> SeriesRules:
        """The rules of a bundle's ``series`` block.

        Raises:
            BundleError: ``BUNDLE_INVALID`` for an unknown key or a bad value (the
                message names the key).
        """
        if not isinstance(block, Mapping):
            raise BundleError("series must be an object", code="BUNDLE_INVALID")
        keys = {
            "modalities",
            "image_type",
            "orientation",
            "orientation_tolerance_deg",
            "min_slices",
            "slice_thickness",
        }
        unknown = set(block) - keys
        if unknown:  # a typo must not silently drop a rule
            raise BundleError(f"series: unknown keys {sorted(unknown)}", code="BUNDLE_INVALID")

        def listed(key: str) -> Any:
            value = block.get(key)
            return tuple(value) if isinstance(value, list) else value

        values: dict[str, Any] = {
            "modalities": listed("modalities"),
            "image_type": listed("image_type") if block.get("image_type") is not None else (),
            "orientation": block.get("orientation"),
            "slice_thickness": listed("slice_thickness"),
        }
        for key in ("orientation_tolerance_deg", "min_slices"):
            if block.get(key) is not None:
                values[key] = block[key]
        try:
            return cls(**values)
        except UsageError as exc:
            raise BundleError(exc.message, code="BUNDLE_INVALID") from None

    def to_dict(self) -> dict[str, Any]:
        """The ``series`` block (only the rules that are set), as :meth:`from_dict` reads."""
        out: dict[str, Any] = {}
        if self.modalities is not None:
            out["modalities"] = list(self.modalities)
        if self.image_type:
            out["image_type"] = list(self.image_type)
        if self.orientation is not None:
            out["orientation"] = self.orientation
        if self.orientation_tolerance_deg != _DEFAULT_TOLERANCE_DEG:
            out["orientation_tolerance_deg"] = self.orientation_tolerance_deg
        if self.min_slices != 1:
            out["min_slices"] = self.min_slices
        if self.slice_thickness is not None:
            out["slice_thickness"] = list(self.slice_thickness)
        return out

    @classmethod
    def for_pipeline(
        cls, rules: SeriesRules | None, modalities: Sequence[str], check_modality: bool = True
    ) -> SeriesRules:
        """The rules a pipeline applies: the bundle's (or none), ``modalities`` (the
        bundle's) where they name none, and no modality rule at all when
        ``check_modality`` is off (``--any-modality``)."""
        rules = rules if rules is not None else cls()
        if not check_modality:
            return replace(rules, modalities=())
        if rules.modalities is None:
            return replace(rules, modalities=tuple(modalities))
        return rules


# -- descriptions that may be shown ---------------------------------------------------

#: Words a SeriesDescription may be made of to be shown: planes, anatomy, sequences,
#: reconstruction and protocol terms. Anything else (a name, an accession number, a
#: date, a free-text note) withholds the whole description.
_VOCABULARY = """
    ABD ABDO ABDOMEN ACQ ADC AND ANGIO ANGIOGRAPHY ANKLE AORTA AP APEX ARM ART ARTERIAL AX
    AXIAL BH BLADDER BODY BOLUS BONE BRAIN BREAST BREATH C CALCIUM CAP CARDIAC CAROTID
    CAROTIDS CERVICAL CHEST CINE CM COLON COR CORONAL CONTRAST CORONARY CT CTA DELAY
    DELAYED DIFFUSION DIXON DOSE DUAL DWI ECG ELBOW ENERGY EQUILIBRIUM EXAM FAST FAT FEMUR
    FIESTA FLAIR FOOT FOR FS GATED GRE HAND HEAD HEART HIP HIGH HOLD IN INSP IV KIDNEY
    KIDNEYS KNEE LAT LATERAL LIVER LOCALIZER LOCALISER LOW LUMBAR LUNG LUNGS MIP MM MPR MR
    MRA MRI MS MULTIPHASE NATIVE NECK NON OBL OBLI OBLIQUE OF ON OUT PA PANCREAS PD PELVIS
    PERFUSION PHASE PILOT PLAIN PORTAL POST PRE PRIMARY PROJECTED PROJECTION PROSTATE RECON
    REFORMAT REFORMATS RENAL RESP RF ROUTINE S SAG SAGITTAL SCAN SCOUT SE SEC SERIES SHARP
    SHORT SHOULDER SINUS SINUSES SKULL SLICE SLICES SMOOTH SOFT SPINE STANDARD STIR STD SUB
    SURVEY SWI T TEMPORAL THIN THICK THORACIC THORAX TIME TISSUE TOF TOPOGRAM TRA TRACE
    TRANSVERSE TSE UPPER VENOUS VIBE VOL VOLUME W WITH WO WRIST
"""
_SAFE_WORDS = frozenset(_VOCABULARY.split())
_SHORT_NUMBER = re.compile(r"\d{1,2}(\.\d{1,3})?")
_CODE_WORD = re.compile(r"[A-Z]\d{1,2}[A-Z]?")  # T1, T2, B30F: sequences, kernels
_SEPARATORS = re.compile(r"[\s/_+\-,:()]+")
_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9 ./_+\-,:()]{1,64}")


def safe_description(value: Any) -> str | None:
    """``value`` (a SeriesDescription) when it may be shown, else None.

    The rule is conservative: at most 64 ASCII characters of letters, digits, spaces and
    ``. / _ + - , : ( )``, and every word a known protocol term (planes, anatomy,
    sequences, reconstruction: ``AX T2 FLAIR``, ``Routine Brain``, ``Scout``), a short
    number (at most two digits, optionally with decimals: ``5``, ``0.5``; no digit runs
    that could be a date or an accession number) or a short code of letters and one or
    two digits (``T1``, ``B30f``). One word outside that withholds the whole text: names,
    initials other than plane letters, free-text notes and identifiers never show.
    """
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text or not text.isascii() or not _ALLOWED_CHARS.fullmatch(text):
        return None
    words = [w for w in _SEPARATORS.split(text.upper()) if w]
    if not words:
        return None
    for word in words:
        if word in _SAFE_WORDS or _SHORT_NUMBER.fullmatch(word) or _CODE_WORD.fullmatch(word):
            continue
        # "5MM", "0.5SEC": a short number glued to a unit.
        unit = re.fullmatch(r"(\d{1,2}(?:\.\d{1,3})?)(MM|CM|S|SEC|MS)", word)
        if unit:
            continue
        return None
    return text
