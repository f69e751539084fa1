"""Postprocessing heads: segmentation, classification, embedding (+ matching)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgemed.errors import BundleError

__all__ = ["PostprocessSpec"]

_ACTIVATIONS = ("softmax", "sigmoid", "none")
_DECISIONS = ("argmax", "threshold")


@dataclass(frozen=True)
class PostprocessSpec:
    """How raw model outputs become results.

    Attributes:
        activation: ``softmax`` (mutually exclusive classes), ``sigmoid`` (independent
            channels) or ``none`` (outputs are already probabilities / features).
        decision: segmentation only: ``argmax`` or ``threshold`` (sigmoid channels
            above ``threshold``; with several channels a pixel takes the most probable
            channel that passes, label index = channel + 1, 0 where none passes).
        threshold: the threshold for ``decision="threshold"``.
        largest_component: segmentation only: labels (names) for which only the largest
            connected component is kept.
        top_k: classification only: how many classes to report.
        normalize: embedding only: ``l2`` or ``none``.
    """

    activation: str = "softmax"
    decision: str = "argmax"
    threshold: float = 0.5
    largest_component: tuple[str, ...] = field(default_factory=tuple)
    top_k: int = 5
    normalize: str = "l2"

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise BundleError(f"postprocess: activation must be one of {_ACTIVATIONS}")
        if self.decision not in _DECISIONS:
            raise BundleError(f"postprocess: decision must be one of {_DECISIONS}")
        if self.normalize not in ("l2", "none"):
            raise BundleError("postprocess: normalize must be 'l2' or 'none'")
        if self.top_k < 1:
            raise BundleError("postprocess: top_k must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any], task: str = "segmentation") -> PostprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BundleError(f"postprocess: unknown keys {sorted(unknown)}")
        kw = dict(data)
        if task == "embedding":
            kw.setdefault("activation", "none")
        if "largest_component" in kw:
            kw["largest_component"] = tuple(str(x) for x in kw["largest_component"])
        if "threshold" in kw:
            kw["threshold"] = float(kw["threshold"])
        if "top_k" in kw:
            kw["top_k"] = int(kw["top_k"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["largest_component"] = list(self.largest_component)
        return d
