"""Accuracy gates: every precision variant against the FP32 ONNX, with the task head's
metric.

Both models run in ONNX Runtime (CPU) on the same preprocessed validation inputs; their
outputs are decoded by the bundle's task head (:mod:`edgemed.heads`) exactly as the
runtime decodes them, so the comparison is of what a user would receive, and the figures
are the ones ``edgemed bench`` reports (the head's :meth:`~edgemed.heads.base.Head.metric`).

Segmentation. For each class ``c``, over all validation slices at their source size:
``Dice_c = 2 |V_c & F_c| / (|V_c| + |F_c|)`` where ``V_c`` and ``F_c`` are the pixels
the variant and the FP32 model label ``c``. A class neither labels anywhere is
*absent* (reported, not gated). ``drop_c = 1 - Dice_c`` is the class's disagreement
with FP32 (FP32 against itself scores 1), and ``mean drop = 1 - mean of Dice_c`` over
the present classes. The gate passes when ``mean drop <= max_dice_drop`` and every
``drop_c <= max_class_dice_drop``.

Classification: top-1 agreement (fraction of inputs whose most probable class matches
FP32's) and the largest absolute difference of any class probability.

Embedding: cosine similarity of each vector with FP32's (min and mean).

Any other registered head: its own metric and gate.

Volumes (3D models, :func:`compare_volumes`): each precision runs through
:class:`edgemed.Pipeline` itself -- ONNX Runtime, the runtime's reading, orientation,
resampling, the full sliding window and the decision in each volume's own grid -- and the
head's metric compares the masks over all voxels of all validation volumes together
(3D Dice per label, the same formula with voxels for pixels).

:class:`TaskCheck` applies the same metric and gate to parity's real images (ONNX
Runtime's decoded results against PyTorch's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed import postprocess as ops
from edgemed.export.calibration import ImageSet
from edgemed.export.onnx_export import run_onnx_outputs, session
from edgemed.heads import Head, HeadSpec, create_head, head_class
from edgemed.preprocess import Placement

__all__ = ["TaskCheck", "WindowCheck", "compare", "compare_volumes", "format_table"]

_CHUNK = 8  # slices per ONNX Runtime call: bounds the memory of 256x256xC logits


def _values(head: Any, sess: Any, data: ImageSet) -> list[Any]:
    """Every validation slice decoded by ``head``, chunk by chunk."""
    values: list[Any] = []
    for i in range(0, len(data.inputs), _CHUNK):
        raw = run_onnx_outputs(sess, data.inputs[i : i + _CHUNK], _CHUNK)
        values += head.decode(raw, data.placements[i : i + _CHUNK])
    return values


def _thresholds(thresholds: Any) -> Mapping[str, float]:
    if dataclasses.is_dataclass(thresholds) and not isinstance(thresholds, type):
        return dataclasses.asdict(thresholds)
    return dict(thresholds)


def _judge(
    head: Head, reference: Sequence[Any], other: Sequence[Any], limits: Mapping[str, float]
) -> dict[str, Any]:
    """The head's metric of ``other`` against ``reference``, and its gate's failures."""
    metrics = head.metric(reference, other)
    fails = head.gate(metrics, limits)
    return {"passed": not fails, "failures": fails, **metrics}


@dataclass
class TaskCheck:
    """The task-level half of parity (:func:`edgemed.export.onnx_export.parity`): decode
    one case's outputs with the bundle's head and gate ONNX Runtime's results against
    PyTorch's with the accuracy thresholds, as :func:`compare` gates a variant.

    Attributes:
        head: the bundle's task head (decodes ``head.output``, which must be the ONNX
            model's first output: that is the one PyTorch's run returns).
        case: the name of the case to decode (the real images: random inputs have no
            meaningful results).
        placements: one per input of that case.
        thresholds: the accuracy gates' limits (a mapping or dataclass, as for
            :func:`compare`).
    """

    head: Head
    case: str
    placements: Sequence[Placement]
    thresholds: Any

    def run(self, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
        """The head's metric of ``got`` against ``ref``, with ``passed`` and ``failures``."""
        out = self.head.output
        return _judge(
            self.head,
            self.head.decode({out: ref}, self.placements),
            self.head.decode({out: got}, self.placements),
            _thresholds(self.thresholds),
        )


