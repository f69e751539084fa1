"""Classification head: logits ``(N, K)`` -> per slice the class probabilities and the
top k; top-1 agreement and the largest probability difference against a reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed import postprocess as ops
from edgemed.errors import BundleError
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
    ``none`` (already probabilities); ``top_k``: how many classes to report.

    ``decision_thresholds`` (multi-label): one probability per label (or one for all);
    a label is *present* on a slice when its probability reaches its threshold. Then
    each slice also lists its ``present`` labels, and the accuracy gate compares those
    decisions (``min_decision_agreement``) instead of the top-1 class, which means
    little among independent probabilities that are all near 0 on a slice without
    findings (their order flips with any rounding)."""

    activation: str = "softmax"
    top_k: int = 5
    decision_thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        ops.check_activation(self.activation)
        if type(self.top_k) is not int or self.top_k < 1:
            raise ValueError("top_k must be an integer >= 1")
        for t in self.decision_thresholds:
            if not 0.0 <= t <= 1.0:
                raise ValueError("decision_thresholds must be probabilities in [0, 1]")

    @classmethod
    def _coerce(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw = super()._coerce(kw)
        if "top_k" in kw:
            kw["top_k"] = int(kw["top_k"])
        if "decision_thresholds" in kw:
            t = kw["decision_thresholds"]
            kw["decision_thresholds"] = tuple(
                float(v) for v in (t if isinstance(t, (list, tuple)) else [t])
            )
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not d.get("decision_thresholds"):
            d.pop("decision_thresholds", None)  # bundles without it stay as they were
        return d


@dataclass
class ClassificationOutput:
    """``classes``: per slice ``{"probabilities": [...], "top_k": [{"index", "label",
    "probability"}, ...]}``, most probable first; with decision thresholds also
    ``"present"``: the labels at or above their threshold, in the same form."""

    classes: list[dict[str, Any]]


class ClassificationHead(Head):
    task = "classification"
    Spec = ClassificationSpec
    thresholds = {"min_top1_agreement": 0.99, "max_prob_diff": 0.05, "min_decision_agreement": 0.99}
    spec: ClassificationSpec

    def __init__(
        self, spec: HeadSpec, labels: Sequence[str], outputs: Sequence[tuple[str, Any]]
    ) -> None:
        super().__init__(spec, labels, outputs)
        cuts = self.spec.decision_thresholds
        classes = self.output_shape[-1] if self.output_shape else None
        if len(cuts) > 1 and isinstance(classes, int) and len(cuts) != classes:
            raise BundleError(
                f"postprocess.decision_thresholds has {len(cuts)} values for {classes} classes"
            )

    def _cuts(self, classes: int) -> np.ndarray | None:
        t = self.spec.decision_thresholds
        if not t:
            return None
        if len(t) not in (1, classes):
            raise BundleError(f"decision_thresholds has {len(t)} values for {classes} classes")
        return np.broadcast_to(np.asarray(t, np.float64), (classes,))

    def decode(
        self, raw: Mapping[str, np.ndarray], placements: Sequence[Placement]
    ) -> list[dict[str, Any]]:
        values = ops.classify(raw[self.output], self.spec, self.labels)
        if values and self.spec.decision_thresholds:
            cuts = self._cuts(len(values[0]["probabilities"]))
            names = ops.label_names(self.labels, len(values[0]["probabilities"]))
            for v in values:
                p = v["probabilities"]
                found = [j for j in range(len(p)) if p[j] >= cuts[j]]  # type: ignore[index]
                found.sort(key=lambda j: -p[j])
                v["present"] = [{"index": j, "label": names[j], "probability": p[j]} for j in found]
        return values

    def assemble(
        self, image: MedicalImage, values: list[Any], how: Orientation
    ) -> ClassificationOutput:
        return ClassificationOutput(values)

    def values(self, output: ClassificationOutput) -> list[dict[str, Any]]:
        return list(output.classes)

    def to_json(self, output: ClassificationOutput) -> dict[str, Any]:
        return {"classification": output.classes}

    def summary(self, result: Result) -> list[str]:
        first = result.output.classes[0]
        if "present" in first:  # multi-label: the decisions, at the bundle's thresholds
            found = ", ".join(f"{c['label']} ({c['probability']:.3f})" for c in first["present"])
            return [f"  present  {found or 'none above its threshold'}"]
        top = first["top_k"][0]
        return [f"  top-1    {top['label']} ({top['probability']:.3f})"]

    def metric(self, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any]:
        """Top-1 agreement (share of slices whose most probable class matches) and the
        largest absolute difference of any class probability."""
        r = np.array([c["probabilities"] for c in reference], dtype=np.float64)
        o = np.array([c["probabilities"] for c in other], dtype=np.float64)
        if r.shape != o.shape:
            raise ValueError(f"probability shapes differ: {r.shape} vs {o.shape}")
        out = {
            "metric": "top1_agreement",
            "top1_agreement": round(float((r.argmax(1) == o.argmax(1)).mean()), 6),
            "max_prob_diff": round(float(np.abs(r - o).max(initial=0.0)), 6),
        }
        cuts = self._cuts(r.shape[1]) if r.size else None
        if cuts is not None:  # multi-label: every label's decision on every slice
            out["metric"] = "decision_agreement"
            same = ((r >= cuts) == (o >= cuts)).all(1)
            out["decision_agreement"] = round(float(same.mean()), 6)
        return out

    def gate(self, metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        diff = self.limit("max_prob_diff", thresholds)
        fails = []
        if "decision_agreement" in metrics:
            agree = self.limit("min_decision_agreement", thresholds)
            if metrics["decision_agreement"] < agree:
                fails.append(f"decision agreement {metrics['decision_agreement']:.4f} < {agree}")
        else:
            top1 = self.limit("min_top1_agreement", thresholds)
            if metrics["top1_agreement"] < top1:
                fails.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < {top1}")
        if metrics["max_prob_diff"] > diff:
            fails.append(f"max probability diff {metrics['max_prob_diff']:.4f} > {diff}")
        return fails
