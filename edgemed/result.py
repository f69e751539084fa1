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
        provenance: versions, bundle, artifact sha256, backend, precision, device.
        output: the head's output object. Segmentation: ``mask`` (uint8 label mask in
            the input's geometry, ``(Y, X)`` or ``(Z, Y, X)``) and ``stats`` (per-label
            ``pixels`` and ``area_mm2`` / ``volume_mm3``); classification: ``classes``
            (per slice ``{"probabilities", "top_k"}``); embedding: ``embedding``
            (``(N, D)`` vectors, one per slice). Its fields read as result attributes.
        head: the head that made it (serialises, summarises and writes it).
    """

    task: str
    image: MedicalImage
    labels: list[str]
    timings: dict[str, float]
    provenance: dict[str, Any]
    output: Any = None
    head: Head | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes of the result itself.
        output = self.__dict__.get("output")
        if output is not None and hasattr(output, name):
            return getattr(output, name)
        if name in _EMPTY:
            empty = _EMPTY[name]
            return empty.copy() if isinstance(empty, (dict, list)) else empty
        raise AttributeError(f"{self.task} result has no {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (arrays such as masks are not inlined; writers save them)."""
        img = self.image
        outputs = self.head.to_json(self.output) if self.head is not None else {}
        return {
            "task": self.task,
            "input": {
                "shape": list(img.array.shape),
                "spacing_mm": [float(s) for s in img.spacing],
                "modality": img.modality,
                "format": img.metadata.get("format", "array"),
            },
            "outputs": outputs,
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "provenance": self.provenance,
        }
