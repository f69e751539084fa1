"""Classification head: logits ``(N, K)`` -> per slice the class probabilities and the
top k; top-1 agreement and the largest probability difference against a reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed import postprocess as ops
from edgemed.heads.base import Head, HeadSpec

if TYPE_CHECKING:
    from edgemed.io.image import MedicalImage
    from edgemed.io.orientation import Orientation
    from edgemed.preprocess.cpu import Placement
    from edgemed.result import Result

__all__ = ["ClassificationHead", "ClassificationOutput", "ClassificationSpec"]


@dataclass(frozen=True)
class ClassificationSpec(HeadSpec):
    """``activation``: ``softmax`` (one class), ``sigmoid`` (independent findings) or
    ``none`` (already probabilities); ``top_k``: how many classes to report."""

    activation: str = "softmax"
    top_k: int = 5

    def __post_init__(self) -> None:
        ops.check_activation(self.activation)
        if type(self.top_k) is not int or self.top_k < 1:
            raise ValueError("top_k must be an integer >= 1")

    @classmethod
    def _coerce(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw = super()._coerce(kw)
        if "top_k" in kw:
            kw["top_k"] = int(kw["top_k"])
        return kw


@dataclass
class ClassificationOutput:
    """``classes``: per slice ``{"probabilities": [...], "top_k": [{"index", "label",
    "probability"}, ...]}``, most probable first."""

    classes: list[dict[str, Any]]


class ClassificationHead(Head):
    task = "classification"
    Spec = ClassificationSpec
    thresholds = {"min_top1_agreement": 0.99, "max_prob_diff": 0.05}
    spec: ClassificationSpec

    def decode(
        self, raw: Mapping[str, np.ndarray], placements: Sequence[Placement]
    ) -> list[dict[str, Any]]:
        return ops.classify(raw[self.output], self.spec, self.labels)

    def assemble(
        self, image: MedicalImage, values: list[Any], how: Orientation
    ) -> ClassificationOutput:
        return ClassificationOutput(values)

    def values(self, output: ClassificationOutput) -> list[dict[str, Any]]:
        return list(output.classes)

    def to_json(self, output: ClassificationOutput) -> dict[str, Any]:
        return {"classification": output.classes}

    def summary(self, result: Result) -> list[str]:
        top = result.output.classes[0]["top_k"][0]
        return [f"  top-1    {top['label']} ({top['probability']:.3f})"]

    def metric(self, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any]:
        """Top-1 agreement (share of slices whose most probable class matches) and the
        largest absolute difference of any class probability."""
        r = np.array([c["probabilities"] for c in reference], dtype=np.float64)
        o = np.array([c["probabilities"] for c in other], dtype=np.float64)
        if r.shape != o.shape:
            raise ValueError(f"probability shapes differ: {r.shape} vs {o.shape}")
        return {
            "metric": "top1_agreement",
            "top1_agreement": round(float((r.argmax(1) == o.argmax(1)).mean()), 6),
            "max_prob_diff": round(float(np.abs(r - o).max(initial=0.0)), 6),
        }

    def gate(self, metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        top1 = self.limit("min_top1_agreement", thresholds)
        diff = self.limit("max_prob_diff", thresholds)
        fails = []
        if metrics["top1_agreement"] < top1:
            fails.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < {top1}")
        if metrics["max_prob_diff"] > diff:
            fails.append(f"max probability diff {metrics['max_prob_diff']:.4f} > {diff}")
        return fails
