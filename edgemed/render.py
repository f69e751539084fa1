"""Rendering a result for people and files, for the front-ends (today the CLI's
``run`` and ``demo``).

What is task-specific comes from the result's head (its summary lines and its files);
this module adds what every result has: ``result.json``, model, backend, input and
timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgemed.fsutil import write_json
from edgemed.result import Result

__all__ = ["dicom_objects", "summary", "write_result"]


def write_result(result: Result, out: Path, *, dicom: bool = False) -> list[Path]:
    """Write ``result`` into the directory ``out``: the head's files (a segmentation's
    ``mask.nii.gz`` and ``overlay.png``), with ``dicom`` also ``seg.dcm`` and ``sr.dcm``
    (:func:`dicom_objects`; a segmentation of a DICOM input), then ``result.json``;
    returns the paths, ``result.json`` first.

    Raises:
        UsageError: ``dicom`` for a result that is not a segmentation of DICOM slices.
    """
    written = result.head.write(result, out) if result.head is not None else []
    if dicom:
        written += _write_dicom(result, out)
    # result.json last: its presence means the other files are complete.
    written.insert(0, write_json(out / "result.json", result.to_dict()))
    return written


def dicom_objects(result: Result, sources: Sequence[Any], result_id: str) -> dict[str, Any]:
    """A segmentation result as DICOM: ``seg.dcm`` (a multi-frame BINARY Segmentation)
    and ``sr.dcm`` (a TID 1500 measurement report of the per-label areas or volumes
    referencing it), over the source instances ``sources`` (pydicom datasets, pixel data
    not needed, in the mask's slice order). Their UIDs derive from ``result_id``: made
    again for the same result, they are the same objects (a receiver stores them once).
    The listener and ``run --dicom`` both write these (needs the ``listen`` extra).
    """
    from edgemed.io.dicom_seg import Algorithm, derived_uid, segmentation
    from edgemed.io.dicom_sr import measurement_report

    bundle = result.provenance["bundle"]
    algorithm = Algorithm(bundle["name"], bundle["version"], bundle["manifest_sha256"])
    software = f"edgemed {result.provenance['edgemed_version']}"
    seg = segmentation(
        result.mask,
        result.labels,
        sources,
        algorithm,
        series_instance_uid=derived_uid("seg-series", result_id),
        sop_instance_uid=derived_uid("seg", result_id),
        software=software,
    )
    sr = measurement_report(
        result.stats,
        result.labels,
        sources,
        algorithm,
        series_instance_uid=derived_uid("sr-series", result_id),
        sop_instance_uid=derived_uid("sr", result_id),
        segmentation=seg,
        software=software,
    )
    return {"seg.dcm": seg, "sr.dcm": sr}


def _write_dicom(result: Result, out: Path) -> list[Path]:
    from edgemed.errors import UsageError
    from edgemed.fsutil import atomic_write

    sources = result.image.dicom_headers
    if result.task != "segmentation" or not sources:
        raise UsageError("--dicom writes a DICOM SEG and SR: it needs a segmentation of DICOM")
    if len(sources) != result.image.num_slices:
        raise UsageError("--dicom: multi-frame DICOM sources are not supported yet")
    rid = str(result.provenance["input_id"])
    paths = []
    for name, ds in dicom_objects(result, sources, rid).items():

        def save(tmp: str, ds: Any = ds) -> None:
            ds.save_as(tmp, enforce_file_format=True)

        paths.append(atomic_write(out / name, save))
    return paths


def _input_lines(facts: dict[str, Any]) -> list[str]:
    """What is known of the input: size, modality, spacing and its source, and, where
    they apply, orientation handling, lossy compression and files left out. Never a
    file name."""
    shape = "x".join(str(s) for s in facts["shape"])
    if facts["spacing_mm"] is None:
        spacing = "spacing unknown (sizes in pixels; --spacing X,Y[,Z] gives mm)"
    else:
        values = " x ".join(f"{s:.3g}" for s in facts["spacing_mm"])
        spacing = f"spacing {values} mm ({facts['spacing_source']})"
    lines = [f"  input    {shape} {facts['modality']}, {spacing}"]
    how = facts["orientation"]
    if how["reoriented"] or how["oblique"]:
        note = f"{how['input_axes']} -> {how['canonical']} for the model"
        if how["oblique"]:
            note += ", oblique: to the closest axes, not resampled"
        lines.append(f"  orient   {note}; outputs in the input's own grid")
    if facts["lossy"]:
        details = [f"ratio {r:.3g}" for r in facts.get("lossy_ratio", [])]
        details += facts.get("lossy_method", [])
        extra = f" ({', '.join(details)})" if details else ""
        lines.append(f"  lossy    the source image was lossy-compressed{extra}")
    if facts.get("ignored_files"):
        n = facts["ignored_files"]
        lines.append(
            f"  ignored  {n} file{'s' if n != 1 else ''} in the folder (not part of the series)"
        )
    return lines


def summary(result: Result, written: list[Path], title: str) -> str:
    """The human-readable lines for one result and the files :func:`write_result` wrote."""
    prov = result.provenance
    lines = [
        title,
        f"  model    {prov['bundle']['name']} {prov['bundle']['version']} ({result.task})",
        f"  backend  {prov['backend']} {prov['backend_version']}, {prov['precision']}, "
        f"{prov['device']}",
        *_input_lines(result.input_facts()),
    ]
    if result.head is not None:
        lines += result.head.summary(result)
    lines.append("  timings  " + "  ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items()))
    if written:
        names = ", ".join(p.name for p in written)
        lines.append(f"  wrote    {written[0].parent}/ ({names})")
    return "\n".join(lines)
