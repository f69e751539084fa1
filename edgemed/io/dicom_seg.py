"""DICOM Segmentation (BINARY) from a label mask and the source instances (highdicom).

The mask holds label indices (0: background, ``k``: ``labels[k]``); each other label is
one segment, numbered as its index, with its name and a coded category and type. Empty
frames are omitted. The SEG references the source series and its frame of reference,
copies the patient and study attributes the IOD requires from the sources (highdicom
does), and names the algorithm: the bundle's name, version and manifest sha256.

BINARY, not LABELMAP: the validators in use (dicom3tools' ``dciodvfy``, Debian's DCMTK)
predate the LABELMAP SEG IOD.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed._lazy import require
from edgemed.errors import UsageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Algorithm", "derived_uid", "label_codes", "segmentation"]

#: Manufacturer written into the objects edgemed makes.
MANUFACTURER = "edgemed"

# Coded category and type per common label name (SNOMED CT, CID 7150/7151 style):
# (category attribute, type attribute) of pydicom's ``codes.SCT``.
_KNOWN: dict[str, tuple[str, str]] = {
    "lung": ("AnatomicalStructure", "Lung"),
    "lungs": ("AnatomicalStructure", "Lung"),
    "liver": ("AnatomicalStructure", "Liver"),
    "kidney": ("AnatomicalStructure", "Kidney"),
    "spleen": ("AnatomicalStructure", "Spleen"),
    "heart": ("AnatomicalStructure", "Heart"),
    "brain": ("AnatomicalStructure", "Brain"),
    "bone": ("Tissue", "Bone"),
    "fat": ("Tissue", "AdiposeTissue"),
    "adipose_tissue": ("Tissue", "AdiposeTissue"),
    "soft_tissue": ("Tissue", "SoftTissue"),
}

#: Private coding scheme for labels no standard code is known for here.
PRIVATE_SCHEME = "99EDGEMED"


@dataclass(frozen=True)
class Algorithm:
    """What made a result: written into the SEG's and SR's algorithm identification.

    Attributes:
        name: the bundle's name.
        version: the bundle's version.
        manifest_sha256: sha256 of the bundle's manifest (which pins every artifact).
    """

    name: str
    version: str
    manifest_sha256: str


def derived_uid(*parts: str) -> str:
    """A UID (``2.25.<decimal>``, as PS3.5 B.2 derives one from a UUID) fixed by
    ``parts``: the same result of the same inputs gets the same UIDs, so sending it
    twice stores it once at the receiver."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    value = int.from_bytes(digest, "big") >> 6  # 122 bits, as a random UUID has
    return f"2.25.{value}"


def label_codes(label: str) -> tuple[Any, Any]:
    """(segmented property category, type) codes for a label name."""
    codes = require("pydicom.sr.codedict", "listen", "DICOM SEG").codes
    known = _KNOWN.get(label.lower())
    if known is not None:
        return getattr(codes.SCT, known[0]), getattr(codes.SCT, known[1])
    hd = require("highdicom", "listen", "DICOM SEG")
    return codes.SCT.AnatomicalStructure, hd.sr.CodedConcept(
        value=label[:16], scheme_designator=PRIVATE_SCHEME, meaning=label[:64]
    )


def algorithm_identification(algorithm: Algorithm) -> Any:
    """highdicom's AlgorithmIdentificationSequence for ``algorithm``."""
    hd = require("highdicom", "listen", "DICOM SEG")
    codes = require("pydicom.sr.codedict", "listen", "DICOM SEG").codes
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        version=algorithm.version[:64],
        family=codes.cid7162.ArtificialIntelligence,
        source=MANUFACTURER,
        parameters={"manifest_sha256": algorithm.manifest_sha256},
    )


def segmentation(
    mask: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[Dataset],
    algorithm: Algorithm,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9901,
    software: str = MANUFACTURER,
) -> Dataset:
    """A BINARY DICOM Segmentation of ``mask`` over ``sources``.

    Args:
        mask: label indices, ``(Z, Y, X)`` with slice ``z`` over ``sources[z]``, or
            ``(Y, X)`` over a single source.
        labels: label names by index; index 0 is background (no segment).
        sources: the source instances (full datasets, pixel data not needed), in the
            mask's slice order.
        algorithm: the bundle that made the mask.
        series_instance_uid, sop_instance_uid: UIDs of the new object.
        series_number: its series number.
        software: Software Versions of the object (e.g. ``edgemed 0.3.0``).

    Returns:
        The SEG dataset (a pydicom Dataset; ``save_as`` writes it).

    Raises:
        UsageError: the mask's shape does not match the sources, or it holds a value
            beyond the labels.
    """
    hd = require("highdicom", "listen", "DICOM SEG")
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] != len(sources):
        raise UsageError(f"mask of shape {mask.shape} does not match {len(sources)} source(s)")
    if len(labels) < 2:
        raise UsageError("a segmentation needs at least one label besides background")
    if int(array.max(initial=0)) >= len(labels):
        raise UsageError("mask holds a value beyond the labels")
    alg = algorithm_identification(algorithm)
    descriptions = []
    for number, label in enumerate(labels[1:], start=1):
        category, kind = label_codes(label)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=alg,
            )
        )
    # Given as a label map (values = segment numbers; labels cannot overlap): highdicom
    # splits it into one binary frame per slice and segment itself, checking only the
    # maximum, where a stack of boolean planes would cost a copy per label and an
    # overlap check. With nothing found anywhere, the (empty) frames stay: highdicom needs
    # at least one, and an empty result is still a valid, decodable SEG.
    labelmap = np.ascontiguousarray(array, dtype=np.uint8 if len(labels) <= 256 else np.uint16)
    omit = bool(labelmap.any())
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=labelmap,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=software,
        device_serial_number="0",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        content_label="EDGEMED",
        omit_empty_frames=omit,
    )
