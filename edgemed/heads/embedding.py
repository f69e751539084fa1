"""Embedding head: features ``(N, D...)`` -> one ``(D,)`` vector per slice
(L2-normalised unless the spec says ``none``); cosine similarity against a reference."""

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

__all__ = ["EmbeddingHead", "EmbeddingOutput", "EmbeddingSpec"]


@dataclass(frozen=True)
class EmbeddingSpec(HeadSpec):
    """``normalize``: ``l2`` (unit vectors, what cosine matching expects) or ``none``."""

    normalize: str = "l2"

    def __post_init__(self) -> None:
        if self.normalize not in ("l2", "none"):
            raise ValueError("normalize must be 'l2' or 'none'")


@dataclass
class EmbeddingOutput:
    """``embedding``: float32 ``(N, D)``, one row per slice."""

    embedding: np.ndarray


class EmbeddingHead(Head):
    task = "embedding"
    Spec = EmbeddingSpec
    thresholds = {"min_cosine": 0.99}
    spec: EmbeddingSpec

    def decode(
        self, raw: Mapping[str, np.ndarray], placements: Sequence[Placement]
    ) -> list[np.ndarray]:
        # Copies, row by row: a backend may hand back views of output buffers it reuses
        # on the next call, and a volume's rows are kept across calls until assembled.
        return [np.array(row, dtype=np.float32) for row in ops.embed(raw[self.output], self.spec)]

    def assemble(self, image: MedicalImage, values: list[Any], how: Orientation) -> EmbeddingOutput:
        return EmbeddingOutput(np.stack(values))

    def values(self, output: EmbeddingOutput) -> list[np.ndarray]:
        return list(output.embedding)

    def to_json(self, output: EmbeddingOutput) -> dict[str, Any]:
        return {"embedding": [[float(v) for v in row] for row in output.embedding]}

    def metric(self, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any]:
        """Cosine similarity of each vector with the reference's: min and mean."""
        r = np.array([np.ravel(v) for v in reference], dtype=np.float64)
        o = np.array([np.ravel(v) for v in other], dtype=np.float64)
        if r.shape != o.shape:
            raise ValueError(f"embedding shapes differ: {r.shape} vs {o.shape}")
        cos = (r * o).sum(1) / np.maximum(
            np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30
        )
        return {
            "metric": "cosine",
            "min_cosine": round(float(cos.min()), 6),
            "mean_cosine": round(float(cos.mean()), 6),
        }

    def gate(self, metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        limit = self.limit("min_cosine", thresholds)
        if metrics["min_cosine"] < limit:
            return [f"min cosine {metrics['min_cosine']:.4f} < {limit}"]
        return []
