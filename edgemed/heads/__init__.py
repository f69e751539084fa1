"""Task heads and their registry.

A head (:class:`~edgemed.heads.base.Head`) turns raw model outputs into a task's result
and owns its spec, JSON, metric, summary and writers. The bundle's ``task`` names one;
:func:`tasks` lists the registered names. A new head is one module plus
``register(MyHead)``; the pipeline, ``edgemed bench`` and the export gates then run it
without edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgemed.errors import BundleError
from edgemed.heads.base import Head, HeadSpec
from edgemed.heads.classification import ClassificationHead
from edgemed.heads.embedding import EmbeddingHead
from edgemed.heads.segmentation import SegmentationHead

__all__ = ["Head", "HeadSpec", "create_head", "head_class", "register", "tasks"]

_HEADS: dict[str, type[Head]] = {}


def register(head: type[Head]) -> type[Head]:
    """Register ``head`` under ``head.task`` (usable as a class decorator)."""
    _HEADS[head.task] = head
    return head


def tasks() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_HEADS)


def head_class(task: str) -> type[Head]:
    """The head registered for ``task``; ``BundleError`` if none is."""
    try:
        return _HEADS[task]
    except KeyError:
        raise BundleError(f"task must be one of {tasks()}, got {task!r}") from None


def create_head(
    task: str, spec: HeadSpec | Mapping[str, Any], labels: Sequence[str], outputs: Sequence[Any]
) -> Head:
    """A head for ``task``; ``spec`` as parsed, or the raw ``postprocess`` block;
    ``outputs`` as ``(name, shape)`` pairs or objects with ``name`` and ``shape``."""
    cls = head_class(task)
    if not isinstance(spec, HeadSpec):
        spec = cls.parse_spec(spec)
    pairs = [o if isinstance(o, tuple) else (o.name, o.shape) for o in outputs]
    return cls(spec, labels, pairs)


for _head in (SegmentationHead, ClassificationHead, EmbeddingHead):
    register(_head)
