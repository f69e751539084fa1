"""Segmentation head: logits ``(N, C, H, W)`` -> a uint8 label mask per slice in the
input's own geometry, per-label statistics, Dice against a reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed import postprocess as ops
from edgemed.heads.base import Head, HeadSpec

if TYPE_CHECKING:
    from edgemed.io.image import MedicalImage
    from edgemed.io.orientation import Orientation
    from edgemed.preprocess.cpu import Placement
    from edgemed.result import Result

__all__ = ["SegmentationHead", "SegmentationOutput", "SegmentationSpec"]


@dataclass(frozen=True)
class SegmentationSpec(HeadSpec):
    """How logits become a mask.

    Attributes:
        activation: ``softmax`` (mutually exclusive classes), ``sigmoid`` (independent
            channels) or ``none`` (outputs are already probabilities).
        decision: ``argmax`` or ``threshold`` (sigmoid channels above ``threshold``; with
            several channels a pixel takes the most probable channel that passes, label
            index = channel + 1, 0 where none passes).
        threshold: the threshold for ``decision="threshold"``.
        largest_component: labels (names) for which only the largest connected
            component is kept.
    """

    activation: str = "softmax"
    decision: str = "argmax"
    threshold: float = 0.5
    largest_component: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ops.check_activation(self.activation)
        if self.decision not in ops.DECISIONS:
            raise ValueError(f"decision must be one of {ops.DECISIONS}")

    @classmethod
    def _coerce(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw = super()._coerce(kw)
        if "largest_component" in kw:
            kw["largest_component"] = tuple(str(x) for x in kw["largest_component"])
        if "threshold" in kw:
            kw["threshold"] = float(kw["threshold"])
        return kw


@dataclass
class SegmentationOutput:
    """``mask``: uint8 ``(Y, X)`` or ``(Z, Y, X)`` in the input's own voxel grid;
    ``stats``: per label ``pixels`` and ``area_mm2`` (2D) or ``volume_mm3`` (volume),
    the millimetres only where the input's spacing is known; ``volume``: for a 3D model,
    how the sliding window covered it (:mod:`edgemed.volume`), else None."""

    mask: np.ndarray
    stats: dict[str, dict[str, float]]
    volume: dict[str, Any] | None = None


class SegmentationHead(Head):
    task = "segmentation"
    Spec = SegmentationSpec
    thresholds = {"max_dice_drop": 0.01, "max_class_dice_drop": 0.02}
    spec: SegmentationSpec

    def __init__(self, spec: HeadSpec, labels: Sequence[str], outputs: Sequence[Any]) -> None:
        super().__init__(spec, labels, outputs)
        channels = self.output_shape[1] if len(self.output_shape) > 1 else None
        extra = 1 if self.spec.decision == "threshold" else 0
        #: Label values the model can produce (names for the unnamed: ``label_<i>``).
        self.num_values = max(
            len(self.labels), channels + extra if isinstance(channels, int) else 0, 1
        )

    def decode(
        self, raw: Mapping[str, np.ndarray], placements: Sequence[Placement]
    ) -> list[np.ndarray]:
        return ops.segment(raw[self.output], placements, self.spec, self.labels)

    def decodes_on_device(self, output_dtype: Any) -> bool:
        return np.dtype(output_dtype) in (np.dtype(np.float32), np.dtype(np.float16))

    def assemble(
        self, image: MedicalImage, values: list[Any], how: Orientation
    ) -> SegmentationOutput:
        """The mask in ``image``'s own voxel grid from the masks of its canonical slices.

        ``values`` are per slice of the image as the model saw it, in the canonical
        orientation (:func:`edgemed.io.orientation.canonical`); the stacked mask is
        mapped back to the input's order, so it overlays the input voxel for voxel.
        Sizes are pixel counts only where the spacing is unknown (no millimetres made
        up from a placeholder 1.0).
        """
        seen = np.stack(values) if how.volume else values[0]
        mask = np.ascontiguousarray(how.to_input(seen)) if how.reoriented else seen
        names = ops.label_names(self.labels, max(len(self.labels), int(mask.max()) + 1))
        known = image.spacing_source != "unknown"
        stats = ops.segmentation_stats(mask, image.spacing if known else None, names)
        return SegmentationOutput(mask, stats)

    def values(self, output: SegmentationOutput) -> list[np.ndarray]:
        return list(output.mask) if output.mask.ndim == 3 else [output.mask]

    def to_json(self, output: SegmentationOutput) -> dict[str, Any]:
        mask = output.mask
        return {
            "mask": {"shape": list(mask.shape), "dtype": str(mask.dtype)},
            "labels": output.stats,
            **({"volume": output.volume} if output.volume is not None else {}),
        }

    def summary(self, result: Result) -> list[str]:
        from edgemed.io.writers import size_text

        background = result.labels[0] if result.labels else None
        parts = [
            f"{name} {size_text(v)}"
            for name, v in result.output.stats.items()
            if name != background and v["pixels"]
        ]
        return ["  labels   " + ", ".join(parts)] if result.output.stats else []

    def write(self, result: Result, out: Path) -> list[Path]:
        from edgemed.io.writers import write_mask_nifti, write_overlay_png

        o = result.output
        return [
            write_mask_nifti(out / "mask.nii.gz", o.mask, result.image),
            write_overlay_png(out / "overlay.png", result.image, o.mask, result.labels, o.stats),
        ]

    def artifacts(self, result: Result) -> Mapping[str, tuple[str, Any]]:
        """``mask.nii.gz`` and ``overlay.png``, the same bytes :meth:`write` puts in files."""
        from edgemed.io.writers import write_mask_nifti, write_overlay_png

        o, image, labels = result.output, result.image, result.labels
        return {
            "mask.nii.gz": ("application/gzip", lambda f: write_mask_nifti(f, o.mask, image)),
            "overlay.png": (
                "image/png",
                lambda f: write_overlay_png(f, image, o.mask, labels, o.stats),
            ),
        }

    # -- comparing -----------------------------------------------------------------------

    def metric(self, reference: Sequence[Any], other: Sequence[Any]) -> dict[str, Any]:
        """Dice per label over all slices together: ``2 |R_c & O_c| / (|R_c| + |O_c|)``,
        ``None`` for a label neither labels anywhere (reported, not gated);
        ``drop = 1 - Dice``; ``mean_dice`` over the labels present; pixel agreement."""
        if len(reference) != len(other):
            raise ValueError(f"{len(reference)} reference slices, {len(other)} to compare")
        top = max((int(m.max(initial=0)) for m in (*reference, *other)), default=0)
        n = max(self.num_values, top + 1)
        inter = np.zeros(n, np.int64)
        size_ref = np.zeros(n, np.int64)
        size_other = np.zeros(n, np.int64)
        agree = total = 0
        for r, o in zip(reference, other, strict=True):
            r, o = np.asarray(r), np.asarray(o)
            if r.shape != o.shape:
                raise ValueError(f"mask shapes differ: {r.shape} vs {o.shape}")
            same = r == o
            size_ref += np.bincount(r.ravel(), minlength=n)[:n]
            size_other += np.bincount(o.ravel(), minlength=n)[:n]
            inter += np.bincount(r[same].ravel(), minlength=n)[:n]
            agree += int(same.sum())
            total += r.size
        classes: dict[str, Any] = {}
        dices = []
        for c, name in enumerate(ops.label_names(self.labels, n)):
            denom = int(size_ref[c] + size_other[c])
            dice = None if denom == 0 else 2.0 * float(inter[c]) / denom
            if dice is not None:
                dices.append(dice)
            classes[name] = {
                "dice": None if dice is None else round(dice, 6),
                "drop": None if dice is None else round(1.0 - dice, 6),
                "pixels_reference": int(size_ref[c]),
                "pixels_other": int(size_other[c]),
            }
        mean = float(np.mean(dices)) if dices else 1.0
        return {
            "metric": "dice",
            "mean_dice": round(mean, 6),
            "mean_dice_drop": round(1.0 - mean, 6),
            "pixel_agreement": round(agree / max(total, 1), 6),
            "classes": classes,
        }

    def gate(self, metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        mean_limit = self.limit("max_dice_drop", thresholds)
        class_limit = self.limit("max_class_dice_drop", thresholds)
        fails = []
        if metrics["mean_dice_drop"] > mean_limit:
            fails.append(f"mean Dice drop {metrics['mean_dice_drop']:.4f} > {mean_limit}")
        for name, c in metrics["classes"].items():
            if c["drop"] is not None and c["drop"] > class_limit:
                fails.append(f"{name}: Dice drop {c['drop']:.4f} > {class_limit}")
        return fails

    @classmethod
    def gate_table(cls, variants: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
        mean_limit = cls.limit("max_dice_drop", thresholds)
        class_limit = cls.limit("max_class_dice_drop", thresholds)
        cols = list(variants)
        header = f"{'class':16s}" + "".join(f"{p + ' Dice':>12s}{p + ' drop':>12s}" for p in cols)
        lines = [header, "-" * len(header)]
        for name in next(iter(variants.values()))["classes"]:
            row = f"{name:16s}"
            for p in cols:
                c = variants[p]["classes"][name]
                if c["dice"] is None:
                    row += f"{'absent':>12s}{'':>12s}"
                else:
                    flag = " !" if c["drop"] > class_limit else "  "
                    row += f"{c['dice']:12.4f}{c['drop']:10.4f}{flag}"
            lines.append(row)
        row = f"{'mean':16s}"
        for p in cols:
            v = variants[p]
            flag = " !" if v["mean_dice_drop"] > mean_limit else "  "
            row += f"{v['mean_dice']:12.4f}{v['mean_dice_drop']:10.4f}{flag}"
        lines += [
            row,
            f"limits: mean drop <= {mean_limit}, each class drop <= {class_limit} "
            "('!' marks a failure)",
        ]
        return lines