@dataclass
class WindowCheck:
    """:class:`TaskCheck` for a 3D model's windows: each window's outputs decided as the
    runtime decides a blended volume (the head's activation, then argmax or threshold),
    and gated with the head's metric (3D Dice per label over the windows together).

    Attributes:
        head: the bundle's segmentation head.
        case: the name of the case to decode (the real calibration windows).
        thresholds: the accuracy gates' limits.
    """

    head: Head
    case: str
    thresholds: Any

    def _masks(self, y: np.ndarray) -> list[np.ndarray]:
        spec = self.head.spec
        probs = ops.activate(y, spec.activation, axis=1)  # type: ignore[attr-defined]
        return [ops.decide(np.moveaxis(p, 0, -1), spec) for p in probs]

    def run(self, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
        """The head's metric of ``got``'s masks against ``ref``'s, with ``passed``."""
        return _judge(self.head, self._masks(ref), self._masks(got), _thresholds(self.thresholds))


def compare_volumes(
    bundle: Any,
    variants: Sequence[str],
    images: Sequence[Any],
    thresholds: Any,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every validation volume through :class:`edgemed.Pipeline` with the FP32
    artifact and with each of ``variants`` (precision names) of the written ``bundle``
    (ONNX Runtime, CPU preprocessing); the head's metrics and pass/fail per variant.

    ``images`` are :class:`~edgemed.io.MedicalImage` objects as read (the pipeline
    reorients them, and each mask comes back in its volume's own grid).
    """
    from edgemed.backends import create_backend
    from edgemed.pipeline import Pipeline
    from edgemed.settings import Options

    # Built here, not resolved from EDGEMED_*: the gate must not depend on the shell.
    base = Options(backend="onnxruntime", threads=threads, preprocess="cpu", check_modality=False)
    masks: dict[str, list[np.ndarray]] = {}
    head: Head | None = None
    windows = 0
    for precision in ["fp32", *variants] if variants else []:
        opts = dataclasses.replace(base, precision=precision)
        with Pipeline(bundle, create_backend(None, bundle, options=opts), opts) as pipe:
            head = pipe.head
            results = [pipe(image) for image in images]
        masks[precision] = [r.output.mask for r in results]
        windows = sum(
            int((getattr(r.output, "volume", None) or {}).get("windows", 0)) for r in results
        )
    if head is None:  # FP32 alone: nothing to compare
        head = create_head(bundle.task, bundle.postprocess, bundle.labels, bundle.outputs)
    limits = _thresholds(thresholds)
    report: dict[str, Any] = {
        "reference": "FP32 ONNX through edgemed.Pipeline (ONNX Runtime CPU, full sliding "
        "window); masks in each volume's own grid, decided by the task head",
        "thresholds": {k: head.limit(k, limits) for k in head.thresholds},
        "variants": {},
        "windows_per_run": windows,
    }
    for precision in variants:
        report["variants"][precision] = _judge(head, masks["fp32"], masks[precision], limits)
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    return report


def compare(
    fp32: Path,
    variants: dict[str, Path],
    data: ImageSet,
    task: str,
    spec: HeadSpec,
    labels: list[str],
    thresholds: Any,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run FP32 and each variant on ``data``; the head's metrics and pass/fail per
    variant. ``thresholds``: a mapping or dataclass of gate limits (each head reads its
    own keys, defaults for the ones absent)."""
    ref_sess = session(fp32, threads)
    outputs = [(o.name, tuple(o.shape)) for o in ref_sess.get_outputs()]
    head = create_head(task, spec, labels, outputs)
    limits = _thresholds(thresholds)
    ref = _values(head, ref_sess, data)
    report: dict[str, Any] = {
        "reference": "FP32 ONNX, ONNX Runtime CPU; outputs decoded by the task head",
        "thresholds": {k: head.limit(k, limits) for k in head.thresholds},
        "variants": {},
    }
    for precision, path in variants.items():
        values = _values(head, session(path, threads), data)
        report["variants"][precision] = _judge(head, ref, values, limits)
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    return report


def format_table(task: str, report: dict[str, Any]) -> str:
    """The accuracy report as a plain-text table (the head's rows), then PASS/FAIL."""
    variants = report["variants"]
    if not variants:
        return "no reduced-precision variants: nothing to gate"
    lines = head_class(task).gate_table(variants, report["thresholds"])
    for p, v in variants.items():
        lines.append(
            f"{p}: {'PASS' if v['passed'] else 'FAIL'}"
            + "".join(f"\n  - {f}" for f in v["failures"])
        )
    return "\n".join(lines)
