"""Accuracy gates: every precision variant against the FP32 ONNX, with task metrics.

Both models run in ONNX Runtime (CPU) on the same preprocessed validation inputs, and
their outputs go through the runtime's own postprocessing (:mod:`edgemed.postprocess`),
so the comparison is of what a user would receive.

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemed import postprocess as post
from edgemed.export.calibration import ImageSet
from edgemed.export.config import Thresholds
from edgemed.export.onnx_export import run_onnx, session

__all__ = ["compare", "format_table", "gate_failures"]

_CHUNK = 8  # slices per ONNX Runtime call: bounds the memory of 256x256xC logits
_GATE_KEYS = {
    "segmentation": ("max_dice_drop", "max_class_dice_drop"),
    "classification": ("min_top1_agreement", "max_prob_diff"),
    "embedding": ("min_cosine",),
}


def _outputs(path: Path, data: ImageSet, threads: int | None) -> list[np.ndarray]:
    sess = session(path, threads)
    return [
        run_onnx(sess, data.inputs[i : i + _CHUNK], _CHUNK)
        for i in range(0, len(data.inputs), _CHUNK)
    ]


def _segmentation(
    ref: list[np.ndarray],
    var: list[np.ndarray],
    data: ImageSet,
    spec: post.PostprocessSpec,
    labels: list[str],
) -> dict[str, Any]:
    n = max(len(labels), ref[0].shape[1] + (1 if spec.decision == "threshold" else 0))
    names = post.label_names(labels, n)
    inter = np.zeros(n, np.int64)
    size_ref = np.zeros(n, np.int64)
    size_var = np.zeros(n, np.int64)
    agree = total = 0
    for k, (r, v) in enumerate(zip(ref, var, strict=True)):
        places = data.placements[k * _CHUNK : k * _CHUNK + len(r)]
        for mr, mv in zip(
            post.segment(r, places, spec, labels),
            post.segment(v, places, spec, labels),
            strict=True,
        ):
            size_ref += np.bincount(mr.ravel(), minlength=n)[:n]
            size_var += np.bincount(mv.ravel(), minlength=n)[:n]
            inter += np.bincount(mr[mr == mv].ravel(), minlength=n)[:n]
            agree += int((mr == mv).sum())
            total += mr.size
    classes: dict[str, Any] = {}
    dices = []
    for c, name in enumerate(names):
        denom = int(size_ref[c] + size_var[c])
        if denom == 0:
            classes[name] = {"dice": None, "drop": None, "pixels_fp32": 0, "pixels_variant": 0}
            continue
        dice = 2.0 * float(inter[c]) / denom
        dices.append(dice)
        classes[name] = {
            "dice": round(dice, 6),
            "drop": round(1.0 - dice, 6),
            "pixels_fp32": int(size_ref[c]),
            "pixels_variant": int(size_var[c]),
        }
    mean = float(np.mean(dices)) if dices else 1.0
    return {
        "mean_dice": round(mean, 6),
        "mean_dice_drop": round(1.0 - mean, 6),
        "pixel_agreement": round(agree / max(total, 1), 6),
        "classes": classes,
    }


def _classification(
    ref: list[np.ndarray], var: list[np.ndarray], spec: post.PostprocessSpec
) -> dict[str, Any]:
    r = post.activate(np.concatenate(ref).reshape(sum(len(x) for x in ref), -1), spec.activation)
    v = post.activate(np.concatenate(var).reshape(len(r), -1), spec.activation)
    return {
        "top1_agreement": round(float((r.argmax(1) == v.argmax(1)).mean()), 6),
        "max_prob_diff": round(float(np.abs(r - v).max()), 6),
    }


def _embedding(ref: list[np.ndarray], var: list[np.ndarray]) -> dict[str, Any]:
    r = np.concatenate(ref).reshape(sum(len(x) for x in ref), -1).astype(np.float64)
    v = np.concatenate(var).reshape(len(r), -1).astype(np.float64)
    nr = np.linalg.norm(r, axis=1)
    nv = np.linalg.norm(v, axis=1)
    cos = (r * v).sum(1) / np.maximum(nr * nv, 1e-30)
    return {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}


def gate_failures(task: str, metrics: dict[str, Any], t: Thresholds) -> list[str]:
    """What fails the gate, one line each (empty: passed)."""
    fails = []
    if task == "segmentation":
        if metrics["mean_dice_drop"] > t.max_dice_drop:
            fails.append(f"mean Dice drop {metrics['mean_dice_drop']:.4f} > {t.max_dice_drop}")
        for name, c in metrics["classes"].items():
            if c["drop"] is not None and c["drop"] > t.max_class_dice_drop:
                fails.append(f"{name}: Dice drop {c['drop']:.4f} > {t.max_class_dice_drop}")
    elif task == "classification":
        if metrics["top1_agreement"] < t.min_top1_agreement:
            fails.append(
                f"top-1 agreement {metrics['top1_agreement']:.4f} < {t.min_top1_agreement}"
            )
        if metrics["max_prob_diff"] > t.max_prob_diff:
            fails.append(f"max probability diff {metrics['max_prob_diff']:.4f} > {t.max_prob_diff}")
    elif metrics["min_cosine"] < t.min_cosine:
        fails.append(f"min cosine {metrics['min_cosine']:.4f} < {t.min_cosine}")
    return fails


def compare(
    fp32: Path,
    variants: dict[str, Path],
    data: ImageSet,
    task: str,
    spec: post.PostprocessSpec,
    labels: list[str],
    thresholds: Thresholds,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run FP32 and each variant on ``data``; metrics and pass/fail per variant."""
    ref = _outputs(fp32, data, threads)
    report: dict[str, Any] = {
        "reference": "FP32 ONNX, ONNX Runtime CPU; outputs through edgemed.postprocess",
        "thresholds": {k: getattr(thresholds, k) for k in _GATE_KEYS[task]},
        "variants": {},
    }
    for precision, path in variants.items():
        var = _outputs(path, data, threads)
        if task == "segmentation":
            metrics = _segmentation(ref, var, data, spec, labels)
        elif task == "classification":
            metrics = _classification(ref, var, spec)
        else:
            metrics = _embedding(ref, var)
        fails = gate_failures(task, metrics, thresholds)
        report["variants"][precision] = {"passed": not fails, "failures": fails, **metrics}
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    return report


