"""DICOM Structured Report (TID 1500 measurement report) of per-label sizes (highdicom).

One measurement group (TID 1501) per label other than background: its finding type is
the label's coded type (the same codes the SEG uses), and it holds the label's volume in
mm3 (a volume) or area in mm2 (one slice). Labels whose size is known only in pixels
(the sources state no spacing) get a group without a measurement. Written as a
Comprehensive 3D SR whose evidence is the source series (and the SEG, when given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgemed._lazy import require
from edgemed.io.dicom_seg import (
    MANUFACTURER,
    Algorithm,
    derived_uid,
    label_codes,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["measurement_report"]


def measurement_report(
    stats: Mapping[str, Mapping[str, Any]],
    labels: Sequence[str],
    sources: Sequence[Dataset],
    algorithm: Algorithm,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    segmentation: Dataset | None = None,
    series_number: int = 9902,
    software: str = MANUFACTURER,
) -> Dataset:
    """A TID 1500 measurement report with each label's volume (mm3) or area (mm2).

    Args:
        stats: per label name ``volume_mm3`` or ``area_mm2`` (and ``pixels``), as the
            segmentation head computes them.
        labels: label names by index; index 0 is background (not reported).
        sources: the source instances the measurements were made on.
        algorithm: the bundle that made them.
        series_instance_uid, sop_instance_uid: UIDs of the new object.
        segmentation: the SEG made from the same mask, added to the evidence.
        series_number: its series number.
        software: Software Versions of the object (e.g. ``edgemed 0.3.0``).

    Returns:
        The SR dataset (``save_as`` writes it).
    """
    hd = require("highdicom", "listen", "DICOM SR")
    codes = require("pydicom.sr.codedict", "listen", "DICOM SR").codes
    # TID 4019 (the SR's own algorithm identification, not the SEG's sequence)
    alg = hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64],
        version=algorithm.version[:64],
        parameters=[f"manifest_sha256={algorithm.manifest_sha256}"],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("edgemed-device", algorithm.name),
            name=algorithm.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name[:64],
        ),
    )
    groups = []
    for label in labels[1:]:
        values = stats.get(label, {})
        _, kind = label_codes(label)
        # A volume where the mask is one, an area for a single slice (the result's own key).
        measurements = [
            hd.sr.Measurement(name=name, value=float(values[key]), unit=unit, algorithm_id=alg)
            for key, name, unit in (
                ("volume_mm3", codes.SCT.Volume, codes.UCUM.CubicMillimeter),
                ("area_mm2", codes.SCT.Area, codes.UCUM.SquareMillimeter),
            )
            if values.get(key) is not None
        ][:1]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(sop_instance_uid, label), identifier=label[:64]
                ),
                finding_type=kind,
                algorithm_id=alg,
                measurements=measurements or None,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(hd, codes, str(getattr(sources[0], "Modality", ""))),
        imaging_measurements=groups,
    )
    evidence = [*sources, *([segmentation] if segmentation is not None else [])]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    sr.SeriesDescription = f"{algorithm.name} measurements"[:64]
    sr.SoftwareVersions = software
    return sr


def _procedure(hd: Any, codes: Any, modality: str) -> Any:
    """The procedure reported: LOINC's unspecified-body-region code for CT and MR, else
    SNOMED's "Imaging" (363679005)."""
    if modality == "CT":
        return codes.LN.CTUnspecifiedBodyRegion
    if modality == "MR":
        return hd.sr.CodedConcept("25056-3", "LN", "MRI unspecified body region")
    return hd.sr.CodedConcept("363679005", "SCT", "Imaging")
