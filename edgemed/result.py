"""``Result``: what one input produced, whatever the task.

The task-specific part is the head's output object (:attr:`Result.output`); its fields
read through the result too (``result.mask``, ``result.classes``, ...), so code written
for one task reads naturally and a new head needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgemed.heads.base import Head
    from edgemed.io.image import MedicalImage
    from edgemed.io.orientation import Orientation

__all__ = ["STAGES", "Result"]

#: Timing keys of every result, in milliseconds.
STAGES = ("read", "preprocess", "infer", "postprocess", "total")

# Fields of the built-in heads' outputs that read as empty on a result of another task
# (``result.mask is None`` on a classification result), as they did before heads.
_EMPTY: dict[str, Any] = {"mask": None, "stats": {}, "classes": [], "embedding": None}


@dataclass
class Result:
    """What one input produced.

    Attributes:
        task: the bundle's task (the head's name).
        image: the input image (kept for writers such as the overlay; not serialised).
        labels: label names from the bundle.
        timings: milliseconds per stage (:data:`STAGES`); when several inputs share one
            backend call, ``preprocess``/``infer``/``postprocess`` are that batch's.
        provenance: versions, bundle, artifact sha256, backend, precision, device,
            the pipeline's one-time ``startup_ms``.
        output: the head's output object. Segmentation: ``mask`` (uint8 label mask in
            the input's own voxel grid, ``(Y, X)`` or ``(Z, Y, X)``) and ``stats``
            (per-label ``pixels``, and ``area_mm2`` / ``volume_mm3`` where the spacing is
            known); classification: ``classes`` (per canonical slice ``{"probabilities",
            "top_k"}``); embedding: ``embedding`` (``(N, D)`` vectors, one per canonical
            slice). Its fields read as result attributes.
        head: the head that made it (serialises, summarises and writes it).
        orientation: how the input's voxel order relates to the canonical one the
            model saw (:mod:`edgemed.io.orientation`); None: worked out from ``image``.
    """

    task: str
    image: MedicalImage
    labels: list[str]
    timings: dict[str, float]
    provenance: dict[str, Any]
    output: Any = None
    head: Head | None = field(default=None, repr=False, compare=False)
    orientation: Orientation | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes of the result itself.
        output = self.__dict__.get("output")
        if output is not None and hasattr(output, name):
            return getattr(output, name)
        if name in _EMPTY:
            empty = _EMPTY[name]
            return empty.copy() if isinstance(empty, (dict, list)) else empty
        raise AttributeError(f"{self.task} result has no {name!r}")

    def input_facts(self) -> dict[str, Any]:
        """The ``input`` section of :meth:`to_dict`: what was run and what is known of it.

        ``spacing_mm`` is None when ``spacing_source`` is ``unknown`` (the file states no
        spacing and none was given: sizes are then pixel counts only); ``orientation``
        says how the file's voxel order relates to the canonical one the model saw;
        ``lossy`` whether the pixels went through lossy compression (with the file's
        ``lossy_ratio`` / ``lossy_method`` where it records them); ``ignored_files``
        (series only) how many files beside the series were not part of it.
        """
        from edgemed.io.orientation import orientation  # nibabel: loaded with the readers

        img, md = self.image, self.image.metadata
        source = img.spacing_source
        how = self.orientation if self.orientation is not None else orientation(img)
        facts: dict[str, Any] = {
            "shape": list(img.array.shape),
            "spacing_mm": None if source == "unknown" else [float(s) for s in img.spacing],
            "spacing_source": source,
            "modality": img.modality,
            "format": md.get("format", "array"),
            "orientation": how.to_dict(),
            "lossy": bool(md.get("lossy_compression", False)),
        }
        for key in ("lossy_ratio", "lossy_method"):
            if facts["lossy"] and md.get(key):
                facts[key] = list(md[key])
        if "ignored_files" in md:
            facts["ignored_files"] = int(md["ignored_files"])
        if "series_selection" in md:  # a folder with several series: which one and why
            facts["series"] = dict(md["series_selection"])
        return facts

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (arrays such as masks are not inlined; writers save them)."""
        outputs = self.head.to_json(self.output) if self.head is not None else {}
        return {
            "task": self.task,
            "input": self.input_facts(),
            "outputs": outputs,
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "provenance": self.provenance,
        }
