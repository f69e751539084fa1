"""The task-head protocol: what turns a model's raw outputs into a result.

A head owns everything task-specific, so that the pipeline, ``edgemed bench``, the
export gates and every front-end stay task-agnostic:

* its **spec**: a frozen dataclass parsed from the bundle's ``postprocess`` block;
* **decode**: raw outputs, looked up *by name*, -> one value per slice (a mask, a class
  dict, an embedding row), always owned by the caller (never a view of a backend's
  reused buffer);
* **assemble**: the per-slice values of one image (2D or volume) -> its output object;
* its **JSON** form (the ``outputs`` section of ``result.json``);
* the **metric** comparing two runs (Dice per label, top-1 agreement, cosine) and the
  **gate** applying thresholds to it;
* its **CLI summary** lines and its **writers** (files beside ``result.json``).

A new head is one module with a :class:`Head` subclass plus ``register(MyHead)``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgemed.errors import BundleError

if TYPE_CHECKING:
    from edgemed.io.image import MedicalImage
    from edgemed.io.orientation import Orientation
    from edgemed.preprocess.cpu import Placement
    from edgemed.result import Result

__all__ = ["V1_SHARED_KEYS", "Head", "HeadSpec"]

#: Schema-1 bundles wrote one postprocess block with every task's keys; a head accepts
#: (and ignores) those it does not use, so bundles made before heads keep loading.
V1_SHARED_KEYS = frozenset(
    {"activation", "decision", "threshold", "largest_component", "top_k", "normalize"}
)


@dataclass(frozen=True)
class HeadSpec:
    """Base of every head's spec. ``output`` names the model output the head decodes
    (empty: the model's first output)."""

    output: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSpec:
        """Parse a bundle's ``postprocess`` block; unknown keys are a ``BundleError``
        (a typo must not fall back to a default silently)."""
        if not isinstance(data, Mapping):
            raise BundleError("postprocess must be an object")
        own = {f.name for f in fields(cls)}
        unknown = set(data) - own - V1_SHARED_KEYS
        if unknown:
            raise BundleError(f"postprocess: unknown keys {sorted(unknown)}")
        kw = {k: v for k, v in data.items() if k in own}
        try:
            return cls(**cls._coerce(kw))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"postprocess: {exc}") from exc

    @classmethod
    def _coerce(cls, kw: dict[str, Any]) -> dict[str, Any]:
        """JSON values -> field types (override for tuples, floats, ...)."""
        if "output" in kw:
            kw["output"] = str(kw["output"])
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d.get("output"):
            d.pop("output", None)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class Head(abc.ABC):
    """One task's decoding, assembly, serialisation, metric, summary and writers.

    Args:
        spec: the head's spec (from the bundle).
        labels: label / class names from the bundle.
        outputs: the model outputs as ``(name, shape)`` pairs (the bundle's or the
            backend's); the decoded one is ``spec.output`` or the first.

    Raises:
        BundleError: ``spec.output`` names no output of the model.
    """

    #: Registry name, the bundle's ``task``.
    task: ClassVar[str]
    #: The spec dataclass parsed from the bundle.
    Spec: ClassVar[type[HeadSpec]]
    #: Gate thresholds this head reads, with their defaults (name -> value).
    thresholds: ClassVar[Mapping[str, float]] = {}

    def __init__(
        self, spec: HeadSpec, labels: Sequence[str], outputs: Sequence[tuple[str, Any]]
    ) -> None:
        self.spec = spec
        self.labels = list(labels)
        names = [name for name, _ in outputs]
        if not names:
            raise BundleError("the model declares no outputs")
        self.output = spec.output or names[0]
        if self.output not in names:
            raise BundleError(
                f"postprocess.output {self.output!r} is not an output of the model "
                f"(it has {', '.join(names)})"
            )
        self.output_shape = tuple(dict(outputs)[self.output])

    @classmethod
    def parse_spec(cls, data: Mapping[str, Any]) -> HeadSpec:
        return cls.Spec.from_dict(data)

    # -- running ------------------------------------------------------------------------

    @abc.abstractmethod
    def decode(self, raw: Mapping[str, np.ndarray], placements: Sequence[Placement]) -> list[Any]:
        """Raw outputs of one backend call (by name) -> one value per slice, owned by
        the caller (valid after the backend's next call)."""

    @abc.abstractmethod
    def assemble(self, image: MedicalImage, values: list[Any], how: Orientation) -> Any:
        """The per-slice values of one image -> its output object.

        ``values`` are per slice of the image as the model saw it, in the canonical
        orientation; ``how`` (:func:`edgemed.io.orientation.canonical`'s, computed once by
        the pipeline) maps a spatial output back to ``image``'s own grid."""

    def values(self, output: Any) -> list[Any]:
        """The per-slice values inside an assembled output (inverse of assemble)."""
        raise NotImplementedError

    # -- serialising and showing ---------------------------------------------------------

    @abc.abstractmethod
    def to_json(self, output: Any) -> dict[str, Any]:
        """The ``outputs`` section of ``result.json``."""

    def summary(self, result: Result) -> list[str]:
        """Lines for the CLI summary (after model/backend/input, before timings)."""
        return []

    def write(self, result: Result, out: Path) -> list[Path]:
        """Write the head's files into the directory ``out`` (``result.json`` is the
        front-end's); returns the paths written."""
        return []

    def artifacts(self, result: Result) -> Mapping[str, tuple[str, Any]]:
        """Files a front-end may serve without touching disk: name -> (media type,
        ``writer(file_object)``)."""
        return {}

    # -- comparing -----------------------------------------------------------------------

    @abc.abstractmethod
    def metric(self, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any]:
        """How ``other``'s per-slice values agree with ``reference``'s (same slices, same
        order), as JSON-able figures including ``"metric"`` (its name)."""

    @abc.abstractmethod
    def gate(self, metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        """Gate failures, one line each (empty: passed); ``thresholds`` may hold other
        heads' keys too (each head reads its own, defaults from :attr:`thresholds`)."""

    @classmethod
    def gate_table(cls, variants: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        """The gate report as text lines: one row per variant, one column per scalar
        figure (segmentation overrides it with a row per class)."""
        cols = [
            k
            for k, v in next(iter(variants.values())).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        width = {c: max(18, len(c) + 2) for c in cols}  # a long name keeps a gap
        lines = [f"{'variant':10s}" + "".join(f"{c:>{width[c]}s}" for c in cols)]
        for name, v in variants.items():
            lines.append(f"{name:10s}" + "".join(f"{float(v[c]):{width[c]}.6f}" for c in cols))
        limits = ", ".join(f"{k} {cls.limit(k, thresholds)}" for k in cls.thresholds)
        if limits:
            lines.append(f"limits: {limits}")
        return lines

    @classmethod
    def limit(cls, key: str, thresholds: Mapping[str, float]) -> float:
        """Gate limit ``key``: from ``thresholds`` where given, else this head's default."""
        return float(thresholds.get(key, cls.thresholds[key]))

    def decodes_on_device(self, output_dtype: Any) -> bool:
        """Whether the CUDA stages can decide this head's values on the GPU (only the
        segmentation head's masks can, today)."""
        return False