def format_table(task: str, report: dict[str, Any]) -> str:
    """The accuracy report as a plain-text table (one row per class / metric)."""
    variants = report["variants"]
    t = report["thresholds"]
    if not variants:
        return "no reduced-precision variants: nothing to gate"
    cols = list(variants)
    lines = []
    if task == "segmentation":
        header = f"{'class':16s}" + "".join(f"{p + ' Dice':>12s}{p + ' drop':>12s}" for p in cols)
        lines += [header, "-" * len(header)]
        for name in next(iter(variants.values()))["classes"]:
            row = f"{name:16s}"
            for p in cols:
                c = variants[p]["classes"][name]
                if c["dice"] is None:
                    row += f"{'absent':>12s}{'':>12s}"
                else:
                    flag = " !" if c["drop"] > t["max_class_dice_drop"] else "  "
                    row += f"{c['dice']:12.4f}{c['drop']:10.4f}{flag}"
            lines.append(row)
        row = f"{'mean':16s}"
        for p in cols:
            v = variants[p]
            flag = " !" if v["mean_dice_drop"] > t["max_dice_drop"] else "  "
            row += f"{v['mean_dice']:12.4f}{v['mean_dice_drop']:10.4f}{flag}"
        lines += [
            row,
            f"limits: mean drop <= {t['max_dice_drop']}, "
            f"each class drop <= {t['max_class_dice_drop']} ('!' marks a failure)",
        ]
    elif task == "classification":
        lines.append(f"{'variant':10s}{'top-1 agreement':>18s}{'max prob diff':>16s}")
        for p in cols:
            v = variants[p]
            lines.append(f"{p:10s}{v['top1_agreement']:18.4f}{v['max_prob_diff']:16.4f}")
        lines.append(
            f"limits: top-1 agreement >= {t['min_top1_agreement']}, "
            f"max prob diff <= {t['max_prob_diff']}"
        )
    else:
        lines.append(f"{'variant':10s}{'min cosine':>14s}{'mean cosine':>14s}")
        for p in cols:
            v = variants[p]
            lines.append(f"{p:10s}{v['min_cosine']:14.6f}{v['mean_cosine']:14.6f}")
        lines.append(f"limits: min cosine >= {t['min_cosine']}")
    for p in cols:
        lines.append(
            f"{p}: {'PASS' if variants[p]['passed'] else 'FAIL'}"
            + "".join(f"\n  - {f}" for f in variants[p]["failures"])
        )
    return "\n".join(lines)
